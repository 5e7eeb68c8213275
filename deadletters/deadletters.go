// Package deadletters lists and replays the dead letters of CALLBACKS_DEAD
// (SPEC §2, §3 "Replay"): events that ended without a successful delivery,
// kept with their original payload and the Callbackd-* headers that say why.
//
// Replay sends a dead letter back to the subject it came from
// (Callbackd-Subject) with Nats-Msg-Id replay:<dead-letter sequence> and its
// original Callbackd-Delivery-Id, so the receiver sees the same
// Callback-Delivery-Id again, waits for the stream's ack, and only then
// deletes the dead letter. Interrupted and run again, it re-publishes the
// same Nats-Msg-Id, which the stream drops as a duplicate within its
// de-duplication window (default 2m), and deletes the dead letter then.
//
// Dead letters of events whose subject did not parse (callbacks.dead._invalid)
// are replayed like the others, to their Callbackd-Subject, when that is a
// subject CALLBACKS takes in; the dispatcher decides again (most will be
// dead-lettered again unless what made them invalid — a missing plugin, a
// payload limit — has changed). They match a filter only when it names no
// account, project or event type (or the event type "_invalid"): their
// subject carries neither. A dead letter whose Callbackd-Subject is missing
// or outside CALLBACKS is skipped, counted, and left where it is.
package deadletters

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callbackd/callbackd/subjects"
)

// Filter selects dead letters. Empty fields match everything.
type Filter struct {
	AccountID string
	ProjectID string
	// EventType is an event type, or subjects.DeadInvalidType for events
	// whose subject did not parse.
	EventType string
	// Reason is a Callbackd-Reason (invalid_event, delivery_failed,
	// destination_not_allowed, callback_failed_undeliverable).
	Reason string
	// Since and Until bound when the event was dead-lettered (the stream's
	// timestamp), both inclusive.
	Since time.Time
	Until time.Time
	// DryRun makes Replay count without changing anything.
	DryRun bool
}

// Result is what Replay did. Replay returns it with its error too: then it
// is what was done before the error, and the matched letters not counted in
// Replayed are still in CALLBACKS_DEAD (unless they expired or a concurrent
// replay took them meanwhile), for a second run to pick up.
type Result struct {
	// Matched is how many dead letters matched the filter and can be
	// replayed. When Replay fails while counting them (before replaying
	// any), it is how many it had counted.
	Matched int
	// Replayed is how many were published back and deleted. A letter
	// whose publish was acknowledged but whose deletion failed is not
	// counted: it is still a dead letter, and the error says so.
	Replayed int
	// Skipped is how many matched the filter but have no subject to go back
	// to (Callbackd-Subject missing or outside CALLBACKS); they stay.
	Skipped int
}

// Letter is a dead letter as List shows it: its headers, not its payload.
type Letter struct {
	Seq uint64 `json:"seq"`
	// Subject is the dead-letter subject (callbacks.dead.…).
	Subject string    `json:"subject"`
	At      time.Time `json:"at"`
	// OriginalSubject is Callbackd-Subject, where Replay sends it.
	OriginalSubject string `json:"original_subject"`
	DeliveryID      string `json:"delivery_id"`
	Reason          string `json:"reason"`
	Status          string `json:"status,omitempty"`
	Attempts        string `json:"attempts,omitempty"`
	Error           string `json:"error,omitempty"`
	// Size is the payload's size in bytes.
	Size int `json:"size"`
}

// Reasons are the values of Callbackd-Reason (SPEC §3).
var Reasons = []string{"invalid_event", "delivery_failed", "destination_not_allowed", "callback_failed_undeliverable"}

// Validate checks f's event type, IDs, reason and time range.
func (f Filter) Validate() error {
	_, err := f.subject()
	return err
}

// subject checks f and returns its subject filter.
func (f Filter) subject() (string, error) {
	if f.EventType != "" && f.EventType != subjects.DeadInvalidType {
		if err := subjects.ValidateEventType(f.EventType); err != nil {
			return "", fmt.Errorf("%w: event type: %w", ErrBadFilter, err)
		}
	}
	for _, id := range []struct{ name, v string }{{"account", f.AccountID}, {"project", f.ProjectID}} {
		if id.v == "" {
			continue
		}
		if err := subjects.ValidateID(id.v); err != nil {
			return "", fmt.Errorf("%w: %s: %w", ErrBadFilter, id.name, err)
		}
	}
	if f.EventType == subjects.DeadInvalidType && (f.AccountID != "" || f.ProjectID != "") {
		return "", fmt.Errorf("%w: dead letters of type %s have no account or project", ErrBadFilter, subjects.DeadInvalidType)
	}
	if f.Reason != "" && !slices.Contains(Reasons, f.Reason) {
		return "", fmt.Errorf("%w: reason %q is not one of %s", ErrBadFilter, f.Reason, strings.Join(Reasons, ", "))
	}
	if !f.Since.IsZero() && !f.Until.IsZero() && f.Until.Before(f.Since) {
		return "", fmt.Errorf("%w: until %s is before since %s", ErrBadFilter, f.Until.Format(time.RFC3339), f.Since.Format(time.RFC3339))
	}
	return subjects.DeadFilter(f.EventType, f.AccountID, f.ProjectID), nil
}

// match tells whether a dead letter's headers and time pass f's checks that
// the subject filter cannot make.
func (f Filter) match(h nats.Header, at time.Time) bool {
	if f.Reason != "" && h.Get(subjects.HeaderReason) != f.Reason {
		return false
	}
	if !f.Until.IsZero() && at.After(f.Until) {
		return false
	}
	return true
}

// scan calls fn with the headers of every dead letter that matches f and
// was in the stream when scan began, oldest first, until fn returns false.
// It reads headers only, with one short-lived consumer.
func scan(ctx context.Context, s jetstream.Stream, f Filter, fn func(seq uint64, subject string, at time.Time, h nats.Header) bool) error {
	filter, err := f.subject()
	if err != nil {
		return err
	}
	cfg := jetstream.ConsumerConfig{
		FilterSubject:     filter,
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		AckPolicy:         jetstream.AckNonePolicy,
		HeadersOnly:       true,
		MemoryStorage:     true,
		Replicas:          1,
		InactiveThreshold: time.Minute,
	}
	if !f.Since.IsZero() {
		since := f.Since
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &since
	}
	c, err := s.CreateConsumer(ctx, cfg)
	if err != nil {
		return fmt.Errorf("dead letters: read: %w", err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = s.DeleteConsumer(dctx, c.CachedInfo().Name)
	}()
	// What is there now is the snapshot: letters dead-lettered while we
	// read (perhaps our own replays, failing again) are not taken.
	left := c.CachedInfo().NumPending
	for left > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		b, err := c.FetchNoWait(int(min(left, 256)))
		if err != nil {
			return fmt.Errorf("dead letters: read: %w", err)
		}
		got := 0
		for m := range b.Messages() {
			got++
			left--
			md, err := m.Metadata()
			if err != nil {
				return fmt.Errorf("dead letters: read: %w", err)
			}
			if !f.Until.IsZero() && md.Timestamp.After(f.Until) {
				return nil // everything after is later still
			}
			if f.match(m.Headers(), md.Timestamp) && !fn(md.Sequence.Stream, m.Subject(), md.Timestamp, m.Headers()) {
				return nil
			}
			if md.NumPending == 0 {
				return nil
			}
		}
		if err := b.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return fmt.Errorf("dead letters: read: %w", err)
		}
		if got == 0 {
			return nil // expired or deleted meanwhile
		}
	}
	return nil
}

func deadStream(ctx context.Context, js jetstream.JetStream) (jetstream.Stream, error) {
	s, err := js.Stream(ctx, subjects.DeadStream)
	if err != nil {
		return nil, fmt.Errorf("dead letters: %w", err)
	}
	return s, nil
}

// List returns up to limit dead letters matching f, oldest first (limit ≤ 0
// means no limit). f.DryRun is ignored.
func List(ctx context.Context, js jetstream.JetStream, f Filter, limit int) ([]Letter, error) {
	s, err := deadStream(ctx, js)
	if err != nil {
		return nil, err
	}
	var out []Letter
	err = scan(ctx, s, f, func(seq uint64, subject string, at time.Time, h nats.Header) bool {
		size, _ := strconv.Atoi(h.Get(nats.MsgSize))
		out = append(out, Letter{
			Seq: seq, Subject: subject, At: at,
			OriginalSubject: h.Get(subjects.HeaderSubject),
			DeliveryID:      h.Get(subjects.HeaderDeliveryID),
			Reason:          h.Get(subjects.HeaderReason),
			Status:          h.Get(subjects.HeaderStatus),
			Attempts:        h.Get(subjects.HeaderAttempts),
			Error:           h.Get(subjects.HeaderError),
			Size:            size,
		})
		return limit <= 0 || len(out) < limit
	})
	return out, err
}

// Replay sends the dead letters matching f back to their original subjects
// and deletes each once its publish is acknowledged (see the package
// comment). progress, when not nil, is called with how many of the matched
// letters are done, first with 0 once they are counted. With f.DryRun it
// only counts.
//
// On error, or when ctx ends (an operator's interrupt, a deadline), it
// returns the Result of what it did so far together with the error, so the
// caller can tell the operator how far it got: every letter counted in
// Replayed is stored in CALLBACKS and gone from CALLBACKS_DEAD. Running it
// again goes on where it stopped (the package comment says what happens to
// a letter caught between its publish and its deletion).
func Replay(ctx context.Context, js jetstream.JetStream, f Filter, progress func(done, total int)) (Result, error) {
	var res Result
	if err := f.Validate(); err != nil {
		return res, err
	}
	s, err := deadStream(ctx, js)
	if err != nil {
		return res, err
	}
	// First pass, headers only: what matches. The letters themselves are
	// then read one by one, so memory stays at a sequence per letter.
	var seqs []uint64
	err = scan(ctx, s, f, func(seq uint64, _ string, _ time.Time, h nats.Header) bool {
		if !subjects.Replayable(h.Get(subjects.HeaderSubject)) {
			res.Skipped++
			return true
		}
		seqs = append(seqs, seq)
		return true
	})
	res.Matched = len(seqs)
	if err != nil {
		return res, fmt.Errorf("count dead letters: %w", err)
	}
	if progress != nil {
		progress(0, res.Matched)
	}
	if f.DryRun {
		return res, nil
	}
	for i, seq := range seqs {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		ok, err := replayOne(ctx, js, s, seq)
		if err != nil {
			return res, err
		}
		if ok {
			res.Replayed++
		}
		if progress != nil {
			progress(i+1, res.Matched)
		}
	}
	return res, nil
}

// replayOne republishes dead letter seq and deletes it. It reports false
// when the letter was already gone (expired, or replayed by someone else,
// whose deletion came first).
func replayOne(ctx context.Context, js jetstream.JetStream, s jetstream.Stream, seq uint64) (bool, error) {
	dl, err := s.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("dead letter %d: %w", seq, err)
	}
	orig := dl.Header.Get(subjects.HeaderSubject)
	m := nats.NewMsg(orig)
	m.Data = dl.Data
	m.Header.Set(subjects.HeaderMsgID, subjects.ReplayMsgIDPrefix+strconv.FormatUint(seq, 10))
	if id := dl.Header.Get(subjects.HeaderDeliveryID); id != "" {
		m.Header.Set(subjects.HeaderDeliveryID, id)
	}
	ack, err := js.PublishMsg(ctx, m)
	if err != nil {
		return false, fmt.Errorf("replay dead letter %d to %s: %w", seq, orig, err)
	}
	if ack.Stream != subjects.Stream {
		// Some other stream took the subject: the dead letter stays, and
		// the operator needs to know.
		return false, fmt.Errorf("%w: dead letter %d went to stream %s, not %s; it was kept", ErrWrongStream, seq, ack.Stream, subjects.Stream)
	}
	// The publish is stored: finish the pair even if ctx has just ended,
	// so an interrupt never leaves a replayed letter behind.
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := s.DeleteMsg(dctx, seq); err != nil {
		// A concurrent replay deleted it first: gone is done, and that
		// run counts it. Its republish and ours were one (the same
		// Nats-Msg-Id within the de-duplication window), so a letter
		// counts once, for the run whose deletion took it.
		if _, gerr := s.GetMsg(dctx, seq); !errors.Is(gerr, jetstream.ErrMsgNotFound) {
			return false, fmt.Errorf("delete replayed dead letter %d (it was published; replaying again removes it): %w", seq, err)
		}
		return false, nil
	}
	return true, nil
}
