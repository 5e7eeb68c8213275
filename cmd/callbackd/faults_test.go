package main_test

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/callbackd/callbackd/testutil"
)

// Fault tests (SPEC §8, at least once): a callbackd killed with SIGKILL, a
// plugin process killed, and a SIGTERM drain, each in the middle of a load,
// lose no event. Duplicates are allowed; they are counted, and every one
// carries its event's Callback-Delivery-Id.

// faultSetup is one instance on a single external JetStream server, the
// load account pointed at a sink.
func faultSetup(t *testing.T, sinkDelay time.Duration, extra string, args ...string) (*testutil.JetStream, *loadSink, *instance) {
	t.Helper()
	js := testutil.RunJetStream(t)
	sink := newLoadSink(t, sinkDelay)
	putAccountURL(t, js.JS, 1, sink.URL)
	in := newInstance(t, "a", externalNATS(js.Server.ClientURL(), 1)+extra)
	in.args = args
	in.start(t)
	in.waitReady(t)
	return js, sink, in
}

// SIGKILL of callbackd in the middle of 5,000 events, then a restart on the
// same data: every event is delivered; work in flight at the kill comes
// back after AckWait (delivery.timeout 2s + 10s).
func TestFaults_SIGKILL_of_callbackd_loses_no_event(t *testing.T) {
	skipShort(t)
	js, sink, in := faultSetup(t, 0, "")
	const n = 5000
	publishLoad(t, js.JS, 1, n+1)
	start := time.Now()
	sink.waitUnique(t, n/3, faultWait)

	in.kill(t)
	killedAt := time.Now()
	t.Logf("SIGKILL with %d of %d events delivered after %s", sink.unique(), n, killedAt.Sub(start).Round(time.Millisecond))
	in.start(t)
	in.waitReady(t)
	sink.waitUnique(t, n, faultWait)
	dups := sink.check(t, 1, n+1)
	t.Logf("every event delivered %s after the kill; %d duplicate deliveries, each with its event's Callback-Delivery-Id",
		time.Since(killedAt).Round(time.Millisecond), dups)
}

// The built-in plugins' process (plugins.builtins: process) is killed with
// SIGKILL in the middle of 5,000 events: callbackd restarts it, and the
// events it held are redelivered.
func TestFaults_SIGKILL_of_the_plugin_process_loses_no_event(t *testing.T) {
	skipShort(t)
	js, sink, in := faultSetup(t, 0, "plugins:\n  builtins: process\n")
	kids := in.children()
	if len(kids) == 0 {
		t.Skip("no plugin process under callbackd serve (plugins.builtins: process not running built-ins in a process)")
	}
	const n = 5000
	publishLoad(t, js.JS, 1, n+1)
	sink.waitUnique(t, n/3, faultWait)

	killPIDs(kids)
	killedAt := time.Now()
	t.Logf("SIGKILL of plugin process(es) %v with %d of %d events delivered", kids, sink.unique(), n)
	sink.waitUnique(t, n, faultWait)
	dups := sink.check(t, 1, n+1)
	code, body, err := in.get("/metrics")
	if err != nil || code != 200 {
		t.Fatalf("/metrics: %d %v", code, err)
	}
	restarts := metricSum(body, "callbackd_plugin_restarts_total")
	t.Logf("every event delivered %s after the kill; %d duplicate deliveries; plugin restarts %.0f",
		time.Since(killedAt).Round(time.Millisecond), dups, restarts)
	if restarts < 1 {
		t.Errorf("callbackd_plugin_restarts_total = %.0f, want at least 1", restarts)
	}
	if in.proc.Exited() {
		t.Fatalf("callbackd exited with %d after its plugin was killed", in.proc.ExitCode())
	}
}

// SIGTERM in the middle of a load on a slow endpoint: callbackd finishes or
// hands back its work within the delivery timeout and exits 0; after a
// restart every event is delivered. As many attempts may be in flight to
// the sink as messages are pulled, so that work is in flight (not parked)
// when the signal comes.
func TestFaults_SIGTERM_drains_and_loses_no_event(t *testing.T) {
	skipShort(t)
	js, sink, in := faultSetup(t, 500*time.Millisecond, "",
		"--dispatcher.workers", "32", "--dispatcher.per_host_concurrency", "32", "--dispatcher.max_ack_pending", "32")
	const n = 400
	publishLoad(t, js.JS, 1, n+1)
	sink.waitUnique(t, n/4, faultWait)

	before := sink.unique()
	sent := time.Now()
	if err := in.proc.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	code := in.proc.Wait(t, 30*time.Second)
	took := time.Since(sent)
	after := sink.unique()
	t.Logf("SIGTERM with %d of %d events delivered: exit %d after %s, %d more delivered meanwhile", before, n, code, took.Round(time.Millisecond), after-before)
	if code != 0 {
		t.Fatalf("exit %d after SIGTERM, want 0\n%s", code, in.proc.Stderr())
	}
	// Bounded by delivery.timeout (2s), plus start-up of nothing and
	// shutdown of plugins, NATS and the API.
	if took > 15*time.Second {
		t.Errorf("drain took %s, want about delivery.timeout (2s)", took)
	}
	if s := in.proc.Stderr(); strings.Contains(s, "panic:") || !strings.Contains(s, "callbackd stopped") {
		t.Errorf("unclean stop:\n%s", s)
	}

	in.start(t)
	in.waitReady(t)
	sink.waitUnique(t, n, faultWait)
	dups := sink.check(t, 1, n+1)
	t.Logf("every event delivered after the restart; %d duplicate deliveries", dups)
}
