// Package embedded runs callbackd's in-process NATS server with JetStream:
// the single-binary edge install needs no separate NATS, and several
// callbackd instances can form a JetStream cluster of their embedded servers.
package embedded

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Server is a running embedded NATS server.
type Server struct {
	ns     *server.Server
	log    *slog.Logger
	auth   Auth
	lock   *os.File // held while the server owns the data dir
	unlock sync.Once
	// writeErr is the server's last critical write error (writeErrs).
	writeErr *atomic.Pointer[string]
}

// Start starts the server and waits until it accepts clients and JetStream is
// enabled. The context bounds the wait. In a cluster, JetStream is enabled
// before the cluster has elected its meta leader: a caller that creates
// streams waits for that (a JetStream API call succeeding) itself.
func Start(ctx context.Context, o Options) (*Server, error) {
	if o.DataDir == "" {
		return nil, errors.New("embedded nats: data dir is required")
	}
	if err := os.MkdirAll(o.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("embedded nats: create data dir: %w", err)
	}
	lock, err := lockDataDir(o.DataDir)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	s, err := start(ctx, o)
	if err != nil {
		if lock != nil {
			_ = lock.Close()
		}
		return nil, err
	}
	s.lock = lock
	return s, nil
}

func start(ctx context.Context, o Options) (*Server, error) {
	name := o.ServerName
	if name == "" {
		var err error
		if name, err = stableName(o.DataDir); err != nil {
			return nil, err
		}
	}
	opts, err := o.serverOptions(name)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	if err := checkPorts(opts); err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	writeErr := new(atomic.Pointer[string])
	ns.SetLoggerV2(slogAdapter{l: log, writeErr: writeErr}, o.Debug, false, false)
	ns.Start()

	wait := o.ReadyTimeout
	if wait <= 0 {
		wait = 10 * time.Second
	}
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
		wait = time.Until(dl)
	}
	if !ns.ReadyForConnections(wait) {
		ns.Shutdown()
		ns.WaitForShutdown()
		return nil, fmt.Errorf("embedded nats: not ready after %s", wait)
	}
	if !ns.JetStreamEnabled() {
		ns.Shutdown()
		ns.WaitForShutdown()
		return nil, errors.New("embedded nats: JetStream did not start (see the server log)")
	}
	return &Server{ns: ns, log: log, auth: o.Auth, writeErr: writeErr}, nil
}

// WriteErr returns the last critical write error of the server's store
// (a full disk, an I/O error), nil when there has been none. nats-server
// keeps refusing writes to a stream that had one, free space or not,
// until it restarts: publishes to it go unanswered (time out), so the
// error is only seen in its log, which is where this takes it from.
func (s *Server) WriteErr() error {
	if m := s.writeErr.Load(); m != nil {
		return errors.New(*m)
	}
	return nil
}

// Connect opens an in-process client connection to the server, with the
// server's credentials when it requires some. Extra options are appended.
func (s *Server) Connect(opts ...nats.Option) (*nats.Conn, error) {
	all := []nats.Option{nats.Name("callbackd"), nats.InProcessServer(s.ns)}
	all = append(all, s.auth.ClientOptions()...)
	all = append(all, opts...)
	nc, err := nats.Connect("", all...)
	if err != nil {
		return nil, fmt.Errorf("connect to embedded nats: %w", err)
	}
	return nc, nil
}

// ClientOptions are the nats.go options that present these credentials;
// none when a is not set.
func (a Auth) ClientOptions() []nats.Option {
	switch {
	case a.User != "":
		return []nats.Option{nats.UserInfo(a.User, a.Password)}
	case a.Token != "":
		return []nats.Option{nats.Token(a.Token)}
	}
	return nil
}

// ClientURL is the URL of the client listener, "" when in-process only.
func (s *Server) ClientURL() string {
	if s.ns.Addr() == nil {
		return ""
	}
	return s.ns.ClientURL()
}

// Clustered reports whether the server is a node of a JetStream cluster.
func (s *Server) Clustered() bool { return s.ns.JetStreamIsClustered() }

// Name is the server's name.
func (s *Server) Name() string { return s.ns.Name() }

// NATS returns the underlying server, for tests and advanced wiring.
func (s *Server) NATS() *server.Server { return s.ns }

// Shutdown stops the server and waits until it is down; JetStream state is
// flushed to disk. Safe to call more than once.
func (s *Server) Shutdown() {
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
	s.unlock.Do(func() {
		if s.lock != nil {
			_ = s.lock.Close() // releases the data dir
		}
	})
}

// stableName returns the server name kept in dataDir, creating it once.
func stableName(dataDir string) (string, error) {
	path := filepath.Join(dataDir, "server_name")
	b, err := os.ReadFile(path)
	if err == nil {
		// Kept, not replaced: a new name would make this node a stranger
		// to its cluster's JetStream peers.
		name := strings.TrimSpace(string(b))
		if err := checkName(name); err != nil {
			return "", fmt.Errorf("embedded nats: server name in %s: %w (set nats.server_name, or remove the file on a node that never joined a cluster)", path, err)
		}
		return name, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("embedded nats: read server name: %w", err)
	}
	var r [6]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", fmt.Errorf("embedded nats: generate server name: %w", err)
	}
	name := "callbackd-" + hex.EncodeToString(r[:])
	// Written whole or not at all, so that a crash cannot leave an empty
	// file behind.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(name+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("embedded nats: write server name: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("embedded nats: write server name: %w", err)
	}
	return name, nil
}

// checkName applies nats-server's rules for a server or cluster name (no
// white space), and refuses what no name should hold: control characters
// and bytes that are not UTF-8.
func checkName(name string) error {
	switch {
	case name == "":
		return errors.New("empty")
	case strings.ContainsAny(name, " \t\r\n"):
		return fmt.Errorf("%q contains white space", name)
	case !utf8.ValidString(name) || strings.ContainsFunc(name, unicode.IsControl):
		return fmt.Errorf("%q holds control characters or bytes that are not UTF-8", name)
	}
	return nil
}

// checkPorts tries the client and cluster listeners before the server
// does: a port in use then stops start-up at once with an error that says
// so, where the server would only log it and never become ready.
func checkPorts(opts *server.Options) error {
	try := func(what, host string, port int) error {
		if port <= 0 { // none, or a random port
			return nil
		}
		addr := net.JoinHostPort(host, strconv.Itoa(port))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("%s %s: %w", what, addr, err)
		}
		return l.Close()
	}
	if !opts.DontListen {
		if err := try("client listener (nats.listen)", opts.Host, opts.Port); err != nil {
			return err
		}
	}
	return try("cluster listener (nats.cluster.listen)", opts.Cluster.Host, opts.Cluster.Port)
}
