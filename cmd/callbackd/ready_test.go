package main

import (
	"strings"
	"testing"
	"time"

	"github.com/callbackd/callbackd/dispatcher"
	"github.com/callbackd/callbackd/subjects"
	"github.com/callbackd/callbackd/testutil"
)

// /readyz's consumers check fails, naming the consumer, while one of
// callbackd's consumers is missing, and passes once both exist.
func TestReadyChecks_consumers(t *testing.T) {
	js := testutil.RunJetStream(t)
	ctx := testutil.Context(t)
	var check func() error
	for _, c := range readyChecks(apiDeps{NC: js.NC, JS: js.JS}) {
		if c.Name == "consumers" {
			check = func() error { return c.Fn(ctx) }
		}
	}
	if check == nil {
		t.Fatal("no consumers check")
	}
	if err := check(); err == nil || !strings.Contains(err.Error(), subjects.DispatcherConsumer) {
		t.Errorf("with no consumers: %v, want an error naming %s", err, subjects.DispatcherConsumer)
	}
	if _, err := dispatcher.EnsureStreams(ctx, js.JS, dispatcher.StreamOptions{
		RetentionEvents: time.Hour, RetentionDead: time.Hour, RetentionLog: time.Hour, LogBytes: 1 << 30,
		AckWait: 40 * time.Second, MaxAckPending: 64, MaxRetryPending: 1000,
	}, testutil.Logger(t)); err != nil {
		t.Fatal(err)
	}
	if err := check(); err != nil {
		t.Errorf("with both consumers: %v", err)
	}
	if err := js.JS.DeleteConsumer(ctx, subjects.RetryStream, subjects.RetrierConsumer); err != nil {
		t.Fatal(err)
	}
	if err := check(); err == nil || !strings.Contains(err.Error(), subjects.RetrierConsumer) {
		t.Errorf("with the retrier deleted: %v, want an error naming %s", err, subjects.RetrierConsumer)
	}
}
