// Package testutil holds helpers for callbackd's tests: a real JetStream
// server per test, HTTP sinks that record what they receive, and polling
// instead of sleeping. Every helper takes testing.TB and cleans up after
// itself.
package testutil

import (
	"context"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callbackd/callbackd/embedded"
)

// JetStream is a running embedded server with a client connection.
type JetStream struct {
	Server *embedded.Server
	NC     *nats.Conn
	JS     jetstream.JetStream
	// DataDir is the server's data directory.
	DataDir string
}

// RunJetStream starts an embedded NATS server with JetStream on a random
// loopback port in a temp dir, connects to it, and stops both at cleanup.
func RunJetStream(t testing.TB) *JetStream {
	t.Helper()
	dir := t.TempDir()
	return RunJetStreamIn(t, dir)
}

// RunJetStreamIn is RunJetStream on a given data dir, so a test can restart a
// server on the same state.
func RunJetStreamIn(t testing.TB, dir string) *JetStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := embedded.Start(ctx, embedded.Options{DataDir: dir, Listen: "127.0.0.1:0", Logger: Logger(t)})
	if err != nil {
		t.Fatalf("start embedded nats: %v", err)
	}
	nc, err := s.Connect()
	if err != nil {
		s.Shutdown()
		t.Fatalf("connect: %v", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	t.Cleanup(func() {
		nc.Close()
		s.Shutdown()
	})
	return &JetStream{Server: s, NC: nc, JS: js, DataDir: dir}
}

// Logger returns a slog logger that writes to the test log when
// CALLBACKD_TEST_LOG is set, and discards otherwise.
func Logger(t testing.TB) *slog.Logger {
	if os.Getenv("CALLBACKD_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(tbWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tbWriter struct{ t testing.TB }

func (w tbWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s", p)
	return len(p), nil
}

var _ io.Writer = tbWriter{}

// CheckFor calls fn every step until it returns nil or total has passed, and
// fails the test with fn's last error then.
func CheckFor(t testing.TB, total, step time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	var err error
	for {
		if err = fn(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %v", total, err)
		}
		time.Sleep(step)
	}
}

// Context returns a context cancelled at test cleanup.
func Context(t testing.TB) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return ctx
}
