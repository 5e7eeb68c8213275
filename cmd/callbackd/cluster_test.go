package main_test

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callbackd/callbackd/testutil"
)

// Scale-out tests (SPEC §8): several `callbackd serve` processes on one NATS
// cluster share the durable consumers and the settings.

// externalNATS is the nats section of an instance using an external
// server or cluster.
func externalNATS(urls string, replicas int) string {
	return fmt.Sprintf("nats:\n  embedded: false\n  url: %q\n  replicas: %d\n", urls, replicas)
}

// startAll starts the instances side by side (so that they race to create
// the streams, as instances of a site do) and waits until all are ready.
func startAll(t *testing.T, ins ...*instance) {
	t.Helper()
	for _, in := range ins {
		in.start(t)
	}
	for _, in := range ins {
		in.waitReady(t)
	}
}

// Two instances on a three-node cluster with replicas 3 deliver 5,000
// events between them; a settings change made through one reaches both
// within a second.
func TestScaleOut_two_instances_share_the_work_on_a_three_node_cluster(t *testing.T) {
	skipShort(t)
	c := testutil.RunCluster(t, 3)
	_, js := c.Connect(t)
	sink := newLoadSink(t, 0)
	putAccountURL(t, js, 3, sink.URL+"/v1")
	a := newInstance(t, "a", externalNATS(c.ClientURLs(), 3))
	b := newInstance(t, "b", externalNATS(c.ClientURLs(), 3))
	startAll(t, a, b)

	const n = 5000
	start := time.Now()
	publishLoad(t, js, 1, n+1)
	sink.waitUnique(t, n, faultWait)
	elapsed := time.Since(start)
	dups := sink.check(t, 1, n+1)
	// The sink has every event; an instance counts a delivery once it has
	// read the answer, a moment later.
	var da, db float64
	testutil.CheckFor(t, faultWait, 50*time.Millisecond, func() error {
		if da, db = a.delivered(t), b.delivered(t); da+db < n {
			return fmt.Errorf("instances count %.0f deliveries, want at least %d", da+db, n)
		}
		return nil
	})
	t.Logf("%d events in %s (%.0f/s): instance a delivered %.0f, b %.0f; %d duplicates",
		n, elapsed.Round(time.Millisecond), float64(n)/elapsed.Seconds(), da, db, dups)
	if da == 0 || db == 0 {
		t.Errorf("work not shared: a delivered %.0f, b %.0f", da, db)
	}

	// Settings: change the account's URL through a's API; from one second
	// after the answer, both instances deliver to the new URL (SPEC §4).
	sink.mu.Lock()
	v1 := sink.byPath["/v1"]
	sink.mu.Unlock()
	q := fmt.Sprintf(`{"query":"mutation { updateAccount(input: {accountId: \"%s\", apiCallbackUrl: \"%s/v2\"}) { account { apiCallbackUrl } } }"}`, loadAccount, sink.URL)
	code, body, err := a.call("POST", "/graphql", q)
	if err != nil || code != 200 || strings.Contains(body, `"errors"`) {
		t.Fatalf("updateAccount through a: %d %s %v", code, body, err)
	}
	// The contract is a bound in time: wait it out, then publish, in
	// rounds until each instance has delivered some (the consumers do not
	// split work evenly).
	time.Sleep(time.Second)
	const round = 250
	pa, pb := a.delivered(t), b.delivered(t)
	var ea, eb float64
	next := n + 1
	for r := 0; r < 8 && (ea == 0 || eb == 0); r++ {
		publishLoad(t, js, next, next+round)
		next += round
		sink.waitUnique(t, next-1, faultWait)
		ea, eb = a.delivered(t)-pa, b.delivered(t)-pb
	}
	m := next - (n + 1)
	sink.check(t, n+1, next)
	sink.mu.Lock()
	v1After, v2 := sink.byPath["/v1"], sink.byPath["/v2"]
	sink.mu.Unlock()
	t.Logf("after the change: a delivered %.0f, b %.0f; %d to /v2, %d more to /v1", ea, eb, v2, v1After-v1)
	if v1After != v1 || v2 < m {
		t.Errorf("after the change %d deliveries went to the old URL and %d to the new, want 0 and %d", v1After-v1, v2, m)
	}
	if ea == 0 || eb == 0 {
		t.Errorf("one instance delivered nothing of %d events after the change (a %.0f, b %.0f): cannot tell that both caches moved", m, ea, eb)
	}
}

// One NATS node (the leader of CALLBACKS) stops while two instances are
// delivering, and events are published while it is down: every event is
// delivered, and the node rejoins.
func TestScaleOut_every_event_delivered_when_a_NATS_node_stops(t *testing.T) {
	skipShort(t)
	c := testutil.RunCluster(t, 3)
	_, js := c.Connect(t)
	sink := newLoadSink(t, 0)
	putAccountURL(t, js, 3, sink.URL)
	a := newInstance(t, "a", externalNATS(c.ClientURLs(), 3))
	b := newInstance(t, "b", externalNATS(c.ClientURLs(), 3))
	startAll(t, a, b)

	const n = 3000
	publishLoad(t, js, 1, n/2+1)
	sink.waitUnique(t, n/4, faultWait)
	leader := c.StreamLeader("CALLBACKS")
	if leader < 0 {
		t.Fatal("CALLBACKS has no leader")
	}
	c.Stop(leader)
	t.Logf("stopped %s (leader of CALLBACKS) with %d of %d events delivered", c.Node(leader).Name, sink.unique(), n)
	publishLoad(t, js, n/2+1, n+1)
	sink.waitUnique(t, 3*n/4, faultWait)
	c.Restart(leader)
	t.Logf("restarted %s with %d of %d events delivered", c.Node(leader).Name, sink.unique(), n)
	sink.waitUnique(t, n, faultWait)
	dups := sink.check(t, 1, n+1)
	c.WaitReady(t)
	t.Logf("every event delivered; %d duplicates; a delivered %.0f, b %.0f", dups, a.delivered(t), b.delivered(t))
}

// Three `callbackd serve` with embedded servers form a NATS cluster of
// their own (routes with TLS, clients with a password), replicas 3, and
// deliver; with one of them stopped the other two go on.
func TestEmbeddedCluster_three_serve_processes_form_a_cluster_and_deliver(t *testing.T) {
	skipShort(t)
	ca := testutil.NewCA(t)
	const nodes = 3
	clientAddrs, routes := make([]string, nodes), make([]string, nodes)
	clusterAddrs := make([]string, nodes)
	for i := range nodes {
		clientAddrs[i], clusterAddrs[i] = testutil.FreeAddr(t), testutil.FreeAddr(t)
		routes[i] = "nats://" + clusterAddrs[i]
	}
	ins := make([]*instance, nodes)
	for i := range nodes {
		cert, key := ca.Issue(t, fmt.Sprintf("node%d", i+1))
		ins[i] = newInstance(t, fmt.Sprintf("node%d", i+1), fmt.Sprintf(`nats:
  embedded: true
  listen: %s
  replicas: 3
  auth: {user: callbackd, password: s3cret}
  cluster:
    name: site
    listen: %s
    routes: [%s]
    tls: {cert: %s, key: %s, ca: %s}
`, clientAddrs[i], clusterAddrs[i], strings.Join(routes, ", "), cert, key, ca.File))
	}
	startAll(t, ins...)

	nc, err := nats.Connect("nats://"+strings.Join(clientAddrs, ",nats://"),
		nats.UserInfo("callbackd", "s3cret"), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	sink := newLoadSink(t, 0)
	waitSettings(t, putAccountURL(t, js, 3, sink.URL), ins...)
	checkReplicas(t, js, "CALLBACKS", 3)

	const n = 300
	publishLoad(t, js, 1, n+1)
	sink.waitUnique(t, n, faultWait)
	dups := sink.check(t, 1, n+1)
	var counts []string
	for _, in := range ins {
		counts = append(counts, fmt.Sprintf("%s %.0f", in.name, in.delivered(t)))
	}
	t.Logf("%d events: %s; %d duplicates", n, strings.Join(counts, ", "), dups)

	// One node goes (its NATS server with it): the other two hold a
	// majority, and deliver what is published next.
	last := ins[nodes-1]
	if err := last.proc.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := last.proc.Wait(t, 60*time.Second); code != 0 {
		t.Fatalf("%s exited with %d after SIGTERM", last.name, code)
	}
	publishLoad(t, js, n+1, n+101)
	sink.waitUnique(t, n+100, faultWait)
	sink.check(t, n+1, n+101)
}

// checkReplicas verifies a stream's replica count.
func checkReplicas(t *testing.T, js jetstream.JetStream, stream string, want int) {
	t.Helper()
	var got int
	testutil.CheckFor(t, 30*time.Second, 200*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s, err := js.Stream(ctx, stream)
		if err != nil {
			return err
		}
		got = s.CachedInfo().Config.Replicas
		return nil
	})
	if got != want {
		t.Errorf("%s has %d replicas, want %d", stream, got, want)
	}
}
