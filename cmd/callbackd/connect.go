package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callbackd/callbackd/config"
	"github.com/callbackd/callbackd/embedded"
	"github.com/callbackd/callbackd/plugins"
)

// natsReadyTimeout bounds serve's wait for JetStream at start: a cluster
// needs a majority of its nodes up to elect a meta leader, and replicated
// streams need as many nodes as replicas. A node that waits longer exits
// with an error, for its supervisor to restart it.
const natsReadyTimeout = 2 * time.Minute

// startNATS starts the embedded server when configured, connects to NATS and
// waits until JetStream answers. srv is nil for an external server.
func startNATS(ctx context.Context, cfg *config.Config, log *slog.Logger) (*nats.Conn, *embedded.Server, error) {
	log = log.With("component", "nats")
	var (
		nc  *nats.Conn
		srv *embedded.Server
		err error
	)
	if cfg.NATS.Embedded {
		if cfg.NATS.URL != "" {
			log.Warn("nats.url is set but nats.embedded is true: serve runs its own NATS server and does not connect to nats.url (CLI commands with this config do); set nats.embedded: false to use it",
				"url", redactURLs(cfg.NATS.URL))
		}
		if cfg.NATS.Credentials != "" {
			log.Warn("nats.credentials is set but nats.embedded is true: serve connects to its own server in-process and does not use it (CLI commands with this config present it); the embedded server's clients use nats.auth")
		}
		srv, err = embedded.Start(ctx, embeddedOptions(cfg, log))
		if err != nil {
			return nil, nil, err
		}
		if nc, err = srv.Connect(connOptions(log)...); err != nil {
			srv.Shutdown()
			return nil, nil, err
		}
		if srv.Clustered() {
			log.Info("embedded NATS joins its cluster", "server_name", srv.Name(), "cluster", clusterName(cfg), "routes", len(cfg.NATS.Cluster.Routes))
		}
		var routes net.Addr
		if a := srv.NATS().ClusterAddr(); a != nil {
			routes = a
		}
		warnOpenListener(cfg.NATS, srv.NATS().Addr(), routes, log)
	} else {
		// serve waits for an external NATS that is not up yet (both may
		// start together), bounded by waitJetStream; CLI commands fail
		// fast instead.
		opts := append(clientOptions(cfg, log), nats.RetryOnFailedConnect(true),
			nats.ConnectHandler(func(nc *nats.Conn) {
				log.Info("nats connected", "url", nc.ConnectedUrlRedacted(), "server", nc.ConnectedServerName())
			}))
		if nc, err = nats.Connect(cfg.NATS.URL, opts...); err != nil {
			return nil, nil, fmt.Errorf("connect to NATS at %s: %w", redactURLs(cfg.NATS.URL), err)
		}
	}
	if err := waitJetStream(ctx, nc, log, natsReadyTimeout); err != nil {
		closeNATS(nc)
		if srv != nil {
			srv.Shutdown()
		}
		return nil, nil, err
	}
	return nc, srv, nil
}

// warnOpenListener warns when the embedded server's client listener, bound
// at addr, or its cluster route listener, bound at routes (nil: none), is
// reachable beyond loopback without auth or TLS (SPEC §8: anyone who can
// reach an unauthenticated NATS can read and change settings; a route
// without auth lets any server join the cluster).
func warnOpenListener(n config.NATS, addr, routes net.Addr, log *slog.Logger) {
	if addr != nil && !isLoopback(addr) {
		if n.Auth == (config.Auth{}) {
			log.Warn("embedded NATS listens beyond loopback without nats.auth: whoever reaches it can read and change settings (header values included) and publish events; set nats.auth (docs/deployment.md)",
				"listen", addr.String())
		}
		if n.TLS.Cert == "" {
			log.Warn("embedded NATS listens beyond loopback without TLS: credentials, events and settings cross the network in clear; set nats.tls.cert and nats.tls.key",
				"listen", addr.String())
		}
	}
	if routes != nil && !isLoopback(routes) {
		if n.Auth == (config.Auth{}) {
			log.Warn("embedded NATS cluster routes listen beyond loopback without nats.auth: any server that reaches them can join the cluster and read and change every stream and the settings; set nats.auth, which routes require too (docs/deployment.md)",
				"cluster_listen", routes.String())
		}
		if n.Cluster.TLS.Cert == "" {
			log.Warn("embedded NATS cluster routes listen beyond loopback without TLS: events and settings cross the network in clear between nodes; set nats.cluster.tls",
				"cluster_listen", routes.String())
		}
	}
}

// embeddedOptions are the embedded server's options from config.
func embeddedOptions(cfg *config.Config, log *slog.Logger) embedded.Options {
	n := cfg.NATS
	return embedded.Options{
		DataDir:    cfg.DataDir,
		Listen:     n.Listen,
		ServerName: n.ServerName,
		Auth:       embedded.Auth{User: n.Auth.User, Password: n.Auth.Password, Token: n.Auth.Token},
		TLS:        embedded.TLSFiles{Cert: n.TLS.Cert, Key: n.TLS.Key, CA: n.TLS.CA},
		Cluster: embedded.Cluster{
			Name:   n.Cluster.Name,
			Listen: n.Cluster.Listen,
			Routes: n.Cluster.Routes,
			TLS:    embedded.TLSFiles{Cert: n.Cluster.TLS.Cert, Key: n.Cluster.TLS.Key, CA: n.Cluster.TLS.CA},
		},
		Logger: log,
		Debug:  cfg.Log.Level == "debug",
	}
}

func clusterName(cfg *config.Config) string {
	if cfg.NATS.Cluster.Name != "" {
		return cfg.NATS.Cluster.Name
	}
	return embedded.DefaultClusterName
}

// dialNATS connects a client to the configured NATS: the external URL, or
// the embedded server's listener of a running `callbackd serve` (nats.url,
// when set, overrides that address, e.g. a name its certificate carries).
// It presents the same credentials and TLS as serve and fails fast.
func dialNATS(cfg *config.Config, log *slog.Logger) (*nats.Conn, error) {
	u := cfg.NATS.URL
	if cfg.NATS.Embedded && u == "" {
		if cfg.NATS.Listen == "" {
			return nil, fmt.Errorf("nats.listen is empty: the embedded server of callbackd serve has no client port to reach")
		}
		u = "nats://" + dialableAddr(cfg.NATS.Listen)
	}
	nc, err := nats.Connect(u, clientOptions(cfg, log.With("component", "nats"))...)
	if err != nil {
		hint := ""
		if errors.Is(err, nats.ErrNoServers) {
			hint = " (is callbackd serve running?)"
		}
		return nil, fmt.Errorf("connect to NATS at %s: %w%s", redactURLs(u), err, hint)
	}
	return nc, nil
}

// dialableAddr turns a wildcard listen address into loopback.
func dialableAddr(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// clientOptions are a TCP client's options: connOptions plus the configured
// credentials and TLS.
func clientOptions(cfg *config.Config, log *slog.Logger) []nats.Option {
	n := cfg.NATS
	opts := connOptions(log)
	if n.Credentials != "" {
		opts = append(opts, nats.UserCredentials(n.Credentials))
	}
	opts = append(opts, embedded.Auth{User: n.Auth.User, Password: n.Auth.Password, Token: n.Auth.Token}.ClientOptions()...)
	if n.TLS.CA != "" {
		opts = append(opts, nats.RootCAs(n.TLS.CA))
	}
	if n.TLS.Cert != "" && n.TLS.Key != "" {
		// Presented only when the server asks for a client certificate.
		opts = append(opts, nats.ClientCert(n.TLS.Cert, n.TLS.Key))
	}
	return opts
}

// connOptions are every connection's options: reconnect forever with a
// growing, jittered delay, and log each change of state once.
func connOptions(log *slog.Logger) []nats.Option {
	return []nats.Option{
		nats.Name("callbackd"),
		nats.Timeout(5 * time.Second),
		nats.MaxReconnects(-1),
		nats.CustomReconnectDelay(reconnectDelay),
		// A server that vanished without closing the connection is noticed
		// within about 30 s rather than the default 4 min.
		nats.PingInterval(10 * time.Second),
		nats.MaxPingsOutstanding(3),
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected; reconnecting", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("nats reconnected", "url", nc.ConnectedUrlRedacted(), "server", nc.ConnectedServerName())
		}),
		nats.ReconnectErrHandler(func(_ *nats.Conn, err error) {
			log.Debug("nats reconnect attempt failed", "err", err)
		}),
		nats.ClosedHandler(func(nc *nats.Conn) {
			if err := nc.LastError(); err != nil {
				log.Warn("nats connection closed", "err", err)
				return
			}
			log.Debug("nats connection closed")
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if sub != nil {
				log.Warn("nats error", "subject", sub.Subject, "err", err)
				return
			}
			log.Warn("nats error", "err", err)
		}),
		nats.LameDuckModeHandler(func(nc *nats.Conn) {
			log.Info("nats server is shutting down (lame duck mode); will move to another", "server", nc.ConnectedServerName())
		}),
	}
}

// reconnectDelay is the wait after a failed pass over every known server:
// 250 ms doubling to 8 s, with up to a quarter of jitter so that many
// instances do not reconnect in step.
func reconnectDelay(attempts int) time.Duration {
	d := 250 * time.Millisecond << min(max(attempts-1, 0), 5)
	return d + rand.N(d/4+1)
}

// errNotConnected is waitJetStream's error while the connection is down.
var errNotConnected = errors.New("not connected to NATS")

// waitJetStream polls until the JetStream API answers (in a cluster: a meta
// leader is elected), logging progress; it gives up after total.
func waitJetStream(ctx context.Context, nc *nats.Conn, log *slog.Logger, total time.Duration) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	start := time.Now()
	// Without a meta leader the request goes unanswered until its
	// deadline: keep each try short.
	return retryJetStream(ctx, log, total, 2*time.Second, "JetStream", func(ctx context.Context) error {
		_, err := js.AccountInfo(ctx)
		if err != nil && nc.Status() != nats.CONNECTED {
			why := ""
			if le := nc.LastError(); le != nil {
				why = ": " + le.Error()
			}
			err = fmt.Errorf("%w at %s (%s%s)", errNotConnected, redactURLs(strings.Join(nc.Servers(), ",")), strings.ToLower(nc.Status().String()), why)
		}
		if err == nil && time.Since(start) > time.Second {
			log.Info("JetStream ready", "after", time.Since(start).Round(time.Millisecond))
		}
		return err
	}, func(error) bool { return true })
}

// ensureJetStream runs fn (creating streams, consumers or buckets) until it
// succeeds or fails for a reason other than a cluster still forming: no
// meta leader yet, or fewer nodes than nats.replicas have joined.
func ensureJetStream(ctx context.Context, log *slog.Logger, nc *nats.Conn, what string, fn func(context.Context) error) error {
	return retryJetStream(ctx, log.With("component", "nats"), natsReadyTimeout, 15*time.Second, what, fn, jetStreamRetry(nc.ConnectedClusterName() != ""))
}

// jetStreamRetry is clusterForming for a server in a cluster. A server on
// its own is not waiting for nodes to join: "insufficient resources" there
// is its storage or its limits, said at once rather than after
// natsReadyTimeout of "waiting for streams".
func jetStreamRetry(clustered bool) func(error) bool {
	if clustered {
		return clusterForming
	}
	return func(err error) bool {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.ErrorCode == jsInsufficientResources {
			return false
		}
		return clusterForming(err)
	}
}

// retryJetStream calls fn with a deadline of each per call until it returns
// nil, an error that retry rejects, ctx is done, or total has passed.
func retryJetStream(ctx context.Context, log *slog.Logger, total, each time.Duration, what string, fn func(context.Context) error, retry func(error) bool) error {
	deadline := time.Now().Add(total)
	wait, lastLog := 100*time.Millisecond, time.Now()
	for {
		cctx, cancel := context.WithTimeout(ctx, each)
		err := fn(cctx)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !retry(err) {
			return err
		}
		if time.Now().After(deadline) {
			if errors.Is(err, errNotConnected) {
				return fmt.Errorf("%s not ready after %s: %w", what, total, err)
			}
			return fmt.Errorf("%s not ready after %s: %w (a cluster needs a majority of its nodes up, and as many nodes as nats.replicas)", what, total, err)
		}
		if time.Since(lastLog) >= 5*time.Second {
			log.Warn("waiting for "+what, "err", err)
			lastLog = time.Now()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(wait*2, 2*time.Second)
	}
}

// jsInsufficientResources is JetStream's "insufficient resources" error
// code: in a forming cluster, fewer nodes than replicas; on one server, its
// storage or account limits.
const jsInsufficientResources = 10023

// clusterForming reports whether err is what a JetStream cluster answers
// while it forms or recovers: the request can succeed a moment later.
func clusterForming(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case 10005, // no suitable peers for placement
			10008,                   // JetStream system temporarily unavailable
			10009,                   // cluster cannot handle the request (no leader)
			jsInsufficientResources: // fewer nodes than replicas so far
			return true
		}
	}
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrJetStreamNotEnabled) ||
		errors.Is(err, nats.ErrDisconnected) || errors.Is(err, nats.ErrConnectionReconnecting)
}

// closeNATS flushes what the connection still buffers (acks above all: an
// ack lost here is a duplicate delivery after restart) and closes it.
func closeNATS(nc *nats.Conn) {
	if nc.IsConnected() {
		_ = nc.FlushTimeout(5 * time.Second)
	}
	nc.Close()
}

// redactURLs drops the userinfo of each URL of a comma-separated list.
func redactURLs(list string) string {
	parts := strings.Split(list, ",")
	for i, p := range parts {
		parts[i] = redactURL(strings.TrimSpace(p))
	}
	return strings.Join(parts, ",")
}

// redactURL drops a server URL's userinfo, query and fragment. A URL
// without a scheme ("user:pw@host:4222", which the NATS client takes for
// nats://) is read as nats:// and printed without it; text that does not
// parse keeps only what follows its last "@".
func redactURL(p string) string {
	raw, bare := p, !strings.Contains(p, "://")
	if bare {
		raw = "nats://" + p
	}
	if _, err := url.Parse(raw); err != nil {
		if i := strings.LastIndex(p, "@"); i >= 0 {
			return p[i+1:]
		}
		return p
	}
	s := plugins.SafeURL(raw)
	if bare {
		return strings.TrimPrefix(s, "nats://")
	}
	return s
}
