package deadletters_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callbackd/callbackd/deadletters"
	"github.com/callbackd/callbackd/dispatcher"
	"github.com/callbackd/callbackd/subjects"
	"github.com/callbackd/callbackd/testutil"
)

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

// letter is a dead letter to publish as dispatcher/deadletter.go does.
type letter struct {
	name     string // also the delivery id
	key      *subjects.EventKey
	original string // Callbackd-Subject; "" leaves the header out
	reason   string
}

func (l letter) payload() []byte { return []byte(`{"crawl_id":1,"name":"` + l.name + `"}`) }

// deadLetter publishes l to CALLBACKS_DEAD and returns its sequence.
func deadLetter(t *testing.T, js jetstream.JetStream, l letter) uint64 {
	t.Helper()
	subj := subjects.DeadInvalid
	if l.key != nil {
		subj = subjects.DeadFor(*l.key)
	}
	m := nats.NewMsg(subj)
	m.Data = l.payload()
	m.Header.Set(subjects.HeaderMsgID, "dead:"+subjects.Stream+":"+l.name)
	m.Header.Set(subjects.HeaderReason, l.reason)
	m.Header.Set(subjects.HeaderStatus, "500")
	m.Header.Set(subjects.HeaderAttempts, "4")
	m.Header.Set(subjects.HeaderError, "HTTP 500")
	if l.original != "" {
		m.Header.Set(subjects.HeaderSubject, l.original)
	}
	m.Header.Set(subjects.HeaderDeliveryID, l.name)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ack, err := js.PublishMsg(ctx, m)
	if err != nil {
		t.Fatalf("dead-letter %s: %v", l.name, err)
	}
	return ack.Sequence
}

func key(typ, acct, proj string) *subjects.EventKey {
	return &subjects.EventKey{Type: typ, AccountID: acct, ProjectID: proj}
}

func event(k *subjects.EventKey) string {
	s, _ := subjects.Event(*k)
	return s
}

// seed is a dead-letter stream with one letter of every kind.
var seed = []letter{
	{name: "cs-1-10", key: key("crawl_status", "1", "10"), reason: "delivery_failed"},
	{name: "cs-1-11", key: key("crawl_status", "1", "11"), reason: "destination_not_allowed"},
	{name: "rda-2-10", key: key("report_download_available", "2", "10"), reason: "delivery_failed"},
	{name: "invalid", original: "callbacks.event.Not_Valid.x", reason: "invalid_event"},
	{name: "cf-1-10", key: key("callback_failed", "1", "10"), original: subjects.Notify("1", "10"), reason: "callback_failed_undeliverable"},
	{name: "orphan-2-12", key: key("crawl_status", "2", "12"), original: "-", reason: "delivery_failed"},
}

func publishSeed(t *testing.T, js jetstream.JetStream) map[string]uint64 {
	t.Helper()
	seqs := map[string]uint64{}
	for _, l := range seed {
		if l.original == "" && l.key != nil {
			l.original = event(l.key)
		}
		if l.original == "-" {
			l.original = ""
		}
		seqs[l.name] = deadLetter(t, js, l)
	}
	return seqs
}

// msgs returns every message of a stream, oldest first.
func msgs(t *testing.T, js jetstream.JetStream, stream string) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	st := s.CachedInfo().State
	for seq := st.FirstSeq; st.Msgs > 0 && seq <= st.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatalf("get %s %d: %v", stream, seq, err)
		}
		out = append(out, m)
	}
	return out
}

func names(ms []*jetstream.RawStreamMsg) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Header.Get(subjects.HeaderDeliveryID))
	}
	slices.Sort(out)
	return out
}

func TestReplay_moves_exactly_the_matching_letters(t *testing.T) {
	tests := []struct {
		name    string
		f       deadletters.Filter
		want    []string // replayed
		skipped int
	}{
		{"all", deadletters.Filter{}, []string{"cf-1-10", "cs-1-10", "cs-1-11", "invalid", "rda-2-10"}, 1},
		{"account", deadletters.Filter{AccountID: "1"}, []string{"cf-1-10", "cs-1-10", "cs-1-11"}, 0},
		{"project", deadletters.Filter{ProjectID: "10"}, []string{"cf-1-10", "cs-1-10", "rda-2-10"}, 0},
		{"event type", deadletters.Filter{EventType: "crawl_status"}, []string{"cs-1-10", "cs-1-11"}, 1},
		{"reason", deadletters.Filter{Reason: "delivery_failed"}, []string{"cs-1-10", "rda-2-10"}, 1},
		{"invalid", deadletters.Filter{EventType: subjects.DeadInvalidType}, []string{"invalid"}, 0},
		{"type account project reason", deadletters.Filter{EventType: "crawl_status", AccountID: "1", ProjectID: "11", Reason: "destination_not_allowed"}, []string{"cs-1-11"}, 0},
		{"nothing", deadletters.Filter{ProjectID: "99"}, nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			js := setup(t)
			seqs := publishSeed(t, js.JS)
			var calls [][2]int
			res, err := deadletters.Replay(testutil.Context(t), js.JS, tt.f, func(done, total int) { calls = append(calls, [2]int{done, total}) })
			if err != nil {
				t.Fatal(err)
			}
			if want := (deadletters.Result{Matched: len(tt.want), Replayed: len(tt.want), Skipped: tt.skipped}); res != want {
				t.Errorf("result %+v, want %+v", res, want)
			}
			if len(calls) != len(tt.want)+1 || calls[len(calls)-1] != [2]int{len(tt.want), len(tt.want)} {
				t.Errorf("progress calls %v", calls)
			}

			events := msgs(t, js.JS, subjects.Stream)
			if got := names(events); !slices.Equal(got, tt.want) {
				t.Errorf("CALLBACKS holds %v, want %v", got, tt.want)
			}
			for _, m := range events {
				id := m.Header.Get(subjects.HeaderDeliveryID)
				l := seed[slices.IndexFunc(seed, func(l letter) bool { return l.name == id })]
				wantSubj := l.original
				if wantSubj == "" {
					wantSubj = event(l.key)
				}
				if m.Subject != wantSubj {
					t.Errorf("%s replayed to %s, want %s", id, m.Subject, wantSubj)
				}
				if string(m.Data) != string(l.payload()) {
					t.Errorf("%s payload %q", id, m.Data)
				}
				if got, want := m.Header.Get(subjects.HeaderMsgID), "replay:"+strconv.FormatUint(seqs[id], 10); got != want {
					t.Errorf("%s Nats-Msg-Id %q, want %q", id, got, want)
				}
				if m.Header.Get(subjects.HeaderReason) != "" || m.Header.Get(subjects.HeaderAttempt) != "" {
					t.Errorf("%s carries dead-letter or attempt headers: %v", id, m.Header)
				}
			}

			dead := names(msgs(t, js.JS, subjects.DeadStream))
			var left []string
			for _, l := range seed {
				if !slices.Contains(tt.want, l.name) {
					left = append(left, l.name)
				}
			}
			slices.Sort(left)
			if !slices.Equal(dead, left) {
				t.Errorf("CALLBACKS_DEAD holds %v, want %v", dead, left)
			}

			// Again: nothing left to match, nothing duplicated.
			res, err = deadletters.Replay(testutil.Context(t), js.JS, tt.f, nil)
			if err != nil || res.Matched != 0 || res.Replayed != 0 {
				t.Errorf("second replay: %+v, %v", res, err)
			}
			if got := names(msgs(t, js.JS, subjects.Stream)); !slices.Equal(got, tt.want) {
				t.Errorf("after a second replay CALLBACKS holds %v", got)
			}
		})
	}
}

func TestReplay_dry_run_changes_nothing(t *testing.T) {
	js := setup(t)
	publishSeed(t, js.JS)
	res, err := deadletters.Replay(testutil.Context(t), js.JS, deadletters.Filter{Reason: "delivery_failed", DryRun: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := (deadletters.Result{Matched: 2, Skipped: 1}); res != want {
		t.Errorf("dry run %+v, want %+v", res, want)
	}
	if n := len(msgs(t, js.JS, subjects.Stream)); n != 0 {
		t.Errorf("dry run published %d events", n)
	}
	if n := len(msgs(t, js.JS, subjects.DeadStream)); n != len(seed) {
		t.Errorf("dry run left %d of %d dead letters", n, len(seed))
	}
}

func TestReplay_by_time(t *testing.T) {
	js := setup(t)
	early := deadLetter(t, js.JS, letter{name: "early", key: key("crawl_status", "1", "1"), original: event(key("crawl_status", "1", "1")), reason: "delivery_failed"})
	// Acked before now, so stored before now on the server's clock.
	mid := time.Now()
	deadLetter(t, js.JS, letter{name: "middle", key: key("crawl_status", "1", "2"), original: event(key("crawl_status", "1", "2")), reason: "delivery_failed"})
	end := time.Now()
	deadLetter(t, js.JS, letter{name: "late", key: key("crawl_status", "1", "3"), original: event(key("crawl_status", "1", "3")), reason: "delivery_failed"})

	ls, err := deadletters.List(testutil.Context(t), js.JS, deadletters.Filter{Since: mid, Until: end}, 0)
	if err != nil || len(ls) != 1 || ls[0].DeliveryID != "middle" {
		t.Fatalf("list since/until: %+v, %v", ls, err)
	}
	res, err := deadletters.Replay(testutil.Context(t), js.JS, deadletters.Filter{Until: mid}, nil)
	if err != nil || res.Replayed != 1 {
		t.Fatalf("replay until: %+v, %v", res, err)
	}
	if got := names(msgs(t, js.JS, subjects.Stream)); !slices.Equal(got, []string{"early"}) {
		t.Errorf("until: replayed %v", got)
	}
	res, err = deadletters.Replay(testutil.Context(t), js.JS, deadletters.Filter{Since: end}, nil)
	if err != nil || res.Replayed != 1 {
		t.Fatalf("replay since: %+v, %v", res, err)
	}
	if got := names(msgs(t, js.JS, subjects.Stream)); !slices.Equal(got, []string{"early", "late"}) {
		t.Errorf("since: replayed %v", got)
	}
	_ = early
}

func TestReplay_after_a_crash_between_publish_and_delete_does_not_duplicate(t *testing.T) {
	js := setup(t)
	k := key("crawl_status", "1", "10")
	seq := deadLetter(t, js.JS, letter{name: "d1", key: k, original: event(k), reason: "delivery_failed"})
	// What an interrupted replay leaves: the event published, the dead
	// letter still there.
	m := nats.NewMsg(event(k))
	m.Data = letter{name: "d1"}.payload()
	m.Header.Set(subjects.HeaderMsgID, "replay:"+strconv.FormatUint(seq, 10))
	m.Header.Set(subjects.HeaderDeliveryID, "d1")
	if _, err := js.JS.PublishMsg(testutil.Context(t), m); err != nil {
		t.Fatal(err)
	}
	res, err := deadletters.Replay(testutil.Context(t), js.JS, deadletters.Filter{}, nil)
	if err != nil || res.Replayed != 1 {
		t.Fatalf("replay: %+v, %v", res, err)
	}
	if n := len(msgs(t, js.JS, subjects.Stream)); n != 1 {
		t.Errorf("CALLBACKS holds %d copies, want 1", n)
	}
	if n := len(msgs(t, js.JS, subjects.DeadStream)); n != 0 {
		t.Errorf("CALLBACKS_DEAD still holds %d", n)
	}
}

// Two replays of the same letters at once: each letter is stored once in
// CALLBACKS and counted by exactly one of them (a black-box run had two
// CLIs report 777 replayed for 500 letters).
func TestReplay_two_at_once_count_each_letter_once(t *testing.T) {
	js := setup(t)
	const n = 200
	for i := range n {
		k := key("crawl_status", "1", strconv.Itoa(10+i%3))
		deadLetter(t, js.JS, letter{name: "c" + strconv.Itoa(i), key: k, original: event(k), reason: "delivery_failed"})
	}
	var wg sync.WaitGroup
	res := make([]deadletters.Result, 2)
	errs := make([]error, 2)
	for i := range res {
		wg.Go(func() { res[i], errs[i] = deadletters.Replay(testutil.Context(t), js.JS, deadletters.Filter{}, nil) })
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil {
		t.Fatalf("replays: %v, %v", errs[0], errs[1])
	}
	if got := res[0].Replayed + res[1].Replayed; got != n {
		t.Errorf("replayed %d + %d = %d, want %d (each letter once)", res[0].Replayed, res[1].Replayed, got, n)
	}
	if got := len(msgs(t, js.JS, subjects.Stream)); got != n {
		t.Errorf("CALLBACKS holds %d events, want %d", got, n)
	}
	if got := len(msgs(t, js.JS, subjects.DeadStream)); got != 0 {
		t.Errorf("CALLBACKS_DEAD still holds %d", got)
	}
}

// An interrupted replay reports exactly what it did with its error, leaves
// the rest in CALLBACKS_DEAD, and a second run finishes the job without
// duplicating anything.
func TestReplay_interrupted_reports_what_it_did_and_runs_again(t *testing.T) {
	const n = 12
	tests := []struct {
		name    string
		k       int // letters replayed before the interruption
		natsErr bool
	}{
		{"cancelled before the first", 0, false},
		{"cancelled after one", 1, false},
		{"cancelled half-way", n / 2, false},
		{"cancelled before the last", n - 1, false},
		{"NATS gone before the first", 0, true},
		{"NATS gone half-way", n / 2, true},
		{"NATS gone before the last", n - 1, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			js := setup(t)
			var all []string
			for i := range n {
				k := key("crawl_status", "1", strconv.Itoa(i+1))
				name := fmt.Sprintf("d%02d", i)
				deadLetter(t, js.JS, letter{name: name, key: k, original: event(k), reason: "delivery_failed"})
				all = append(all, name)
			}

			ctx, cancel := context.WithCancel(testutil.Context(t))
			defer cancel()
			var (
				rjs      jetstream.JetStream = js.JS
				progress func(done, total int)
				wantErr  error
			)
			if tt.natsErr {
				// A connection of its own, so the test's stays up.
				nc, err := js.Server.Connect()
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(nc.Close)
				own, err := jetstream.New(nc)
				if err != nil {
					t.Fatal(err)
				}
				rjs, wantErr = &testutil.LostAfter{JetStream: own, NC: nc, After: tt.k}, nats.ErrConnectionClosed
			} else {
				progress = func(done, _ int) {
					if done == tt.k {
						cancel()
					}
				}
				wantErr = context.Canceled
			}
			res, err := deadletters.Replay(ctx, rjs, deadletters.Filter{}, progress)
			if !errors.Is(err, wantErr) {
				t.Fatalf("interrupted replay: %+v, %v; want error %v", res, err, wantErr)
			}
			if want := (deadletters.Result{Matched: n, Replayed: tt.k}); res != want {
				t.Fatalf("interrupted replay: %+v, want %+v", res, want)
			}
			if got := names(msgs(t, js.JS, subjects.Stream)); !slices.Equal(got, all[:tt.k]) {
				t.Errorf("CALLBACKS holds %v, want %v", got, all[:tt.k])
			}
			if got := names(msgs(t, js.JS, subjects.DeadStream)); !slices.Equal(got, all[tt.k:]) {
				t.Errorf("CALLBACKS_DEAD holds %v, want %v", got, all[tt.k:])
			}

			res, err = deadletters.Replay(testutil.Context(t), js.JS, deadletters.Filter{}, nil)
			if want := (deadletters.Result{Matched: n - tt.k, Replayed: n - tt.k}); err != nil || res != want {
				t.Fatalf("second run: %+v, %v; want %+v", res, err, want)
			}
			if got := names(msgs(t, js.JS, subjects.Stream)); !slices.Equal(got, all) {
				t.Errorf("after the second run CALLBACKS holds %v, want each of %v once", got, all)
			}
			if got := msgs(t, js.JS, subjects.DeadStream); len(got) != 0 {
				t.Errorf("after the second run CALLBACKS_DEAD holds %v", names(got))
			}
		})
	}
}

func TestReplay_rejects_bad_filters(t *testing.T) {
	js := setup(t)
	for _, f := range []deadletters.Filter{
		{AccountID: "01"},
		{ProjectID: "*"},
		{EventType: "Crawl"},
		{EventType: subjects.DeadInvalidType, AccountID: "1"},
		{Reason: "delivery failed"},
		{Since: time.Now(), Until: time.Now().Add(-time.Hour)},
	} {
		if _, err := deadletters.Replay(testutil.Context(t), js.JS, f, nil); !errors.Is(err, deadletters.ErrBadFilter) {
			t.Errorf("Replay(%+v) = %v, want ErrBadFilter", f, err)
		}
	}
}

func TestList(t *testing.T) {
	js := setup(t)
	seqs := publishSeed(t, js.JS)
	ls, err := deadletters.List(testutil.Context(t), js.JS, deadletters.Filter{AccountID: "1"}, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != 2 || ls[0].DeliveryID != "cs-1-10" || ls[1].DeliveryID != "cs-1-11" {
		t.Fatalf("list: %+v", ls)
	}
	l := ls[0]
	if l.Seq != seqs["cs-1-10"] || l.Reason != "delivery_failed" || l.Status != "500" || l.Attempts != "4" ||
		l.OriginalSubject != event(key("crawl_status", "1", "10")) || l.Size != len(letter{name: "cs-1-10"}.payload()) || l.At.IsZero() {
		t.Errorf("letter %+v", l)
	}
}
