package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/callbackd/callbackd/config"
	"github.com/callbackd/callbackd/plugins"
	"github.com/callbackd/callbackd/plugins/builtin"
	"github.com/callbackd/callbackd/plugins/host"
)

// pluginSet is every configured plugin, ready for the dispatcher: built-ins
// in their own process (plugins.builtins: process) or in-process, and each
// third-party plugin in its process. The dispatcher cannot tell which.
type pluginSet struct {
	// Encoders maps each configured event type to its encoder.
	Encoders map[string]plugins.Encoder
	// Transport is plugins.transport.
	Transport plugins.Transport
	// Failure is plugins.failure.
	Failure plugins.FailureHandler
	// TransportCapsHosts is true when the transport is the built-in
	// http-form, which caps its own requests per host at
	// dispatcher.per_host_concurrency.
	TransportCapsHosts bool

	manager *host.Manager // nil when nothing runs in a process
	closers []func()
}

// Close stops every plugin process and releases in-process plugins.
func (s *pluginSet) Close() {
	if s.manager != nil {
		s.manager.Close()
	}
	for _, c := range s.closers {
		c()
	}
}

// Healthy returns nil when every plugin process is running, else an error
// naming those that are not (a /readyz check).
func (s *pluginSet) Healthy() error {
	if s.manager == nil {
		return nil
	}
	return s.manager.Healthy()
}

// selfExecutable finds the binary that serves the built-ins: callbackd's
// own. Tests point it at a built callbackd.
var selfExecutable = os.Executable

// builtinProcessName names the process serving the built-ins in logs.
const builtinProcessName = "builtin"

// pluginUse is one config entry's use of a plugin.
type pluginUse struct {
	key       string // config key: plugins.encoders.<type>, plugins.transport, plugins.failure
	kind      string // plugins.PluginEncoder, …
	eventType string // for encoders
	entry     config.PluginEntry
}

// pluginUses lists the configured plugins, encoders sorted by event type.
func pluginUses(cfg *config.Config) []pluginUse {
	var uses []pluginUse
	types := make([]string, 0, len(cfg.Plugins.Encoders))
	for t := range cfg.Plugins.Encoders {
		types = append(types, t)
	}
	sort.Strings(types)
	for _, t := range types {
		uses = append(uses, pluginUse{key: "plugins.encoders." + t, kind: plugins.PluginEncoder, eventType: t, entry: cfg.Plugins.Encoders[t]})
	}
	uses = append(uses,
		pluginUse{key: "plugins.transport", kind: plugins.PluginTransport, entry: cfg.Plugins.Transport},
		pluginUse{key: "plugins.failure", kind: plugins.PluginFailure, entry: cfg.Plugins.Failure},
	)
	return uses
}

// checkBuiltin returns an error when a builtin:<name> entry names no
// built-in of its kind.
func checkBuiltin(u pluginUse) error {
	var names []string
	switch u.kind {
	case plugins.PluginEncoder:
		names = builtin.EncoderNames()
	case plugins.PluginTransport:
		names = []string{builtin.HTTPFormName}
	case plugins.PluginFailure:
		names = []string{builtin.SSOWebhookName}
	}
	for _, n := range names {
		if n != u.entry.Builtin {
			continue
		}
		// A built-in encoder refuses every event of another type.
		if u.kind == plugins.PluginEncoder && n != u.eventType {
			return fmt.Errorf("%s: builtin:%s encodes %s events, not %s", u.key, n, n, u.eventType)
		}
		return nil
	}
	return fmt.Errorf("%s: no built-in %s %q (built-ins: %s)", u.key, u.kind, u.entry.Builtin, strings.Join(names, ", "))
}

// thirdPartyKey identifies one third-party process: entries that name the
// same file with the same checksum, args and env share it.
func thirdPartyKey(e config.PluginEntry) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\x00%s\x00%q\x00", e.Path, strings.ToLower(e.SHA256), e.Args)
	keys := make([]string, 0, len(e.Env))
	for k := range e.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "%q=%q\x00", k, e.Env[k])
	}
	return b.String()
}

// processNames names each third-party process (by thirdPartyKey): its
// file, or, when entries with different args or env run the same file in
// several processes, the file and the first config key the process serves
// ("chaos[plugins.encoders.chaos2]"), so that logs, /readyz and
// `plugins list` tell them apart.
func processNames(uses []pluginUse) map[string]string {
	names := map[string]string{}    // thirdPartyKey → name, the file for now
	perPath := map[string]int{}     // file → its processes
	firstKey := map[string]string{} // thirdPartyKey → first config key
	for _, u := range uses {
		if u.entry.Builtin != "" {
			continue
		}
		k := thirdPartyKey(u.entry)
		if _, ok := names[k]; !ok {
			names[k], firstKey[k] = u.entry.Path, u.key
			perPath[u.entry.Path]++
		}
	}
	for k, path := range names {
		if perPath[path] > 1 {
			names[k] = path + "[" + firstKey[k] + "]"
		}
	}
	return names
}

// builtinArgs are the arguments of `callbackd plugin builtin` that carry
// the transport's settings into the built-in process.
func builtinArgs(cfg *config.Config) []string {
	args := []string{"plugin", "builtin",
		"--delivery-timeout=" + cfg.Delivery.Timeout.String(),
		"--user-agent=callbackd/" + version,
		"--per-host-concurrency=" + strconv.Itoa(cfg.Dispatcher.PerHostConcurrency),
	}
	if cfg.Delivery.AllowPrivate {
		args = append(args, "--allow-private")
	}
	for _, c := range cfg.Delivery.AllowCIDRs {
		args = append(args, "--allow-cidr="+c)
	}
	return args
}

// pluginEnv is what every plugin process is told of callbackd's settings:
// what a third-party transport needs to deliver as http-form does.
func pluginEnv(cfg *config.Config) map[string]string {
	return map[string]string{
		plugins.EnvUserAgent:       "callbackd/" + version,
		plugins.EnvDeliveryTimeout: cfg.Delivery.Timeout.String(),
	}
}

// newHTTPForm returns the built-in transport configured from cfg.
func newHTTPForm(cfg *config.Config) *builtin.HTTPForm {
	return builtin.NewHTTPForm(builtin.HTTPFormOptions{
		Timeout:            cfg.Delivery.Timeout,
		UserAgent:          "callbackd/" + version,
		Guard:              plugins.NewGuard(cfg.Delivery.AllowPrivate, cfg.AllowCIDRs()),
		PerHostConcurrency: cfg.Dispatcher.PerHostConcurrency,
	})
}

// startPlugins launches every configured plugin (SPEC §5) and returns them
// ready for use: all are running when it returns, or it returns an error
// naming the plugin and the config key, with nothing left running.
func startPlugins(ctx context.Context, cfg *config.Config, log *slog.Logger) (_ *pluginSet, err error) {
	set := &pluginSet{Encoders: map[string]plugins.Encoder{}}
	defer func() {
		if err != nil {
			set.Close()
		}
	}()
	uses := pluginUses(cfg)
	inprocess := cfg.Plugins.Builtins == "inprocess"
	builtinKinds, thirdParty, thirdOrder, err := planProcesses(uses, inprocess)
	if err != nil {
		return nil, err
	}

	var builtinProc *host.Plugin
	procs := map[string]*host.Plugin{}
	if len(builtinKinds) > 0 || len(thirdParty) > 0 {
		set.manager, err = host.NewManager(host.Options{
			Dir:              cfg.Plugins.Dir,
			Logger:           log.With("component", "plugins"),
			LogLevel:         cfg.Log.Level,
			CallTimeout:      cfg.Plugins.CallTimeout,
			TransportTimeout: cfg.Delivery.Timeout + 5*time.Second,
			Env:              pluginEnv(cfg),
		})
		if err != nil {
			return nil, err
		}
	}
	var launches []*launch
	if len(builtinKinds) > 0 {
		self, err := selfExecutable()
		if err != nil {
			return nil, fmt.Errorf("plugins: find callbackd's own executable to run the built-ins: %w", err)
		}
		launches = append(launches, &launch{spec: host.Spec{
			Name: builtinProcessName, Builtin: true, Path: self,
			Args: builtinArgs(cfg), Kinds: builtinKinds,
		}, errPfx: "plugins: built-in plugins"})
	}
	for _, k := range thirdOrder {
		// The keys this process serves: another process may run the
		// same file with another checksum, args or env, and be fine.
		launches = append(launches, &launch{spec: *thirdParty[k], key: k, errPfx: strings.Join(thirdParty[k].Keys, ", ")})
	}
	if err := launchAll(ctx, set.manager, launches, log); err != nil {
		return nil, err
	}
	for _, l := range launches {
		if l.key == "" {
			builtinProc = l.p
			continue
		}
		procs[l.key] = l.p
	}
	if err := set.wire(cfg, uses, inprocess, builtinProc, procs); err != nil {
		return nil, err
	}
	mode := "process"
	if inprocess {
		mode = "inprocess"
	}
	log.Info("plugins ready", "builtins", mode, "encoders", len(set.Encoders), "processes", len(procs)+btoi(builtinProc != nil))
	return set, nil
}

// planProcesses says what runs where: the built-ins' process serves every
// kind some entry takes from it (none in-process); third-party entries
// share a process when they name the same file, checksum, args and env
// (thirdParty by thirdPartyKey, in the order of uses).
func planProcesses(uses []pluginUse, inprocess bool) (builtinKinds []string, thirdParty map[string]*host.Spec, order []string, err error) {
	names := processNames(uses)
	thirdParty = map[string]*host.Spec{}
	for _, u := range uses {
		if u.entry.Builtin != "" {
			if err := checkBuiltin(u); err != nil {
				return nil, nil, nil, err
			}
			if !inprocess && !slices.Contains(builtinKinds, u.kind) {
				builtinKinds = append(builtinKinds, u.kind)
			}
			continue
		}
		k := thirdPartyKey(u.entry)
		spec, ok := thirdParty[k]
		if !ok {
			spec = &host.Spec{Name: names[k], Path: u.entry.Path, SHA256: u.entry.SHA256, Args: u.entry.Args, Env: u.entry.Env}
			thirdParty[k] = spec
			order = append(order, k)
		}
		if !slices.Contains(spec.Kinds, u.kind) {
			spec.Kinds = append(spec.Kinds, u.kind)
		}
		spec.Keys = append(spec.Keys, u.key)
	}
	return builtinKinds, thirdParty, order, nil
}

// launch is one plugin process to start.
type launch struct {
	spec   host.Spec
	key    string // thirdPartyKey; "" for the built-ins
	errPfx string // what a refusal is reported as
	p      *host.Plugin
	err    error
}

// launchAll starts every process at once: a plugin slow to start (up to
// its start timeout) does not hold the others' start-up too. Refusals are
// reported in a fixed order: the built-ins, then third-party processes as
// pluginUses lists their entries (encoders by event type, transport,
// failure).
func launchAll(ctx context.Context, m *host.Manager, launches []*launch, log *slog.Logger) error {
	if len(launches) == 0 {
		return nil
	}
	names := make([]string, len(launches))
	for i, l := range launches {
		names[i] = l.spec.Name
	}
	log.Info("starting plugin processes", "plugins", strings.Join(names, ", "))
	// The first refusal ends the other starts (a plugin that hangs in its
	// handshake would otherwise hold the answer for its start timeout).
	lctx, cancelLaunch := context.WithCancelCause(ctx)
	defer cancelLaunch(nil)
	errOtherRefused := errors.New("another plugin was refused")
	var wg sync.WaitGroup
	for _, l := range launches {
		wg.Go(func() {
			if l.p, l.err = m.Launch(lctx, l.spec); l.err != nil {
				cancelLaunch(errOtherRefused)
			}
		})
	}
	wg.Wait()
	// The refusal itself, in that order, not a start it ended.
	for _, others := range []bool{false, true} {
		for _, l := range launches {
			if l.err != nil && errors.Is(l.err, errOtherRefused) == others {
				return fmt.Errorf("%s: %w", l.errPfx, l.err)
			}
		}
	}
	return nil
}

// wire hands each configured entry its implementation: in-process
// built-ins (made once each, only when used), or the process that serves
// it.
func (set *pluginSet) wire(cfg *config.Config, uses []pluginUse, inprocess bool, builtinProc *host.Plugin, procs map[string]*host.Plugin) (err error) {
	var inEncoders map[string]plugins.Encoder
	for _, u := range uses {
		var proc *host.Plugin
		switch {
		case u.entry.Builtin != "" && !inprocess:
			proc = builtinProc
		case u.entry.Builtin == "":
			proc = procs[thirdPartyKey(u.entry)]
		}
		switch u.kind {
		case plugins.PluginEncoder:
			var enc plugins.Encoder
			if proc == nil {
				if inEncoders == nil {
					inEncoders = builtin.Encoders()
				}
				enc = inEncoders[u.entry.Builtin]
			} else {
				name := u.eventType
				if u.entry.Builtin != "" {
					name = u.entry.Builtin
				}
				if enc, _, err = proc.Encoder(name); err != nil {
					return fmt.Errorf("%s: %w", u.key, err)
				}
			}
			set.Encoders[u.eventType] = enc
		case plugins.PluginTransport:
			set.TransportCapsHosts = u.entry.Builtin != ""
			if proc == nil {
				t := newHTTPForm(cfg)
				set.closers = append(set.closers, t.Close)
				set.Transport = t
			} else if set.Transport, err = proc.Transport(); err != nil {
				return fmt.Errorf("%s: %w", u.key, err)
			}
		case plugins.PluginFailure:
			if proc == nil {
				set.Failure = builtin.NewSSOWebhook()
			} else if set.Failure, err = proc.Failure(); err != nil {
				return fmt.Errorf("%s: %w", u.key, err)
			}
		}
	}
	return nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
