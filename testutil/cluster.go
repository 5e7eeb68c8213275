package testutil

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callbackd/callbackd/embedded"
)

// Cluster is a JetStream cluster of in-process embedded servers, one per
// node, each on loopback ports that stay the same across a restart so that
// clients given ClientURLs find a restarted node again.
type Cluster struct {
	t     testing.TB
	nodes []*ClusterNode
}

// ClusterNode is one node of a Cluster.
type ClusterNode struct {
	// Name is the node's server name (S-1, S-2, …).
	Name string
	// DataDir is the node's store; Restart reuses it.
	DataDir string
	// ClientAddr and ClusterAddr are the node's client and route addresses
	// (127.0.0.1:port).
	ClientAddr  string
	ClusterAddr string

	opts embedded.Options
	mu   sync.Mutex
	srv  *embedded.Server // nil while stopped
}

// Server returns the node's running server, nil while it is stopped.
func (n *ClusterNode) Server() *embedded.Server {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.srv
}

// RunCluster starts an n-node JetStream cluster on loopback in temp dirs,
// waits until it has a meta leader that sees every node, and stops it at
// cleanup. Production raft timings: forming takes about a second.
func RunCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	c := &Cluster{t: t}
	routes := make([]string, n)
	for i := range n {
		node := &ClusterNode{
			Name:        fmt.Sprintf("S-%d", i+1),
			DataDir:     t.TempDir(),
			ClientAddr:  FreeAddr(t),
			ClusterAddr: FreeAddr(t),
		}
		routes[i] = "nats://" + node.ClusterAddr
		c.nodes = append(c.nodes, node)
	}
	for _, node := range c.nodes {
		node.opts = embedded.Options{
			DataDir:    node.DataDir,
			Listen:     node.ClientAddr,
			ServerName: node.Name,
			Cluster:    embedded.Cluster{Name: "callbackd-test", Listen: node.ClusterAddr, Routes: routes},
			Logger:     Logger(t).With("node", node.Name),
			// Three nodes under -race beside other packages' tests on 2
			// cores: embedded's default 10 s was once not enough, and
			// 25 s once not for a node restarted with its streams on a
			// box loaded from outside as well.
			ReadyTimeout: time.Minute,
		}
		t.Cleanup(func() { c.stop(node) })
	}
	// Start the nodes side by side: each waits for its listeners only, and
	// the cluster forms once they are all up.
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i, node := range c.nodes {
		wg.Go(func() { errs[i] = c.start(node) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	c.WaitReady(t)
	return c
}

func (c *Cluster) start(node *ClusterNode) error {
	ctx, cancel := context.WithTimeout(context.Background(), node.opts.ReadyTimeout+5*time.Second)
	defer cancel()
	s, err := embedded.Start(ctx, node.opts)
	if err != nil {
		return fmt.Errorf("start %s: %w", node.Name, err)
	}
	node.mu.Lock()
	node.srv = s
	node.mu.Unlock()
	return nil
}

func (c *Cluster) stop(node *ClusterNode) {
	node.mu.Lock()
	s := node.srv
	node.srv = nil
	node.mu.Unlock()
	if s != nil {
		s.Shutdown()
	}
}

// Nodes returns the cluster's nodes.
func (c *Cluster) Nodes() []*ClusterNode { return c.nodes }

// Node returns node i (0-based).
func (c *Cluster) Node(i int) *ClusterNode { return c.nodes[i] }

// ClientURLs is every node's client URL, comma-separated, as nats.Connect
// and nats.url take them.
func (c *Cluster) ClientURLs() string {
	urls := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		urls[i] = "nats://" + n.ClientAddr
	}
	return strings.Join(urls, ",")
}

// Stop shuts node i down (its store is kept).
func (c *Cluster) Stop(i int) {
	c.t.Helper()
	c.stop(c.nodes[i])
}

// Restart starts node i again, after Stop, on the same store and ports.
// It does not wait for the node to catch up; WaitReady does.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	node := c.nodes[i]
	if node.Server() != nil {
		c.t.Fatalf("restart %s: it is running", node.Name)
	}
	if err := c.start(node); err != nil {
		c.t.Fatal(err)
	}
}

// WaitReady polls until a meta leader is elected, sees every running node
// as a peer, and every running node is current with it.
func (c *Cluster) WaitReady(t testing.TB) {
	t.Helper()
	CheckFor(t, 60*time.Second, 50*time.Millisecond, func() error {
		var running []*embedded.Server
		for _, n := range c.nodes {
			if s := n.Server(); s != nil {
				running = append(running, s)
			}
		}
		leader := -1
		for i, s := range running {
			if s.NATS().JetStreamIsLeader() {
				leader = i
			}
		}
		if leader < 0 {
			return fmt.Errorf("no JetStream meta leader among %d running nodes", len(running))
		}
		if peers := running[leader].NATS().JetStreamClusterPeers(); len(peers) < len(running) {
			return fmt.Errorf("meta leader %s sees %d of %d nodes: %v", running[leader].Name(), len(peers), len(running), peers)
		}
		for _, s := range running {
			if !s.NATS().JetStreamIsCurrent() {
				return fmt.Errorf("%s is not current with the meta leader", s.Name())
			}
		}
		return nil
	})
}

// MetaLeader returns the index of the node that is the JetStream meta
// leader, -1 when there is none.
func (c *Cluster) MetaLeader() int {
	for i, n := range c.nodes {
		if s := n.Server(); s != nil && s.NATS().JetStreamIsLeader() {
			return i
		}
	}
	return -1
}

// StreamLeader returns the index of the node that leads the stream (in the
// global account), -1 when there is none.
func (c *Cluster) StreamLeader(stream string) int {
	for i, n := range c.nodes {
		if s := n.Server(); s != nil && s.NATS().JetStreamIsStreamLeader(server.DEFAULT_GLOBAL_ACCOUNT, stream) {
			return i
		}
	}
	return -1
}

// Connect opens a client connection to every node (it moves to another
// node when its own stops, and never gives up), closed at cleanup.
func (c *Cluster) Connect(t testing.TB) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(c.ClientURLs(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatalf("connect to cluster: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return nc, js
}
