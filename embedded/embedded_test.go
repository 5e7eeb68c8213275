package embedded_test

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callbackd/callbackd/embedded"
	"github.com/callbackd/callbackd/testutil"
)

func start(t *testing.T, o embedded.Options) *embedded.Server {
	t.Helper()
	if o.DataDir == "" {
		o.DataDir = t.TempDir()
	}
	if o.Logger == nil {
		o.Logger = testutil.Logger(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := embedded.Start(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	return s
}

// useJetStream proves a connection is usable: a JetStream round trip.
func useJetStream(t *testing.T, nc *nats.Conn) {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.AccountInfo(ctx); err != nil {
		t.Fatalf("account info: %v", err)
	}
}

func connect(t *testing.T, url string, opts ...nats.Option) (*nats.Conn, error) {
	t.Helper()
	nc, err := nats.Connect(url, append([]nats.Option{nats.Timeout(5 * time.Second), nats.MaxReconnects(0)}, opts...)...)
	if err == nil {
		t.Cleanup(nc.Close)
	}
	return nc, err
}

func TestStart_keeps_a_stable_server_name(t *testing.T) {
	dir := t.TempDir()
	s := start(t, embedded.Options{DataDir: dir})
	name := s.Name()
	s.Shutdown()
	if !strings.HasPrefix(name, "callbackd-") {
		t.Fatalf("generated name %q", name)
	}
	if again := start(t, embedded.Options{DataDir: dir}).Name(); again != name {
		t.Fatalf("name changed across restarts: %q then %q", name, again)
	}
	if _, err := os.Stat(filepath.Join(dir, "server_name.tmp")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("server_name.tmp left behind: %v", err)
	}
}

// Two servers on one store hand out the same stream sequences and lose
// each other's messages: the second is refused while the first runs, and
// starts once it has shut down.
func TestStart_refuses_a_data_dir_in_use(t *testing.T) {
	dir := t.TempDir()
	first := start(t, embedded.Options{DataDir: dir})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	second, err := embedded.Start(ctx, embedded.Options{DataDir: dir, Logger: testutil.Logger(t)})
	if err == nil {
		second.Shutdown()
		t.Fatal("a second server started on the same data dir")
	}
	for _, want := range []string{dir, "in use by another callbackd serve (pid " + strconv.Itoa(os.Getpid()) + ")"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	first.Shutdown()
	start(t, embedded.Options{DataDir: dir})
}

// A server_name file that is empty or not a name stops start-up naming the
// file: a new name would make the node a stranger to its cluster.
func TestStart_refuses_a_bad_server_name_file(t *testing.T) {
	for _, content := range []string{"", "\n", "bad name\n", "bad\x00name\n", "bad\xffname\n"} {
		dir := t.TempDir()
		path := filepath.Join(dir, "server_name")
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		s, err := embedded.Start(ctx, embedded.Options{DataDir: dir, Logger: testutil.Logger(t)})
		cancel()
		if err == nil {
			s.Shutdown()
			t.Errorf("server_name %q: started as %q, want an error", content, s.Name())
			continue
		}
		if !strings.Contains(err.Error(), path) {
			t.Errorf("server_name %q: error %q does not name %s", content, err, path)
		}
		if b, _ := os.ReadFile(path); string(b) != content {
			t.Errorf("server_name %q: file now %q, want it left as it was", content, b)
		}
	}
}

func TestStart_user_and_password_are_required_of_clients(t *testing.T) {
	s := start(t, embedded.Options{Listen: "127.0.0.1:0", Auth: embedded.Auth{User: "cb", Password: "s3cret"}})

	if _, err := connect(t, s.ClientURL()); err == nil || !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Fatalf("unauthenticated client: err = %v, want an authorization violation", err)
	}
	if _, err := connect(t, s.ClientURL(), nats.UserInfo("cb", "wrong")); err == nil {
		t.Fatal("wrong password accepted")
	}
	nc, err := connect(t, s.ClientURL(), nats.UserInfo("cb", "s3cret"))
	if err != nil {
		t.Fatalf("authenticated client: %v", err)
	}
	useJetStream(t, nc)

	// callbackd's own in-process connection authenticates too.
	in, err := s.Connect()
	if err != nil {
		t.Fatalf("in-process: %v", err)
	}
	defer in.Close()
	useJetStream(t, in)
}

func TestStart_token_is_required_of_clients(t *testing.T) {
	s := start(t, embedded.Options{Listen: "127.0.0.1:0", Auth: embedded.Auth{Token: "t0ken"}})
	if _, err := connect(t, s.ClientURL()); err == nil {
		t.Fatal("unauthenticated client accepted")
	}
	nc, err := connect(t, s.ClientURL(), nats.Token("t0ken"))
	if err != nil {
		t.Fatalf("token client: %v", err)
	}
	useJetStream(t, nc)
	in, err := s.Connect()
	if err != nil {
		t.Fatalf("in-process: %v", err)
	}
	defer in.Close()
	useJetStream(t, in)
}

func TestStart_TLS_listener_with_client_certificates(t *testing.T) {
	ca := testutil.NewCA(t)
	cert, key := ca.Issue(t, "server")
	clientCert, clientKey := ca.Issue(t, "client")
	other := testutil.NewCA(t)
	strangerCert, strangerKey := other.Issue(t, "stranger")

	s := start(t, embedded.Options{Listen: "127.0.0.1:0", TLS: embedded.TLSFiles{Cert: cert, Key: key, CA: ca.File}})
	url := s.ClientURL()

	if _, err := connect(t, url); err == nil {
		t.Fatal("client without the CA accepted the server's certificate")
	}
	if _, err := connect(t, url, nats.RootCAs(ca.File)); err == nil {
		t.Fatal("client without a certificate accepted")
	}
	if _, err := connect(t, url, nats.RootCAs(ca.File), nats.ClientCert(strangerCert, strangerKey)); err == nil {
		t.Fatal("client certificate of another CA accepted")
	}
	nc, err := connect(t, url, nats.RootCAs(ca.File), nats.ClientCert(clientCert, clientKey))
	if err != nil {
		t.Fatalf("client with a certificate of the CA: %v", err)
	}
	if !nc.TLSRequired() {
		t.Fatal("connection is not TLS")
	}
	useJetStream(t, nc)

	// The in-process connection needs no TLS.
	in, err := s.Connect()
	if err != nil {
		t.Fatalf("in-process: %v", err)
	}
	defer in.Close()
	useJetStream(t, in)
}

func TestStart_TLS_listener_without_client_certificates(t *testing.T) {
	ca := testutil.NewCA(t)
	cert, key := ca.Issue(t, "server")
	s := start(t, embedded.Options{Listen: "127.0.0.1:0", TLS: embedded.TLSFiles{Cert: cert, Key: key},
		Auth: embedded.Auth{User: "cb", Password: "pw"}})
	nc, err := connect(t, s.ClientURL(), nats.RootCAs(ca.File), nats.UserInfo("cb", "pw"))
	if err != nil {
		t.Fatalf("TLS client: %v", err)
	}
	useJetStream(t, nc)
}

func TestStart_refuses_inconsistent_options(t *testing.T) {
	ca := testutil.NewCA(t)
	cert, key := ca.Issue(t, "node")
	for name, o := range map[string]embedded.Options{
		"user and token":         {Auth: embedded.Auth{User: "u", Password: "p", Token: "t"}},
		"user without password":  {Auth: embedded.Auth{User: "u"}},
		"tls without key":        {Listen: "127.0.0.1:0", TLS: embedded.TLSFiles{Cert: cert}},
		"routes without listen":  {Cluster: embedded.Cluster{Routes: []string{"nats://127.0.0.1:1"}}},
		"cluster without routes": {Cluster: embedded.Cluster{Listen: "127.0.0.1:0"}},
		"cluster tls without ca": {Cluster: embedded.Cluster{Listen: "127.0.0.1:0", Routes: []string{"nats://127.0.0.1:1"},
			TLS: embedded.TLSFiles{Cert: cert, Key: key}}},
		"bad route": {Cluster: embedded.Cluster{Listen: "127.0.0.1:0", Routes: []string{"::"}}},
	} {
		t.Run(name, func(t *testing.T) {
			o.DataDir = t.TempDir()
			s, err := embedded.Start(context.Background(), o)
			if err == nil {
				s.Shutdown()
				t.Fatal("started")
			}
			t.Log(err)
		})
	}
}

func TestStart_port_in_use_fails_at_once_and_says_so(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	addr := busy.Addr().String()
	tests := []struct {
		name string
		o    embedded.Options
		want string
	}{
		{"client listener", embedded.Options{Listen: addr}, "client listener (nats.listen) " + addr},
		{"cluster listener", embedded.Options{Listen: "127.0.0.1:0", Cluster: embedded.Cluster{Name: "c", Listen: addr, Routes: []string{"nats://" + addr}}}, "cluster listener (nats.cluster.listen) " + addr},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.o.DataDir = t.TempDir()
			start := time.Now()
			s, err := embedded.Start(context.Background(), tt.o)
			if err == nil {
				s.Shutdown()
				t.Fatal("started on a port in use")
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "address already in use") {
				t.Errorf("err = %v, want it to name %q and say the address is in use", err, tt.want)
			}
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("took %v to fail, want at once (the server's own wait is 10 s)", took)
			}
		})
	}
}
