package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callbackd/callbackd/testutil"
)

func TestPullShares_never_pull_more_than_workers_ahead(t *testing.T) {
	tests := []struct{ workers, loops, batch int }{
		{1, 1, 1},
		{2, 2, 1},
		{3, 2, 1},
		{64, 2, 32},
		{65, 2, 32},
	}
	for _, tt := range tests {
		loops, batch := pullShares(tt.workers)
		if loops != tt.loops || batch != tt.batch {
			t.Errorf("pullShares(%d) = %d loops × %d, want %d × %d", tt.workers, loops, batch, tt.loops, tt.batch)
		}
		if loops*batch > tt.workers {
			t.Errorf("pullShares(%d): %d × %d pulled ahead", tt.workers, loops, batch)
		}
	}
}

func TestParseAckSubject(t *testing.T) {
	ts := time.Unix(0, 1764420000123456789)
	tests := []struct {
		name    string
		subject string
		want    jetstream.MsgMetadata
	}{
		{"v1", "$JS.ACK.CALLBACKS.dispatcher.2.17.5.1764420000123456789.40", jetstream.MsgMetadata{
			Stream: "CALLBACKS", Consumer: "dispatcher", NumDelivered: 2, NumPending: 40, Timestamp: ts,
			Sequence: jetstream.SequencePair{Stream: 17, Consumer: 5},
		}},
		{"v2, no domain", "$JS.ACK._.ACCHASH.CALLBACKS.dispatcher.1.3.3.1764420000123456789.0.rand", jetstream.MsgMetadata{
			Stream: "CALLBACKS", Consumer: "dispatcher", NumDelivered: 1, Timestamp: ts,
			Sequence: jetstream.SequencePair{Stream: 3, Consumer: 3},
		}},
		{"v2 with a domain, 11 tokens", "$JS.ACK.edge.ACCHASH.S.c.1.3.4.1764420000123456789.9", jetstream.MsgMetadata{
			Domain: "edge", Stream: "S", Consumer: "c", NumDelivered: 1, NumPending: 9, Timestamp: ts,
			Sequence: jetstream.SequencePair{Stream: 3, Consumer: 4},
		}},
		{"v2, tokens after the random one", "$JS.ACK._.H.S.c.1.3.4.1764420000123456789.9.r.x", jetstream.MsgMetadata{
			Stream: "S", Consumer: "c", NumDelivered: 1, NumPending: 9, Timestamp: ts,
			Sequence: jetstream.SequencePair{Stream: 3, Consumer: 4},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got jetstream.MsgMetadata
			if err := parseAckSubject(tt.subject, &got); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("metadata (-want +got):\n%s", diff)
			}
		})
	}
	for _, bad := range []string{
		"", "$JS.ACK", "$JS.ACK.", "_INBOX.abc", "$JS.ACKS.S.c.1.2.3.4.5",
		"$JS.ACK.S.c.1.2.3.4",      // 8 tokens
		"$JS.ACK.S.c.1.2.3.4.5.6",  // 10
		"$JS.ACK.S.c.x.2.3.4.5",    // not a number
		"$JS.ACK.S.c.1.2.3.4.-5",   // negative
		"$JS.ACK._.H.S.c.1.2.3.4.", // empty pending
	} {
		var md jetstream.MsgMetadata
		if err := parseAckSubject(bad, &md); !errors.Is(err, jetstream.ErrNotJSMessage) {
			t.Errorf("parseAckSubject(%q) = %v, want ErrNotJSMessage", bad, err)
		}
	}
}

// FuzzParseAckSubject holds parseAckSubject to nats.go's own reading of a
// reply subject wherever that one succeeds with well-formed numbers.
func FuzzParseAckSubject(f *testing.F) {
	f.Add("$JS.ACK.CALLBACKS.dispatcher.2.17.5.1764420000123456789.40")
	f.Add("$JS.ACK._.ACCHASH.CALLBACKS.dispatcher.1.3.3.1764420000123456789.0.rand")
	f.Add("$JS.ACK.edge.H.S.c.1.3.4.5.9")
	f.Add("$JS.ACK.S.c.x.2.3.4.5")
	f.Fuzz(func(t *testing.T, subject string) {
		var got jetstream.MsgMetadata
		err := parseAckSubject(subject, &got)
		ref, refErr := (&nats.Msg{Reply: subject, Sub: &nats.Subscription{}}).Metadata()
		if refErr != nil {
			if err == nil {
				t.Fatalf("parseAckSubject(%q) accepted what nats.go refuses: %v", subject, refErr)
			}
			return
		}
		if err != nil {
			return // nats.go reads a bad number as 0; this refuses it
		}
		want := jetstream.MsgMetadata{
			Sequence:     jetstream.SequencePair{Stream: ref.Sequence.Stream, Consumer: ref.Sequence.Consumer},
			NumDelivered: ref.NumDelivered, NumPending: ref.NumPending, Timestamp: ref.Timestamp,
			Stream: ref.Stream, Consumer: ref.Consumer, Domain: ref.Domain,
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("parseAckSubject(%q) (-nats.go +got):\n%s", subject, diff)
		}
	})
}

// pullFixture is a work-queue stream with n messages and a pull consumer.
func pullFixture(t *testing.T, n int, cfg jetstream.ConsumerConfig) (*testutil.JetStream, jetstream.Consumer) {
	t.Helper()
	js := testutil.RunJetStream(t)
	ctx := testutil.Context(t)
	if _, err := js.JS.CreateStream(ctx, jetstream.StreamConfig{Name: "P", Subjects: []string{"p.>"}, Retention: jetstream.WorkQueuePolicy}); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if _, err := js.JS.Publish(ctx, fmt.Sprintf("p.%d", i), []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	cfg.Durable = "c"
	cfg.AckPolicy = jetstream.AckExplicitPolicy
	c, err := js.JS.CreateConsumer(ctx, "P", cfg)
	if err != nil {
		t.Fatal(err)
	}
	return js, c
}

func TestPuller_hands_out_a_batch_with_its_metadata_and_acks(t *testing.T) {
	js, c := pullFixture(t, 5, jetstream.ConsumerConfig{})
	ctx := testutil.Context(t)
	// A request held 5 s: a batch that did not end the pull would show.
	p, err := newPuller(js.JS, c, 3, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer p.close(func(jetstream.Msg) {})

	var got []jetstream.Msg
	start := time.Now()
	if err := p.pull(ctx, func(m jetstream.Msg) { got = append(got, m) }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("pull handed out %d messages, want the batch of 3", len(got))
	}
	if wait := time.Since(start); wait > 3*time.Second {
		t.Errorf("a complete batch ended the pull after %s, not at once", wait)
	}
	for i, m := range got {
		md, err := m.Metadata()
		if err != nil {
			t.Fatal(err)
		}
		if md.Stream != "P" || md.Consumer != "c" || md.Sequence.Stream != uint64(i+1) || md.NumDelivered != 1 {
			t.Errorf("message %d: metadata %+v", i, md)
		}
		if m.Subject() != fmt.Sprintf("p.%d", i) || string(m.Data()) != fmt.Sprint(i) {
			t.Errorf("message %d: %s %q", i, m.Subject(), m.Data())
		}
		if err := m.Ack(); err != nil {
			t.Fatal(err)
		}
		if err := m.Ack(); !errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
			t.Errorf("second ack: %v, want ErrMsgAlreadyAckd", err)
		}
	}
	// The acks reached the server: the work queue keeps the other two.
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		info, err := c.Info(ctx)
		if err != nil {
			return err
		}
		if info.NumAckPending != 0 || info.NumPending != 2 {
			return fmt.Errorf("ack pending %d, pending %d", info.NumAckPending, info.NumPending)
		}
		return nil
	})
}

func TestPuller_an_empty_consumer_ends_the_pull_at_its_expiry(t *testing.T) {
	js, c := pullFixture(t, 0, jetstream.ConsumerConfig{})
	ctx := testutil.Context(t)
	const expires = 300 * time.Millisecond
	p, err := newPuller(js.JS, c, 4, expires)
	if err != nil {
		t.Fatal(err)
	}
	defer p.close(func(jetstream.Msg) {})
	start := time.Now()
	n := 0
	if err := p.pull(ctx, func(jetstream.Msg) { n++ }); err != nil {
		t.Fatal(err)
	}
	// Ended by the server's 408, not by the puller's own expiry + 1 s.
	if wait := time.Since(start); wait < expires || wait > expires+900*time.Millisecond {
		t.Errorf("pull ended after %s, want the server's timeout at %s", wait, expires)
	}
	if n != 0 {
		t.Errorf("%d messages from an empty stream", n)
	}
	// The next request is answered as usual.
	if _, err := js.JS.Publish(ctx, "p.x", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := p.pull(ctx, func(m jetstream.Msg) { n++; _ = m.Ack() }); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("second pull handed out %d messages, want 1", n)
	}
}

func TestPuller_a_refused_request_is_an_error(t *testing.T) {
	js, c := pullFixture(t, 1, jetstream.ConsumerConfig{MaxRequestBatch: 1})
	p, err := newPuller(js.JS, c, 2, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer p.close(func(jetstream.Msg) {})
	err = p.pull(testutil.Context(t), func(jetstream.Msg) { t.Error("a refused request handed out a message") })
	if !errors.Is(err, errPullStatus) {
		t.Fatalf("pull = %v, want errPullStatus", err)
	}
	t.Log(err)
}

func TestPuller_nak_with_delay_and_term(t *testing.T) {
	js, c := pullFixture(t, 2, jetstream.ConsumerConfig{})
	ctx := testutil.Context(t)
	p, err := newPuller(js.JS, c, 2, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer p.close(func(jetstream.Msg) {})
	var got []jetstream.Msg
	if err := p.pull(ctx, func(m jetstream.Msg) { got = append(got, m) }); err != nil || len(got) != 2 {
		t.Fatalf("pull: %d messages, %v", len(got), err)
	}
	if err := got[0].Term(); err != nil {
		t.Fatal(err)
	}
	const delay = 300 * time.Millisecond
	naked := time.Now()
	if err := got[1].NakWithDelay(delay); err != nil {
		t.Fatal(err)
	}
	// Only the NAKed message comes back, once its delay has passed, as a
	// second delivery.
	var again []jetstream.Msg
	for len(again) == 0 {
		if err := p.pull(ctx, func(m jetstream.Msg) { again = append(again, m) }); err != nil {
			t.Fatal(err)
		}
	}
	if since := time.Since(naked); since < delay {
		t.Errorf("redelivered %s after the NAK, before its %s delay", since, delay)
	}
	md, err := again[0].Metadata()
	if err != nil {
		t.Fatal(err)
	}
	if len(again) != 1 || md.Sequence.Stream != 2 || md.NumDelivered != 2 {
		t.Errorf("redelivered %d messages, first %+v; want stream sequence 2, delivery 2", len(again), md)
	}
}

func TestPuller_close_hands_back_what_was_delivered_but_not_handed_out(t *testing.T) {
	js, c := pullFixture(t, 3, jetstream.ConsumerConfig{})
	ctx := testutil.Context(t)
	p, err := newPuller(js.JS, c, 3, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// A request whose messages nobody reads, as at shutdown.
	if err := p.nc.PublishRequest(p.next, p.prefix+"0", p.req); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if n := len(p.msgs); n < 3 {
			return fmt.Errorf("%d of 3 messages delivered", n)
		}
		return nil
	})
	var back []jetstream.Msg
	p.close(func(m jetstream.Msg) { back = append(back, m); _ = m.NakWithDelay(time.Millisecond) })
	if len(back) != 3 {
		t.Fatalf("close handed back %d messages, want 3", len(back))
	}
	// They are available again at once, not after the ack wait.
	c2, err := js.JS.Consumer(ctx, "P", "c")
	if err != nil {
		t.Fatal(err)
	}
	b, err := c2.Fetch(3, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for m := range b.Messages() {
		n++
		_ = m.Ack()
	}
	if n != 3 {
		t.Errorf("fetched %d handed-back messages, want 3", n)
	}
}

// Messages the server sent a request that was still outstanding when the
// puller closed (a shutdown) are handed back too, even those still on
// their way: none is left pending until its ack wait.
func TestPuller_close_leaves_nothing_pending(t *testing.T) {
	js, c := pullFixture(t, 0, jetstream.ConsumerConfig{AckWait: time.Minute})
	for round := range 5 {
		p, err := newPuller(js.JS, c, 64, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		// An outstanding request, and messages arriving for it while the
		// puller closes.
		if err := p.nc.PublishRequest(p.next, p.prefix+"0", p.req); err != nil {
			t.Fatal(err)
		}
		if err := p.nc.Flush(); err != nil {
			t.Fatal(err)
		}
		const n = 20
		for i := range n {
			if _, err := js.JS.PublishAsync(fmt.Sprintf("p.%d.%d", round, i), []byte("x")); err != nil {
				t.Fatal(err)
			}
		}
		back := 0
		p.close(func(m jetstream.Msg) { back++; _ = m.NakWithDelay(time.Millisecond) })
		waitPublished(t, js)
		// Every message can be had again well before its ack wait.
		got := fetchAll(t, c, n)
		if got != n {
			t.Fatalf("round %d: %d of %d messages available after close (%d handed back); the rest wait for the ack wait", round, got, n, back)
		}
	}
}

// fetchAll fetches and acks up to n messages of c, for 5 s at most (well
// under the fixtures' ack wait), and returns how many it got.
func fetchAll(t *testing.T, c jetstream.Consumer, n int) int {
	t.Helper()
	got := 0
	deadline := time.Now().Add(5 * time.Second)
	for got < n && time.Now().Before(deadline) {
		b, err := c.Fetch(n, jetstream.FetchMaxWait(500*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		for m := range b.Messages() {
			got++
			_ = m.Ack()
		}
	}
	return got
}

// A pull stopped mid-request (a shutdown) leaves its request open; close
// waits for it to end, handing back what it still brings, so that nothing
// the server queued for it is lost to the ack wait.
func TestPuller_close_after_a_stopped_pull_leaves_nothing_pending(t *testing.T) {
	js, c := pullFixture(t, 0, jetstream.ConsumerConfig{AckWait: time.Minute})
	for round := range 10 {
		p, err := newPuller(js.JS, c, 64, 500*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		nakIt := func(m jetstream.Msg) { _ = m.NakWithDelay(time.Millisecond) }
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := make(chan error, 1)
		go func() { done <- p.pull(ctx, nakIt) }()
		const n = 20
		for i := range n {
			if _, err := js.JS.PublishAsync(fmt.Sprintf("p.%d.%d", round, i), []byte("x")); err != nil {
				t.Fatal(err)
			}
			if i == n/2 {
				cancel() // the shutdown, while messages are on their way
			}
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if !p.open {
			t.Log("the request ended before the stop; this round shows less")
		}
		p.close(nakIt)
		waitPublished(t, js)
		got := fetchAll(t, c, n)
		if got != n {
			t.Fatalf("round %d: %d of %d messages available after close; the rest wait for the ack wait", round, got, n)
		}
	}
}

// A message of the stream that looks like a server status — no payload, a
// Status header — is handed out like any other: only the server's own
// status messages, which come without a reply subject, end a request.
func TestPuller_an_empty_message_with_a_Status_header_is_a_message(t *testing.T) {
	js, c := pullFixture(t, 0, jetstream.ConsumerConfig{})
	ctx := testutil.Context(t)
	statuses := []string{"100", "404", "408", "409", "503"}
	for _, st := range statuses {
		m := nats.NewMsg("p." + st)
		m.Header.Set("Status", st)
		m.Header.Set("Description", "from a publisher")
		if _, err := js.JS.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	p, err := newPuller(js.JS, c, len(statuses), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer p.close(func(jetstream.Msg) {})
	var got []string
	if err := p.pull(ctx, func(m jetstream.Msg) {
		got = append(got, m.Subject())
		if err := m.Term(); err != nil {
			t.Error(err)
		}
	}); err != nil {
		t.Fatalf("pull = %v, want the messages handed out", err)
	}
	want := []string{"p.100", "p.404", "p.408", "p.409", "p.503"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("handed out (-want +got):\n%s", diff)
	}
}

// waitPublished waits until js's asynchronous publishes are acknowledged.
func waitPublished(t *testing.T, js *testutil.JetStream) {
	t.Helper()
	select {
	case <-js.JS.PublishAsyncComplete():
	case <-time.After(10 * time.Second):
		t.Fatal("publishes not acknowledged")
	}
}
