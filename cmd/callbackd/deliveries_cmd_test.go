package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callbackd/callbackd/api"
	"github.com/callbackd/callbackd/deadletters"
	"github.com/callbackd/callbackd/deliverylog"
	"github.com/callbackd/callbackd/dispatcher"
	"github.com/callbackd/callbackd/subjects"
	"github.com/callbackd/callbackd/testutil"
)

// cliJetStream starts JetStream with callbackd's streams for CLI tests.
func cliJetStream(t *testing.T) *testutil.JetStream {
	t.Helper()
	js := testutil.RunJetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := dispatcher.EnsureStreams(ctx, js.JS, dispatcher.StreamOptions{
		RetentionEvents: time.Hour, RetentionDead: time.Hour, RetentionLog: time.Hour, LogBytes: 1 << 30,
		AckWait: 40 * time.Second, MaxAckPending: 64, MaxRetryPending: 1000,
	}, testutil.Logger(t)); err != nil {
		t.Fatal(err)
	}
	return js
}

// runCLI runs callbackd with args against js and returns stdout, stderr
// and the error.
func runCLI(ctx context.Context, t *testing.T, js *testutil.JetStream, stdin string, stdout, stderr *testutil.SyncBuffer, args ...string) error {
	t.Helper()
	root := newRootCmd()
	root.SetArgs(append(args, "--config", "", "--log.level", "error", "--nats.embedded=false", "--nats.url", js.Server.ClientURL()))
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetIn(strings.NewReader(stdin))
	return root.ExecuteContext(ctx)
}

func writeLog(t *testing.T, js *testutil.JetStream, recs ...deliverylog.Record) {
	t.Helper()
	before := testutil.StreamLen(t, js.JS, subjects.LogStream)
	w := deliverylog.NewWriter(js.JS, testutil.Logger(t), deliverylog.WriterOptions{})
	for _, r := range recs {
		w.Write(r)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.Close(ctx); err != nil || w.Dropped()+w.Failed() != 0 {
		t.Fatalf("write log: %v (dropped %d, failed %d)", err, w.Dropped(), w.Failed())
	}
	// The records are core publishes: stored by the stream shortly after
	// the flush, not by it.
	testutil.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		if n := testutil.StreamLen(t, js.JS, subjects.LogStream); n < before+uint64(len(recs)) {
			return fmt.Errorf("%d of %d records stored", n-before, len(recs))
		}
		return nil
	})
}

func rec(id, project, outcome string) deliverylog.Record {
	return deliverylog.Record{
		DeliveryID: id, EventType: "crawl_status", AccountID: "7", ProjectID: project,
		URL: "https://user:pw@hooks.example.com/cb?sig=secret", Attempt: 2, StatusCode: 503,
		Outcome: outcome, Error: "HTTP 503\nService Unavailable", DurationMs: 1500, At: time.Now(),
	}
}

func TestDeliveriesCmd_table_and_json(t *testing.T) {
	js := cliJetStream(t)
	writeLog(t, js,
		rec("d-1", "11", deliverylog.OutcomeRetrying),
		rec("d-2", "12", deliverylog.OutcomeDelivered),
		rec("d-3", "11", deliverylog.OutcomeFailed),
	)
	ctx := testutil.Context(t)

	var out, errOut testutil.SyncBuffer
	if err := runCLI(ctx, t, js, "", &out, &errOut, "deliveries", "--project", "11"); err != nil {
		t.Fatalf("deliveries: %v (stderr %s)", err, errOut.String())
	}
	lines := strings.Split(strings.TrimRight(out.String(), "\n"), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "TIME") || !strings.Contains(lines[0], "DELIVERY ID") {
		t.Fatalf("table:\n%s", out.String())
	}
	// Oldest first, newest at the bottom.
	if !strings.Contains(lines[1], "d-1") || !strings.Contains(lines[2], "d-3") {
		t.Errorf("rows out of order:\n%s", out.String())
	}
	for _, want := range []string{"crawl_status", "503", "retrying", "1.5s", "https://hooks.example.com/cb", "HTTP 503 Service Unavailable"} {
		if !strings.Contains(lines[1], want) {
			t.Errorf("row %q lacks %q", lines[1], want)
		}
	}
	if strings.Contains(out.String(), "secret") || strings.Contains(out.String(), "pw@") {
		t.Errorf("URL printed with userinfo or query:\n%s", out.String())
	}
	// Columns line up: each row's URL starts where the header's does.
	col := strings.Index(lines[0], "URL")
	for _, l := range lines[1:] {
		if strings.Index(l, "https://") != col {
			t.Errorf("misaligned:\n%s", out.String())
		}
	}

	// A global ID, padded or not, selects the same records.
	for _, id := range []string{api.GlobalID(api.TypeProject, "11"), "TjAwNlByb2plY3QxMQ=="} {
		var byGID testutil.SyncBuffer
		if err := runCLI(ctx, t, js, "", &byGID, &errOut, "deliveries", "--project", id); err != nil || byGID.String() != out.String() {
			t.Errorf("deliveries --project %s: %v\n%s\nwant\n%s", id, err, byGID.String(), out.String())
		}
	}

	out = testutil.SyncBuffer{}
	if err := runCLI(ctx, t, js, "", &out, &errOut, "deliveries", "--status", "FAILED", "--json", "--since", "1h"); err != nil {
		t.Fatal(err)
	}
	var e deliverylog.Entry
	if err := json.Unmarshal([]byte(strings.TrimSpace(out.String())), &e); err != nil || e.DeliveryID != "d-3" || e.Seq == 0 {
		t.Fatalf("json: %q: %+v %v", out.String(), e, err)
	}

	out = testutil.SyncBuffer{}
	if err := runCLI(ctx, t, js, "", &out, &errOut, "deliveries", "--limit", "2"); err != nil {
		t.Fatal(err)
	}
	if got := strings.Count(out.String(), "\n"); got != 3 || !strings.Contains(out.String(), "d-2") || strings.Contains(out.String(), "d-1") {
		t.Errorf("--limit 2 printed:\n%s", out.String())
	}
}

func TestDeliveriesCmd_follow(t *testing.T) {
	js := cliJetStream(t)
	writeLog(t, js, rec("old", "11", deliverylog.OutcomeDelivered))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errOut testutil.SyncBuffer
	done := make(chan error, 1)
	go func() { done <- runCLI(ctx, t, js, "", &out, &errOut, "deliveries", "--project", "11", "--follow") }()
	testutil.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		if !strings.Contains(out.String(), "old") {
			return errors.New("history not printed yet")
		}
		return nil
	})
	writeLog(t, js, rec("new-1", "11", deliverylog.OutcomeFailed), rec("other", "12", deliverylog.OutcomeFailed), rec("new-2", "11", deliverylog.OutcomeDelivered))
	testutil.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		s := out.String()
		if !strings.Contains(s, "new-2") {
			return fmt.Errorf("followed so far:\n%s", s)
		}
		return nil
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("follow ended with %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("follow did not stop")
	}
	s := out.String()
	if strings.Count(s, "old") != 1 || strings.Contains(s, "other") || strings.Index(s, "new-1") > strings.Index(s, "new-2") {
		t.Errorf("followed:\n%s", s)
	}
	if strings.Count(s, "TIME") != 1 {
		t.Errorf("header printed more than once:\n%s", s)
	}
}

func TestDeliveriesCmd_bad_flags(t *testing.T) {
	js := cliJetStream(t)
	for _, args := range [][]string{
		{"deliveries", "--status", "exploded"},
		{"deliveries", "--project", "abc"},
		{"deliveries", "--since", "yesterday"},
		{"deliveries", "--limit", "0"},
		{"replay", "--reason", "Delivery Failed"},
		{"replay", "--reason", "nope", "--yes"},
		{"publish", "crawl_status", "--account", "1", "--data", "{}"},
		{"replay", "--until", "soon"},
		{"deliveries", "--project", api.GlobalID(api.TypeAccount, "11")},
		{"replay", "--account", "TjAwNlByb2plY3QxMjM"},
		{"publish", "crawl_status", "--account", "1", "--project", "2", "--data", "{bad"},
		{"publish", "crawl_status", "--account", "1", "--project", "2", "--data", "[1]"},
		{"publish", "crawl_status", "--account", "1", "--project", "2", "--data", `"str"`},
		{"publish", "crawl_status", "--account", "1", "--project", "2", "--data", `{"a":1}{"b":2}`},
		{"publish", "crawl_status", "--account", "1", "--project", "2", "--data", "null"},
	} {
		var out, errOut testutil.SyncBuffer
		err := runCLI(testutil.Context(t), t, js, "", &out, &errOut, args...)
		var ue usageError
		if !errors.As(err, &ue) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%v: %v, want a one-line usage error", args, err)
		}
	}
}

func deadLetterForCLI(t *testing.T, js *testutil.JetStream, id, project, reason string) {
	t.Helper()
	k := subjects.EventKey{Type: "crawl_status", AccountID: "7", ProjectID: project}
	orig, _ := subjects.Event(k)
	m := nats.NewMsg(subjects.DeadFor(k))
	m.Data = []byte(`{"crawl_id":1}`)
	m.Header.Set(subjects.HeaderMsgID, "dead:"+subjects.Stream+":"+id)
	m.Header.Set(subjects.HeaderReason, reason)
	m.Header.Set(subjects.HeaderStatus, "")
	m.Header.Set(subjects.HeaderAttempts, "4")
	m.Header.Set(subjects.HeaderError, "timeout")
	m.Header.Set(subjects.HeaderSubject, orig)
	m.Header.Set(subjects.HeaderDeliveryID, id)
	if _, err := js.JS.PublishMsg(testutil.Context(t), m); err != nil {
		t.Fatal(err)
	}
}

func streamCount(t *testing.T, js *testutil.JetStream, name string) uint64 {
	t.Helper()
	s, err := js.JS.Stream(testutil.Context(t), name)
	if err != nil {
		t.Fatal(err)
	}
	return s.CachedInfo().State.Msgs
}

func TestReplayCmd(t *testing.T) {
	js := cliJetStream(t)
	deadLetterForCLI(t, js, "a", "11", "delivery_failed")
	deadLetterForCLI(t, js, "b", "11", "destination_not_allowed")
	deadLetterForCLI(t, js, "c", "12", "delivery_failed")
	ctx := testutil.Context(t)

	var out, errOut testutil.SyncBuffer
	if err := runCLI(ctx, t, js, "", &out, &errOut, "replay", "--reason", "delivery_failed", "--dry-run"); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(out.String()); got != "matched 2, replayed 0 (dry run)" {
		t.Errorf("dry run: %q", got)
	}

	out = testutil.SyncBuffer{}
	err := runCLI(ctx, t, js, "n\n", &out, &errOut, "replay", "--project", "11")
	if err == nil || !strings.Contains(err.Error(), "not confirmed") || streamCount(t, js, subjects.DeadStream) != 3 {
		t.Errorf("unconfirmed replay: %v", err)
	}

	out, errOut = testutil.SyncBuffer{}, testutil.SyncBuffer{}
	if err := runCLI(ctx, t, js, "y\n", &out, &errOut, "replay", "--project", "11"); err != nil {
		t.Fatalf("replay: %v (stderr %s)", err, errOut.String())
	}
	if got := strings.TrimSpace(out.String()); got != "matched 2, replayed 2" {
		t.Errorf("summary %q", got)
	}
	if !strings.Contains(errOut.String(), "going through the dead letters") || !strings.Contains(errOut.String(), "2/2") {
		t.Errorf("no progress on stderr: %q", errOut.String())
	}
	// stderr is not a terminal: lines, not a bar redrawn with \r.
	if strings.Contains(errOut.String(), "\r") {
		t.Errorf("progress redrawn on a stderr that is not a terminal: %q", errOut.String())
	}
	if streamCount(t, js, subjects.Stream) != 2 || streamCount(t, js, subjects.DeadStream) != 1 {
		t.Errorf("after replay: CALLBACKS %d, CALLBACKS_DEAD %d", streamCount(t, js, subjects.Stream), streamCount(t, js, subjects.DeadStream))
	}

	out = testutil.SyncBuffer{}
	if err := runCLI(ctx, t, js, "", &out, &errOut, "replay", "--yes"); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(out.String()); got != "matched 1, replayed 1" {
		t.Errorf("--yes: %q", got)
	}
}

// A replay that fails part-way prints the summary of what it did, then
// fails with one line saying how far it got; run again, it does the rest.
func TestReplayCmd_interrupted_prints_the_partial_summary(t *testing.T) {
	js := cliJetStream(t)
	for _, id := range []string{"a", "b", "c", "d", "e", "f"} {
		deadLetterForCLI(t, js, id, "11", "delivery_failed")
	}
	nc, err := js.Server.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	own, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}

	var out, errOut testutil.SyncBuffer
	cmd := newReplayCmd()
	cmd.SetContext(testutil.Context(t))
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	err = replay(cmd, &testutil.LostAfter{JetStream: own, NC: nc, After: 2}, deadletters.Filter{}, true)
	if err == nil || !errors.Is(err, nats.ErrConnectionClosed) || strings.Contains(err.Error(), "\n") ||
		!strings.Contains(err.Error(), "replay stopped after 2 of 6 (run it again to go on)") {
		t.Fatalf("interrupted replay: %v, want one line saying 2 of 6", err)
	}
	if got := strings.TrimSpace(out.String()); got != "matched 6, replayed 2" {
		t.Errorf("summary %q, want matched 6, replayed 2", got)
	}
	if streamCount(t, js, subjects.Stream) != 2 || streamCount(t, js, subjects.DeadStream) != 4 {
		t.Errorf("after the interrupted replay: CALLBACKS %d, CALLBACKS_DEAD %d", streamCount(t, js, subjects.Stream), streamCount(t, js, subjects.DeadStream))
	}

	out = testutil.SyncBuffer{}
	if err := runCLI(testutil.Context(t), t, js, "", &out, &errOut, "replay", "--yes"); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(out.String()); got != "matched 4, replayed 4" {
		t.Errorf("second run: %q", got)
	}
	if streamCount(t, js, subjects.Stream) != 6 || streamCount(t, js, subjects.DeadStream) != 0 {
		t.Errorf("after the second run: CALLBACKS %d, CALLBACKS_DEAD %d", streamCount(t, js, subjects.Stream), streamCount(t, js, subjects.DeadStream))
	}
}

// Calling a command wrongly is a one-line usage error (exit status 2),
// an unknown subcommand of a group included; a group alone prints its help.
func TestCLI_usage_errors(t *testing.T) {
	for _, tt := range []struct {
		args  []string
		usage bool
	}{
		{[]string{"bogus"}, true},
		{[]string{"project", "bogus"}, true},
		{[]string{"account", "bogus", "1"}, true},
		{[]string{"sso-client", "get"}, true},
		{[]string{"project", "get", "1", "2"}, true},
		{[]string{"version", "x"}, true},
		{[]string{"plugins", "bogus"}, true},
		{[]string{"project"}, false},
		{[]string{"help", "bogus"}, true},
		{[]string{"help", "project", "set"}, false},
		{[]string{"help"}, false},
	} {
		root := newRootCmd()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetArgs(tt.args)
		err := root.Execute()
		var ue usageError
		switch {
		case tt.usage && (!errors.As(err, &ue) || strings.Contains(err.Error(), "\n")):
			t.Errorf("%v: %v, want a one-line usage error", tt.args, err)
		case !tt.usage && (err != nil || !strings.Contains(out.String(), "Usage:")):
			t.Errorf("%v: %v, want the help and no error; printed:\n%s", tt.args, err, out.String())
		}
	}
}

// An attempt under 1 ms shows as such, not as a record without an attempt.
func TestDeliveriesCmd_sub_millisecond_attempt(t *testing.T) {
	js := cliJetStream(t)
	fast := rec("d-fast", "21", deliverylog.OutcomeDelivered)
	fast.DurationMs, fast.StartedAt = 0, time.Now()
	skipped := deliverylog.Record{DeliveryID: "d-skip", EventType: "crawl_status", AccountID: "7", ProjectID: "21",
		Outcome: deliverylog.OutcomeSkipped, Error: "test_suite_build", At: time.Now()}
	writeLog(t, js, fast, skipped)
	var out, errOut testutil.SyncBuffer
	if err := runCLI(testutil.Context(t), t, js, "", &out, &errOut, "deliveries", "--project", "21"); err != nil {
		t.Fatalf("deliveries: %v (stderr %s)", err, errOut.String())
	}
	for _, l := range strings.Split(out.String(), "\n") {
		switch {
		case strings.Contains(l, "d-fast") && !strings.Contains(l, "<1ms"):
			t.Errorf("attempt under 1 ms: %q, want <1ms", l)
		case strings.Contains(l, "d-skip") && strings.Contains(l, "ms"):
			t.Errorf("record without an attempt shows a duration: %q", l)
		}
	}
}

func TestReplaySummary_says_how_many_letters_were_gone(t *testing.T) {
	for _, tc := range []struct {
		res  deadletters.Result
		err  error
		want string
	}{
		{deadletters.Result{Matched: 5, Replayed: 5}, nil, "matched 5, replayed 5"},
		{deadletters.Result{Matched: 2000, Replayed: 26}, nil, "matched 2000, replayed 26, 1974 gone before their turn (replayed by another run, or expired)"},
		{deadletters.Result{Matched: 5, Replayed: 3, Skipped: 2}, nil, "matched 5, replayed 3, skipped 2 with no event or notice subject to go back to (Callbackd-Subject missing or outside CALLBACKS)"},
		{deadletters.Result{Matched: 5, Replayed: 2}, errors.New("interrupted"), "matched 5, replayed 2"},
	} {
		if got := replaySummary(tc.res, tc.err); got != tc.want {
			t.Errorf("replaySummary(%+v, %v) = %q, want %q", tc.res, tc.err, got, tc.want)
		}
	}
}

// publish reads the event from stdin when --data is not given, and refuses
// more than any max_payload allows with a line that says so.
func TestPublishCmd_reads_stdin(t *testing.T) {
	js := cliJetStream(t)
	ctx := testutil.Context(t)
	args := []string{"publish", "crawl_status", "--account", "5", "--project", "1"}

	var out, errOut testutil.SyncBuffer
	if err := runCLI(ctx, t, js, `{"crawl_id":1}`, &out, &errOut, args...); err != nil {
		t.Fatalf("publish from stdin: %v", err)
	}
	if n := streamCount(t, js, subjects.Stream); n != 1 {
		t.Errorf("CALLBACKS holds %d events, want 1", n)
	}

	big := `{"crawl_id":1,"pad":"` + strings.Repeat("x", maxStdinEvent) + `"}`
	err := runCLI(ctx, t, js, big, &out, &errOut, args...)
	var ue usageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "over 8 MiB") {
		t.Errorf("publish of %d bytes: %v; want a usage error saying it is over 8 MiB", len(big), err)
	}
	if n := streamCount(t, js, subjects.Stream); n != 1 {
		t.Errorf("CALLBACKS holds %d events after the refusal, want 1", n)
	}

	// What serve would only dead-letter as invalid_event is refused
	// before it is published.
	for _, tc := range []struct {
		args []string
		in   string
		want string
	}{
		{args, `{"crawl_id":1,"pad":"` + strings.Repeat("x", 256<<10) + `"}`, "over dispatcher.max_payload (256KiB)"},
		{[]string{"publish", "no_such_type", "--account", "5", "--project", "1"}, `{}`, `no encoder for event type "no_such_type"`},
		{args, `{"crawl_id":1,"crawl_id":2}`, `the key "crawl_id" is given twice`},
		// A built-in encoder's own rules.
		{args, `{"crawl_id":1,"note":"\ud800"}`, `the event is invalid, and serve would dead-letter it`},
		{args, `{"user_id":1}`, `crawl_id`},
	} {
		err := runCLI(ctx, t, js, tc.in, &out, &errOut, tc.args...)
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("publish %.30s: %v; want a usage error saying %q", tc.in, err, tc.want)
		}
	}
	if n := streamCount(t, js, subjects.Stream); n != 1 {
		t.Errorf("CALLBACKS holds %d events after the refusals, want 1", n)
	}
}
