package deliverylog_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callbackd/callbackd/deliverylog"
	"github.com/callbackd/callbackd/dispatcher"
	"github.com/callbackd/callbackd/subjects"
	"github.com/callbackd/callbackd/testutil"
)

// setup starts JetStream with callbackd's real topology.
func setup(t *testing.T) *testutil.JetStream {
	t.Helper()
	js := testutil.RunJetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := dispatcher.EnsureStreams(ctx, js.JS, dispatcher.StreamOptions{
		RetentionEvents: time.Hour, RetentionDead: time.Hour, RetentionLog: time.Hour, LogBytes: 1 << 30,
		AckWait: 40 * time.Second, MaxAckPending: 64, MaxRetryPending: 1000,
	}, testutil.Logger(t))
	if err != nil {
		t.Fatalf("ensure streams: %v", err)
	}
	return js
}

// logLen returns how many records the log holds.
func logLen(t *testing.T, js *testutil.JetStream) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.JS.Stream(ctx, subjects.LogStream)
	if err != nil {
		t.Fatal(err)
	}
	return s.CachedInfo().State.Msgs
}

// logMsgs returns every message of the log, oldest first.
func logMsgs(t *testing.T, js *testutil.JetStream) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.JS.Stream(ctx, subjects.LogStream)
	if err != nil {
		t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	st := s.CachedInfo().State
	for seq := st.FirstSeq; st.Msgs > 0 && seq <= st.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("get %d: %v", seq, err)
		}
		out = append(out, m)
	}
	return out
}

// write logs recs through a Writer and waits until the stream holds them.
func write(t *testing.T, js *testutil.JetStream, recs []deliverylog.Record) {
	t.Helper()
	w := deliverylog.NewWriter(js.JS, testutil.Logger(t), deliverylog.WriterOptions{Buffer: len(recs) + 1})
	before := logLen(t, js)
	for _, r := range recs {
		w.Write(r)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.Close(ctx); err != nil {
		t.Fatalf("close: %v", err)
	}
	if w.Dropped() != 0 || w.Failed() != 0 {
		t.Fatalf("dropped %d, failed %d", w.Dropped(), w.Failed())
	}
	testutil.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		if n := logLen(t, js); n != before+uint64(len(recs)) {
			return fmt.Errorf("log holds %d records, want %d", n, before+uint64(len(recs)))
		}
		return nil
	})
}

// mix returns n records spread over accounts 1-2, projects 10-12 and
// three outcomes; DeliveryID is the index.
func mix(n int) []deliverylog.Record {
	outcomes := []string{deliverylog.OutcomeDelivered, deliverylog.OutcomeFailed, deliverylog.OutcomeRetrying}
	var recs []deliverylog.Record
	for i := range n {
		recs = append(recs, deliverylog.Record{
			DeliveryID: fmt.Sprintf("d%05d", i),
			EventType:  "crawl_status",
			AccountID:  fmt.Sprint(1 + i%2),
			ProjectID:  fmt.Sprint(10 + i%3),
			URL:        "https://example.com/cb",
			Attempt:    1,
			StatusCode: 200,
			Outcome:    outcomes[i%len(outcomes)],
			At:         time.Now(),
		})
	}
	return recs
}

func ids(es []deliverylog.Entry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.DeliveryID)
	}
	return out
}

// queryAll pages through every record matching f, checking that the pages
// come newest first and that HasNext and EndCursor are consistent.
func queryAll(t *testing.T, r *deliverylog.Reader, f deliverylog.Filter) []deliverylog.Entry {
	t.Helper()
	ctx := testutil.Context(t)
	var all []deliverylog.Entry
	for pages := 0; ; pages++ {
		if pages > 10000 {
			t.Fatal("too many pages")
		}
		p, err := r.Query(ctx, f)
		if err != nil {
			t.Fatalf("query %+v: %v", f, err)
		}
		want := f.First
		if want == 0 {
			want = deliverylog.DefaultFirst
		}
		if p.HasNext && len(p.Records) != min(want, deliverylog.MaxFirst) {
			t.Errorf("page %d has %d records and a next page; want %d", pages, len(p.Records), min(want, deliverylog.MaxFirst))
		}
		for i, e := range p.Records {
			if i > 0 && e.Seq >= p.Records[i-1].Seq {
				t.Fatalf("page %d not newest first: seq %d after %d", pages, e.Seq, p.Records[i-1].Seq)
			}
		}
		if len(p.Records) > 0 && p.EndCursor != p.Records[len(p.Records)-1].Cursor() {
			t.Fatalf("EndCursor %q is not the last record's", p.EndCursor)
		}
		all = append(all, p.Records...)
		if !p.HasNext {
			return all
		}
		f.After = p.EndCursor
	}
}

// expect returns the delivery IDs of recs that match, newest first.
func expect(recs []deliverylog.Record, match func(deliverylog.Record) bool) []string {
	var out []string
	for i := len(recs) - 1; i >= 0; i-- {
		if match(recs[i]) {
			out = append(out, recs[i].DeliveryID)
		}
	}
	return out
}

func TestReader_finds_records_by_each_filter(t *testing.T) {
	js := setup(t)
	recs := mix(60)
	write(t, js, recs)
	r := deliverylog.NewReader(js.JS)
	tests := []struct {
		name  string
		f     deliverylog.Filter
		match func(deliverylog.Record) bool
	}{
		{"all", deliverylog.Filter{}, func(deliverylog.Record) bool { return true }},
		{"account", deliverylog.Filter{AccountID: "2"}, func(r deliverylog.Record) bool { return r.AccountID == "2" }},
		{"project", deliverylog.Filter{ProjectID: "11"}, func(r deliverylog.Record) bool { return r.ProjectID == "11" }},
		{"outcome", deliverylog.Filter{Outcome: deliverylog.OutcomeFailed}, func(r deliverylog.Record) bool { return r.Outcome == deliverylog.OutcomeFailed }},
		{"account project outcome", deliverylog.Filter{AccountID: "1", ProjectID: "12", Outcome: deliverylog.OutcomeRetrying}, func(r deliverylog.Record) bool {
			return r.AccountID == "1" && r.ProjectID == "12" && r.Outcome == deliverylog.OutcomeRetrying
		}},
		{"none", deliverylog.Filter{ProjectID: "99"}, func(deliverylog.Record) bool { return false }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.f.First = deliverylog.MaxFirst
			got := ids(queryAll(t, r, tt.f))
			if want := expect(recs, tt.match); !slices.Equal(got, want) {
				t.Errorf("got %v\nwant %v", got, want)
			}
		})
	}
}

func TestReader_pages_return_every_record_once(t *testing.T) {
	js := setup(t)
	// Project 11 is sparse at the start and dense at the end, so the
	// search for a page's start meets an uneven log.
	recs := mix(900)
	for i := 600; i < 900; i++ {
		recs[i].ProjectID = "11"
	}
	write(t, js, recs)
	r := deliverylog.NewReader(js.JS)
	for _, f := range []deliverylog.Filter{
		{First: 1},
		{First: 7},
		{First: 50},
		{First: 7, ProjectID: "11"},
		{First: 64, ProjectID: "11"},
		{First: 3, ProjectID: "10", Outcome: deliverylog.OutcomeDelivered},
		{First: 500, AccountID: "1"},
	} {
		t.Run(fmt.Sprintf("%+v", f), func(t *testing.T) {
			got := ids(queryAll(t, r, f))
			want := expect(recs, func(r deliverylog.Record) bool {
				return (f.ProjectID == "" || r.ProjectID == f.ProjectID) && (f.AccountID == "" || r.AccountID == f.AccountID) &&
					(f.Outcome == "" || r.Outcome == f.Outcome)
			})
			if !slices.Equal(got, want) {
				t.Errorf("got %d records, want %d\n got %v\nwant %v", len(got), len(want), got, want)
			}
		})
	}
}

func TestReader_first_is_capped(t *testing.T) {
	js := setup(t)
	write(t, js, mix(deliverylog.MaxFirst+20))
	r := deliverylog.NewReader(js.JS)
	p, err := r.Query(testutil.Context(t), deliverylog.Filter{First: 100000})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Records) != deliverylog.MaxFirst || !p.HasNext {
		t.Fatalf("got %d records, HasNext %v; want %d and a next page", len(p.Records), p.HasNext, deliverylog.MaxFirst)
	}
	p, err = r.Query(testutil.Context(t), deliverylog.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Records) != deliverylog.DefaultFirst {
		t.Fatalf("default page has %d records, want %d", len(p.Records), deliverylog.DefaultFirst)
	}
}

func TestReader_since(t *testing.T) {
	js := setup(t)
	old := mix(30)
	write(t, js, old)
	// The old records were stored before their acks came back, so before
	// now on the server's clock (the same machine's).
	since := time.Now()
	recent := mix(12)
	for i := range recent {
		recent[i].DeliveryID = "new" + recent[i].DeliveryID
	}
	write(t, js, recent)
	r := deliverylog.NewReader(js.JS)
	got := ids(queryAll(t, r, deliverylog.Filter{Since: since, First: 5}))
	if want := expect(recent, func(deliverylog.Record) bool { return true }); !slices.Equal(got, want) {
		t.Errorf("since: got %v, want %v", got, want)
	}
	got = ids(queryAll(t, r, deliverylog.Filter{Since: since, ProjectID: "10", First: 2}))
	if want := expect(recent, func(r deliverylog.Record) bool { return r.ProjectID == "10" }); !slices.Equal(got, want) {
		t.Errorf("since and project: got %v, want %v", got, want)
	}
	if p, err := r.Query(testutil.Context(t), deliverylog.Filter{Since: time.Now().Add(time.Hour)}); err != nil || len(p.Records) != 0 || p.HasNext {
		t.Errorf("future since: %+v, %v", p, err)
	}
}

func TestReader_rejects_bad_filters(t *testing.T) {
	js := setup(t)
	r := deliverylog.NewReader(js.JS)
	ctx := testutil.Context(t)
	for _, f := range []deliverylog.Filter{
		{ProjectID: "abc"},
		{AccountID: "1.2"},
		{AccountID: "*"},
		{Outcome: "exploded"},
	} {
		if _, err := r.Query(ctx, f); !errors.Is(err, deliverylog.ErrBadFilter) {
			t.Errorf("Query(%+v) = %v, want ErrBadFilter", f, err)
		}
	}
	if p, err := r.Query(ctx, deliverylog.Filter{After: "0"}); err != nil || len(p.Records) != 0 || p.HasNext {
		t.Errorf("After 0: %+v, %v", p, err)
	}
	for _, c := range []string{"x", "-1", "1.5", "05", "+5", " 5", "00"} {
		if _, err := r.Query(ctx, deliverylog.Filter{After: c}); !errors.Is(err, deliverylog.ErrBadCursor) {
			t.Errorf("After %q: %v, want ErrBadCursor", c, err)
		}
	}
}

func TestWriter_cleans_records(t *testing.T) {
	js := setup(t)
	long := strings.Repeat("é", 2000) + "\xff"
	write(t, js, []deliverylog.Record{
		{DeliveryID: "a", EventType: "crawl_status", AccountID: "1", ProjectID: "2",
			URL: "https://user:secret@example.com/cb?token=abc#frag", Outcome: deliverylog.OutcomeFailed,
			Error: long, ResponseExcerpt: "ok\xff" + long},
		// An invalid event whose subject did not parse has no IDs.
		{DeliveryID: "b", EventType: "", AccountID: "", ProjectID: "x.y", Outcome: deliverylog.OutcomeInvalid},
		{DeliveryID: "c", AccountID: "1", ProjectID: "2", Outcome: "not an outcome"},
	})
	msgs := logMsgs(t, js)
	var subs []string
	for _, m := range msgs {
		subs = append(subs, m.Subject)
	}
	want := []string{
		subjects.Log("1", "2", deliverylog.OutcomeFailed),
		subjects.Log(subjects.LogUnparsed, subjects.LogUnparsed, deliverylog.OutcomeInvalid),
		subjects.Log("1", "2", subjects.LogUnparsed),
	}
	if !slices.Equal(subs, want) {
		t.Fatalf("subjects %v, want %v", subs, want)
	}
	r := deliverylog.NewReader(js.JS)
	p, err := r.Query(testutil.Context(t), deliverylog.Filter{AccountID: "1", Outcome: deliverylog.OutcomeFailed})
	if err != nil || len(p.Records) != 1 {
		t.Fatalf("query: %+v, %v", p, err)
	}
	e := p.Records[0]
	if e.URL != "https://example.com/cb" {
		t.Errorf("URL %q kept userinfo, query or fragment", e.URL)
	}
	if len(e.ResponseExcerpt) > deliverylog.MaxExcerpt || !utf8.ValidString(e.ResponseExcerpt) || !strings.HasPrefix(e.ResponseExcerpt, "ok") {
		t.Errorf("excerpt: %d bytes, valid UTF-8 %v", len(e.ResponseExcerpt), utf8.ValidString(e.ResponseExcerpt))
	}
	if len(e.Error) > deliverylog.MaxError || !utf8.ValidString(e.Error) {
		t.Errorf("error: %d bytes, valid UTF-8 %v", len(e.Error), utf8.ValidString(e.Error))
	}
	if e.At.IsZero() || e.At.Location() != time.UTC {
		t.Errorf("At = %v, want a UTC time", e.At)
	}
	p, err = r.Query(testutil.Context(t), deliverylog.Filter{AccountID: subjects.LogUnparsed})
	if err != nil || len(p.Records) != 1 || p.Records[0].DeliveryID != "b" || p.Records[0].ProjectID != "x.y" {
		t.Fatalf("query of unparsed: %+v, %v", p, err)
	}
}

func TestWriter_never_blocks_when_NATS_stalls(t *testing.T) {
	js := setup(t)
	// The writer's own connection keeps trying to reconnect, so once the
	// server is gone its publishes pile up in the reconnect buffer.
	nc, err := nats.Connect(js.Server.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	wjs, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	w := deliverylog.NewWriter(wjs, testutil.Logger(t), deliverylog.WriterOptions{Buffer: 8})
	js.Server.Shutdown()
	testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if nc.IsConnected() {
			return errors.New("still connected")
		}
		return nil
	})

	const n = 2000
	start := time.Now()
	var slowest time.Duration
	for i := range n {
		t0 := time.Now()
		w.Write(deliverylog.Record{DeliveryID: fmt.Sprint(i), AccountID: "1", ProjectID: "2", Outcome: deliverylog.OutcomeDelivered})
		slowest = max(slowest, time.Since(t0))
	}
	elapsed := time.Since(start)
	// A Write that waited for NATS would take the stall time (200 ms) at
	// least once the 2 pending publishes are out; these bounds are loose
	// for a busy machine and still far below that for 2000 writes.
	if elapsed > 2*time.Second || slowest > 150*time.Millisecond {
		t.Errorf("%d writes took %s, slowest %s", n, elapsed, slowest)
	}
	if w.Dropped() == 0 {
		t.Errorf("Dropped() = 0 with a stalled publisher and a buffer of 8")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	if err := w.Close(ctx); err == nil {
		t.Errorf("Close flushed to a server that is down")
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Errorf("Close took %s past its deadline", d)
	}
	w.Write(deliverylog.Record{}) // after Close: dropped, no panic
}

func TestReader_follow_sees_new_records(t *testing.T) {
	js := setup(t)
	write(t, js, mix(6)) // history Follow must not replay
	r := deliverylog.NewReader(js.JS)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var mu sync.Mutex
	var got []deliverylog.Entry
	errc := make(chan error, 1)
	head, err := r.Head(ctx)
	if err != nil || head == "" {
		t.Fatalf("head %q, %v", head, err)
	}
	go func() {
		errc <- r.Follow(ctx, deliverylog.Filter{ProjectID: "11", After: head}, func(e deliverylog.Entry) {
			mu.Lock()
			got = append(got, e)
			mu.Unlock()
		})
	}()
	recs := mix(9)
	for i := range recs {
		recs[i].DeliveryID = "new" + recs[i].DeliveryID
	}
	write(t, js, recs)
	want := expect(recs, func(r deliverylog.Record) bool { return r.ProjectID == "11" })
	slices.Reverse(want) // Follow goes oldest first
	testutil.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if g := ids(got); !slices.Equal(g, want) {
			return fmt.Errorf("followed %v, want %v", g, want)
		}
		return nil
	})
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Follow returned %v, want context.Canceled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Follow did not return after cancel")
	}
}

func TestParseOutcome(t *testing.T) {
	for in, want := range map[string]string{"FAILED": "failed", "no-destination": "no_destination", " delivered ": "delivered", "DESTINATION_NOT_ALLOWED": "destination_not_allowed"} {
		if got, err := deliverylog.ParseOutcome(in); err != nil || got != want {
			t.Errorf("ParseOutcome(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := deliverylog.ParseOutcome("ok"); !errors.Is(err, deliverylog.ErrBadFilter) {
		t.Errorf("ParseOutcome(ok) = %v", err)
	}
}

func TestReader_pages_stay_exact_while_records_arrive(t *testing.T) {
	js := setup(t)
	recs := mix(300)
	write(t, js, recs)
	r := deliverylog.NewReader(js.JS)

	// Keep logging to the same project while paging through it.
	w := deliverylog.NewWriter(js.JS, testutil.Logger(t), deliverylog.WriterOptions{})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			w.Write(deliverylog.Record{DeliveryID: fmt.Sprintf("late%d", i), AccountID: "1", ProjectID: "10", Outcome: deliverylog.OutcomeDelivered})
			time.Sleep(time.Millisecond)
		}
	}()
	got := ids(queryAll(t, r, deliverylog.Filter{ProjectID: "10", First: 9}))
	close(stop)
	wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}

	// The first page may include records that arrived before it was read;
	// after that, every old record comes exactly once, in order.
	want := expect(recs, func(r deliverylog.Record) bool { return r.ProjectID == "10" })
	i := slices.IndexFunc(got, func(id string) bool { return !strings.HasPrefix(id, "late") })
	if i < 0 || i > 9 || !slices.Equal(got[i:], want) {
		t.Errorf("got %v\nwant late records, then %v", got, want)
	}
}
