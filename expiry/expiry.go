// Package expiry counts the events that CALLBACKS and CALLBACKS_RETRY drop
// at their max age (retention.events) before callbackd has finished with
// them: SPEC §2's "documented loss bound; expiries are counted in a metric".
//
// JetStream reports no undelivered message that its max age removes, so the
// count has two sources:
//
//   - A message delivered to callbackd's consumer and not yet acked when it
//     is removed: the server terminates it and publishes a terminated-message
//     advisory with a limits reason. Every instance subscribes in one queue
//     group, so each advisory is counted once.
//   - A message never delivered: every Interval (and once at Start, before
//     the dispatcher consumes) the counter compares the stream's first
//     stored sequence and the consumer's delivered pointer and delivery
//     count with the previous sample (position.go). The previous sample is
//     kept in the KV bucket callbackd_state and replaced by compare-and-set,
//     so several instances, and restarts, count each expiry once.
package expiry

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callbackd/callbackd/subjects"
)

// DefaultInterval is the time between two samples when Options.Interval is
// zero.
const DefaultInterval = 5 * time.Second

// sampleTimeout bounds one sample of one stream.
const sampleTimeout = 10 * time.Second

// Observer is told of expiries, for metrics. It must be safe for concurrent
// use.
type Observer interface {
	// Expired counts n events of stream removed at its max age before
	// callbackd acked them.
	Expired(stream string, n int)
}

// Options configure Start. Every field may be left zero.
type Options struct {
	// Observer receives the counts; nil discards them (they are still
	// logged).
	Observer Observer
	// Replicas of the state bucket when Start creates it (nats.replicas);
	// 0 means 1.
	Replicas int
	// Interval between samples; 0 means DefaultInterval.
	Interval time.Duration
	// Logger receives a warning for every expiry counted; nil discards.
	Logger *slog.Logger
	// State is the state bucket, when the caller has opened it already
	// (OpenState, under retries of its own); nil: Start opens it.
	State jetstream.KeyValue
}

// watch is a stream and the consumer callbackd reads it with.
type watch struct {
	stream, consumer string
}

// watched are the streams whose max age is retention.events.
var watched = []watch{
	{subjects.Stream, subjects.DispatcherConsumer},
	{subjects.RetryStream, subjects.RetrierConsumer},
}

// Counter counts expiries until Close.
type Counter struct {
	js       jetstream.JetStream
	kv       jetstream.KeyValue
	obs      Observer
	log      *slog.Logger
	interval time.Duration
	advs     []*advisories

	// failing counts each stream's samples in a row that failed: a
	// cluster that is still forming, or a leader moving, fails one or two
	// (no responders), which is not worth a warning.
	failing   map[string]int
	failingMu sync.Mutex

	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

// warnAfter is how many samples of a stream in a row must fail before it
// is warned about (debug before that).
const warnAfter = 3

// OpenState opens, or creates, the state bucket that Start needs: a caller
// can open it under its own retries (a cluster that is still forming
// refuses a replicated bucket until enough nodes have joined) and hand it
// to Start in Options.State.
func OpenState(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	return openState(ctx, js, replicas)
}

// Start opens (or creates) the state bucket, subscribes to the advisories,
// samples each stream once and keeps sampling until ctx is done or Close.
// A failed sample is logged and tried again at the next one; only a bucket
// or subscription that cannot be made is an error.
func Start(ctx context.Context, js jetstream.JetStream, o Options) (*Counter, error) {
	c := &Counter{js: js, obs: o.Observer, log: o.Logger, interval: o.Interval, failing: map[string]int{}, done: make(chan struct{})}
	if c.obs == nil {
		c.obs = nopObserver{}
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.interval <= 0 {
		c.interval = DefaultInterval
	}
	kv := o.State
	if kv == nil {
		var err error
		if kv, err = openState(ctx, js, o.Replicas); err != nil {
			return nil, err
		}
	}
	c.kv = kv
	for _, w := range watched {
		a, err := subscribe(js.Conn(), w, c.obs)
		if err != nil {
			c.unsubscribe()
			return nil, err
		}
		c.advs = append(c.advs, a)
	}
	// Before the dispatcher consumes, so that what expired while no
	// instance ran is still above the consumer's delivered pointer.
	c.sampleAll(ctx)

	runCtx, cancel := context.WithCancel(ctx)
	c.cancel = cancel
	go func() {
		defer close(c.done)
		c.run(runCtx)
	}()
	return c, nil
}

// Close stops sampling and unsubscribes; it is safe to call more than once.
func (c *Counter) Close() {
	c.once.Do(func() {
		c.cancel()
		<-c.done
		c.unsubscribe()
		c.logAdvisories()
	})
}

func (c *Counter) unsubscribe() {
	for _, a := range c.advs {
		a.close()
	}
}

func (c *Counter) run(ctx context.Context) {
	t := time.NewTicker(c.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			c.sampleAll(ctx)
			c.logAdvisories()
		}
	}
}

// noteStream gives w's advisories its stream's creation time, max age and
// marks, which tell whether a limits termination can be an expiry
// (sample.canHaveExpired, ageCap).
func (c *Counter) noteStream(w watch, s sample, marks []mark) {
	for _, a := range c.advs {
		if a.w == w {
			a.stream.Store(&streamAge{sample: sample{StreamCreated: s.StreamCreated, MaxAge: s.MaxAge}, marks: marks})
		}
	}
}

// noteFailure counts a failed sample of stream (failed) or ends its count
// (a sample that worked); it returns the count, before it ended.
func (c *Counter) noteFailure(stream string, failed bool) int {
	c.failingMu.Lock()
	defer c.failingMu.Unlock()
	n := c.failing[stream]
	if !failed {
		delete(c.failing, stream)
		return n
	}
	c.failing[stream] = n + 1
	return n + 1
}

// sampleAll samples every watched stream, logging what fails.
func (c *Counter) sampleAll(ctx context.Context) {
	for _, w := range watched {
		sctx, cancel := context.WithTimeout(ctx, sampleTimeout)
		n, err := c.sample(sctx, w)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				n := c.noteFailure(w.stream, true)
				level := slog.LevelDebug
				if n >= warnAfter {
					level = slog.LevelWarn
				}
				c.log.Log(ctx, level, "expiry counter: sample failed; trying again at the next sample", "stream", w.stream, "failed_in_a_row", n, "err", err)
			}
			continue
		}
		if c.noteFailure(w.stream, false) >= warnAfter {
			c.log.Info("expiry counter: sampling again", "stream", w.stream)
		}
		if n > 0 {
			c.log.Warn("events expired before delivery (retention.events)", "stream", w.stream, "count", n, "state", "undelivered")
		}
	}
}

// logAdvisories logs the expiries counted from advisories since the last
// call, at most once per stream and interval.
func (c *Counter) logAdvisories() {
	for _, a := range c.advs {
		if n := a.counted.Swap(0); n > 0 {
			c.log.Warn("events expired before delivery (retention.events)", "stream", a.w.stream, "count", n, "state", "delivered, not acked")
		}
		if d, err := a.sub.Dropped(); err == nil && d > a.dropped {
			c.log.Warn("expiry counter: advisories dropped (slow consumer); the count is low", "stream", a.w.stream, "dropped", d-a.dropped)
			a.dropped = d
		}
	}
}

// sample reads stream w and its consumer, advances the shared position and
// reports the expiries it found. When another instance moved the position
// meanwhile, it reads again: the one whose update lands counts.
func (c *Counter) sample(ctx context.Context, w watch) (uint64, error) {
	const attempts = 3
	for range attempts {
		prev, rev, err := loadPosition(ctx, c.kv, w.stream)
		if err != nil {
			return 0, err
		}
		// Read after the previous position, so that this sample is newer
		// than the one it is compared with.
		s, err := read(ctx, c.js, w)
		if err != nil {
			return 0, err
		}
		next, n := advance(prev, s)
		c.noteStream(w, s, next.Marks)
		if young := !s.canHaveExpired(time.Now()); young {
			n = 0 // gaps, but nothing can be max-age old yet (canHaveExpired)
		}
		ok, err := storePosition(ctx, c.kv, w.stream, next, rev)
		if err != nil {
			return 0, err
		}
		if !ok {
			continue // another instance sampled first and counted
		}
		if n > 0 {
			c.obs.Expired(w.stream, int(n))
		}
		return n, nil
	}
	return 0, nil // other instances keep sampling; what they find they count
}

// read takes one sample: the stream first, then its consumer. In that order
// a message published or acked in between can only make the first stored
// sequence look lower than it is now, never higher (position.go).
func read(ctx context.Context, js jetstream.JetStream, w watch) (sample, error) {
	st, err := js.Stream(ctx, w.stream)
	if err != nil {
		return sample{}, fmt.Errorf("stream %s: %w", w.stream, err)
	}
	cons, err := st.Consumer(ctx, w.consumer)
	if err != nil {
		return sample{}, fmt.Errorf("consumer %s of %s: %w", w.consumer, w.stream, err)
	}
	si, ci := st.CachedInfo(), cons.CachedInfo()
	return sample{
		StreamCreated:   si.Created,
		ConsumerCreated: ci.Created,
		FirstSeq:        si.State.FirstSeq,
		Delivered:       ci.Delivered.Stream,
		Deliveries:      ci.Delivered.Consumer,
		MaxAge:          si.Config.MaxAge,
		LastSeq:         si.State.LastSeq,
		At:              time.Now(),
	}, nil
}

type nopObserver struct{}

func (nopObserver) Expired(string, int) {}
