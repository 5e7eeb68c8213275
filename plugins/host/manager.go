// Package host runs callbackd's plugin processes: it launches each one
// through hashicorp/go-plugin (after verifying a third-party plugin's
// checksum), health-checks it, restarts it with backoff when it dies, and
// stops them all on Close. The plugins it hands out are the Go interfaces
// of package plugins, stable across restarts: while a process is down or
// restarting their calls fail fast with plugins.ErrPluginUnavailable, an
// infrastructure error that costs the event time, never a delivery attempt.
package host

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/callbackd/callbackd/plugins"
)

// Spec is one plugin process to run.
type Spec struct {
	// Name names the plugin in logs, errors, metrics and listings: for
	// example "builtin" or the config entry's path.
	Name string
	// Builtin marks callbackd's own executable serving its built-in
	// plugins: Path is run as it is, with no checksum (it is the running
	// binary), and a few more variables of the host's environment (TLS
	// roots, Go runtime settings) pass through.
	Builtin bool
	// Path is the executable. For a third-party plugin it is relative to
	// Options.Dir, and the file must have the checksum SHA256.
	Path string
	// SHA256 is the hex SHA-256 the third-party plugin's file must have.
	SHA256 string
	// Args are passed to the plugin.
	Args []string
	// Env is added to the plugin's clean environment.
	Env map[string]string
	// Kinds are the plugin kinds (plugins.PluginEncoder, PluginTransport,
	// PluginFailure) callbackd uses from this process; a process that does
	// not serve one of them is refused.
	Kinds []string
	// Keys are the config keys served by this process ("plugins.encoders.
	// crawl_failed"), added to its log lines: several entries may share one
	// file.
	Keys []string
}

// Options configure a Manager. Zero values get the defaults in brackets.
type Options struct {
	// Dir is plugins.dir, where third-party plugins live. It is refused
	// when group- or world-writable.
	Dir string
	// ExecDir is where verified copies of third-party plugins are made
	// and executed from; it must allow execution [os.TempDir()]. The
	// manager makes a private 0700 directory inside it.
	ExecDir string
	// Logger receives the manager's logs and the plugins' own, each with
	// plugin=<name> [discard].
	Logger *slog.Logger
	// LogLevel is passed to plugins as their log level [info].
	LogLevel string
	// CallTimeout is the deadline of encoder and failure handler calls
	// whose context has none, and of Describe at launch [5s].
	CallTimeout time.Duration
	// TransportTimeout is the deadline of transport calls whose context
	// has none: delivery.timeout + 5s [35s].
	TransportTimeout time.Duration
	// StartTimeout bounds a launch up to the handshake [30s].
	StartTimeout time.Duration
	// MinBackoff and MaxBackoff bound the wait before a restart, which
	// doubles after each failed one [250ms, 30s].
	MinBackoff, MaxBackoff time.Duration
	// HealthInterval is how often each process is health-checked [5s].
	HealthInterval time.Duration
	// OnRestart, if not nil, is called after each restart of a plugin
	// (for the plugin-restarts metric).
	OnRestart func(plugin string)
	// Env is set in every plugin's environment (plugins.EnvUserAgent,
	// plugins.EnvDeliveryTimeout); a plugin's configured env overrides it.
	Env map[string]string
}

func (o *Options) setDefaults() {
	if o.ExecDir == "" {
		o.ExecDir = os.TempDir()
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.LogLevel == "" {
		o.LogLevel = "info"
	}
	if o.CallTimeout <= 0 {
		o.CallTimeout = 5 * time.Second
	}
	if o.TransportTimeout <= 0 {
		o.TransportTimeout = 35 * time.Second
	}
	if o.StartTimeout <= 0 {
		o.StartTimeout = 30 * time.Second
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = 250 * time.Millisecond
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = max(30*time.Second, o.MinBackoff)
	}
	if o.HealthInterval <= 0 {
		o.HealthInterval = 5 * time.Second
	}
}

// Manager runs plugin processes. It is safe for concurrent use.
type Manager struct {
	o       Options
	execDir string

	mu      sync.Mutex
	plugins []*Plugin
	closed  bool
}

// NewManager returns a Manager. Close it to stop every plugin process.
func NewManager(o Options) (*Manager, error) {
	o.setDefaults()
	removeStaleExecDirs(o.ExecDir, o.Logger)
	dir, err := os.MkdirTemp(o.ExecDir, execDirPattern)
	if err != nil {
		return nil, fmt.Errorf("plugin exec dir: %w", err)
	}
	// Its owner, so that a later manager can remove it if this process
	// dies without Close (kill -9).
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("plugin exec dir: %w", err)
	}
	return &Manager{o: o, execDir: dir}, nil
}

// The exec dir of a manager: execDirPattern in ExecDir, holding ownerFile
// (the owning process's pid) and the verified copies.
const (
	execDirPattern = "callbackd-plugins-*"
	ownerFile      = "owner.pid"
)

// removeStaleExecDirs removes the exec dirs in dir that a process which no
// longer runs left behind (killed before it could Close). A dir without an
// owner, or whose owner runs (or whose pid was reused), is left alone.
func removeStaleExecDirs(dir string, log *slog.Logger) {
	paths, _ := filepath.Glob(filepath.Join(dir, execDirPattern))
	for _, p := range paths {
		b, err := os.ReadFile(filepath.Join(p, ownerFile))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 || pid == os.Getpid() || processRuns(pid) {
			continue
		}
		if err := os.RemoveAll(p); err == nil {
			log.Debug("removed the plugin exec dir of a process that is gone", "dir", p, "pid", pid)
		}
	}
}

// processRuns reports whether a process with pid exists (signal 0; a
// process of another user counts as running).
func processRuns(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// Launch starts the plugin process of s and waits for its handshake; from
// then on the manager keeps it running. The error names the plugin and
// says why it could not start: refused (ErrRefused), incompatible
// (ErrIncompatible), or the process's own last words.
func (m *Manager) Launch(ctx context.Context, s Spec) (*Plugin, error) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, fmt.Errorf("plugin %s: %w", s.Name, ErrClosed)
	}
	m.mu.Unlock()
	p := &Plugin{
		m:     m,
		spec:  s,
		log:   pluginLogger(m.o.Logger, s),
		crash: make(chan struct{}, 1),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	pr, err := p.start(ctx)
	if err != nil {
		return nil, err
	}
	p.desc = pr.desc
	p.cur.Store(pr)
	p.log.Info("plugin started", "pid", pr.pid, "serves", strings.Join(pr.desc.Kinds, ","))

	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		pr.kill()
		return nil, fmt.Errorf("plugin %s: %w", s.Name, ErrClosed)
	}
	m.plugins = append(m.plugins, p)
	m.mu.Unlock()
	go p.supervise()
	return p, nil
}

// Plugins returns the plugins launched, in launch order.
func (m *Manager) Plugins() []*Plugin {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]*Plugin(nil), m.plugins...)
}

// Names returns the names of the plugin processes, in launch order.
func (m *Manager) Names() []string {
	var names []string
	for _, p := range m.Plugins() {
		names = append(names, p.spec.Name)
	}
	return names
}

// Healthy returns nil when every plugin process is running, else an error
// naming those that are not (for /readyz).
func (m *Manager) Healthy() error {
	var down, why []string
	for _, p := range m.Plugins() {
		if !p.Running() {
			down = append(down, p.spec.Name)
			if e := p.LastError(); e != "" {
				// Start errors begin "plugin <name>: ": said once.
				e = strings.TrimPrefix(e, "plugin "+p.spec.Name+": ")
				why = append(why, p.spec.Name+": "+plugins.Clip(e, 200))
			}
		}
	}
	if len(down) == 0 {
		return nil
	}
	// "not running: a, b (a: why; b: why)": callbackd plugins list reads
	// the names before " (".
	reasons := ""
	if len(why) > 0 {
		reasons = " (" + strings.Join(why, "; ") + ")"
	}
	return fmt.Errorf("%w: not running: %s%s", plugins.ErrPluginUnavailable, strings.Join(down, ", "), reasons)
}

// Close stops every plugin process and waits for them to exit. Calls made
// after it fail with ErrPluginUnavailable.
func (m *Manager) Close() {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	m.closed = true
	ps := m.plugins
	m.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Go(p.close)
	}
	wg.Wait()
	_ = os.RemoveAll(m.execDir)
}

// Plugin is one supervised plugin process.
type Plugin struct {
	m    *Manager
	spec Spec
	log  *slog.Logger
	desc plugins.Description // from the first launch; the binary is pinned

	cur      atomic.Pointer[proc] // nil while down
	restarts atomic.Int64
	lastErr  atomic.Pointer[string]

	crash    chan struct{}
	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
}

// proc is one run of a plugin process.
type proc struct {
	client    *plugin.Client
	pid       int
	started   time.Time
	desc      plugins.Description
	encoders  map[string]plugins.Encoder
	encConn   *plugins.EncoderClient
	tr        *plugins.TransportClient
	fh        *plugins.FailureClient
	pipe      *plugins.PipelineClient
	pipelines map[string]plugins.EncodeDeliverer
	// streamEnd is why the first of its streams ended, for the
	// supervisor's line: one line per crash, not one per stream.
	streamEnd atomic.Pointer[string]
	// cancel releases the process's exec context (and kills it if it
	// still runs).
	cancel context.CancelFunc
}

// downNoted is LastError after a crash, before any restart failed.
const downNoted = "process died or stopped answering health checks"

// exitPoll is how often the supervisor looks whether its process exited.
const exitPoll = 100 * time.Millisecond

// killGrace is how long a process gets to exit when asked to. go-plugin asks
// over gRPC with no deadline of its own, and a frozen process (SIGSTOP, a
// deadlock) never answers: after killGrace it is killed outright.
const killGrace = 2 * time.Second

func (pr *proc) kill() {
	defer pr.release()
	if pr.encConn != nil {
		pr.encConn.Close()
	}
	if pr.pipe != nil {
		pr.pipe.Close()
	}
	if pr.tr != nil {
		pr.tr.Close()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		pr.client.Kill()
	}()
	t := time.NewTimer(killGrace)
	defer t.Stop()
	select {
	case <-done:
		return
	case <-t.C:
	}
	// Still ours: the process has not been reaped, so its pid is not reused.
	if !pr.client.Exited() {
		if proc, err := os.FindProcess(pr.pid); err == nil {
			_ = proc.Kill()
		}
	}
	<-done
}

// release ends the process's exec context once it is gone.
func (pr *proc) release() {
	if pr.cancel != nil {
		pr.cancel()
	}
}

// pluginLogger is log with the plugin's name and config keys.
func pluginLogger(log *slog.Logger, s Spec) *slog.Logger {
	if len(s.Keys) == 0 {
		return log.With("plugin", s.Name)
	}
	return log.With("plugin", s.Name, "keys", strings.Join(s.Keys, ","))
}

// Name returns the plugin's name (Spec.Name).
func (p *Plugin) Name() string { return p.spec.Name }

// Spec returns the plugin's spec.
func (p *Plugin) Spec() Spec { return p.spec }

// Description returns what the process serves.
func (p *Plugin) Description() plugins.Description { return p.desc }

// Running reports whether the process is up.
func (p *Plugin) Running() bool {
	pr := p.cur.Load()
	return pr != nil && !pr.client.Exited()
}

// PID returns the process ID, 0 while the process is down.
func (p *Plugin) PID() int {
	if pr := p.cur.Load(); pr != nil {
		return pr.pid
	}
	return 0
}

// Restarts returns how many times the process was restarted.
func (p *Plugin) Restarts() int { return int(p.restarts.Load()) }

// LastError returns why the last launch or run failed, "" if none did.
func (p *Plugin) LastError() string {
	if s := p.lastErr.Load(); s != nil {
		return *s
	}
	return ""
}

// Encoder returns the encoder of the process for eventType: the one named
// so, else the one whose EventType it is, else the process's only one.
// The Encoder stays valid across restarts.
func (p *Plugin) Encoder(eventType string) (plugins.Encoder, plugins.EncoderInfo, error) {
	if !p.desc.Serves(plugins.PluginEncoder) {
		return nil, plugins.EncoderInfo{}, fmt.Errorf("%w: plugin %s serves no encoder", ErrIncompatible, p.spec.Name)
	}
	pick := -1
	for i, e := range p.desc.Encoders {
		if e.Name == eventType {
			pick = i
			break
		}
	}
	if pick < 0 {
		for i, e := range p.desc.Encoders {
			if e.Info.EventType == eventType {
				pick = i
				break
			}
		}
	}
	if pick < 0 && len(p.desc.Encoders) == 1 {
		// A plugin's only encoder takes the events it is configured for,
		// whatever it is named; one that declares another event type is
		// likely configured by mistake, so it is said.
		pick = 0
		if e := p.desc.Encoders[0]; e.Info.EventType != "" {
			p.log.Warn("the plugin's only encoder declares another event type; it gets the events it is configured for",
				"configured_for", eventType, "declares", e.Info.EventType)
		}
	}
	if pick < 0 {
		var names []string
		for _, e := range p.desc.Encoders {
			names = append(names, e.Name)
		}
		return nil, plugins.EncoderInfo{}, fmt.Errorf("%w: plugin %s has no encoder for %q (it serves %s)", ErrIncompatible, p.spec.Name, eventType, strings.Join(names, ", "))
	}
	e := p.desc.Encoders[pick]
	return &encoderHandle{p: p, name: e.Name, info: e.Info}, e.Info, nil
}

// Transport returns the process's transport, valid across restarts.
func (p *Plugin) Transport() (plugins.Transport, error) {
	if !p.desc.Serves(plugins.PluginTransport) {
		return nil, fmt.Errorf("%w: plugin %s serves no transport", ErrIncompatible, p.spec.Name)
	}
	return transportHandle{p}, nil
}

// Failure returns the process's failure handler, valid across restarts.
func (p *Plugin) Failure() (plugins.FailureHandler, error) {
	if !p.desc.Serves(plugins.PluginFailure) {
		return nil, fmt.Errorf("%w: plugin %s serves no failure handler", ErrIncompatible, p.spec.Name)
	}
	return failureHandle{p}, nil
}

// down returns the error of a call made while the process is down.
func (p *Plugin) down() error {
	select {
	case <-p.stop:
		return fmt.Errorf("%w: %s: %w", plugins.ErrPluginUnavailable, p.spec.Name, ErrClosed)
	default:
	}
	// Why it is down, when a restart failed (a changed file, say): the
	// text reaches a dead letter's Callbackd-Error, read before a replay.
	why := ""
	if e := p.LastError(); e != "" && e != downNoted {
		why = "; last start: " + e
	}
	return fmt.Errorf("%w: %s is restarting (%w)%s", plugins.ErrPluginUnavailable, p.spec.Name, plugins.ErrNotReached, why)
}

type encoderHandle struct {
	p    *Plugin
	name string
	info plugins.EncoderInfo
}

func (h *encoderHandle) Info(context.Context) (plugins.EncoderInfo, error) { return h.info, nil }

func (h *encoderHandle) Encode(ctx context.Context, ev plugins.Event) (plugins.Encoded, error) {
	pr := h.p.cur.Load()
	if pr == nil {
		return plugins.Encoded{}, h.p.down()
	}
	enc, ok := pr.encoders[h.name]
	if !ok {
		return plugins.Encoded{}, fmt.Errorf("%w: %s no longer serves encoder %q", plugins.ErrPluginUnavailable, h.p.spec.Name, h.name)
	}
	out, err := enc.Encode(ctx, ev)
	if err == nil && out.SkipReason == "" && !h.p.spec.Builtin {
		// A third-party encoder's notification is checked before anything
		// is sent: one unfit to send is the plugin's bug, and the event is
		// dead-lettered, to be replayed once it is fixed.
		if cerr := out.Notification.Check(); cerr != nil {
			return plugins.Encoded{}, plugins.Invalid("encoder %s of plugin %s returned a notification that cannot be sent: %v", h.name, h.p.spec.Name, cerr)
		}
	}
	return out, err
}

// PipelineWith gives the one-crossing EncodeDeliverer when tr is the
// transport of the same process and the process serves PipelineService.
func (h *encoderHandle) PipelineWith(tr plugins.Transport) plugins.EncodeDeliverer {
	th, ok := tr.(transportHandle)
	if !ok || th.p != h.p || !h.p.desc.Serves(plugins.PluginPipeline) {
		return nil
	}
	return &pipelineHandle{p: h.p, name: h.name}
}

type pipelineHandle struct {
	p    *Plugin
	name string
}

func (h *pipelineHandle) EncodeDeliver(ctx context.Context, ev plugins.Event, dest *plugins.Destination, encodeTimeout time.Duration) (plugins.EncodeDelivered, error) {
	pr := h.p.cur.Load()
	if pr == nil || pr.pipelines == nil {
		return plugins.EncodeDelivered{}, h.p.down()
	}
	ed, ok := pr.pipelines[h.name]
	if !ok {
		return plugins.EncodeDelivered{}, fmt.Errorf("%w: %s no longer serves encoder %q", plugins.ErrPluginUnavailable, h.p.spec.Name, h.name)
	}
	return ed.EncodeDeliver(ctx, ev, dest, encodeTimeout)
}

type transportHandle struct{ p *Plugin }

func (h transportHandle) Deliver(ctx context.Context, d plugins.Delivery) (plugins.Result, error) {
	pr := h.p.cur.Load()
	if pr == nil || pr.tr == nil {
		return plugins.Result{}, h.p.down()
	}
	return pr.tr.Deliver(ctx, d)
}

type failureHandle struct{ p *Plugin }

func (h failureHandle) OnFailure(ctx context.Context, f plugins.Failure) ([]plugins.Outbound, error) {
	pr := h.p.cur.Load()
	if pr == nil || pr.fh == nil {
		return nil, h.p.down()
	}
	return pr.fh.OnFailure(ctx, f)
}

// close stops supervising and kills the process.
func (p *Plugin) close() {
	p.stopOnce.Do(func() { close(p.stop) })
	<-p.done
	if pr := p.cur.Swap(nil); pr != nil {
		pr.kill()
	}
}

// supervise restarts the process when it dies or stops answering health
// checks, until close.
func (p *Plugin) supervise() {
	defer close(p.done)
	o := &p.m.o
	// ctx ends with close, so that a restart under way gives up.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-p.stop
		cancel()
	}()
	tick := time.NewTicker(o.HealthInterval)
	defer tick.Stop()
	// A process that exits is noticed within exitPoll: a broken stream
	// tells at once, but a plugin served over unary calls only (a failure
	// handler) has none, and the health check comes every HealthInterval
	// — longer than the dispatcher asks a failure handler again in place.
	exited := time.NewTicker(exitPoll)
	defer exited.Stop()
	backoff := o.MinBackoff
	missed := 0 // health checks in a row that got no answer in time
	for {
		select {
		case <-p.stop:
			return
		case <-p.crash:
		case <-exited.C:
			if pr := p.cur.Load(); pr == nil || !pr.client.Exited() {
				continue
			}
		case <-tick.C:
			pr := p.cur.Load()
			if pr == nil {
				break
			}
			ok, late := p.healthy(pr)
			if ok {
				missed = 0
				continue
			}
			// A process that is there but slow to answer (a GC or CPU
			// stall on a busy machine) is given a second chance: a
			// restart hands back every event it has in flight, and
			// the endpoints may already have had some of them.
			if late {
				if missed++; missed < maxMissedPings {
					p.log.Warn("plugin process did not answer its health check in time; checking again", "pid", pr.pid, "timeout", p.m.o.CallTimeout)
					continue
				}
			}
		}
		missed = 0
		if pr := p.cur.Swap(nil); pr != nil {
			attrs := []any{"pid", pr.pid}
			if why := pr.streamEnd.Load(); why != nil {
				attrs = append(attrs, "stream_err", *why)
			}
			p.log.Error("plugin process died or stopped answering; restarting", attrs...)
			p.setLastErr(downNoted)
			// A process that ran a good while was healthy: start the
			// backoff over.
			if time.Since(pr.started) > time.Minute {
				backoff = o.MinBackoff
			}
			pr.kill()
		}
		for {
			select {
			case <-p.stop:
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, o.MaxBackoff)
			pr, err := p.start(ctx)
			if err != nil && ctx.Err() != nil {
				return // closed during the restart
			}
			if err != nil {
				p.log.Error("plugin restart failed", "err", err, "next_try_in", backoff)
				p.setLastErr(err.Error())
				continue
			}
			// Drop a crash signal of the old process.
			select {
			case <-p.crash:
			default:
			}
			p.cur.Store(pr)
			p.restarts.Add(1)
			p.log.Info("plugin restarted", "pid", pr.pid, "restarts", p.restarts.Load())
			if o.OnRestart != nil {
				o.OnRestart(p.spec.Name)
			}
			if pr.client.Exited() {
				p.signalCrash(pr)
			}
			break
		}
	}
}

func (p *Plugin) setLastErr(s string) { p.lastErr.Store(&s) }

// signalCrash wakes the supervisor if pr is still the current process.
func (p *Plugin) signalCrash(pr *proc) {
	if p.cur.Load() != pr {
		return
	}
	select {
	case p.crash <- struct{}{}:
	default:
	}
}

// maxMissedPings is how many health checks in a row may go unanswered
// within the call timeout before a process that has not exited is
// restarted.
const maxMissedPings = 2

// healthy pings the process, bounded by the call timeout. late reports a
// ping that got no answer in time from a process that has not exited.
func (p *Plugin) healthy(pr *proc) (ok, late bool) {
	if pr.client.Exited() {
		return false, false
	}
	rpc, err := pr.client.Client()
	if err != nil {
		return false, false
	}
	ch := make(chan error, 1)
	go func() { ch <- rpc.Ping() }()
	t := time.NewTimer(p.m.o.CallTimeout)
	defer t.Stop()
	select {
	case err := <-ch:
		return err == nil, false
	case <-t.C:
		return false, true
	}
}

// passEnv are the variables of the host's environment every plugin gets.
var passEnv = []string{"PATH", "TZ", "LANG"}

// passEnvBuiltin are the further ones callbackd's own built-in process
// gets: TLS roots, Go runtime settings, coverage output.
var passEnvBuiltin = []string{
	"SSL_CERT_FILE", "SSL_CERT_DIR", "TMPDIR",
	"GODEBUG", "GOMAXPROCS", "GOMEMLIMIT", "GOGC", "GOTRACEBACK", "GOCOVERDIR",
}

// env returns the plugin's clean environment: never the host's secrets.
func (p *Plugin) env() []string {
	var env []string
	names := passEnv
	if p.spec.Builtin {
		names = append(append([]string(nil), passEnv...), passEnvBuiltin...)
	}
	for _, k := range names {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	env = append(env, plugins.EnvLogLevel+"="+p.m.o.LogLevel)
	// The configured env comes last: of a name given twice, exec uses the
	// last.
	for _, vars := range []map[string]string{p.m.o.Env, p.spec.Env} {
		keys := make([]string, 0, len(vars))
		for k := range vars {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			env = append(env, k+"="+vars[k])
		}
	}
	return env
}

// executable returns the path to execute: the built-in binary as it is, or
// a verified private copy of a third-party plugin, which remove deletes.
func (p *Plugin) executable() (path string, remove func(), err error) {
	if p.spec.Builtin {
		return p.spec.Path, func() {}, nil
	}
	if err := CheckDir(p.m.o.Dir); err != nil {
		return "", nil, fmt.Errorf("plugin %s: %w", p.spec.Name, err)
	}
	src, err := resolvePluginPath(p.m.o.Dir, p.spec.Path)
	if err != nil {
		return "", nil, fmt.Errorf("plugin %s: %w", p.spec.Name, err)
	}
	cp, err := verifiedCopy(src, p.spec.SHA256, p.m.execDir)
	if err != nil {
		return "", nil, fmt.Errorf("plugin %s: %w", p.spec.Name, err)
	}
	return cp, func() { _ = os.Remove(cp) }, nil
}

// start launches one process, handshakes, asks what it serves and opens
// its streams.
func (p *Plugin) start(ctx context.Context) (*proc, error) {
	o := &p.m.o
	path, remove, err := p.executable()
	if err != nil {
		return nil, err
	}
	// The copy can go once the process runs: Linux keeps the file for it.
	defer remove()

	var pr *proc
	var tail *tailBuffer
	for try := 0; ; try++ {
		// ctx ending while the process starts (serve stopping, the
		// plugin closed during a restart) kills it, so a handshake that
		// hangs does not hold shutdown for StartTimeout; once started,
		// the process is the proc's, and ctx no longer matters.
		pctx, cancelProc := context.WithCancel(context.Background())
		detach := context.AfterFunc(ctx, cancelProc)
		cmd := exec.CommandContext(pctx, path, p.spec.Args...)
		// ps shows the configured name, not the private copy's.
		cmd.Args[0] = p.spec.Path
		cmd.Env = p.env()
		tail = newTailBuffer(2048)
		client := plugin.NewClient(&plugin.ClientConfig{
			HandshakeConfig:  plugins.Handshake,
			Plugins:          plugins.HostPluginSet(),
			Cmd:              cmd,
			AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
			Logger:           newHCLogger(o.Logger, p.spec.Name),
			SkipHostEnv:      true,
			StartTimeout:     o.StartTimeout,
			Stderr:           tail,
			// Streams keep the connection busy, but a plugin used only
			// for rare unary calls must not see it closed as idle: the
			// SDK takes a closed connection for a dead host.
			GRPCDialOptions: []grpc.DialOption{grpc.WithIdleTimeout(0)},
		})
		_, err = client.Client()
		if !detach() && err == nil {
			err = fmt.Errorf("start abandoned: %w", context.Cause(ctx))
		}
		if err == nil {
			pr = &proc{client: client, started: time.Now(), cancel: cancelProc}
			if cmd.Process != nil {
				pr.pid = cmd.Process.Pid
			}
			break
		}
		client.Kill()
		cancelProc()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("plugin %s: start abandoned: %w", p.spec.Name, context.Cause(ctx))
		}
		// A fork in another goroutine can briefly hold the fresh copy
		// open for writing (golang.org/issue/22315): try again.
		if strings.Contains(err.Error(), "text file busy") && try < 5 && ctx.Err() == nil {
			time.Sleep(time.Duration(try+1) * 20 * time.Millisecond)
			continue
		}
		return nil, p.startError(err, tail.String(), cmd.ProcessState)
	}

	ok := false
	defer func() {
		if !ok {
			pr.kill()
		}
	}()
	rpc, err := pr.client.Client()
	if err != nil {
		return nil, fmt.Errorf("plugin %s: %w", p.spec.Name, err)
	}
	raw, err := rpc.Dispense(plugins.InfoKind)
	if err != nil {
		return nil, fmt.Errorf("plugin %s: %w", p.spec.Name, err)
	}
	dctx, cancel := context.WithTimeout(ctx, o.CallTimeout)
	desc, err := raw.(*plugins.InfoClient).Describe(dctx)
	cancel()
	if err != nil {
		if status.Code(err) == codes.Unimplemented {
			return nil, fmt.Errorf("%w: plugin %s does not serve callbackd's PluginService: build it with the callbackd plugins SDK (plugins.Serve)", ErrIncompatible, p.spec.Name)
		}
		return nil, fmt.Errorf("plugin %s: describe: %w", p.spec.Name, err)
	}
	for _, k := range p.spec.Kinds {
		if !desc.Serves(k) {
			article := "a"
			if strings.HasPrefix(k, "e") {
				article = "an"
			}
			return nil, fmt.Errorf("%w: plugin %s is configured as %s %s but serves %s", ErrIncompatible, p.spec.Name, article, k, describeKinds(desc.Kinds))
		}
	}
	pr.desc = desc
	onEnd := func(err error) {
		why := err.Error()
		pr.streamEnd.CompareAndSwap(nil, &why)
		p.log.Debug("plugin stream ended", "err", err)
		p.signalCrash(pr)
	}
	if desc.Serves(plugins.PluginEncoder) {
		raw, err := rpc.Dispense(plugins.PluginEncoder)
		if err != nil {
			return nil, fmt.Errorf("plugin %s: %w", p.spec.Name, err)
		}
		pr.encConn = raw.(*plugins.EncoderClient)
		if err := pr.encConn.Start(plugins.StreamOptions{Plugin: p.spec.Name, Timeout: o.CallTimeout, OnEnd: onEnd}); err != nil {
			return nil, err
		}
		pr.encoders = make(map[string]plugins.Encoder, len(desc.Encoders))
		for _, e := range desc.Encoders {
			pr.encoders[e.Name] = pr.encConn.Encoder(e.Name, e.Info)
		}
	}
	if desc.Serves(plugins.PluginTransport) {
		raw, err := rpc.Dispense(plugins.PluginTransport)
		if err != nil {
			return nil, fmt.Errorf("plugin %s: %w", p.spec.Name, err)
		}
		pr.tr = raw.(*plugins.TransportClient)
		if err := pr.tr.Start(plugins.StreamOptions{Plugin: p.spec.Name, Timeout: o.TransportTimeout, OnEnd: onEnd}); err != nil {
			return nil, err
		}
	}
	if desc.Serves(plugins.PluginPipeline) && pr.encConn != nil && pr.tr != nil {
		gc, ok := rpc.(*plugin.GRPCClient)
		if ok {
			pr.pipe = plugins.NewPipelineClient(gc.Conn)
			if err := pr.pipe.Start(plugins.StreamOptions{Plugin: p.spec.Name, Timeout: o.CallTimeout + o.TransportTimeout, OnEnd: onEnd}); err != nil {
				return nil, err
			}
			pr.pipelines = make(map[string]plugins.EncodeDeliverer, len(desc.Encoders))
			for _, e := range desc.Encoders {
				pr.pipelines[e.Name] = pr.pipe.EncodeDeliverer(e.Name)
			}
		}
	}
	if desc.Serves(plugins.PluginFailure) {
		raw, err := rpc.Dispense(plugins.PluginFailure)
		if err != nil {
			return nil, fmt.Errorf("plugin %s: %w", p.spec.Name, err)
		}
		pr.fh = raw.(*plugins.FailureClient)
		if err := pr.fh.Start(plugins.StreamOptions{Plugin: p.spec.Name, Timeout: o.CallTimeout}); err != nil {
			return nil, fmt.Errorf("plugin %s: %w", p.spec.Name, err)
		}
	}
	ok = true
	return pr, nil
}

func describeKinds(kinds []string) string {
	if len(kinds) == 0 {
		return "nothing"
	}
	return strings.Join(kinds, ", ")
}

// maxLastWords caps what a start error quotes of a process's stderr.
const maxLastWords = 600

// startError explains why a process did not get through the handshake;
// exited is the process's end when it has ended.
func (p *Plugin) startError(err error, stderr string, exited *os.ProcessState) error {
	msg := err.Error()
	lastWords := strings.TrimSpace(stderr)
	if len(lastWords) > maxLastWords {
		// Its last lines: from the first line break within the last
		// maxLastWords bytes, else from a character boundary there.
		tail := lastWords[len(lastWords)-maxLastWords:]
		if i := strings.IndexByte(tail, '\n'); i >= 0 {
			tail = tail[i+1:]
		}
		lastWords = strings.ToValidUTF8(tail, "")
	}
	switch {
	case strings.Contains(msg, "incompatible API version"):
		return fmt.Errorf("%w: plugin %s speaks another version of callbackd's plugin protocol (callbackd speaks version %d): rebuild it against this callbackd's plugins SDK (%s)",
			ErrIncompatible, p.spec.Name, plugins.ProtocolVersion, msg)
	case strings.Contains(lastWords, "This binary is a plugin"):
		return fmt.Errorf("%w: plugin %s rejected callbackd's handshake cookie: it is a go-plugin plugin for another program, or built with another callbackd SDK", ErrIncompatible, p.spec.Name)
	case strings.Contains(msg, "Failed to read any lines from plugin's stdout"), strings.Contains(msg, "plugin exited before we could connect"):
		// Its stdout closed with no handshake line: it ended (or closed
		// stdout) at start, which says nothing about the handshake.
		how := "exited"
		if exited != nil {
			how += " (" + exited.String() + ")"
		}
		if lastWords == "" {
			return fmt.Errorf("plugin %s %s before its handshake, saying nothing on stderr", p.spec.Name, how)
		}
		return fmt.Errorf("plugin %s %s before its handshake; its stderr: %s", p.spec.Name, how, strings.Join(strings.Fields(lastWords), " "))
	case strings.Contains(msg, "Unrecognized remote plugin message"):
		return fmt.Errorf("%w: plugin %s does not speak go-plugin's handshake (is it a callbackd plugin?): %s", ErrIncompatible, p.spec.Name, firstLine(msg))
	case strings.Contains(msg, "unsupported plugin protocol"):
		return fmt.Errorf("%w: plugin %s: %s (callbackd plugins speak gRPC)", ErrIncompatible, p.spec.Name, msg)
	case errors.Is(err, os.ErrPermission) && !p.spec.Builtin:
		return fmt.Errorf("%w: plugin %s: %v (verified copies run from %s: if it is mounted noexec, point TMPDIR at a directory that allows execution)",
			ErrRefused, p.spec.Name, err, p.m.o.ExecDir)
	case errors.Is(err, os.ErrNotExist), errors.Is(err, os.ErrPermission), errors.Is(err, exec.ErrNotFound):
		return fmt.Errorf("%w: plugin %s: %v", ErrRefused, p.spec.Name, err)
	}
	if lastWords != "" {
		return fmt.Errorf("plugin %s failed to start: %s; its stderr: %s", p.spec.Name, msg, lastWords)
	}
	return fmt.Errorf("plugin %s failed to start: %s", p.spec.Name, msg)
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
