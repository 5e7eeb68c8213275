package dispatcher_test

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callbackd/callbackd/dispatcher"
	"github.com/callbackd/callbackd/subjects"
	"github.com/callbackd/callbackd/testutil"
)

func streamOptions(events time.Duration) dispatcher.StreamOptions {
	return dispatcher.StreamOptions{
		Replicas: 1, RetentionEvents: events, RetentionDead: time.Hour, RetentionLog: time.Hour, LogBytes: 1 << 30,
		AckWait: 40 * time.Second, MaxAckPending: 64, MaxRetryPending: 1000,
	}
}

func TestEnsureStreams_persistence_by_stream(t *testing.T) {
	js := testutil.RunJetStream(t)
	ctx := testutil.Context(t)
	if _, err := dispatcher.EnsureStreams(ctx, js.JS, streamOptions(time.Hour), testutil.Logger(t)); err != nil {
		t.Fatal(err)
	}
	// Events must survive a kill -9 once their publish is acked, so only
	// the best-effort delivery log is written asynchronously.
	tests := []struct {
		stream string
		want   jetstream.PersistModeType
	}{
		{subjects.Stream, jetstream.DefaultPersistMode},
		{subjects.RetryStream, jetstream.DefaultPersistMode},
		{subjects.DeadStream, jetstream.DefaultPersistMode},
		{subjects.LogStream, jetstream.AsyncPersistMode},
	}
	for _, tt := range tests {
		s, err := js.JS.Stream(ctx, tt.stream)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.CachedInfo().Config.PersistMode; got != tt.want {
			t.Errorf("%s: persist mode %v, want %v", tt.stream, got, tt.want)
		}
	}
}

func TestEnsureStreams_update_keeps_the_persist_mode(t *testing.T) {
	js := testutil.RunJetStream(t)
	ctx := testutil.Context(t)
	if _, err := dispatcher.EnsureStreams(ctx, js.JS, streamOptions(time.Hour), testutil.Logger(t)); err != nil {
		t.Fatal(err)
	}
	// A stream whose persist mode differs from what callbackd now creates
	// (an older install's log, written synchronously).
	if err := js.JS.DeleteStream(ctx, subjects.LogStream); err != nil {
		t.Fatal(err)
	}
	if _, err := js.JS.CreateStream(ctx, jetstream.StreamConfig{
		Name: subjects.LogStream, Subjects: []string{subjects.Logs}, Storage: jetstream.FileStorage,
		MaxAge: 2 * time.Hour, MaxBytes: 1 << 30, Discard: jetstream.DiscardOld,
	}); err != nil {
		t.Fatal(err)
	}

	o := streamOptions(3 * time.Hour)
	if _, err := dispatcher.EnsureStreams(ctx, js.JS, o, testutil.Logger(t)); err != nil {
		t.Fatal(err)
	}
	if got := streamConfig(t, js, subjects.Stream).MaxAge; got != time.Hour {
		t.Errorf("without --update-streams: CALLBACKS max age %v, want it left at 1h", got)
	}

	o.Update = true
	if _, err := dispatcher.EnsureStreams(ctx, js.JS, o, testutil.Logger(t)); err != nil {
		t.Fatalf("update: %v", err)
	}
	if got := streamConfig(t, js, subjects.Stream).MaxAge; got != 3*time.Hour {
		t.Errorf("CALLBACKS max age %v after the update, want 3h", got)
	}
	logCfg := streamConfig(t, js, subjects.LogStream)
	if logCfg.MaxAge != time.Hour || logCfg.PersistMode != jetstream.DefaultPersistMode {
		t.Errorf("log stream after the update: max age %v, persist mode %v; want 1h and its own mode kept", logCfg.MaxAge, logCfg.PersistMode)
	}
}

func streamConfig(t *testing.T, js *testutil.JetStream, name string) jetstream.StreamConfig {
	t.Helper()
	s, err := js.JS.Stream(testutil.Context(t), name)
	if err != nil {
		t.Fatal(err)
	}
	return s.CachedInfo().Config
}

// JetStream reserves the delivery log's retention.log_bytes on the disk
// when it makes the stream: a disk without room says so by name.
func TestEnsureStreams_names_log_bytes_when_the_disk_cannot_hold_them(t *testing.T) {
	js := testutil.RunJetStream(t)
	_, err := dispatcher.EnsureStreams(testutil.Context(t), js.JS, dispatcher.StreamOptions{
		AckWait: time.Minute, MaxAckPending: 256, RetentionEvents: time.Hour, RetentionDead: time.Hour,
		RetentionLog: time.Hour, LogBytes: 1 << 55, // 32 PiB
	}, testutil.Logger(t))
	if err == nil || !strings.Contains(err.Error(), "lower retention.log_bytes") {
		t.Fatalf("EnsureStreams = %v, want an error naming retention.log_bytes", err)
	}
}
