package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callbackd/callbackd/api"
	"github.com/callbackd/callbackd/config"
	"github.com/callbackd/callbackd/deadletters"
	"github.com/callbackd/callbackd/deliverylog"
	"github.com/callbackd/callbackd/dispatcher"
	"github.com/callbackd/callbackd/plugins"
	"github.com/callbackd/callbackd/plugins/host"
	"github.com/callbackd/callbackd/settings"
	"github.com/callbackd/callbackd/subjects"
)

// apiDeps is what the admin API takes from serve.
type apiDeps struct {
	NC        *nats.Conn
	JS        jetstream.JetStream
	Store     *settings.Store
	View      *settings.View
	Transport plugins.Transport
	// Metrics is the Observer given to the dispatcher (newMetrics).
	Metrics *api.Metrics
	// BuiltinsInProcess is plugins.builtins: inprocess.
	BuiltinsInProcess bool
	// Storage reports JetStream refusing the dispatcher's writes for lack
	// of storage (Dispatcher.StorageErr); nil for no such check.
	Storage func() error
	// Plugins runs the plugin processes (/readyz: all running, and
	// which); nil when every plugin runs in-process.
	Plugins *host.Manager
	// Limits are the HTTP server's timeouts; zero means
	// defaultAdminLimits(cfg).
	Limits adminLimits
}

// adminLimits are the admin HTTP server's timeouts (api/README.md,
// "Limits"), so that slow or stuck clients do not hold connections: a
// request's headers must arrive within ReadHeader and all of it within
// Read; its answer must be written within Write after its headers were
// read, or the connection is cut (a client that stops reading); an idle
// keep-alive connection is closed after Idle.
type adminLimits struct {
	ReadHeader, Read, Write, Idle time.Duration
	// Replay bounds one replayDeadLetters call (api.Options.ReplayTimeout),
	// counted like Write from the request's headers: a replay that reaches
	// it answers what it did. It must leave room within Write for the
	// letter in hand and the answer.
	Replay time.Duration
}

// Defaults of adminLimits.
const (
	adminReadHeaderTimeout = 10 * time.Second
	// adminReadTimeout: a request body is at most 1 MiB
	// (api.DefaultMaxBodyBytes), and the API's are a few KiB; a client
	// slower than ~50 KB/s is stuck.
	adminReadTimeout = 20 * time.Second
	adminIdleTimeout = 2 * time.Minute
	// adminReplayMargin is what Write leaves after a replay's time limit
	// (both count from the request's headers): the letter in hand is
	// finished (its deletion has 10 s of its own), then the answer written.
	adminReplayMargin = 20 * time.Second
	// adminAnswerMargin is what Write leaves to write a test callback's
	// answer after the request's body and the callback itself.
	adminAnswerMargin = 5 * time.Second
)

// defaultAdminLimits are cfg's limits. Write lets the longest requests
// answer: a replay (api.DefaultReplayTimeout, then adminReplayMargin) and a
// test callback (its body within Read, then delivery.timeout plus the 5 s
// a transport plugin's call is given beyond it, then adminAnswerMargin).
// With the defaults both come to 60 s.
func defaultAdminLimits(cfg *config.Config) adminLimits {
	replay := api.DefaultReplayTimeout + adminReplayMargin
	testCallback := adminReadTimeout + cfg.Delivery.Timeout + 5*time.Second + adminAnswerMargin
	return adminLimits{
		ReadHeader: adminReadHeaderTimeout,
		Read:       adminReadTimeout,
		Write:      max(replay, testCallback),
		Idle:       adminIdleTimeout,
		Replay:     api.DefaultReplayTimeout,
	}
}

// adminAPI is a running admin API: api.Starting's answers while serve
// starts, then the API itself (serveAPI).
type adminAPI struct {
	// Addr is where it listens (the port chosen when api.listen ends in :0).
	Addr net.Addr

	hs      *http.Server
	token   string
	limits  adminLimits
	handler atomic.Pointer[http.Handler]
	phase   atomic.Pointer[string]
	stop    sync.Once
}

func (a *adminAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	(*a.handler.Load()).ServeHTTP(w, r)
}

// setPhase says what start-up is waiting for (/readyz's reason meanwhile).
func (a *adminAPI) setPhase(s string) { a.phase.Store(&s) }

// Shutdown stops accepting requests and waits for those in progress until
// ctx is done; calls after the first do nothing.
func (a *adminAPI) Shutdown(ctx context.Context) error {
	var err error
	a.stop.Do(func() { err = a.hs.Shutdown(ctx) })
	return err
}

// newMetrics makes the metrics that the dispatcher observes and /metrics
// serves; view and pluginRestarts may be nil.
func newMetrics(cfg *config.Config, top dispatcher.Topology, view *settings.View, log *slog.Logger, pluginRestarts api.ValueFunc) *api.Metrics {
	eventTypes := []string{"callback_failed"}
	for t := range cfg.Plugins.Encoders {
		eventTypes = append(eventTypes, t)
	}
	o := api.MetricsOptions{EventTypes: eventTypes, PluginRestarts: pluginRestarts, Logger: log}
	if view != nil {
		o.SettingsRevision = func(context.Context) (float64, error) { return float64(view.Revision()), nil }
	}
	if c := top.Dispatcher; c != nil {
		o.ConsumerLag = func(ctx context.Context) (float64, error) {
			info, err := c.Info(ctx)
			if err != nil {
				return 0, err
			}
			return float64(info.NumPending), nil
		}
	}
	if c := top.Retrier; c != nil {
		o.PendingRetries = func(ctx context.Context) (float64, error) {
			info, err := c.Info(ctx)
			if err != nil {
				return 0, err
			}
			return float64(info.NumPending + uint64(info.NumAckPending)), nil
		}
	}
	return api.NewMetrics(o)
}

// pluginRestartCount is the plugin processes' restarts since start
// (newMetrics' pluginRestarts).
func pluginRestartCount(m *host.Manager) api.ValueFunc {
	return func(context.Context) (float64, error) {
		n := 0
		for _, p := range m.Plugins() {
			n += p.Restarts()
		}
		return float64(n), nil
	}
}

// listenAPI listens on api.listen (TLS when api.tls is set) and answers
// with api.Starting until serveAPI: from the start, /healthz is up and
// /readyz says what start-up waits for (SPEC §3: 503 until the settings
// have loaded). The token is api.token, else the one in
// <data_dir>/admin.token, made on first start; it is never logged.
func listenAPI(ctx context.Context, cfg *config.Config, log *slog.Logger, limits adminLimits) (*adminAPI, error) {
	log = log.With("component", "api")
	token := cfg.API.Token
	if token == "" {
		var created bool
		var err error
		token, created, err = api.LoadOrCreateToken(cfg.DataDir)
		if err != nil {
			return nil, fmt.Errorf("data_dir %s: %w", cfg.DataDir, err)
		}
		if created {
			log.Info("admin API token generated", "file", api.TokenPath(cfg.DataDir))
		}
	}
	if limits == (adminLimits{}) {
		limits = defaultAdminLimits(cfg)
	}

	var tlsConfig *tls.Config
	if cfg.API.TLS.Cert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.API.TLS.Cert, cfg.API.TLS.Key)
		if err != nil {
			return nil, fmt.Errorf("api.tls: %w", err)
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", cfg.API.Listen)
	if err != nil {
		return nil, fmt.Errorf("api.listen: %w", err)
	}
	if tlsConfig == nil && !isLoopback(ln.Addr()) {
		log.Warn("admin API listens beyond loopback without TLS: the bearer token and settings (header values included) cross the network in clear; set api.tls.cert and api.tls.key",
			"addr", ln.Addr().String())
	}

	a := &adminAPI{Addr: ln.Addr(), token: token, limits: limits}
	a.setPhase("starting")
	starting := api.Starting(token, func() string { return *a.phase.Load() })
	a.handler.Store(&starting)
	a.hs = newAdminServer(ctx, a, tlsConfig, limits, log)
	go func() {
		var err error
		if tlsConfig != nil {
			err = a.hs.ServeTLS(ln, "", "")
		} else {
			err = a.hs.Serve(ln)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("admin API stopped", "err", err)
		}
	}()
	scheme := "http"
	if tlsConfig != nil {
		scheme = "https"
	}
	log.Info("admin API listening", "url", scheme+"://"+ln.Addr().String())
	return a, nil
}

// serveAPI puts the admin API in place of api.Starting's answers.
func (a *adminAPI) serveAPI(cfg *config.Config, log *slog.Logger, deps apiDeps) error {
	dlog := deliveryLog{r: deliverylog.NewReader(deps.JS), js: deps.JS}
	srv, err := api.New(api.Options{
		Store:         deps.Store,
		Token:         a.token,
		Guard:         plugins.NewGuard(cfg.Delivery.AllowPrivate, cfg.AllowCIDRs()),
		Transport:     deps.Transport,
		Deliveries:    dlog,
		Recorder:      dlog,
		Replayer:      replayer{deps.JS},
		Checks:        readyChecks(deps),
		Metrics:       deps.Metrics,
		Logger:        log.With("component", "api"),
		ReplayTimeout: a.limits.Replay,
		// A request's test callbacks end in time for the answer.
		TestCallbackDeadline: a.limits.Write - adminAnswerMargin,
	})
	if err != nil {
		return err
	}
	h := http.Handler(srv)
	a.handler.Store(&h)
	return nil
}

// newAdminServer is the admin API's http.Server: h with limits' timeouts,
// 64 KiB of headers at most, and ctx's values (not its end) in every
// request's context.
func newAdminServer(ctx context.Context, h http.Handler, tlsConfig *tls.Config, limits adminLimits, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		TLSConfig:         tlsConfig,
		ReadHeaderTimeout: limits.ReadHeader,
		ReadTimeout:       limits.Read,
		WriteTimeout:      limits.Write,
		IdleTimeout:       limits.Idle,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
}

// isLoopback reports whether addr is a loopback address; a wildcard
// address (0.0.0.0, ::) is not.
func isLoopback(addr net.Addr) bool {
	ta, ok := addr.(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}

// readyChecks are /readyz's conditions (SPEC §3, §4).
func readyChecks(deps apiDeps) []api.Check {
	connected := func() error {
		if s := deps.NC.Status(); s != nats.CONNECTED {
			return fmt.Errorf("not connected to NATS (%s)", s)
		}
		return nil
	}
	// The checks that ask JetStream answer at once while NATS is away,
	// rather than at the checks' time limit.
	unknownOffline := func(err error) error { return fmt.Errorf("unknown: %w", err) }
	checks := []api.Check{
		{Name: "nats", Fn: func(context.Context) error { return connected() }},
		{Name: "streams", Fn: func(ctx context.Context) error {
			if err := connected(); err != nil {
				return unknownOffline(err)
			}
			for _, name := range []string{subjects.Stream, subjects.RetryStream, subjects.DeadStream, subjects.LogStream, "KV_" + subjects.SettingsBucket} {
				if _, err := deps.JS.Stream(ctx, name); err != nil {
					return fmt.Errorf("stream %s: %w", name, err)
				}
			}
			return nil
		}},
		// A consumer deleted from outside is made again by the dispatcher
		// at its next pull; one that stays missing means it cannot be.
		{Name: "consumers", Fn: func(ctx context.Context) error {
			if err := connected(); err != nil {
				return unknownOffline(err)
			}
			for _, c := range [][2]string{{subjects.Stream, subjects.DispatcherConsumer}, {subjects.RetryStream, subjects.RetrierConsumer}} {
				if _, err := deps.JS.Consumer(ctx, c[0], c[1]); err != nil {
					return fmt.Errorf("consumer %s of %s: %w", c[1], c[0], err)
				}
			}
			return nil
		}},
		{Name: "settings", Fn: func(context.Context) error {
			select {
			case <-deps.View.Ready():
				return deps.View.Err()
			default:
				return errors.New("settings view not loaded yet")
			}
		}},
	}
	if deps.Storage != nil {
		checks = append(checks, api.Check{Name: "storage", Fn: func(context.Context) error { return deps.Storage() }})
	}
	// Which processes run, and whether the built-ins run in serve:
	// callbackd plugins list compares that with its config, which may
	// have changed since serve started.
	var where []string
	if deps.BuiltinsInProcess {
		where = append(where, builtinsInProcess)
	}
	plugins := api.Check{Name: "plugins", Fn: func(context.Context) error { return nil }}
	if m := deps.Plugins; m != nil {
		plugins.Fn = func(context.Context) error { return m.Healthy() }
		plugins.Detail = func() string {
			return strings.Join(append([]string{"running " + strings.Join(m.Names(), ", ")}, where...), "; ")
		}
	} else {
		plugins.Detail = func() string { return strings.Join(where, "; ") }
	}
	checks = append(checks, plugins)
	return checks
}

// deliveryLog serves the deliveries query from the delivery log.
type deliveryLog struct {
	r  *deliverylog.Reader
	js jetstream.JetStream
}

// Append stores a test callback's record; its key is its sequence, as
// Query's keys are.
func (l deliveryLog) Append(ctx context.Context, r deliverylog.Record) (string, error) {
	seq, err := deliverylog.Append(ctx, l.js, r)
	if err != nil {
		return "", err
	}
	return strconv.FormatUint(seq, 10), nil
}

func (l deliveryLog) Query(ctx context.Context, f api.DeliveryFilter) (api.DeliveryPage, error) {
	p, err := l.r.Query(ctx, deliverylog.Filter{
		AccountID: f.AccountID,
		ProjectID: f.ProjectID,
		Outcome:   f.Outcome,
		First:     f.First,
		After:     f.After,
	})
	if errors.Is(err, deliverylog.ErrBadCursor) {
		return api.DeliveryPage{}, fmt.Errorf("%w: %w", api.ErrBadCursor, err)
	}
	if err != nil {
		return api.DeliveryPage{}, err
	}
	out := api.DeliveryPage{HasNextPage: p.HasNext, Deliveries: make([]api.LoggedDelivery, len(p.Records))}
	for i, e := range p.Records {
		out.Deliveries[i] = api.LoggedDelivery{Key: e.Cursor(), Cursor: e.Cursor(), Record: e.Record}
	}
	return out, nil
}

// replayer runs replayDeadLetters with the deadletters package.
type replayer struct{ js jetstream.JetStream }

func (r replayer) Replay(ctx context.Context, f api.ReplayFilter) (api.ReplayResult, error) {
	res, err := deadletters.Replay(ctx, r.js, deadletters.Filter{
		AccountID: f.AccountID,
		ProjectID: f.ProjectID,
		EventType: f.EventType,
		Reason:    f.Reason,
		Since:     f.Since,
		Until:     f.Until,
		DryRun:    f.DryRun,
	}, nil)
	// On error res is what was done before it: the API reports both.
	return api.ReplayResult{Matched: res.Matched, Replayed: res.Replayed}, err
}
