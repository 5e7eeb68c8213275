package dispatcher

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callbackd/callbackd/deliverylog"
	"github.com/callbackd/callbackd/plugins"
	"github.com/callbackd/callbackd/subjects"
)

// Reasons written to Callbackd-Reason (SPEC §3).
const (
	ReasonInvalidEvent                = "invalid_event"
	ReasonDeliveryFailed              = "delivery_failed"
	ReasonDestinationNotAllowed       = "destination_not_allowed"
	ReasonCallbackFailedUndeliverable = "callback_failed_undeliverable"
)

const (
	// handBackDelay is the NAK delay of work handed back at shutdown.
	handBackDelay = 100 * time.Millisecond
	// maxInfraDelay caps the growing NAK delay of infrastructure errors.
	maxInfraDelay = 30 * time.Second
)

// job is one message being handled.
type job struct {
	msg     jetstream.Msg
	md      *jetstream.MsgMetadata
	started time.Time
	retry   bool // from CALLBACKS_RETRY
	// subject is the original subject: callbacks.event.… or callbacks.notify.…
	subject string
	notify  bool
	key     subjects.EventKey
	parsed  bool // key is valid
	// deliveryID is the Callback-Delivery-Id (SPEC §3).
	deliveryID string
	// attempt is the number of the attempt about to be made, from 1.
	attempt int
	// parked counts how often this delivery was parked over a host's cap.
	parked int
	// encoded: notification holds the event's encoding.
	encoded bool
	// origin is the message the chain of retries and parks started from
	// (headerOrigin), once originRef has been asked: Nats-Msg-Ids of what
	// the chain publishes derive from it.
	origin string

	notification plugins.Notification
	dest         plugins.Destination
	// pipeline encodes and delivers an event in one call; nil for a
	// notification, which needs no encoding.
	pipeline plugins.EncodeDeliverer
}

// handle takes one message from either consumer to its end: delivered,
// retry scheduled, parked, dead-lettered, skipped, or handed back.
// release gives the worker slot back; it is called once the CPU work is
// done, so an attempt in flight holds no worker. ctx never ends (work in
// hand is finished at shutdown): what should stop early watches
// d.stopping.
func (d *Dispatcher) handle(ctx context.Context, m jetstream.Msg, release func()) {
	md, err := m.Metadata()
	if err != nil {
		// Not a JetStream message: nothing to ack or redeliver.
		d.log.Error("message without metadata", "subject", m.Subject(), "err", err)
		return
	}
	j := &job{msg: m, md: md, started: time.Now(), subject: m.Subject(), attempt: 1}
	if md.Stream == subjects.RetryStream {
		if !d.fromRetry(j) {
			return
		}
	}
	j.deliveryID = d.deliveryID(j)

	// Infrastructure errors hand a message back, and infraError gives up
	// on the max_deliveries-th; one delivered more often than that died
	// with the process that had it (a crash loop).
	if md.NumDelivered > d.deliveryLimit(j) {
		if d.parseKey(j) {
			d.giveUp(ctx, j, md.NumDelivered-1, "the last one ended without handing it back (its process died)")
		}
		return
	}
	if !d.parseKey(j) {
		return
	}
	if d.resume(ctx, j) {
		return
	}
	if !d.prepare(ctx, j) {
		return
	}
	d.attempt(ctx, j, release)
}

// fromRetry reads a CALLBACKS_RETRY message's headers into j. It returns
// false when the message is not due yet (it is NAKed until it is) or is
// unreadable (it is dead-lettered).
func (d *Dispatcher) fromRetry(j *job) bool {
	j.retry = true
	h := j.msg.Headers()
	if nb, err := time.Parse(time.RFC3339Nano, h.Get(subjects.HeaderNotBefore)); err == nil {
		if wait := time.Until(nb); wait > 0 {
			d.nak(j.msg, wait)
			return false
		}
	}
	orig := h.Get(subjects.HeaderSubject)
	if orig == "" {
		var err error
		if orig, err = subjects.OriginalFromRetry(j.subject); err != nil {
			orig = j.subject // refused as it is, by its own name
		}
	}
	j.subject = orig
	if n, err := strconv.Atoi(h.Get(subjects.HeaderAttempt)); err == nil && n >= 1 {
		j.attempt = n
	}
	if n, err := strconv.Atoi(h.Get(headerParked)); err == nil && n >= 0 {
		j.parked = n
	}
	return true
}

// parseKey parses j's original subject. An unparseable one is dead-lettered
// as invalid (and false returned).
func (d *Dispatcher) parseKey(j *job) bool {
	if subjects.IsNotify(j.subject) {
		acct, proj, err := subjects.ParseNotify(j.subject)
		if err != nil {
			d.invalid(context.Background(), j, err)
			return false
		}
		j.notify, j.parsed = true, true
		j.key = subjects.EventKey{Type: subjects.EventTypeCallbackFailed, AccountID: acct, ProjectID: proj}
		return true
	}
	key, err := subjects.ParseEvent(j.subject)
	if err != nil {
		d.invalid(context.Background(), j, err)
		return false
	}
	j.key, j.parsed = key, true
	return true
}

// prepare checks the payload and finds where it goes. A notification is
// decoded; an event gets its encoder and destination, and is encoded here
// only when it has no destination (to tell skipped and invalid events from
// no_destination ones) — otherwise the attempt encodes and delivers in one
// plugin crossing. It returns false when the message has been dealt with.
func (d *Dispatcher) prepare(ctx context.Context, j *job) bool {
	m := j.msg
	if size := len(m.Data()); int64(size) > d.o.MaxPayload {
		d.invalid(ctx, j, fmt.Errorf("payload is %d bytes, over dispatcher.max_payload (%d)", size, d.o.MaxPayload))
		return false
	}
	if j.notify {
		n, err := decodeNotify(m.Data())
		if err != nil {
			d.invalid(ctx, j, err)
			return false
		}
		j.notification, j.dest = n.Notification, n.Destination
		if n.SSOWebhook {
			sso := d.view.SSOWebhook(j.key.AccountID)
			if sso == nil {
				d.log.Info("no SSO client webhook for the account any more; callback-failed notification not sent",
					d.attrs(j, slog.String("outcome", deliverylog.OutcomeNoDestination))...)
				d.outcome(j, deliverylog.Record{Outcome: deliverylog.OutcomeNoDestination, Error: "the account has no SSO client webhook any more"})
				d.ack(j)
				return false
			}
			j.dest = *sso
		}
		return true
	}
	enc, ok := d.o.Encoders[j.key.Type]
	if !ok {
		d.invalid(ctx, j, fmt.Errorf("unknown event type %q: no encoder configured", j.key.Type))
		return false
	}
	if dest, ok := d.view.Destination(j.key.AccountID, j.key.ProjectID); ok {
		j.dest, j.pipeline = dest, d.pipelines[j.key.Type]
		return true
	}
	ectx, cancel := context.WithTimeout(ctx, d.o.CallTimeout)
	encoded, err := enc.Encode(ectx, d.event(j))
	cancel()
	if !d.encoded(ctx, j, "encode", encoded, err) {
		return false
	}
	// Logged (SPEC §3), but most projects may configure no callback: at
	// most 10 lines a second, then a count; the delivery log and the
	// metrics have every one.
	d.noDestLog.log(ctx, d.log, slog.LevelInfo, "no callback URL for project or account", d.attrs(j, slog.String("outcome", deliverylog.OutcomeNoDestination))...)
	d.outcome(j, deliverylog.Record{Outcome: deliverylog.OutcomeNoDestination, Error: noDestinationError})
	d.ack(j)
	return false
}

// noDestinationError is the error of a no_destination record.
const noDestinationError = "no callback URL for the project or its account"

// event is the plugin view of j.
func (d *Dispatcher) event(j *job) plugins.Event {
	return plugins.Event{
		Type: j.key.Type, AccountID: j.key.AccountID, ProjectID: j.key.ProjectID,
		DeliveryID: j.deliveryID, Payload: j.msg.Data(),
	}
}

// encoded settles what an encoder said when it is not a notification to
// deliver: invalid events are dead-lettered, plugin errors hand the event
// back (op names the call in the log line), skipped events are acked. It
// reports whether there is a notification to deliver.
func (d *Dispatcher) encoded(ctx context.Context, j *job, op string, e plugins.Encoded, err error) bool {
	switch {
	case errors.Is(err, plugins.ErrInvalidEvent):
		d.invalid(ctx, j, err)
		return false
	case err != nil:
		d.infraError(ctx, j, op, err)
		return false
	case e.SkipReason != "":
		d.skipLog.log(ctx, d.log, slog.LevelInfo, "event skipped", d.attrs(j, slog.String("outcome", deliverylog.OutcomeSkipped), slog.String("reason", clipText(e.SkipReason)))...)
		d.outcome(j, deliverylog.Record{Outcome: deliverylog.OutcomeSkipped, Error: e.SkipReason})
		d.ack(j)
		return false
	}
	j.notification, j.encoded = e.Notification, true
	return true
}

// deliveryID is the event's Callback-Delivery-Id (SPEC §3): the one it
// carries when callbackd put it there (retries, notifications, replays),
// else from the publisher's Nats-Msg-Id, else from CALLBACKS's creation
// time and the stream sequence.
func (d *Dispatcher) deliveryID(j *job) string {
	h := j.msg.Headers()
	if id := h.Get(subjects.HeaderDeliveryID); validDeliveryID(id) && carriesDeliveryID(j, h) {
		return id
	}
	if msgID := h.Get(subjects.HeaderMsgID); msgID != "" && !j.retry {
		sum := sha256.Sum256([]byte(msgID))
		var id [16]byte
		hex.Encode(id[:], sum[:8])
		return string(id[:])
	}
	return strconv.FormatInt(d.eventsCreated.Load(), 10) + "-" + strconv.FormatUint(j.md.Sequence.Stream, 10)
}

// carriesDeliveryID reports whether j is one of callbackd's own messages
// that keep an earlier delivery's id: a retry, a callback-failed
// notification, or a replayed dead letter. On a fresh event the header is
// the publisher's, and receivers de-duplicate on the id: two events that
// carried the same header (a publisher forwarding headers) would become one.
func carriesDeliveryID(j *job, h nats.Header) bool {
	return j.retry || subjects.IsNotify(j.subject) || strings.HasPrefix(h.Get(subjects.HeaderMsgID), subjects.ReplayMsgIDPrefix)
}

// validDeliveryID accepts the IDs callbackd makes: short, [0-9a-z-].
func validDeliveryID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || c == '-') {
			return false
		}
	}
	return true
}

// invalid dead-letters an event that can never be encoded and acks it.
func (d *Dispatcher) invalid(ctx context.Context, j *job, err error) {
	// Logged and counted once it has ended: when its dead letter cannot be
	// written it is handed back and ends later.
	if d.deadLetterAndAck(ctx, j, ReasonInvalidEvent, 0, 0, err.Error(), false) {
		d.log.Warn("invalid event", d.attrs(j, slog.String("outcome", deliverylog.OutcomeInvalid), slog.String("err", clipText(err.Error())))...)
		d.outcome(j, deliverylog.Record{Outcome: deliverylog.OutcomeInvalid, Error: err.Error()})
	}
}

// infraError hands the message back with a growing delay: a plugin that is
// down or missed its deadline, or NATS unavailable, is not the endpoint's
// fault and costs no attempt (SPEC §3 "Never a plain Nak()"). On the
// dispatcher.max_deliveries-th delivery it gives up instead.
func (d *Dispatcher) infraError(ctx context.Context, j *job, op string, err error) {
	notReached := errors.Is(err, plugins.ErrNotReached)
	if j.parsed && !notReached && j.md.NumDelivered >= d.deliveryLimit(j) {
		d.giveUp(ctx, j, j.md.NumDelivered, op+": "+err.Error())
		return
	}
	ref := sourceRef(j)
	unpaid := d.unpaid.get(ref)
	if notReached {
		// Refused while its plugin restarts: the delivery is not the
		// event's to pay for (an event that crashes the plugin every
		// time must not take the others down with it).
		unpaid = d.unpaid.add(ref)
	}
	// Up to half again at random: events handed back together (a plugin
	// restarting after a crash) do not all come back together, in step
	// with an event that crashes it every time.
	delay := infraDelay(j.md.NumDelivered - min(unpaid, j.md.NumDelivered))
	delay += rand.N(delay/2 + 1)
	d.handBackLog.log(ctx, d.log, slog.LevelWarn, "infrastructure error; message handed back", d.attrs(j, slog.String("op", op), slog.String("err", clipText(err.Error())), slog.Duration("retry_in", delay))...)
	d.nak(j.msg, delay)
}

// deliveryLimit is how many deliveries of j infrastructure errors may use
// up: dispatcher.max_deliveries, and one more for a retry, which is pulled
// once early and NAKed until due.
func (d *Dispatcher) deliveryLimit(j *job) uint64 {
	limit := uint64(d.o.MaxDeliveries)
	if j.retry {
		limit++
	}
	if j.md.NumDelivered < limit {
		return limit // the usual case: no lookup on the hot path
	}
	return limit + d.unpaid.get(sourceRef(j))
}

// unpaid counts, per message (sourceRef), the deliveries refused before
// they reached a plugin that was restarting (plugins.ErrNotReached): they
// do not count against dispatcher.max_deliveries. What another instance
// saw is not known here, so there the cap counts them (as before); at most
// maxUnpaid messages are tracked, and a full table starts over.
type unpaid struct {
	mu sync.Mutex
	m  map[string]uint64
}

const maxUnpaid = 16384

// add counts one more for ref and returns its count.
func (u *unpaid) add(ref string) uint64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.m == nil || len(u.m) >= maxUnpaid {
		u.m = make(map[string]uint64)
	}
	u.m[ref]++
	return u.m[ref]
}

func (u *unpaid) get(ref string) uint64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.m[ref]
}

// giveUp ends an event that infrastructure errors kept from being
// delivered, after that many failed deliveries of it: an unsuccessful end, logged as
// failed like any other and dead-lettered. The failure plugin is not run:
// what keeps failing may be a plugin, and there is no notification to
// report.
//
// When the dead letter cannot be written (NATS away, storage full) the
// message is handed back, and its next delivery, past the limit, gives up
// again: with the same text, kept here for as long as the process lives,
// and logged and counted only once it has ended.
func (d *Dispatcher) giveUp(ctx context.Context, j *job, failed uint64, last string) {
	msg := clipText(fmt.Sprintf("%d deliveries ended in infrastructure errors (dispatcher.max_deliveries); %s", failed, last))
	ref := sourceRef(j)
	if why, ok := d.givingUp.get(ref); ok {
		msg = why
	}
	if !d.deadLetterAndAck(ctx, j, ReasonDeliveryFailed, 0, j.attempt-1, msg, true) {
		d.givingUp.put(ref, msg)
		return
	}
	d.givingUp.remove(ref)
	d.log.Warn("giving up on an event", d.attrs(j, slog.String("outcome", deliverylog.OutcomeFailed), slog.String("err", msg))...)
	d.outcome(j, deliverylog.Record{Outcome: deliverylog.OutcomeFailed, Attempt: j.attempt - 1, Error: msg})
}

// infraDelay is 1 s, doubling with each delivery, capped at maxInfraDelay.
func infraDelay(numDelivered uint64) time.Duration {
	if numDelivered < 1 {
		numDelivered = 1
	}
	if numDelivered > 6 {
		return maxInfraDelay
	}
	return min(time.Second<<(numDelivered-1), maxInfraDelay)
}

func (d *Dispatcher) nak(m jetstream.Msg, delay time.Duration) {
	if err := m.NakWithDelay(delay); err != nil {
		d.log.Warn("nak failed; the message comes back after its ack wait", "subject", m.Subject(), "err", err)
	}
}

func (d *Dispatcher) ack(j *job) {
	if err := j.msg.Ack(); err != nil {
		d.log.Warn("ack failed; the event may be delivered again", d.attrs(j, slog.String("err", err.Error()))...)
	}
}

// keepAlive tells the server the message is still being worked on once it
// has been held for longer than after: half its ack wait before the failure
// plugin or an SSO delivery, attemptHold before an attempt.
func (d *Dispatcher) keepAlive(j *job, after time.Duration) {
	if time.Since(j.started) > after {
		if err := j.msg.InProgress(); err == nil {
			j.started = time.Now()
		}
	}
}

// outcome counts and logs a record for j.
func (d *Dispatcher) outcome(j *job, r deliverylog.Record) {
	d.o.Observer.Outcome(j.key.Type, r.Outcome)
	if d.o.Recorder == nil {
		return
	}
	r.DeliveryID = j.deliveryID
	r.EventType, r.AccountID, r.ProjectID = j.key.Type, j.key.AccountID, j.key.ProjectID
	if r.At.IsZero() {
		r.At = time.Now().UTC()
	}
	d.o.Recorder.Write(r)
}

func (d *Dispatcher) attrs(j *job, extra ...any) []any {
	a := make([]any, 0, 6+len(extra))
	a = append(a, slog.String("delivery_id", j.deliveryID))
	if j.parsed {
		a = append(a, slog.String("event_type", j.key.Type), slog.String("account", j.key.AccountID), slog.String("project", j.key.ProjectID))
	} else {
		a = append(a, slog.String("subject", j.subject))
	}
	return append(a, extra...)
}
