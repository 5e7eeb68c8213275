package dispatcher_test

import (
	"log/slog"
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
	mustEnsureStreams(t, js.JS, streamOptions(time.Hour), testutil.Logger(t))
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
	mustEnsureStreams(t, js.JS, streamOptions(time.Hour), testutil.Logger(t))
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
	mustEnsureStreams(t, js.JS, o, testutil.Logger(t))
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

// Settings an operator changed by hand that would lose or hold back work
// are warned about at start, left as they are, and put back by
// --update-streams; streams and consumers just made show no drift.
func TestEnsureStreams_hand_edits_are_warned_about_and_updated(t *testing.T) {
	tests := []struct {
		name   string
		stream string
		edit   func(*jetstream.StreamConfig)
		// consumer, when set, is edited instead of the stream.
		consumer string
		editC    func(*jetstream.ConsumerConfig)
		differs  string
		check    func(jetstream.StreamConfig, jetstream.ConsumerConfig) bool // true when put back
	}{
		{name: "retries kept one per subject", stream: subjects.RetryStream,
			edit: func(c *jetstream.StreamConfig) { c.MaxMsgsPerSubject = 1 }, differs: "max_msgs_per_subject",
			check: func(c jetstream.StreamConfig, _ jetstream.ConsumerConfig) bool { return c.MaxMsgsPerSubject <= 0 }},
		{name: "dead letters limited", stream: subjects.DeadStream,
			edit: func(c *jetstream.StreamConfig) { c.MaxMsgs = 5 }, differs: "max_msgs",
			check: func(c jetstream.StreamConfig, _ jetstream.ConsumerConfig) bool { return c.MaxMsgs <= 0 }},
		{name: "events limited in size", stream: subjects.Stream,
			edit: func(c *jetstream.StreamConfig) { c.MaxMsgSize = 2000; c.MaxBytes = 10 << 20 }, differs: "max_bytes, max_msg_size",
			check: func(c jetstream.StreamConfig, _ jetstream.ConsumerConfig) bool {
				return c.MaxMsgSize <= 0 && c.MaxBytes <= 0
			}},
		{name: "log discards new", stream: subjects.LogStream,
			edit: func(c *jetstream.StreamConfig) { c.Discard = jetstream.DiscardNew }, differs: "discard",
			check: func(c jetstream.StreamConfig, _ jetstream.ConsumerConfig) bool {
				return c.Discard == jetstream.DiscardOld
			}},
		{name: "dispatcher filtered to events", stream: subjects.Stream, consumer: subjects.DispatcherConsumer,
			editC: func(c *jetstream.ConsumerConfig) { c.FilterSubject = subjects.Events }, differs: "filter_subjects",
			check: func(_ jetstream.StreamConfig, c jetstream.ConsumerConfig) bool { return c.FilterSubject == "" }},
		{name: "dispatcher pull batch of 1", stream: subjects.Stream, consumer: subjects.DispatcherConsumer,
			editC: func(c *jetstream.ConsumerConfig) { c.MaxRequestBatch = 1 }, differs: "max_batch",
			check: func(_ jetstream.StreamConfig, c jetstream.ConsumerConfig) bool { return c.MaxRequestBatch == 0 }},
		{name: "retrier headers only", stream: subjects.RetryStream, consumer: subjects.RetrierConsumer,
			editC: func(c *jetstream.ConsumerConfig) { c.HeadersOnly = true }, differs: "headers_only",
			check: func(_ jetstream.StreamConfig, c jetstream.ConsumerConfig) bool { return !c.HeadersOnly }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			js := testutil.RunJetStream(t)
			ctx := testutil.Context(t)
			var logs testutil.SyncBuffer
			log := slog.New(slog.NewTextHandler(&logs, nil))
			o := streamOptions(time.Hour)
			mustEnsureStreams(t, js.JS, o, log)
			// Made by callbackd and read back: nothing differs.
			mustEnsureStreams(t, js.JS, o, log)
			if strings.Contains(logs.String(), "differs") {
				t.Fatalf("drift reported for what callbackd just made:\n%s", logs.String())
			}
			s, err := js.JS.Stream(ctx, tt.stream)
			if err != nil {
				t.Fatal(err)
			}
			if tt.consumer == "" {
				cfg := s.CachedInfo().Config
				tt.edit(&cfg)
				if _, err := js.JS.UpdateStream(ctx, cfg); err != nil {
					t.Fatal(err)
				}
			} else {
				c, err := s.Consumer(ctx, tt.consumer)
				if err != nil {
					t.Fatal(err)
				}
				cfg := c.CachedInfo().Config
				tt.editC(&cfg)
				if _, err := s.UpdateConsumer(ctx, cfg); err != nil {
					t.Fatal(err)
				}
			}
			mustEnsureStreams(t, js.JS, o, log)
			if want := "differs=\"" + tt.differs + "\""; !strings.Contains(logs.String(), want) && !strings.Contains(logs.String(), "differs="+tt.differs+"\n") {
				t.Errorf("no warning with %s:\n%s", want, logs.String())
			}
			o.Update = true
			if _, err := dispatcher.EnsureStreams(ctx, js.JS, o, log); err != nil {
				t.Fatalf("update: %v", err)
			}
			sc := streamConfig(t, js, tt.stream)
			var cc jetstream.ConsumerConfig
			if tt.consumer != "" {
				c, err := js.JS.Consumer(ctx, tt.stream, tt.consumer)
				if err != nil {
					t.Fatal(err)
				}
				cc = c.CachedInfo().Config
			}
			if !tt.check(sc, cc) {
				t.Errorf("not put back by the update: stream %+v consumer %+v", sc, cc)
			}
		})
	}
}

// A setting the server will not change on an existing stream stops
// --update-streams with the way out.
func TestEnsureStreams_update_that_the_server_refuses_says_what_to_do(t *testing.T) {
	js := testutil.RunJetStream(t)
	ctx := testutil.Context(t)
	o := streamOptions(time.Hour)
	mustEnsureStreams(t, js.JS, o, testutil.Logger(t))
	cfg := streamConfig(t, js, subjects.DeadStream)
	cfg.DenyDelete = true
	if _, err := js.JS.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	o.Update = true
	_, err := dispatcher.EnsureStreams(ctx, js.JS, o, testutil.Logger(t))
	if err == nil || !strings.Contains(err.Error(), "deny_delete") || !strings.Contains(err.Error(), "nats stream rm "+subjects.DeadStream) {
		t.Errorf("err = %v, want it to name deny_delete and the way out", err)
	}
}

// After --update-streams the topology carries the consumers' new config:
// the update's answer, for a consumer the server recovered from disk at its
// start, can carry the one from before it, and the dispatcher sizes its
// waits by the ack wait it reads there.
func TestEnsureStreams_update_after_a_restart_hands_back_the_new_config(t *testing.T) {
	dir := t.TempDir()
	first := testutil.RunJetStreamIn(t, dir)
	o := streamOptions(time.Hour)
	o.AckWait = 13 * time.Second
	mustEnsureStreams(t, first.JS, o, testutil.Logger(t))
	first.NC.Close()
	first.Server.Shutdown()
	js := testutil.RunJetStreamIn(t, dir)
	o.AckWait, o.Update = 50*time.Second, true
	top := mustEnsureStreams(t, js.JS, o, testutil.Logger(t))
	for _, c := range []jetstream.Consumer{top.Dispatcher, top.Retrier} {
		if got := c.CachedInfo().Config.AckWait; got != 50*time.Second {
			t.Errorf("%s: ack wait %v in the topology, want 50s", c.CachedInfo().Name, got)
		}
	}
}

// A consumer paused by hand (nats consumer pause) hands out nothing: it is
// warned about at start, and --update-streams resumes it.
func TestEnsureStreams_a_paused_consumer_is_warned_about_and_resumed(t *testing.T) {
	js := testutil.RunJetStream(t)
	ctx := testutil.Context(t)
	var logs testutil.SyncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	o := streamOptions(time.Hour)
	mustEnsureStreams(t, js.JS, o, log)
	if _, err := js.JS.PauseConsumer(ctx, subjects.Stream, subjects.DispatcherConsumer, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	mustEnsureStreams(t, js.JS, o, log)
	if !strings.Contains(logs.String(), "differs=paused") {
		t.Errorf("no warning of the pause:\n%s", logs.String())
	}
	o.Update = true
	top := mustEnsureStreams(t, js.JS, o, log)
	info, err := top.Dispatcher.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Paused {
		t.Error("still paused after --update-streams")
	}
}

// Replicated streams and consumers, as a three-node cluster reports them
// back, show no drift either: the drift checks compare what the server
// normalises (unset limits, defaults) as it stores them.
func TestEnsureStreams_a_cluster_reports_no_drift(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a three-node cluster")
	}
	c := testutil.RunCluster(t, 3)
	c.WaitReady(t)
	_, js := c.Connect(t)
	var logs testutil.SyncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	o := streamOptions(time.Hour)
	o.Replicas = 3
	o.LogBytes = 64 << 20
	// A cluster just formed may not place replicated streams at once:
	// tried again, as serve does (ensureJetStream).
	testutil.CheckFor(t, waitLong, 100*time.Millisecond, func() error {
		_, err := dispatcher.EnsureStreams(testutil.Context(t), js, o, log)
		return err
	})
	mustEnsureStreams(t, js, o, log)
	if strings.Contains(logs.String(), "differs") {
		t.Errorf("drift reported for what callbackd just made on a cluster:\n%s", logs.String())
	}
}

// mustEnsureStreams runs EnsureStreams and stops the test on its error.
func mustEnsureStreams(t *testing.T, js jetstream.JetStream, o dispatcher.StreamOptions, log *slog.Logger) dispatcher.Topology {
	t.Helper()
	top, err := dispatcher.EnsureStreams(testutil.Context(t), js, o, log)
	if err != nil {
		t.Fatal(err)
	}
	return top
}
