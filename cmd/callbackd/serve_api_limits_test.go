package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callbackd/callbackd/api"
	"github.com/callbackd/callbackd/config"
	"github.com/callbackd/callbackd/subjects"
	"github.com/callbackd/callbackd/testutil"
)

// The write timeout lets the longest requests answer, a replay or a test
// callback, whatever delivery.timeout is.
func TestDefaultAdminLimits_leave_room_for_the_longest_request(t *testing.T) {
	tests := []struct {
		deliveryTimeout time.Duration
		write           time.Duration
	}{
		{5 * time.Second, api.DefaultReplayTimeout + adminReplayMargin},
		{30 * time.Second, time.Minute}, // the defaults: documented in api/README.md
		{2 * time.Minute, adminReadTimeout + 2*time.Minute + 5*time.Second + adminAnswerMargin},
	}
	for _, tt := range tests {
		t.Run(tt.deliveryTimeout.String(), func(t *testing.T) {
			cfg := config.Default()
			cfg.Delivery.Timeout = tt.deliveryTimeout
			l := defaultAdminLimits(cfg)
			if l.Write != tt.write {
				t.Errorf("write timeout %s, want %s", l.Write, tt.write)
			}
			if l.Write < l.Replay+adminReplayMargin || l.Write < l.Read+cfg.Delivery.Timeout+5*time.Second+adminAnswerMargin {
				t.Errorf("write timeout %s leaves too little after a replay (%s) or a test callback (%s)", l.Write, l.Replay, cfg.Delivery.Timeout)
			}
			if l.ReadHeader <= 0 || l.Read < l.ReadHeader || l.Idle <= 0 || l.Replay != api.DefaultReplayTimeout {
				t.Errorf("limits %+v", l)
			}
		})
	}
}

// cutOffAfter waits until the server closes conn (reading and dropping
// whatever it sends) and returns how long that took since start. It fails
// the test if the connection is still open after 30 s.
func cutOffAfter(t *testing.T, conn net.Conn, r io.Reader, start time.Time) time.Duration {
	t.Helper()
	if err := conn.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	_, err := io.Copy(io.Discard, r)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("the server still holds the connection after 30s")
	}
	return time.Since(start) // err is nil (EOF) or a reset: either way, closed
}

// A client that is slow to send its request, that stops reading the answer,
// or that keeps an idle connection, is cut off at the server's limits.
func TestAdminServer_cuts_off_slow_and_stuck_clients(t *testing.T) {
	limits := adminLimits{
		ReadHeader: 200 * time.Millisecond, Read: 400 * time.Millisecond,
		Write: 400 * time.Millisecond, Idle: 300 * time.Millisecond,
	}
	bigErr := make(chan error, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.ReadAll(r.Body); err != nil {
			http.Error(w, "cannot read request body", http.StatusBadRequest)
			return
		}
		if r.URL.Path != "/big" {
			_, _ = io.WriteString(w, "ok\n")
			return
		}
		// Far more than the socket buffers hold: the write blocks on a
		// client that does not read, until the write timeout.
		buf := make([]byte, 64<<10)
		var err error
		for n := 0; n < 1<<30 && err == nil; n += len(buf) {
			_, err = w.Write(buf)
		}
		bigErr <- err
	})
	ctx := testutil.Context(t)
	hs := newAdminServer(ctx, h, nil, limits, testutil.Logger(t))
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = hs.Serve(ln) }()
	t.Cleanup(func() { _ = hs.Close() })

	tests := []struct {
		name    string
		request string
		limit   time.Duration
		// answer reads a complete answer before the wait for the cut.
		answer bool
	}{
		{name: "headers never end", request: "POST /graphql HTTP/1.1\r\nHost: callbackd\r\nContent-Type: appl", limit: limits.ReadHeader},
		{name: "body never ends", request: "POST /graphql HTTP/1.1\r\nHost: callbackd\r\nContent-Length: 100\r\n\r\n{\"query\":", limit: limits.Read},
		{name: "idle keep-alive", request: "GET /small HTTP/1.1\r\nHost: callbackd\r\n\r\n", limit: limits.Idle, answer: true},
		{name: "stops reading", request: "GET /big HTTP/1.1\r\nHost: callbackd\r\n\r\n", limit: limits.Write},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			var d net.Dialer
			conn, err := d.DialContext(ctx, "tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := io.WriteString(conn, tt.request); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(conn)
			if tt.answer {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				if resp.StatusCode != http.StatusOK || resp.Close {
					t.Fatalf("answer: HTTP %d, close %v", resp.StatusCode, resp.Close)
				}
			}
			if strings.Contains(tt.request, "/big") {
				// The client reads nothing until the server gives up.
				select {
				case err := <-bigErr:
					if !errors.Is(err, os.ErrDeadlineExceeded) {
						t.Errorf("the answer's write failed with %v, want the write timeout", err)
					}
					if el := time.Since(start); el < tt.limit {
						t.Errorf("write cut after %s, before the write timeout %s", el, tt.limit)
					}
				case <-time.After(30 * time.Second):
					t.Fatal("the server still writes to a client that stopped reading after 30s")
				}
			}
			if el := cutOffAfter(t, conn, br, start); el < tt.limit {
				t.Errorf("cut off after %s, before the limit %s", el, tt.limit)
			}
		})
	}
}

// replayClient calls replayDeadLetters; a new connection per call, so that
// the server's idle timeout never races a request.
func replayClient(e *apiEnv, t *testing.T) *api.Client {
	t.Helper()
	tok, err := api.ReadToken(e.cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	return &api.Client{BaseURL: "http://" + e.adm.Addr.String(), Token: tok,
		HTTP: &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}}
}

// Under the server's limits, a replay of many dead letters answers within
// the write timeout every time: complete, or with the counts of what it did
// before its own time limit; run again until done, it replays every letter
// exactly once. The limits are the ones startAPI was given: a request
// whose headers never end is cut off at ReadHeader.
func TestStartAPI_replays_many_dead_letters_within_its_limits(t *testing.T) {
	limits := adminLimits{
		ReadHeader: 500 * time.Millisecond, Read: time.Second, Write: 5 * time.Second, Idle: time.Second,
		Replay: 300 * time.Millisecond,
	}
	e := startTestAPIWith(t, nil, limits)
	ctx := testutil.Context(t)

	const n = 1500
	var ids []string
	futures := make([]jetstream.PubAckFuture, 0, n)
	for i := range n {
		k := subjects.EventKey{Type: "crawl_status", AccountID: "7", ProjectID: fmt.Sprint(i + 1)}
		orig, _ := subjects.Event(k)
		id := fmt.Sprintf("d%04d", i)
		m := nats.NewMsg(subjects.DeadFor(k))
		m.Data = []byte(`{"crawl_id":1}`)
		m.Header.Set(subjects.HeaderReason, "delivery_failed")
		m.Header.Set(subjects.HeaderSubject, orig)
		m.Header.Set(subjects.HeaderDeliveryID, id)
		f, err := e.js.JS.PublishMsgAsync(m)
		if err != nil {
			t.Fatal(err)
		}
		futures = append(futures, f)
		ids = append(ids, id)
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			t.Fatal(err)
		case <-time.After(30 * time.Second):
			t.Fatal("dead letters not stored after 30s")
		}
	}

	c := replayClient(e, t)
	const rq = `mutation { replayDeadLetters(input: {reason: "delivery_failed"}) { matched replayed } }`
	replayed, partial := 0, 0
	for call := 1; replayed < n; call++ {
		if call > 100 {
			t.Fatalf("%d of %d replayed after 100 calls", replayed, n)
		}
		var out struct {
			ReplayDeadLetters struct{ Matched, Replayed int }
		}
		err := c.Do(ctx, rq, nil, &out)
		if err != nil {
			// The answer arrived (the write timeout did not cut it): it
			// must be the time limit's, with the counts.
			var gerrs api.GraphQLErrors
			if !errors.As(err, &gerrs) || gerrs[0].Extensions["code"] != "REPLAY_INCOMPLETE" || !strings.Contains(gerrs[0].Message, "time limit") {
				t.Fatalf("call %d: %v", call, err)
			}
			partial++
		}
		got := out.ReplayDeadLetters
		if got.Matched != n-replayed && !(err != nil && got.Replayed == 0) { // a count cut short counted less
			t.Errorf("call %d: matched %d, want %d", call, got.Matched, n-replayed)
		}
		replayed += got.Replayed
		if left := testutil.StreamLen(t, e.js.JS, subjects.DeadStream); left != uint64(n-replayed) {
			t.Fatalf("call %d reports %d replayed in all, but CALLBACKS_DEAD holds %d of %d", call, replayed, left, n)
		}
	}
	t.Logf("%d dead letters replayed, %d answers partial", n, partial)
	var got []string
	for _, m := range testutil.StreamMsgs(t, e.js.JS, subjects.Stream) {
		got = append(got, m.Header.Get(subjects.HeaderDeliveryID))
	}
	slices.Sort(got)
	if !slices.Equal(got, ids) {
		t.Errorf("CALLBACKS holds %d events, want each of the %d dead letters once", len(got), n)
	}

	// The server runs with these limits.
	start := time.Now()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", e.adm.Addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "POST /graphql HTTP/1.1\r\nHost: callbackd\r\n"); err != nil {
		t.Fatal(err)
	}
	if el := cutOffAfter(t, conn, conn, start); el < limits.ReadHeader {
		t.Errorf("cut off after %s, before ReadHeader %s", el, limits.ReadHeader)
	}
}
