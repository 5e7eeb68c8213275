package expiry

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callbackd/callbackd/dispatcher"
	"github.com/callbackd/callbackd/subjects"
	"github.com/callbackd/callbackd/testutil"
)

// maxAge is retention.events in these tests: long enough for a loaded
// machine to fetch what it just published, short enough to wait for.
const maxAge = 2 * time.Second

// slowAge is retention.events where a test must settle its messages before
// any can expire.
const slowAge = 5 * time.Second

// wait bounds every poll.
const wait = 30 * time.Second

// never is an Interval that leaves sampling to the test (Start's sample and
// sampleAll).
const never = time.Hour

// counts is an Observer that remembers.
type counts struct {
	mu sync.Mutex
	m  map[string]int
}

func (c *counts) Expired(stream string, n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]int{}
	}
	c.m[stream] += n
}

func (c *counts) get(stream string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[stream]
}

// streams makes callbackd's streams with max age age, as serve does.
func streams(t *testing.T, age time.Duration) (*testutil.JetStream, dispatcher.Topology) {
	t.Helper()
	j := testutil.RunJetStream(t)
	top, err := dispatcher.EnsureStreams(testutil.Context(t), j.JS, dispatcher.StreamOptions{
		Duplicates:      age / 2, // the window may not exceed the max age
		RetentionEvents: age,
		RetentionDead:   time.Hour,
		RetentionLog:    time.Hour,
		AckWait:         time.Minute,
		MaxAckPending:   64,
		MaxRetryPending: 64,
	}, testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	return j, top
}

func start(t *testing.T, js jetstream.JetStream, obs Observer) *Counter {
	t.Helper()
	c, err := Start(testutil.Context(t), js, Options{Observer: obs, Interval: never, Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func publish(t *testing.T, js jetstream.JetStream, subject string, n int) {
	t.Helper()
	for i := range n {
		if _, err := js.Publish(testutil.Context(t), subject, fmt.Appendf(nil, `{"crawl_id":%d}`, i+1)); err != nil {
			t.Fatal(err)
		}
	}
}

const (
	eventSubject = "callbacks.event.crawl_status.1.2"
	retrySubject = "callbacks.retry.event.crawl_status.1.2"
)

// fetch pulls up to n messages from cons, fewer if they expire first.
func fetch(t *testing.T, cons jetstream.Consumer, n int) []jetstream.Msg {
	t.Helper()
	var got []jetstream.Msg
	deadline := time.Now().Add(maxAge / 2)
	for len(got) < n && time.Now().Before(deadline) {
		b, err := cons.Fetch(n-len(got), jetstream.FetchMaxWait(100*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		for m := range b.Messages() {
			got = append(got, m)
		}
	}
	if len(got) == 0 {
		t.Fatalf("fetched none of %d messages before they expired", n)
	}
	return got
}

func waitCount(t *testing.T, c *counts, stream string, want int) {
	t.Helper()
	testutil.CheckFor(t, wait, 20*time.Millisecond, func() error {
		if got := c.get(stream); got != want {
			return fmt.Errorf("%s: %d expiries counted, want %d", stream, got, want)
		}
		return nil
	})
}

func TestCounter_counts_events_that_expired_undelivered_before_start(t *testing.T) {
	t.Parallel()
	j, _ := streams(t, maxAge)
	publish(t, j.JS, eventSubject, 7)
	publish(t, j.JS, retrySubject, 3)
	testutil.WaitStreamEmpty(t, j.JS, subjects.Stream, wait)
	testutil.WaitStreamEmpty(t, j.JS, subjects.RetryStream, wait)

	var obs counts
	start(t, j.JS, &obs) // Start samples before it returns
	if got := obs.get(subjects.Stream); got != 7 {
		t.Errorf("CALLBACKS: %d expiries counted, want 7", got)
	}
	if got := obs.get(subjects.RetryStream); got != 3 {
		t.Errorf("CALLBACKS_RETRY: %d expiries counted, want 3", got)
	}
}

func TestCounter_counts_delivered_unacked_events_through_advisories(t *testing.T) {
	t.Parallel()
	j, top := streams(t, maxAge)
	var obs counts
	start(t, j.JS, &obs) // no sample after this one: only advisories count
	publish(t, j.JS, eventSubject, 5)
	publish(t, j.JS, retrySubject, 4)
	delivered := len(fetch(t, top.Dispatcher, 5))
	retried := len(fetch(t, top.Retrier, 4))
	testutil.WaitStreamEmpty(t, j.JS, subjects.Stream, wait)
	testutil.WaitStreamEmpty(t, j.JS, subjects.RetryStream, wait)
	waitCount(t, &obs, subjects.Stream, delivered)
	waitCount(t, &obs, subjects.RetryStream, retried)
}

func TestCounter_never_counts_acked_or_terminated_events(t *testing.T) {
	t.Parallel()
	j, top := streams(t, slowAge)
	var obs counts
	c := start(t, j.JS, &obs)
	publish(t, j.JS, eventSubject, 6)
	msgs := fetch(t, top.Dispatcher, 6)
	if len(msgs) != 6 {
		t.Fatalf("fetched %d of 6 messages", len(msgs))
	}
	for i, m := range msgs {
		var err error
		if i%2 == 0 {
			err = m.DoubleAck(testutil.Context(t))
		} else {
			err = m.Term() // callbackd's own Term: an advisory without a limits reason
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	testutil.WaitStreamEmpty(t, j.JS, subjects.Stream, wait)
	c.sampleAll(testutil.Context(t))
	// Advisories come in order: once the advisory of one message left
	// pending to expire is counted, the Terms' advisories have been seen.
	publish(t, j.JS, eventSubject, 1)
	fetch(t, top.Dispatcher, 1)
	testutil.WaitStreamEmpty(t, j.JS, subjects.Stream, wait)
	waitCount(t, &obs, subjects.Stream, 1)
	c.sampleAll(testutil.Context(t))
	if got := obs.get(subjects.Stream); got != 1 {
		t.Fatalf("%d expiries counted, want 1", got)
	}
}

func TestCounter_counts_expiries_the_consumer_passed_over(t *testing.T) {
	t.Parallel()
	j, top := streams(t, maxAge)
	var obs counts
	c := start(t, j.JS, &obs)
	publish(t, j.JS, eventSubject, 5)
	testutil.WaitStreamEmpty(t, j.JS, subjects.Stream, wait)
	// Fresh events after the gap: fetching them moves the delivered pointer
	// past the expired five before the next sample.
	publish(t, j.JS, eventSubject, 3)
	acked := 0
	for _, m := range fetch(t, top.Dispatcher, 3) {
		if m.DoubleAck(testutil.Context(t)) == nil {
			acked++
		}
	}
	testutil.WaitStreamEmpty(t, j.JS, subjects.Stream, wait)
	c.sampleAll(testutil.Context(t))
	waitCount(t, &obs, subjects.Stream, 5+3-acked)
}

func TestCounter_instances_and_restarts_count_each_expiry_once(t *testing.T) {
	t.Parallel()
	j, top := streams(t, maxAge)
	nc2, err := j.Server.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc2.Close)
	js2, err := jetstream.New(nc2)
	if err != nil {
		t.Fatal(err)
	}
	var a, b counts
	ca := start(t, j.JS, &a)
	cb := start(t, js2, &b)
	total := func() int { return a.get(subjects.Stream) + b.get(subjects.Stream) }

	publish(t, j.JS, eventSubject, 9)
	delivered := len(fetch(t, top.Dispatcher, 4)) // the rest stays undelivered
	testutil.WaitStreamEmpty(t, j.JS, subjects.Stream, wait)
	var wg sync.WaitGroup
	for _, c := range []*Counter{ca, cb, ca, cb} {
		wg.Go(func() { c.sampleAll(testutil.Context(t)) })
	}
	wg.Wait()
	testutil.CheckFor(t, wait, 20*time.Millisecond, func() error {
		if total() != 9 {
			return fmt.Errorf("%d + %d expiries counted, want 9 (%d delivered)", a.get(subjects.Stream), b.get(subjects.Stream), delivered)
		}
		return nil
	})

	ca.Close()
	var again counts
	start(t, j.JS, &again)
	if got := again.get(subjects.Stream); got != 0 {
		t.Fatalf("a restarted counter counted %d expiries again", got)
	}
	if total() != 9 {
		t.Fatalf("%d + %d expiries counted, want 9", a.get(subjects.Stream), b.get(subjects.Stream))
	}
}

func TestCounter_samples_every_interval_and_closes(t *testing.T) {
	t.Parallel()
	j, _ := streams(t, maxAge)
	var obs counts
	c, err := Start(testutil.Context(t), j.JS, Options{Observer: &obs, Interval: 50 * time.Millisecond, Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	publish(t, j.JS, eventSubject, 2)
	waitCount(t, &obs, subjects.Stream, 2)
	c.Close()
	c.Close() // twice is fine
}

// What only looks like an expiry is not counted while the stream is younger
// than its max age: after a kill -9 the server recovers its consumer's state
// from before the last acks, terminates messages the work queue had already
// removed with a limits reason, and leaves a gap below the first stored
// sequence.
func TestAdvisories_expiry_needs_a_stream_as_old_as_its_max_age(t *testing.T) {
	created := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	unacked := []byte(`{"type":"io.nats.jetstream.advisory.v1.terminated","reason":"Unacknowledged message was deleted"}`)
	limits := []byte(`{"reason":"Message deleted by stream limits"}`)
	ownTerm := []byte(`{"reason":""}`)
	// Sequences 1-100 stored an hour before created+2h, 101-200 after.
	marks := []mark{{At: created.Add(time.Hour), Seq: 100}, {At: created.Add(90 * time.Minute), Seq: 200}}
	withMarks := func(seq uint64) []byte {
		return []byte(fmt.Sprintf(`{"reason":"Message deleted by stream limits","stream_seq":%d}`, seq))
	}
	for _, tc := range []struct {
		name   string
		stream *sample // nil: not sampled yet
		data   []byte
		at     time.Time
		want   bool
		marks  []mark
	}{
		{"old enough message", &sample{StreamCreated: created, MaxAge: time.Hour}, withMarks(100), created.Add(2 * time.Hour), true, marks},
		{"message younger than max age (a kill -9's recovery)", &sample{StreamCreated: created, MaxAge: time.Hour}, withMarks(101), created.Add(2 * time.Hour), false, marks},
		{"no mark within max age: any message", &sample{StreamCreated: created, MaxAge: time.Hour}, withMarks(500), created.Add(5 * time.Hour), true, marks},
		{"not sampled yet", nil, unacked, created, true, nil},
		{"old enough", &sample{StreamCreated: created, MaxAge: time.Hour}, unacked, created.Add(time.Hour), true, nil},
		{"old enough, limits", &sample{StreamCreated: created, MaxAge: time.Hour}, limits, created.Add(2 * time.Hour), true, nil},
		{"younger than max age", &sample{StreamCreated: created, MaxAge: time.Hour}, unacked, created.Add(59 * time.Minute), false, nil},
		{"younger, limits", &sample{StreamCreated: created, MaxAge: 168 * time.Hour}, limits, created.Add(time.Minute), false, nil},
		{"no max age", &sample{StreamCreated: created}, unacked, created.Add(1000 * time.Hour), false, nil},
		{"callbackd's own Term", &sample{StreamCreated: created, MaxAge: time.Hour}, ownTerm, created.Add(2 * time.Hour), false, nil},
		{"not JSON", &sample{StreamCreated: created, MaxAge: time.Hour}, []byte("x"), created.Add(2 * time.Hour), false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var a advisories
			if tc.stream != nil {
				a.stream.Store(&streamAge{sample: *tc.stream, marks: tc.marks})
			}
			if got := a.expiry(tc.data, tc.at); got != tc.want {
				t.Errorf("expiry = %v, want %v", got, tc.want)
			}
		})
	}
}

// A gap below the first stored sequence of a stream younger than its max
// age (messages deleted, as a recovered consumer state shows acked ones) is
// not counted; the position still moves past it, so it is never counted
// later either.
func TestCounter_young_stream_counts_no_gap(t *testing.T) {
	t.Parallel()
	j, _ := streams(t, time.Hour)
	var obs counts
	c := start(t, j.JS, &obs)
	publish(t, j.JS, eventSubject, 5)
	st, err := j.JS.Stream(testutil.Context(t), subjects.Stream)
	if err != nil {
		t.Fatal(err)
	}
	for seq := uint64(1); seq <= 5; seq++ {
		if err := st.DeleteMsg(testutil.Context(t), seq); err != nil {
			t.Fatal(err)
		}
	}
	c.sampleAll(testutil.Context(t))
	if got := obs.get(subjects.Stream); got != 0 {
		t.Errorf("CALLBACKS: %d expiries counted on a stream younger than its max age, want 0", got)
	}
	p, _, err := loadPosition(testutil.Context(t), c.kv, subjects.Stream)
	if err != nil || p == nil || p.Frontier < 5 {
		t.Errorf("position %+v, %v: want the frontier past the gap (5)", p, err)
	}
}

// OpenState makes the state bucket once and finds it after; Start then
// uses the same bucket.
func TestOpenState_makes_the_bucket_once(t *testing.T) {
	j := testutil.RunJetStream(t)
	ctx := testutil.Context(t)
	for range 2 {
		if _, err := OpenState(ctx, j.JS, 1); err != nil {
			t.Fatal(err)
		}
	}
	kv, err := j.JS.KeyValue(ctx, subjects.StateBucket)
	if err != nil {
		t.Fatalf("state bucket after OpenState: %v", err)
	}
	if st, err := kv.Status(ctx); err != nil || st.History() != 1 {
		t.Errorf("state bucket status %v, %v; want history 1", st, err)
	}
}

// A sample that fails once or twice (a cluster forming, a leader moving) is
// a debug line; the third in a row is a warning, and the first sample that
// works again says so.
func TestCounter_warns_only_of_samples_that_keep_failing(t *testing.T) {
	t.Parallel()
	j := testutil.RunJetStream(t) // no streams yet: every sample fails
	var logs testutil.SyncBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c, err := Start(testutil.Context(t), j.JS, Options{Interval: 20 * time.Millisecond, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	testutil.CheckFor(t, wait, 10*time.Millisecond, func() error {
		if !strings.Contains(logs.String(), "failed_in_a_row=3") {
			return fmt.Errorf("no third failure yet")
		}
		return nil
	})
	for _, line := range strings.Split(logs.String(), "\n") {
		if !strings.Contains(line, "stream="+subjects.Stream+" ") {
			continue
		}
		warn := strings.Contains(line, "level=WARN")
		switch {
		case strings.Contains(line, "failed_in_a_row=1"), strings.Contains(line, "failed_in_a_row=2"):
			if warn {
				t.Errorf("warned at once: %s", line)
			}
		case strings.Contains(line, "failed_in_a_row=3"):
			if !warn {
				t.Errorf("not warned on the third failure in a row: %s", line)
			}
		}
	}
	if _, err := dispatcher.EnsureStreams(testutil.Context(t), j.JS, dispatcher.StreamOptions{
		RetentionEvents: time.Hour, AckWait: time.Minute, MaxAckPending: 64, MaxRetryPending: 64,
	}, testutil.Logger(t)); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, wait, 10*time.Millisecond, func() error {
		if !strings.Contains(logs.String(), "expiry counter: sampling again") {
			return fmt.Errorf("no line for the sample that worked again")
		}
		return nil
	})
}
