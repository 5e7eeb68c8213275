// Package embedded runs callbackd's in-process NATS server with JetStream:
// the single-binary edge install needs no separate NATS.
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
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Options configure the embedded server. The zero value of every field but
// DataDir is usable.
type Options struct {
	// DataDir holds the JetStream store (DataDir/jetstream) and the server
	// name file. Required.
	DataDir string
	// Listen is the client listener as host:port; "" means in-process only
	// (no TCP listener). Port 0 picks a free port.
	Listen string
	// ServerName is the server's name; empty means one generated on first
	// start and kept in DataDir/server_name, so it is stable across restarts.
	ServerName string
	// ReadyTimeout bounds the wait for the server to accept clients (0 → 10s).
	ReadyTimeout time.Duration
	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
	// Debug turns on the server's debug logs.
	Debug bool
}

// Server is a running embedded NATS server.
type Server struct {
	ns  *server.Server
	log *slog.Logger
}

// Start starts the server and waits until it accepts clients and JetStream is
// enabled. The context bounds the wait.
func Start(ctx context.Context, o Options) (*Server, error) {
	if o.DataDir == "" {
		return nil, errors.New("embedded nats: data dir is required")
	}
	if err := os.MkdirAll(o.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("embedded nats: create data dir: %w", err)
	}
	name := o.ServerName
	if name == "" {
		var err error
		if name, err = stableName(o.DataDir); err != nil {
			return nil, err
		}
	}
	opts := &server.Options{
		ServerName: name,
		JetStream:  true,
		StoreDir:   o.DataDir, // the server adds "jetstream/"
		NoSigs:     true, // callbackd owns SIGINT/SIGTERM
		Debug:      o.Debug,
	}
	if o.Listen == "" {
		opts.DontListen = true
	} else {
		host, port, err := splitHostPort(o.Listen)
		if err != nil {
			return nil, fmt.Errorf("embedded nats: nats.listen %q: %w", o.Listen, err)
		}
		opts.Host, opts.Port = host, port
		if port == 0 {
			opts.Port = server.RANDOM_PORT
		}
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ns.SetLoggerV2(slogAdapter{log}, o.Debug, false, false)
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
	return &Server{ns: ns, log: log}, nil
}

// Connect opens a client connection to the server: in-process when there is
// no listener, else over TCP. Extra options are appended.
func (s *Server) Connect(opts ...nats.Option) (*nats.Conn, error) {
	all := append([]nats.Option{nats.Name("callbackd"), nats.InProcessServer(s.ns)}, opts...)
	nc, err := nats.Connect("", all...)
	if err != nil {
		return nil, fmt.Errorf("connect to embedded nats: %w", err)
	}
	return nc, nil
}

// ClientURL is the URL of the client listener, "" when in-process only.
func (s *Server) ClientURL() string {
	if s.ns.Addr() == nil {
		return ""
	}
	return s.ns.ClientURL()
}

// NATS returns the underlying server, for tests and advanced wiring.
func (s *Server) NATS() *server.Server { return s.ns }

// Shutdown stops the server and waits until it is down; JetStream state is
// flushed to disk. Safe to call more than once.
func (s *Server) Shutdown() {
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
}

// stableName returns the server name kept in dataDir, creating it once.
func stableName(dataDir string) (string, error) {
	path := filepath.Join(dataDir, "server_name")
	b, err := os.ReadFile(path)
	if err == nil {
		if name := strings.TrimSpace(string(b)); name != "" {
			return name, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("embedded nats: read server name: %w", err)
	}
	var r [6]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", fmt.Errorf("embedded nats: generate server name: %w", err)
	}
	name := "callbackd-" + hex.EncodeToString(r[:])
	if err := os.WriteFile(path, []byte(name+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("embedded nats: write server name: %w", err)
	}
	return name, nil
}

func splitHostPort(hp string) (string, int, error) {
	host, p, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("port %q is not a number from 0 to 65535", p)
	}
	if host == "" {
		host = "0.0.0.0"
	}
	return host, port, nil
}

// slogAdapter sends nats-server's logs to slog.
type slogAdapter struct{ l *slog.Logger }

// Notices (the start-up banner among them) are debug noise for callbackd.
func (a slogAdapter) Noticef(f string, v ...any) { a.l.Debug(fmt.Sprintf(f, v...)) }
func (a slogAdapter) Warnf(f string, v ...any)   { a.l.Warn(fmt.Sprintf(f, v...)) }
func (a slogAdapter) Fatalf(f string, v ...any)  { a.l.Error(fmt.Sprintf(f, v...)) }
func (a slogAdapter) Errorf(f string, v ...any)  { a.l.Error(fmt.Sprintf(f, v...)) }
func (a slogAdapter) Debugf(f string, v ...any)  { a.l.Debug(fmt.Sprintf(f, v...)) }
func (a slogAdapter) Tracef(f string, v ...any)  { a.l.Debug(fmt.Sprintf(f, v...)) }
