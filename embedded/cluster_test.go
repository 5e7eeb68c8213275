package embedded_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callbackd/callbackd/embedded"
	"github.com/callbackd/callbackd/testutil"
)

// createR3 creates an R3 work-queue stream, retrying while the cluster
// places it.
func createR3(t *testing.T, js jetstream.JetStream, name string) {
	t.Helper()
	testutil.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := js.CreateStream(ctx, jetstream.StreamConfig{
			Name: name, Subjects: []string{name + ".>"}, Replicas: 3,
			Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage,
		})
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return nil
		}
		return err
	})
}

func publishN(t *testing.T, js jetstream.JetStream, subject string, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		testutil.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := js.Publish(ctx, subject, []byte(fmt.Sprint(i)), jetstream.WithMsgID(fmt.Sprint(i)))
			return err
		})
	}
}

func streamMsgs(t *testing.T, js jetstream.JetStream, name string) uint64 {
	t.Helper()
	var n uint64
	testutil.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s, err := js.Stream(ctx, name)
		if err != nil {
			return err
		}
		n = s.CachedInfo().State.Msgs
		return nil
	})
	return n
}

// A three-node cluster keeps an R3 stream writable and complete while one
// node, the stream's leader, is down, and the node catches up on restart.
func TestCluster_R3_stream_survives_the_loss_of_its_leader(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a three-node cluster")
	}
	c := testutil.RunCluster(t, 3)
	_, js := c.Connect(t)
	createR3(t, js, "T")
	publishN(t, js, "T.x", 0, 100)

	leader := c.StreamLeader("T")
	if leader < 0 {
		t.Fatal("stream T has no leader")
	}
	c.Stop(leader)
	publishN(t, js, "T.x", 100, 200)
	if n := streamMsgs(t, js, "T"); n != 200 {
		t.Fatalf("stream holds %d messages with a node down, want 200", n)
	}

	c.Restart(leader)
	c.WaitReady(t)
	// The restarted node catches up: ask it alone.
	nc, err := nats.Connect("nats://" + c.Node(leader).ClientAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	one, _ := jetstream.New(nc)
	testutil.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s, err := one.Stream(ctx, "T")
		if err != nil {
			return err
		}
		info, err := s.Info(ctx)
		if err != nil {
			return err
		}
		for _, p := range info.Cluster.Replicas {
			if !p.Current {
				return fmt.Errorf("replica %s is not current", p.Name)
			}
		}
		if info.State.Msgs != 200 {
			return fmt.Errorf("%d messages", info.State.Msgs)
		}
		return nil
	})
}

// Embedded servers configured as callbackd configures them (one route list
// shared by all, auth and route TLS) form a cluster with JetStream.
func TestCluster_embedded_nodes_with_auth_and_route_TLS(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a three-node cluster")
	}
	ca := testutil.NewCA(t)
	auth := embedded.Auth{User: "cb", Password: "s3cret"}
	const n = 3
	clientAddrs, routes := make([]string, n), make([]string, n)
	clusterAddrs := make([]string, n)
	for i := range n {
		clientAddrs[i], clusterAddrs[i] = testutil.FreeAddr(t), testutil.FreeAddr(t)
		routes[i] = "nats://" + clusterAddrs[i]
	}
	servers := make([]*embedded.Server, n)
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		cert, key := ca.Issue(t, fmt.Sprintf("node%d", i))
		o := embedded.Options{
			DataDir: t.TempDir(), Listen: clientAddrs[i], Auth: auth, Logger: testutil.Logger(t),
			Cluster: embedded.Cluster{Listen: clusterAddrs[i], Routes: routes,
				TLS: embedded.TLSFiles{Cert: cert, Key: key, CA: ca.File}},
		}
		wg.Go(func() {
			s, err := embedded.Start(context.Background(), o)
			servers[i], errs[i] = s, err
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(servers[i].Shutdown)
		if !servers[i].Clustered() {
			t.Fatalf("node %d is not clustered", i)
		}
	}

	urls := "nats://" + clientAddrs[0] + ",nats://" + clientAddrs[1] + ",nats://" + clientAddrs[2]
	nc, err := nats.Connect(urls, nats.UserInfo(auth.User, auth.Password))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	createR3(t, js, "T")
	publishN(t, js, "T.x", 0, 10)

	// Routes speak TLS only, with certificates of the CA.
	probeCert, probeKey := ca.Issue(t, "probe")
	pair, err := tls.LoadX509KeyPair(probeCert, probeKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pem, _ := os.ReadFile(ca.File)
	pool.AppendCertsFromPEM(pem)
	for i, addr := range clusterAddrs {
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(time.Second))
		if line, err := bufio.NewReader(conn).ReadString('\n'); err == nil {
			t.Fatalf("node %d route listener answered in clear: %q", i, line)
		}
		conn.Close()
		tconn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
			&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}})
		if err != nil {
			t.Fatalf("node %d: TLS to the route listener: %v", i, err)
		}
		_ = tconn.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, err := bufio.NewReader(tconn).ReadString('\n')
		tconn.Close()
		if err != nil || !strings.HasPrefix(line, "INFO ") {
			t.Fatalf("node %d: over TLS got %q %v, want INFO", i, line, err)
		}
	}
	// Every node sees the other two.
	for i, s := range servers {
		testutil.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
			routez, err := s.NATS().Routez(nil)
			if err != nil {
				return err
			}
			peers := map[string]bool{}
			for _, r := range routez.Routes {
				peers[r.RemoteName] = true
			}
			if len(peers) != n-1 {
				return fmt.Errorf("node %d has routes to %d peers", i, len(peers))
			}
			return nil
		})
	}
}
