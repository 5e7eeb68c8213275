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

// MarshalJSON is the record as the log stores it (appendJSON: an attempt's
// duration_ms even when it is 0, which encoding/json's omitempty would
// drop), with "seq" added.
func (e Entry) MarshalJSON() ([]byte, error) {
	b := appendJSON(nil, &e.Record)
	b = append(b[:len(b)-1], `,"seq":`...)
	b = strconv.AppendUint(b, e.Seq, 10)
	return append(b, '}'), nil
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
// searches for the sequence where a page starts, and reads from there: a
// page costs O(log n) such counts at worst and reads about a quarter more
// records than it returns. Counts only guide the search; a page is always
// the newest matches below the cursor, so paging returns every record
// exactly once even while records arrive or expire.
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
	if err != nil || strconv.FormatUint(seq, 10) != c { // one spelling: no "05", no "+5"
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
	first := DefaultFirst
	if f.First > 0 {
		first = min(f.First, MaxFirst)
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

	// oldest is the oldest match there is (stored at or after Since), and
	// total how many match from it on, newer than hi included.
	from := jetstream.ConsumerConfig{DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: state.FirstSeq}
	if !f.Since.IsZero() {
		since := f.Since
		from = jetstream.ConsumerConfig{DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &since}
	}
	oldest, total, ok, err := sc.first(ctx, from)
	if err != nil || !ok || oldest > hi {
		return Page{}, err
	}

	// Counts guide where to read; they are not exact while records arrive,
	// so what the page holds and HasNext come from what was read: the
	// newest matches at or below hi, contiguous, and whether the oldest
	// match is older than the page. A round that comes up short (counts
	// thrown off by arrivals) reads on below where it began.
	var p Page
	for round := 0; round < 4 && len(p.Records) < first && hi >= oldest; round++ {
		need := first - len(p.Records)
		cLow := total
		if round > 0 {
			if cLow, err = sc.count(ctx, oldest); err != nil {
				return Page{}, err
			}
		}
		a, err := sc.pageStart(ctx, oldest, cLow, hi, state.LastSeq, need)
		if err != nil {
			return Page{}, err
		}
		got, err := sc.newest(ctx, a, hi, need)
		if err != nil {
			return Page{}, err
		}
		p.Records = append(p.Records, got...)
		if a <= oldest {
			break
		}
		hi = a - 1
	}
	if n := len(p.Records); n > 0 {
		p.EndCursor = p.Records[n-1].Cursor()
		p.HasNext = oldest < p.Records[n-1].Seq
	}
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

// first returns the sequence of the first match from where cfg starts and
// how many match from there on; ok is false when none does.
func (sc scanner) first(ctx context.Context, cfg jetstream.ConsumerConfig) (seq, n uint64, ok bool, err error) {
	cfg.HeadersOnly = true
	c, done, err := sc.consumer(ctx, cfg)
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
	if m, ok := <-b.Messages(); ok { // the first match is all that is needed
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

// pageStart returns the sequence from which [a, hi] holds about need
// matches (a little more, never much more unless records arrive
// meanwhile), or oldest when fewer than that match from there. cLow is the
// count from oldest; last the newest sequence when the query began.
func (sc scanner) pageStart(ctx context.Context, oldest, cLow, hi, last uint64, need int) (uint64, error) {
	slack := uint64(max(need/4, 16))
	// above: matches newer than hi. Without a cursor hi is the newest
	// record, and arrivals since are too few to be worth a count.
	var above uint64
	if hi < last {
		var err error
		if above, err = sc.count(ctx, hi+1); err != nil {
			return 0, err
		}
	}
	target := above + uint64(need)
	if cLow <= target+slack {
		return oldest, nil
	}
	// count falls from cLow at oldest to above at hi+1. Find the largest
	// a with count(a) ≥ target, give or take slack: interpolate, and
	// bisect every other step so that an uneven log converges too.
	a, ca := oldest, cLow
	b, cb := hi+1, above
	for step := 0; ca > target+slack && b-a > 1 && step < 128; step++ {
		var m uint64
		if step%2 == 0 && ca > cb {
			want := target + slack/2
			frac := float64(ca-want) / float64(ca-cb)
			m = a + uint64(frac*float64(b-a))
		} else {
			m = a + (b-a)/2
		}
		m = min(max(m, a+1), b-1)
		cm, err := sc.count(ctx, m)
		if err != nil {
			return 0, err
		}
		if cm >= target {
			a, ca = m, cm
		} else {
			b, cb = m, cm
		}
	}
	return a, nil
}

// newest returns the newest n matches with sequences from from to hi,
// newest first. It reads every match in that range, keeping n at a time.
func (sc scanner) newest(ctx context.Context, from, hi uint64, n int) ([]Entry, error) {
	c, done, err := sc.consumer(ctx, jetstream.ConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: from,
	})
	if err != nil {
		return nil, err
	}
	defer done()
	ring := make([]Entry, 0, n)
	next := 0 // where the ring's oldest entry is once it is full
	keep := func(e Entry) {
		if len(ring) < n {
			ring = append(ring, e)
			return
		}
		ring[next] = e
		next = (next + 1) % n
	}
	batch := min(max(n+n/4, 16), MaxFirst)
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		b, err := c.FetchNoWait(batch)
		if err != nil {
			return nil, fmt.Errorf("delivery log: read: %w", err)
		}
		got, end := 0, false
		for m := range b.Messages() {
			got++
			md, err := m.Metadata()
			if err != nil || end {
				continue
			}
			if md.Sequence.Stream > hi {
				end = true
				continue
			}
			if e, ok := decode(m); ok {
				keep(e)
			}
			if md.NumPending == 0 {
				end = true
			}
		}
		if err := b.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return nil, fmt.Errorf("delivery log: read: %w", err)
		}
		if end || got == 0 {
			break
		}
	}
	out := make([]Entry, 0, len(ring))
	for i := len(ring) - 1; i >= 0; i-- {
		out = append(out, ring[(next+i)%len(ring)])
	}
	return out, nil
}
