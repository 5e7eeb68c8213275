package deliverylog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callbackd/callbackd/subjects"
)

// Page sizes of Query.
const (
	// DefaultFirst is the page size when Filter.First is 0.
	DefaultFirst = 50
	// MaxFirst caps Filter.First (SPEC §4).
	MaxFirst = 500
)

// Filter selects records. Empty fields match everything.
type Filter struct {
	// AccountID and ProjectID are decimal IDs, or subjects.LogUnparsed for
	// records of events whose subject did not parse.
	AccountID string
	ProjectID string
	// Outcome is one of the Outcome constants (see ParseOutcome).
	Outcome string
	// Since keeps records stored in the log at or after it (the stream's
	// timestamp, which is at most moments after Record.At).
	Since time.Time
	// First is the page size for Query: 0 means DefaultFirst, more than
	// MaxFirst means MaxFirst. Follow ignores it.
	First int
	// After is a cursor (Entry.Cursor, Page.EndCursor). Query returns the
	// records older than it; Follow the records newer than it.
	After string
}

// Entry is a record with its place in the log.
type Entry struct {
	Record
	// Seq is the record's sequence in CALLBACKS_LOG.
	Seq uint64 `json:"seq"`
}

// Cursor returns the entry's position as a cursor for Filter.After.
func (e Entry) Cursor() string { return strconv.FormatUint(e.Seq, 10) }

// Page is one page of Query, newest record first.
type Page struct {
	Records []Entry
	// HasNext says older records match the filter: query again with After
	// set to EndCursor.
	HasNext bool
	// EndCursor is the cursor of the last (oldest) record of the page, ""
	// for an empty page.
	EndCursor string
}

// Reader queries the delivery log for the admin API and the CLI.
//
// Query returns pages newest first, as an operator looking at recent
// failures expects; the cursor is the log sequence of the last record of a
// page (an opaque string to callers), so pages stay stable while new
// records arrive. Query never reads the log's history one message at a
// time: it counts matching records from a sequence on with a short-lived
// filtered consumer (the server answers from its per-subject index),
// searches for the sequence where a page starts, and reads just that page.
// A page costs O(log n) such counts at worst and reads at most a quarter
// more records than it returns.
type Reader struct {
	js jetstream.JetStream
}

// NewReader returns a Reader of the CALLBACKS_LOG stream.
func NewReader(js jetstream.JetStream) *Reader { return &Reader{js: js} }

// subject checks f and returns its subject filter.
func (f Filter) subject() (string, error) {
	for _, id := range []struct{ name, v string }{{"account", f.AccountID}, {"project", f.ProjectID}} {
		if id.v == "" || id.v == subjects.LogUnparsed {
			continue
		}
		if err := subjects.ValidateID(id.v); err != nil {
			return "", fmt.Errorf("%w: %s: %w", ErrBadFilter, id.name, err)
		}
	}
	if f.Outcome != "" && !knownOutcome(f.Outcome) {
		return "", fmt.Errorf("%w: outcome %q is not one of %v", ErrBadFilter, f.Outcome, Outcomes)
	}
	return subjects.LogFilter(f.AccountID, f.ProjectID, f.Outcome), nil
}

// Validate checks f's IDs, outcome and cursor.
func (f Filter) Validate() error {
	if _, err := f.subject(); err != nil {
		return err
	}
	if f.After != "" {
		if _, err := ParseCursor(f.After); err != nil {
			return err
		}
	}
	return nil
}

// ParseCursor returns the log sequence a cursor stands for; "0" is the
// position before the first record.
func ParseCursor(c string) (uint64, error) {
	seq, err := strconv.ParseUint(c, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: %q", ErrBadCursor, c)
	}
	return seq, nil
}

// Query returns a page of the records that match f, newest first, older
// than f.After when it is set.
func (r *Reader) Query(ctx context.Context, f Filter) (Page, error) {
	filter, err := f.subject()
	if err != nil {
		return Page{}, err
	}
	first := uint64(DefaultFirst)
	if f.First > 0 {
		first = uint64(min(f.First, MaxFirst))
	}
	s, err := r.js.Stream(ctx, subjects.LogStream)
	if err != nil {
		return Page{}, fmt.Errorf("delivery log: %w", err)
	}
	state := s.CachedInfo().State
	hi := state.LastSeq
	if f.After != "" {
		after, err := ParseCursor(f.After)
		if err != nil {
			return Page{}, err
		}
		if after == 0 {
			return Page{}, nil
		}
		hi = min(hi, after-1)
	}
	if hi == 0 || state.Msgs == 0 {
		return Page{}, nil
	}
	sc := scanner{s: s, filter: filter}

	// low is where the search may start and total the matches from there
	// on, newer than hi included.
	low, total := state.FirstSeq, uint64(0)
	if f.Since.IsZero() {
		if total, err = sc.count(ctx, low); err != nil {
			return Page{}, err
		}
	} else {
		var ok bool
		if low, total, ok, err = sc.firstSince(ctx, f.Since); err != nil || !ok {
			return Page{}, err
		}
	}
	// above is the number of matches newer than hi. Without a cursor hi is
	// the newest record, so it is 0 but for records arriving meanwhile,
	// which the read below leaves out anyway.
	var above uint64
	if f.After != "" && hi+1 > low {
		if above, err = sc.count(ctx, hi+1); err != nil {
			return Page{}, err
		}
	}
	if total <= above || hi < low {
		return Page{}, nil
	}

	// Find the largest a with count(a) ≥ above+first: the page starts
	// there. count falls from total at low to above at hi+1; interpolate,
	// bisecting every other step so that uneven logs converge too.
	a, ca := low, total
	slack := max(first/4, 16)
	target := above + first
	if ca > target+slack {
		b, cb := hi+1, above
		for step := 0; ca > target+slack && b-a > 1 && step < 128; step++ {
			var m uint64
			if step%2 == 0 {
				want := target + slack/2
				frac := float64(ca-want) / float64(ca-cb)
				m = a + uint64(frac*float64(b-a))
			} else {
				m = a + (b-a)/2
			}
			m = min(max(m, a+1), b-1)
			cm, err := sc.count(ctx, m)
			if err != nil {
				return Page{}, err
			}
			if cm >= target {
				a, ca = m, cm
			} else {
				b, cb = m, cm
			}
		}
	}

	entries, err := sc.read(ctx, a, hi, int(ca-above)+int(slack))
	if err != nil {
		return Page{}, err
	}
	var p Page
	n := min(uint64(len(entries)), first)
	for i := len(entries) - 1; i >= len(entries)-int(n); i-- {
		p.Records = append(p.Records, entries[i])
	}
	if len(p.Records) > 0 {
		p.EndCursor = p.Records[len(p.Records)-1].Cursor()
	}
	p.HasNext = uint64(len(entries)) > first || total > ca
	return p, nil
}

// Head returns the cursor of the newest record in the log, whatever it
// matches ("0" when the log is empty): Follow from it sees only records
// stored afterwards.
func (r *Reader) Head(ctx context.Context) (string, error) {
	s, err := r.js.Stream(ctx, subjects.LogStream)
	if err != nil {
		return "", fmt.Errorf("delivery log: %w", err)
	}
	return strconv.FormatUint(s.CachedInfo().State.LastSeq, 10), nil
}

// Follow calls fn, in log order, for every record matching f that is newer
// than f.After; without a cursor, for those stored from f.Since on, or
// without that, for records stored from now on. It returns ctx's error when
// ctx ends, or the error that stopped it. Records that do not decode are
// skipped.
func (r *Reader) Follow(ctx context.Context, f Filter, fn func(Entry)) error {
	filter, err := f.subject()
	if err != nil {
		return err
	}
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}, DeliverPolicy: jetstream.DeliverNewPolicy}
	switch {
	case f.After != "":
		seq, err := ParseCursor(f.After)
		if err != nil {
			return err
		}
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, seq+1
	case !f.Since.IsZero():
		since := f.Since
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &since
	}
	c, err := r.js.OrderedConsumer(ctx, subjects.LogStream, cfg)
	if err != nil {
		return fmt.Errorf("delivery log: follow: %w", err)
	}
	it, err := c.Messages()
	if err != nil {
		return fmt.Errorf("delivery log: follow: %w", err)
	}
	stopped := make(chan struct{})
	defer close(stopped)
	go func() {
		select {
		case <-ctx.Done():
			it.Stop()
		case <-stopped:
			it.Stop()
		}
	}()
	for {
		m, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("delivery log: follow: %w", err)
		}
		if e, ok := decode(m); ok {
			fn(e)
		}
	}
}

func decode(m jetstream.Msg) (Entry, bool) {
	md, err := m.Metadata()
	if err != nil {
		return Entry{}, false
	}
	e := Entry{Seq: md.Sequence.Stream}
	if err := json.Unmarshal(m.Data(), &e.Record); err != nil {
		return Entry{}, false
	}
	return e, true
}

// scanner counts and reads the records of one subject filter with
// short-lived ephemeral consumers: in memory, one replica, no acks, deleted
// after use and by the server after a minute should a client die first.
type scanner struct {
	s      jetstream.Stream
	filter string
}

func (sc scanner) consumer(ctx context.Context, cfg jetstream.ConsumerConfig) (jetstream.Consumer, func(), error) {
	cfg.FilterSubject = sc.filter
	cfg.AckPolicy = jetstream.AckNonePolicy
	cfg.MemoryStorage = true
	cfg.Replicas = 1
	cfg.InactiveThreshold = time.Minute
	c, err := sc.s.CreateConsumer(ctx, cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("delivery log: read: %w", err)
	}
	name := c.CachedInfo().Name
	return c, func() {
		// Clean up even when ctx has ended: the query is over either way.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = sc.s.DeleteConsumer(dctx, name)
	}, nil
}

// count returns how many records match from sequence from on.
func (sc scanner) count(ctx context.Context, from uint64) (uint64, error) {
	c, done, err := sc.consumer(ctx, jetstream.ConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: from,
	})
	if err != nil {
		return 0, err
	}
	defer done()
	return c.CachedInfo().NumPending, nil
}

// firstSince returns the sequence of the first match stored at or after
// since and how many match from there on; ok is false when none does.
func (sc scanner) firstSince(ctx context.Context, since time.Time) (seq, n uint64, ok bool, err error) {
	c, done, err := sc.consumer(ctx, jetstream.ConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &since, HeadersOnly: true,
	})
	if err != nil {
		return 0, 0, false, err
	}
	defer done()
	if c.CachedInfo().NumPending == 0 {
		return 0, 0, false, nil
	}
	b, err := c.FetchNoWait(1)
	if err != nil {
		return 0, 0, false, fmt.Errorf("delivery log: read: %w", err)
	}
	for m := range b.Messages() {
		md, err := m.Metadata()
		if err != nil {
			return 0, 0, false, fmt.Errorf("delivery log: read: %w", err)
		}
		return md.Sequence.Stream, md.NumPending + 1, true, nil
	}
	if err := b.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
		return 0, 0, false, fmt.Errorf("delivery log: read: %w", err)
	}
	return 0, 0, false, nil
}

// read returns the matches with sequences from from to hi, oldest first, at
// most limit of them.
func (sc scanner) read(ctx context.Context, from, hi uint64, limit int) ([]Entry, error) {
	c, done, err := sc.consumer(ctx, jetstream.ConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: from,
	})
	if err != nil {
		return nil, err
	}
	defer done()
	var out []Entry
	for len(out) < limit {
		b, err := c.FetchNoWait(min(limit-len(out), MaxFirst))
		if err != nil {
			return nil, fmt.Errorf("delivery log: read: %w", err)
		}
		got := 0
		for m := range b.Messages() {
			got++
			md, err := m.Metadata()
			if err != nil {
				continue
			}
			if md.Sequence.Stream > hi {
				return out, nil
			}
			if e, ok := decode(m); ok {
				out = append(out, e)
			}
			if md.NumPending == 0 {
				return out, nil
			}
		}
		if err := b.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return nil, fmt.Errorf("delivery log: read: %w", err)
		}
		if got == 0 {
			return out, nil
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}
