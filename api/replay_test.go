package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callbackd/callbackd/api"
	"github.com/callbackd/callbackd/deadletters"
	"github.com/callbackd/callbackd/dispatcher"
	"github.com/callbackd/callbackd/subjects"
	"github.com/callbackd/callbackd/testutil"
)

// interruptFunc sees a replay's progress: ctx is the replay's context and
// cancel cancels it.
type interruptFunc func(ctx context.Context, cancel context.CancelFunc, done int)

// newReplayHarness is the API with callbackd's streams, n dead letters
// (delivery ids d00, d01, …, oldest first) and a Replayer that runs
// deadletters.Replay as serve does, showing its progress to *interrupt
// when set.
func newReplayHarness(t *testing.T, n int, replayTimeout time.Duration, interrupt *atomic.Pointer[interruptFunc]) (*harness, []string) {
	t.Helper()
	var js atomic.Pointer[testutil.JetStream] // the harness's, once it runs
	h := newHarness(t, func(o *api.Options) {
		o.ReplayTimeout = replayTimeout
		o.Replayer = api.ReplayerFunc(func(ctx context.Context, f api.ReplayFilter) (api.ReplayResult, error) {
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			var progress func(done, total int)
			if fn := interrupt.Load(); fn != nil {
				progress = func(done, _ int) { (*fn)(ctx, cancel, done) }
			}
			res, err := deadletters.Replay(ctx, js.Load().JS, deadletters.Filter{DryRun: f.DryRun}, progress)
			return api.ReplayResult{Matched: res.Matched, Replayed: res.Replayed}, err
		})
	})
	js.Store(h.js)
	ctx := testutil.Context(t)
	if _, err := dispatcher.EnsureStreams(ctx, h.js.JS, dispatcher.StreamOptions{
		RetentionEvents: time.Hour, RetentionDead: time.Hour, RetentionLog: time.Hour, LogBytes: 1 << 30,
		AckWait: 40 * time.Second, MaxAckPending: 64, MaxRetryPending: 1000,
	}, testutil.Logger(t)); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := range n {
		k := subjects.EventKey{Type: "crawl_status", AccountID: "7", ProjectID: fmt.Sprint(i + 1)}
		orig, _ := subjects.Event(k)
		id := fmt.Sprintf("d%02d", i)
		m := nats.NewMsg(subjects.DeadFor(k))
		m.Data = []byte(`{"crawl_id":1}`)
		m.Header.Set(subjects.HeaderReason, "delivery_failed")
		m.Header.Set(subjects.HeaderSubject, orig)
		m.Header.Set(subjects.HeaderDeliveryID, id)
		if _, err := h.js.JS.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return h, ids
}

// deliveryIDs are the Callbackd-Delivery-Id of every message of a stream,
// sorted.
func deliveryIDs(t *testing.T, js jetstream.JetStream, stream string) []string {
	t.Helper()
	var out []string
	for _, m := range testutil.StreamMsgs(t, js, stream) {
		out = append(out, m.Header.Get(subjects.HeaderDeliveryID))
	}
	slices.Sort(out)
	return out
}

type replayPayload struct {
	ReplayDeadLetters struct{ Matched, Replayed int }
}

const replayMutation = `mutation { replayDeadLetters(input: {}) { matched replayed } }`

// A replay that stops part-way answers its counts in the payload and a
// REPLAY_INCOMPLETE error beside them; the letters it did not replay are
// still dead letters, and running it again replays exactly those.
func TestReplayDeadLetters_interrupted_reports_its_counts_with_the_error(t *testing.T) {
	const n = 10
	tests := []struct {
		name      string
		k         int // letters replayed before the interruption
		timeout   time.Duration
		interrupt interruptFunc
		message   string // in the error's message
	}{
		{
			name: "cancelled", k: 4,
			interrupt: func(_ context.Context, cancel context.CancelFunc, done int) {
				if done == 4 {
					cancel()
				}
			},
			message: "context canceled",
		},
		{
			name: "cancelled while counting", k: 0,
			interrupt: func(_ context.Context, cancel context.CancelFunc, done int) {
				if done == 0 {
					cancel()
				}
			},
			message: "context canceled",
		},
		{
			// The replay stalls after k letters (a slow NATS) until its
			// time limit ends it.
			name: "time limit", k: 6, timeout: 300 * time.Millisecond,
			interrupt: func(ctx context.Context, _ context.CancelFunc, done int) {
				if done == 6 {
					<-ctx.Done()
				}
			},
			message: "time limit of 300ms",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var interrupt atomic.Pointer[interruptFunc]
			interrupt.Store(&tt.interrupt)
			h, ids := newReplayHarness(t, n, tt.timeout, &interrupt)

			var out replayPayload
			err := h.client.Do(context.Background(), replayMutation, nil, &out)
			var gerrs api.GraphQLErrors
			if !errors.As(err, &gerrs) || len(gerrs) != 1 {
				t.Fatalf("interrupted replay: %v, want one GraphQL error", err)
			}
			e := gerrs[0]
			if e.Extensions["code"] != "REPLAY_INCOMPLETE" || e.Extensions["matched"] != float64(n) || e.Extensions["replayed"] != float64(tt.k) {
				t.Errorf("extensions %v, want code REPLAY_INCOMPLETE, matched %d, replayed %d", e.Extensions, n, tt.k)
			}
			if !slices.Equal(e.Path, []any{"replayDeadLetters"}) || !strings.Contains(e.Message, tt.message) ||
				!strings.Contains(e.Message, fmt.Sprintf("after replaying %d of %d", tt.k, n)) || !strings.Contains(e.Message, "run it again") {
				t.Errorf("error %+v", e)
			}
			if got := out.ReplayDeadLetters; got.Matched != n || got.Replayed != tt.k {
				t.Errorf("payload %+v, want matched %d, replayed %d", got, n, tt.k)
			}
			if got := deliveryIDs(t, h.js.JS, subjects.Stream); !slices.Equal(got, ids[:tt.k]) {
				t.Errorf("CALLBACKS holds %v, want %v", got, ids[:tt.k])
			}
			if got := deliveryIDs(t, h.js.JS, subjects.DeadStream); !slices.Equal(got, ids[tt.k:]) {
				t.Errorf("CALLBACKS_DEAD holds %v, want %v", got, ids[tt.k:])
			}

			interrupt.Store(nil)
			h.ok(replayMutation, nil, &out)
			if got := out.ReplayDeadLetters; got.Matched != n-tt.k || got.Replayed != n-tt.k {
				t.Errorf("second run %+v, want %d replayed", got, n-tt.k)
			}
			if got := deliveryIDs(t, h.js.JS, subjects.Stream); !slices.Equal(got, ids) {
				t.Errorf("after the second run CALLBACKS holds %v, want each of %v once", got, ids)
			}
			if got := deliveryIDs(t, h.js.JS, subjects.DeadStream); len(got) != 0 {
				t.Errorf("after the second run CALLBACKS_DEAD holds %v", got)
			}
		})
	}
}

// A replayer that fails before doing anything still answers the payload
// (nothing matched, nothing replayed) with the error.
func TestReplayDeadLetters_failure_answers_zero_counts_and_the_error(t *testing.T) {
	h := newHarness(t, func(o *api.Options) {
		o.Replayer = api.ReplayerFunc(func(context.Context, api.ReplayFilter) (api.ReplayResult, error) {
			return api.ReplayResult{}, errors.New("dead letters: nats: connection closed")
		})
	})
	r := h.gql(replayMutation, nil)
	if len(r.Errors) != 1 || r.Errors[0].Extensions["code"] != "REPLAY_INCOMPLETE" || !strings.Contains(r.Errors[0].Message, "connection closed") {
		t.Fatalf("errors %+v", r.Errors)
	}
	if !jsonEqual(t, r.Data, []byte(`{"replayDeadLetters":{"matched":0,"replayed":0}}`)) {
		t.Fatalf("data %s", r.Data)
	}
}

// The replay's time limit counts from the request's headers, as the HTTP
// server's write timeout does: a client that takes longer than the limit to
// send its body gets an answer at once, with nothing replayed, rather than
// a replay that would run past the write timeout.
func TestReplayDeadLetters_time_limit_counts_from_the_request_headers(t *testing.T) {
	const limit = 200 * time.Millisecond
	h, _ := newReplayHarness(t, 3, limit, new(atomic.Pointer[interruptFunc]))
	pr, pw := io.Pipe()
	req, err := http.NewRequest(http.MethodPost, h.srv.URL+"/graphql", pr)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+testToken)
	go func() {
		body := `{"query":"` + replayMutation + `"}`
		_, _ = io.WriteString(pw, body[:10])
		// A slow client, not a synchronisation: the rest of the body comes
		// well after the limit.
		time.Sleep(5 * limit)
		_, _ = io.WriteString(pw, body[10:])
		_ = pw.Close()
	}()
	code, b := h.do(req)
	var r gqlResponse
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("HTTP %d: %s", code, b)
	}
	if len(r.Errors) != 1 || r.Errors[0].Extensions["code"] != "REPLAY_INCOMPLETE" || !strings.Contains(r.Errors[0].Message, "time limit of 200ms") {
		t.Fatalf("errors %+v", r.Errors)
	}
	if !jsonEqual(t, r.Data, []byte(`{"replayDeadLetters":{"matched":0,"replayed":0}}`)) {
		t.Errorf("data %s", r.Data)
	}
	if n := testutil.StreamLen(t, h.js.JS, subjects.DeadStream); n != 3 {
		t.Errorf("CALLBACKS_DEAD holds %d of 3", n)
	}
}
