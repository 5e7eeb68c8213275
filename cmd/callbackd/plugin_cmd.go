package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/callbackd/callbackd/api"
	"github.com/callbackd/callbackd/config"
	"github.com/callbackd/callbackd/plugins"
	"github.com/callbackd/callbackd/plugins/builtin"
	"github.com/callbackd/callbackd/plugins/host"
)

// runPluginCommand runs `callbackd plugin <name> [flags]`, the side of
// callbackd that a plugin host starts: it reads no config and touches no
// NATS, so main calls it before anything else. Only "builtin" exists: it
// serves every built-in plugin from this one process and returns only on
// a usage error (plugins.Serve exits the process).
func runPluginCommand(args []string, stderr io.Writer) int {
	const usage = "usage: callbackd plugin builtin [flags] (started by callbackd serve, not by hand)"
	if len(args) == 1 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
		fmt.Fprintln(stderr, usage)
		return 0
	}
	if len(args) == 0 || args[0] != "builtin" {
		fmt.Fprintln(stderr, "callbackd: "+usage)
		return 2
	}
	fs := flag.NewFlagSet("callbackd plugin builtin", flag.ContinueOnError)
	fs.SetOutput(stderr)
	timeout := fs.Duration("delivery-timeout", 30*time.Second, "http-form: timeout of one attempt (delivery.timeout)")
	userAgent := fs.String("user-agent", "callbackd/"+version, "http-form: User-Agent header")
	allowPrivate := fs.Bool("allow-private", false, "http-form: deliver to private addresses (delivery.allow_private)")
	perHost := fs.Int("per-host-concurrency", 0, "http-form: requests in flight per host:port (dispatcher.per_host_concurrency; 0: no cap)")
	var allow []netip.Prefix
	fs.Func("allow-cidr", "http-form: exempt a range from the outbound policy (delivery.allow_cidrs; repeatable)", func(s string) error {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return err
		}
		allow = append(allow, p)
		return nil
	})
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if os.Getenv(plugins.Handshake.MagicCookieKey) != plugins.Handshake.MagicCookieValue {
		// go-plugin would say so in three lines of its own.
		fmt.Fprintln(stderr, "callbackd: callbackd plugin builtin is started by callbackd serve, not by hand")
		return 2
	}
	tuneBuiltinGC()
	plugins.Serve(builtinServeConfig(builtin.HTTPFormOptions{
		Timeout:            *timeout,
		UserAgent:          *userAgent,
		Guard:              plugins.NewGuard(*allowPrivate, allow),
		PerHostConcurrency: *perHost,
	}))
	return 0 // not reached
}

// builtinServeConfig lists every built-in plugin, as the built-in process
// serves them.
func builtinServeConfig(o builtin.HTTPFormOptions) plugins.ServeConfig {
	return plugins.ServeConfig{
		Encoders:  builtin.Encoders(),
		Transport: builtin.NewHTTPForm(o),
		Failure:   builtin.NewSSOWebhook(),
	}
}

// newPluginCmd documents `callbackd plugin builtin` in the help; main runs
// it before cobra sees the arguments.
func newPluginCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "plugin builtin",
		Short: "Serve the built-in plugins (started by callbackd serve, not by hand)",
		RunE: func(cmd *cobra.Command, args []string) error {
			if code := runPluginCommand(args, cmd.ErrOrStderr()); code != 0 {
				return usageError{errors.New("see callbackd plugin builtin -h")}
			}
			return nil
		},
		DisableFlagParsing: true,
	}
}

func newPluginsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "plugins",
		Short: "Inspect the configured plugins",
	}
	var af apiFlags
	var probe bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List each configured plugin: kind, path, checksum state and whether it is running",
		Long: `List each configured plugin: its config key, kind, plugin, file, checksum
state, and whether callbackd serve is running it (asked of the admin API;
"unknown" when serve cannot be reached). With --probe, each plugin is also
started here, as serve would start it, and stopped again: the PROBE column
says what it serves or why it was refused, and the command exits non-zero
when any plugin fails its probe.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, _, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			rows := pluginRows(cfg, servedPluginState(cmd, af))
			if probe {
				probePlugins(cmd.Context(), cfg, rows)
			}
			if err := printPluginRows(cmd.OutOrStdout(), rows, probe); err != nil {
				return err
			}
			if n := probeFailures(rows); n > 0 {
				return fmt.Errorf("%d of %d configured plugins failed the probe (see PROBE)", n, len(rows))
			}
			return nil
		},
	}
	list.Flags().BoolVar(&probe, "probe", false, "start each plugin here to check that it runs, then stop it")
	list.Flags().StringVar(&af.token, "token", "", "admin API token (default: $"+tokenEnv+", api.token, or <data_dir>/"+api.TokenFile+")")
	list.Flags().StringVar(&af.apiURL, "api-url", "", "admin API base URL (default: from api.listen and api.tls)")
	cmd.AddCommand(list)
	return cmd
}

// pluginRow is one line of `plugins list`.
type pluginRow struct {
	use      pluginUse
	name     string // builtin:<name>, or the file
	file     string
	checksum string
	running  string
	probe    string
}

func pluginRows(cfg *config.Config, running func(name string) string) []*pluginRow {
	var rows []*pluginRow
	self, _ := selfExecutable()
	uses := pluginUses(cfg)
	names := processNames(uses)
	for _, u := range uses {
		r := &pluginRow{use: u}
		if u.entry.Builtin != "" {
			r.name = "builtin:" + u.entry.Builtin
			r.checksum = "built in"
			if err := checkBuiltin(u); err != nil {
				r.checksum = "unknown built-in"
			}
			r.file = self
			if cfg.Plugins.Builtins == "inprocess" {
				r.file = "(in-process)"
			}
			r.running = running(builtinProcessName)
		} else {
			r.name = names[thirdPartyKey(u.entry)] // the file, or file[key] when it runs in several processes
			r.file = filepath.Join(cfg.Plugins.Dir, u.entry.Path)
			r.checksum = checksumState(cfg.Plugins.Dir, r.file, u.entry.SHA256)
			r.running = running(r.name)
		}
		rows = append(rows, r)
	}
	return rows
}

// checksumState says whether the plugin file matches its configured
// SHA-256, as serve would check it at launch.
func checksumState(dir, file, want string) string {
	if err := host.CheckDir(dir); err != nil {
		return "refused: " + strings.TrimPrefix(err.Error(), host.ErrRefused.Error()+": ")
	}
	got, err := host.Checksum(file)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return "missing"
	case err != nil:
		return "unreadable: " + err.Error()
	case strings.EqualFold(got, want):
		return "ok"
	default:
		return "MISMATCH (file sha256 " + got + ")"
	}
}

// builtinsInProcess is what /readyz's plugins line says when serve runs the
// built-ins in its own process.
const builtinsInProcess = "built-ins in-process"

// notServed is the state of a plugin this config names but serve does not
// run: serve started with another config.
const notServed = "no (serve runs no such plugin: restart it to use this config)"

// servedPluginState asks the running callbackd serve, through /readyz,
// which plugin processes it runs. The answer for a name is "yes", "no" or
// "unknown".
func servedPluginState(cmd *cobra.Command, af apiFlags) func(name string) string {
	unknown := func(string) string { return "unknown" }
	client, err := newAPIClient(cmd, af)
	if err != nil {
		return unknown
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Second)
	defer cancel()
	base, err := url.Parse(client.BaseURL)
	if err != nil {
		return unknown
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base.JoinPath("readyz").String(), nil)
	if err != nil {
		return unknown
	}
	req.Header.Set("Authorization", "Bearer "+client.Token)
	resp, err := client.HTTP.Do(req)
	if err != nil {
		return func(string) string { return "unknown (serve not reachable)" }
	}
	defer func() { _ = resp.Body.Close() }()
	switch resp.StatusCode {
	case http.StatusOK, http.StatusServiceUnavailable:
	case http.StatusUnauthorized:
		return func(string) string { return "unknown (serve refused the admin token)" }
	default:
		return func(string) string { return fmt.Sprintf("unknown (serve answered HTTP %d)", resp.StatusCode) }
	}
	// One line per check: "ok plugins: running a, b", or "fail plugins: …
	// not running: a, b".
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 64<<10))
	for sc.Scan() {
		line := sc.Text()
		if line == "ok plugins" { // a serve of an earlier version
			return func(string) string { return "yes" }
		}
		if detail, ok := strings.CutPrefix(line, "ok plugins: "); ok {
			// "running a, b", "built-ins in-process", or both, "; "
			// between them.
			running := map[string]string{}
			for _, part := range strings.Split(detail, "; ") {
				if part == builtinsInProcess {
					running[builtinProcessName] = "yes (in serve's process)"
				} else if names, ok := strings.CutPrefix(part, "running "); ok {
					for _, n := range strings.Split(names, ", ") {
						running[n] = "yes"
					}
				}
			}
			return func(name string) string {
				if s, ok := running[name]; ok {
					return s
				}
				return notServed
			}
		}
		if rest, ok := strings.CutPrefix(line, "fail plugins: "); ok {
			_, names, found := strings.Cut(rest, "not running: ")
			if !found {
				return unknown
			}
			names, _, _ = strings.Cut(names, " (") // the reasons that follow

			down := map[string]bool{}
			for _, n := range strings.Split(names, ", ") {
				down[strings.TrimSpace(n)] = true
			}
			return func(name string) string {
				if down[name] {
					return "no"
				}
				return "yes"
			}
		}
	}
	return unknown
}

// probePlugins starts each plugin process as serve would, records what it
// serves or why it did not start, and stops it.
func probePlugins(ctx context.Context, cfg *config.Config, rows []*pluginRow) {
	m, err := host.NewManager(host.Options{
		Dir:              cfg.Plugins.Dir,
		LogLevel:         "error",
		CallTimeout:      cfg.Plugins.CallTimeout,
		TransportTimeout: cfg.Delivery.Timeout + 5*time.Second,
	})
	if err != nil {
		for _, r := range rows {
			r.probe = err.Error()
		}
		return
	}
	defer m.Close()
	self, _ := selfExecutable()
	done := map[string]string{}
	for _, r := range rows {
		e := r.use.entry
		var spec host.Spec
		var key string
		switch {
		case e.Builtin != "" && cfg.Plugins.Builtins == "inprocess":
			r.probe = "in-process"
			continue
		case e.Builtin != "":
			key = builtinProcessName
			spec = host.Spec{Name: builtinProcessName, Builtin: true, Path: self, Args: builtinArgs(cfg)}
		default:
			key = thirdPartyKey(e)
			spec = host.Spec{Name: e.Path, Path: e.Path, SHA256: e.SHA256, Args: e.Args, Env: e.Env}
		}
		if s, ok := done[key]; ok {
			r.probe = s
			continue
		}
		spec.Kinds = []string{r.use.kind}
		p, err := m.Launch(ctx, spec)
		if err != nil {
			r.probe = "FAILED: " + err.Error()
		} else {
			d := p.Description()
			var encs []string
			for _, e := range d.Encoders {
				encs = append(encs, e.Name)
			}
			r.probe = "ok, serves " + strings.Join(d.Kinds, ", ")
			if len(encs) > 0 {
				r.probe += " (encoders " + strings.Join(encs, ", ") + ")"
			}
		}
		done[key] = r.probe
	}
}

// probeFailures counts the rows whose probe did not end "ok" or
// "in-process" (none without --probe).
func probeFailures(rows []*pluginRow) int {
	n := 0
	for _, r := range rows {
		if r.probe != "" && r.probe != "in-process" && !strings.HasPrefix(r.probe, "ok, ") {
			n++
		}
	}
	return n
}

func printPluginRows(w io.Writer, rows []*pluginRow, probe bool) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	header := "KEY\tKIND\tPLUGIN\tFILE\tCHECKSUM\tRUNNING"
	if probe {
		header += "\tPROBE"
	}
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		line := strings.Join([]string{r.use.key, r.use.kind, r.name, r.file, r.checksum, r.running}, "\t")
		if probe {
			line += "\t" + r.probe
		}
		fmt.Fprintln(tw, line)
	}
	return tw.Flush()
}
