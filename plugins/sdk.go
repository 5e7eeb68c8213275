package plugins

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/stats"
)

// This file is the SDK for plugin authors: a plugin's main is one call.
//
//	func main() { plugins.ServeEncoder(myEncoder{}) }
//
// The process then speaks callbackd's protocol over stdio and a Unix
// socket, logs through Logger into callbackd's log, and exits on its own
// when its host is gone, even after kill -9 of callbackd.

// EnvLogLevel is the environment variable through which the host tells a
// plugin its log level (debug, info, warn, error).
const EnvLogLevel = "CALLBACKD_PLUGIN_LOG_LEVEL"

// What the host tells every plugin a transport needs to deliver as the
// built-in http-form does (SPEC §3); a plugin's configured env overrides
// them.
const (
	// EnvUserAgent is the User-Agent to send: callbackd/<version>.
	EnvUserAgent = "CALLBACKD_USER_AGENT"
	// EnvDeliveryTimeout is delivery.timeout, a Go duration ("30s"): the
	// bound of one attempt. The context of a Deliver call ends later, at
	// delivery.timeout + 5 s (the slack for a wait for the host's slot),
	// so a transport that only honours its context would let an attempt
	// run 5 s over.
	EnvDeliveryTimeout = "CALLBACKD_DELIVERY_TIMEOUT"
)

// DeliveryTimeout returns delivery.timeout as the host passed it
// (EnvDeliveryTimeout), or def when it is unset or does not parse.
func DeliveryTimeout(def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(EnvDeliveryTimeout)); err == nil && d > 0 {
		return d
	}
	return def
}

// hostStderr is the process's stderr as started: go-plugin's Serve
// replaces os.Stderr, but what a plugin writes to the original one is what
// the host reads and logs.
var hostStderr io.Writer = os.Stderr

// ServeConfig says what a plugin process serves. At least one field must
// be set.
type ServeConfig struct {
	// Encoders are the encoders served, by name. The host picks, for an
	// event type, the encoder named after it, else the only one.
	Encoders map[string]Encoder
	// Transport, if set, is the transport served.
	Transport Transport
	// Failure, if set, is the failure handler served.
	Failure FailureHandler
}

// PluginSet returns the go-plugin plugin set that serves c, for tests
// that run a plugin in-process (plugin.TestPluginGRPCConn).
func (c ServeConfig) PluginSet() plugin.PluginSet {
	set := plugin.PluginSet{}
	var kinds []string
	if len(c.Encoders) > 0 {
		set[PluginEncoder] = &EncoderPlugin{Encoders: c.Encoders}
		kinds = append(kinds, PluginEncoder)
	}
	if c.Transport != nil {
		set[PluginTransport] = &TransportPlugin{Impl: c.Transport}
		kinds = append(kinds, PluginTransport)
	}
	if c.Failure != nil {
		set[PluginFailure] = &FailurePlugin{Impl: c.Failure}
		kinds = append(kinds, PluginFailure)
	}
	if len(c.Encoders) > 0 && c.Transport != nil {
		kinds = append(kinds, PluginPipeline)
	}
	set[pluginInfo] = &infoPlugin{kinds: kinds, encoders: c.Encoders, transport: c.Transport}
	return set
}

// ServeEncoder serves the encoders, each under the event type its Info
// gives, and never returns. It is the whole main of an encoder plugin.
func ServeEncoder(encoders ...Encoder) {
	m := make(map[string]Encoder, len(encoders))
	for _, e := range encoders {
		info, err := e.Info(context.Background())
		if err != nil {
			fatalf("encoder info: %v", err)
		}
		if info.EventType == "" {
			fatalf("encoder %T: Info gives no EventType", e)
		}
		if _, dup := m[info.EventType]; dup {
			fatalf("two encoders for event type %q", info.EventType)
		}
		m[info.EventType] = e
	}
	Serve(ServeConfig{Encoders: m})
}

// ServeTransport serves the transport and never returns.
func ServeTransport(t Transport) { Serve(ServeConfig{Transport: t}) }

// ServeFailure serves the failure handler and never returns.
func ServeFailure(f FailureHandler) { Serve(ServeConfig{Failure: f}) }

// Serve serves c and never returns: the process exits when the host stops
// it, when the host is gone (its parent process changes, or its last gRPC
// connection closes and none follows within a few seconds), or with status
// 1 when it was not started by a callbackd host.
func Serve(c ServeConfig) {
	if len(c.Encoders) == 0 && c.Transport == nil && c.Failure == nil {
		fatalf("plugins.Serve: nothing to serve")
	}
	log := Logger()
	watch := &hostWatch{log: log}
	go watch.parent(os.Getppid())
	go watch.term()
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: Handshake,
		Plugins:         c.PluginSet(),
		GRPCServer: func(opts []grpc.ServerOption) *grpc.Server {
			return grpc.NewServer(append(opts, grpc.StatsHandler(watch), grpc.MaxRecvMsgSize(MaxMessageBytes))...)
		},
		Logger: hclog.New(&hclog.LoggerOptions{
			Name:       "go-plugin",
			Level:      hclog.LevelFromString(logLevelName()),
			Output:     hostStderr,
			JSONFormat: true,
		}),
	})
	// The host asked the plugin to stop.
	os.Exit(0)
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(hostStderr, "callbackd plugin: "+format+"\n", args...)
	os.Exit(1)
}

// hostWatch ends the plugin when its host is gone. go-plugin stops a
// plugin only when the host asks; a host killed with SIGKILL cannot, so the
// plugin watches for itself: its parent process changing (it was
// re-parented), and its last gRPC connection closing with none after it.
type hostWatch struct {
	log   *slog.Logger
	mu    sync.Mutex
	conns int
	gen   int
}

// lastConnGrace is how long the plugin waits for a new connection after
// the last one closed.
const lastConnGrace = 3 * time.Second

// termGrace is how long a plugin serves on after SIGTERM. A service
// manager often signals the whole process group at once, host and plugins
// alike, while the host still drains the deliveries in flight through its
// plugins; the host stops them when it is done, or the plugins see it
// exit.
const termGrace = 90 * time.Second

func (w *hostWatch) term() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM)
	<-ch
	w.log.Info("SIGTERM: serving on until the host stops the plugin or exits", "at_most", termGrace)
	time.Sleep(termGrace)
	os.Exit(0)
}

func (w *hostWatch) parent(ppid int) {
	for {
		time.Sleep(500 * time.Millisecond)
		if os.Getppid() != ppid {
			w.log.Warn("host process is gone, exiting", "parent_pid", ppid)
			os.Exit(0)
		}
	}
}

func (w *hostWatch) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (w *hostWatch) HandleRPC(context.Context, stats.RPCStats)                       {}
func (w *hostWatch) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}

func (w *hostWatch) HandleConn(_ context.Context, s stats.ConnStats) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch s.(type) {
	case *stats.ConnBegin:
		w.conns++
		w.gen++
	case *stats.ConnEnd:
		w.conns--
		if w.conns > 0 {
			return
		}
		gen := w.gen
		time.AfterFunc(lastConnGrace, func() {
			w.mu.Lock()
			defer w.mu.Unlock()
			if w.conns == 0 && w.gen == gen {
				w.log.Warn("host connection is gone, exiting")
				os.Exit(0)
			}
		})
	}
}

// Logger returns the logger a plugin should log with: its records reach
// callbackd's log, under the plugin's name, at the level callbackd runs at.
// It writes hclog's JSON lines to the stderr the plugin started with,
// which is what go-plugin forwards to the host.
func Logger() *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(logLevelName()))
	return slog.New(slog.NewJSONHandler(hostStderr, &slog.HandlerOptions{
		Level: level,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Value.Kind() == slog.KindDuration {
				return slog.String(a.Key, a.Value.Duration().String())
			}
			if len(groups) > 0 {
				return a
			}
			switch a.Key {
			case slog.TimeKey:
				// The layout go-plugin parses.
				return slog.String("@timestamp", a.Value.Time().Format("2006-01-02T15:04:05.000000Z07:00"))
			case slog.LevelKey:
				return slog.String("@level", strings.ToLower(a.Value.String()))
			case slog.MessageKey:
				return slog.String("@message", a.Value.String())
			}
			return a
		},
	}))
}

func logLevelName() string {
	switch l := strings.ToLower(os.Getenv(EnvLogLevel)); l {
	case "debug", "info", "warn", "error":
		return l
	}
	return "info"
}
