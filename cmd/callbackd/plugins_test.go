package main

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/callbackd/callbackd/config"
	"github.com/callbackd/callbackd/plugins"
	"github.com/callbackd/callbackd/plugins/builtin"
	"github.com/callbackd/callbackd/plugins/host"
	"github.com/callbackd/callbackd/plugins/plugintest"
	"github.com/callbackd/callbackd/testutil"
)

// useBuiltBinary makes startPlugins re-execute a built callbackd (the test
// binary is not one).
func useBuiltBinary(t *testing.T) string {
	t.Helper()
	bin := testutil.BuildBinary(t)
	old := selfExecutable
	selfExecutable = func() (string, error) { return bin, nil }
	t.Cleanup(func() { selfExecutable = old })
	return bin
}

func pluginsConfig(t *testing.T, mode string) *config.Config {
	t.Helper()
	cfg := config.Default()
	cfg.Plugins.Builtins = mode
	cfg.Plugins.Dir = t.TempDir()
	cfg.Delivery.AllowPrivate = true // the suites' receivers are on loopback
	cfg.Delivery.Timeout = 10 * time.Second
	return cfg
}

func startTestPlugins(t *testing.T, cfg *config.Config) *pluginSet {
	t.Helper()
	ps, err := startPlugins(context.Background(), cfg, testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ps.Close)
	return ps
}

// TestStartPlugins_both_modes_pass_the_conformance_suites runs the
// conformance suites against what startPlugins hands the dispatcher, with
// the built-ins in-process and served by `callbackd plugin builtin`.
func TestStartPlugins_both_modes_pass_the_conformance_suites(t *testing.T) {
	useBuiltBinary(t)
	for _, mode := range []string{"inprocess", "process"} {
		t.Run(mode, func(t *testing.T) {
			ps := startTestPlugins(t, pluginsConfig(t, mode))
			if (ps.manager != nil) != (mode == "process") {
				t.Fatalf("manager = %v in mode %s", ps.manager, mode)
			}
			if err := ps.Healthy(); err != nil {
				t.Fatalf("Healthy() = %v", err)
			}
			for _, name := range builtin.EncoderNames() {
				t.Run(name, func(t *testing.T) {
					plugintest.TestEncoder(t, func(*testing.T) plugins.Encoder { return ps.Encoders[name] }, plugintest.BuiltinEncoderCases(name))
				})
			}
			// The dispatcher asks an encoder for its ID fields (a
			// callback-failed notice repeats them).
			info, err := ps.Encoders["report_download_available"].Info(context.Background())
			if err != nil || strings.Join(info.IDFields, ",") != "crawl_id,report_download_id" {
				t.Errorf("Info() = %+v, %v; want IDFields crawl_id, report_download_id", info, err)
			}
			t.Run("http-form", func(t *testing.T) {
				plugintest.TestTransport(t, func(*testing.T) plugins.Transport { return ps.Transport }, plugintest.TransportOptions{})
			})
			t.Run("sso-webhook", func(t *testing.T) {
				plugintest.TestFailure(t, func(*testing.T) plugins.FailureHandler { return ps.Failure }, plugintest.BuiltinFailureCases())
			})
		})
	}
}

// TestStartPlugins_transport_settings_reach_the_builtin_process checks that
// the outbound policy and the User-Agent are those of the config in the
// built-in process too.
func TestStartPlugins_transport_settings_reach_the_builtin_process(t *testing.T) {
	useBuiltBinary(t)
	cfg := pluginsConfig(t, "process")
	cfg.Delivery.AllowPrivate = false
	ps := startTestPlugins(t, cfg)
	sink := testutil.NewSink(t)
	res, err := ps.Transport.Deliver(context.Background(), plugins.Delivery{DeliveryID: "d", Destination: plugins.Destination{URL: sink.URL}})
	if err != nil || res.Outcome != plugins.OutcomeNotAllowed {
		t.Fatalf("private address with allow_private false: %+v, %v", res, err)
	}

	cfg = pluginsConfig(t, "process")
	cfg.Delivery.AllowPrivate = false
	cfg.Delivery.AllowCIDRs = []string{"127.0.0.0/8"}
	ps = startTestPlugins(t, cfg)
	res, err = ps.Transport.Deliver(context.Background(), plugins.Delivery{DeliveryID: "d", Destination: plugins.Destination{URL: sink.URL}})
	if err != nil || res.Outcome != plugins.OutcomeDelivered {
		t.Fatalf("allow_cidrs 127.0.0.0/8: %+v, %v", res, err)
	}
	if reqs := sink.Requests(); len(reqs) != 1 || reqs[0].Header.Get("User-Agent") != "callbackd/"+version {
		t.Fatalf("requests %+v", reqs)
	}
}

// TestStartPlugins_per_host_cap_is_held_by_the_transport checks that
// dispatcher.per_host_concurrency reaches the http-form transport in both
// modes, that attempts over it are not made (plugins.ErrHostBusy, across
// the plugin boundary too), and the window serve gives the dispatcher.
func TestStartPlugins_per_host_cap_is_held_by_the_transport(t *testing.T) {
	useBuiltBinary(t)
	const limit, attempts = 2, 5
	for _, tc := range []struct {
		mode   string
		window int
	}{{"inprocess", limit}, {"process", 2 * limit}} {
		t.Run(tc.mode, func(t *testing.T) {
			cfg := pluginsConfig(t, tc.mode)
			cfg.Dispatcher.PerHostConcurrency = limit
			ps := startTestPlugins(t, cfg)
			if !ps.TransportCapsHosts {
				t.Fatal("the built-in transport does not count as holding the cap")
			}
			if w := hostWindow(cfg, ps); w != tc.window {
				t.Errorf("host window %d, want %d", w, tc.window)
			}
			release := make(chan struct{})
			sink := testutil.NewSink(t)
			sink.Respond(func(testutil.Request) int { <-release; return 200 })
			t.Cleanup(func() { close(release) })
			errs := make(chan error, attempts)
			for i := range attempts {
				go func() {
					_, err := ps.Transport.Deliver(context.Background(), plugins.Delivery{
						DeliveryID: "d" + string(rune('0'+i)), Destination: plugins.Destination{URL: sink.URL},
					})
					errs <- err
				}()
			}
			// The cap's worth of attempts hang in the sink; the others find
			// no slot within the transport's 2 s wait and are not made.
			for range attempts - limit {
				if err := <-errs; !errors.Is(err, plugins.ErrHostBusy) {
					t.Fatalf("attempt over the cap: %v, want plugins.ErrHostBusy", err)
				}
			}
			if n := len(sink.Requests()); n != limit {
				t.Fatalf("sink saw %d requests, want %d (the cap)", n, limit)
			}
		})
	}
}

func TestStartPlugins_refusals_name_the_config_key(t *testing.T) {
	writable := t.TempDir()
	if err := os.Chmod(writable, 0o777); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		dir   string
		entry config.PluginEntry
		want  []string
	}{
		"missing file": {
			entry: config.PluginEntry{Path: "crawl_failed", SHA256: strings.Repeat("0", 64)},
			want:  []string{"plugins.encoders.crawl_failed", "plugin refused", "no such file"},
		},
		"writable dir": {
			dir:   writable,
			entry: config.PluginEntry{Path: "crawl_failed", SHA256: strings.Repeat("0", 64)},
			want:  []string{"plugins.encoders.crawl_failed", "writable"},
		},
		"unknown built-in": {
			entry: config.PluginEntry{Builtin: "crawl_failed"},
			want:  []string{"plugins.encoders.crawl_failed", `no built-in encoder "crawl_failed"`},
		},
		"a built-in for another event type": {
			entry: config.PluginEntry{Builtin: "crawl_status"},
			want:  []string{"plugins.encoders.crawl_failed: builtin:crawl_status encodes crawl_status events, not crawl_failed"},
		},
	} {
		t.Run(name, func(t *testing.T) {
			cfg := pluginsConfig(t, "inprocess")
			if c.dir != "" {
				cfg.Plugins.Dir = c.dir
			}
			cfg.Plugins.Encoders["crawl_failed"] = c.entry
			_, err := startPlugins(context.Background(), cfg, testutil.Logger(t))
			if err == nil {
				t.Fatal("started")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("err %q should say %q", err, w)
				}
			}
		})
	}
}

// TestStartPlugins_wrong_checksum_is_refused points an entry at a real
// executable with another checksum.
func TestStartPlugins_wrong_checksum_is_refused(t *testing.T) {
	bin := useBuiltBinary(t)
	cfg := pluginsConfig(t, "inprocess")
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cfg.Plugins.Dir, "callbackd"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg.Plugins.Transport = config.PluginEntry{Path: "callbackd", SHA256: strings.Repeat("ab", 32), Args: []string{"plugin", "builtin"}}
	_, err = startPlugins(context.Background(), cfg, testutil.Logger(t))
	if !errors.Is(err, host.ErrRefused) || !strings.Contains(err.Error(), "plugins.transport") || !strings.Contains(err.Error(), "checksum mismatch") {
		t.Fatalf("err = %v", err)
	}
	sum, err := host.Checksum(filepath.Join(cfg.Plugins.Dir, "callbackd"))
	if err != nil {
		t.Fatal(err)
	}

	// The same file with the right checksum in another entry (another
	// process) is not blamed.
	cfg.Plugins.Failure = config.PluginEntry{Path: "callbackd", SHA256: sum, Args: []string{"plugin", "builtin"}}
	_, err = startPlugins(context.Background(), cfg, testutil.Logger(t))
	if err == nil || !strings.HasPrefix(err.Error(), "plugins.transport: ") || strings.Contains(err.Error(), "plugins.failure") {
		t.Fatalf("err = %v, want only plugins.transport named", err)
	}
	cfg.Plugins.Failure = config.PluginEntry{Builtin: "sso-webhook"}

	// With the right checksum, the same file runs as a third-party
	// transport, with a clean environment.
	cfg.Plugins.Transport.SHA256 = sum
	cfg.Plugins.Transport.Args = []string{"plugin", "builtin", "--allow-private"}
	ps := startTestPlugins(t, cfg)
	sink := testutil.NewSink(t)
	res, err := ps.Transport.Deliver(context.Background(), plugins.Delivery{DeliveryID: "d", Destination: plugins.Destination{URL: sink.URL}})
	if err != nil || res.Outcome != plugins.OutcomeDelivered {
		t.Fatalf("%+v, %v", res, err)
	}
}

func TestPluginCommand_is_not_for_people(t *testing.T) {
	bin := testutil.BuildBinary(t)
	_, stderr, code := testutil.RunBinary(t, time.Minute, bin, "plugin", "builtin")
	if code != 2 || !strings.Contains(stderr, "not by hand") || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
		t.Errorf("plugin builtin by hand: exit %d, stderr %q; want 2 and one line", code, stderr)
	}
	_, stderr, code = testutil.RunBinary(t, time.Minute, bin, "plugin", "nope")
	if code != 2 || !strings.Contains(stderr, "usage") {
		t.Errorf("plugin nope: exit %d, stderr %q", code, stderr)
	}
	// Asking for help is not an error.
	for _, args := range [][]string{{"plugin", "--help"}, {"plugin", "builtin", "--help"}} {
		_, stderr, code = testutil.RunBinary(t, time.Minute, bin, args...)
		if code != 0 || !strings.Contains(stderr, "builtin") {
			t.Errorf("%v: exit %d, stderr %q; want 0 and the usage", args, code, stderr)
		}
	}
}

func TestPluginsList(t *testing.T) {
	bin := testutil.BuildBinary(t)
	dir := filepath.Join(t.TempDir(), "plugins")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "other"), []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(t.TempDir(), "callbackd.yaml")
	cfg := "data_dir: " + t.TempDir() + "\napi: {listen: \"" + testutil.FreeAddr(t) + "\", token: test-token-0123456789}\nplugins:\n  dir: " + dir +
		"\n  encoders:\n    other_event: {path: other, sha256: \"" + strings.Repeat("0", 64) + "\"}\n"
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, code := testutil.RunBinary(t, 2*time.Minute, bin, "plugins", "list", "--config", cfgPath, "--probe")
	// One of the five configured plugins fails its probe: the table, then
	// a one-line error and a non-zero exit.
	if code != 1 || !strings.Contains(stderr, "1 of 5 configured plugins failed the probe") || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
		t.Errorf("exit %d, stderr %q; want 1 and one line saying a probe failed", code, stderr)
	}
	for _, want := range []string{
		"plugins.encoders.crawl_status", "builtin:crawl_status", "built in",
		"plugins.encoders.other_event", "MISMATCH", "FAILED: plugin other: plugin refused: checksum mismatch",
		"plugins.transport", "builtin:http-form", "ok, serves encoder, transport, failure",
		"unknown (serve not reachable)",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, stdout)
		}
	}

	// A serve that refuses the token is not taken for one that is down.
	refusing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(http.StatusUnauthorized)
	}))
	t.Cleanup(refusing.Close)
	// A query on --api-url stays a query: the request still goes to /readyz.
	stdout, _, _ = testutil.RunBinary(t, 2*time.Minute, bin, "plugins", "list", "--config", cfgPath, "--api-url", refusing.URL+"/?sig=S")
	if !strings.Contains(stdout, "unknown (serve refused the admin token)") {
		t.Errorf("with a refused token, output lacks the reason:\n%s", stdout)
	}

	// A serve started with another config: the plugin this config adds is
	// not running, whatever /readyz's verdict, and the built-ins run in a
	// process of their own or in serve's.
	for _, tc := range []struct{ plugins, builtins string }{
		{"running " + builtinProcessName, "yes"},
		{builtinsInProcess, "yes (in serve's process)"},
	} {
		other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, "ok nats\nok plugins: "+tc.plugins+"\n")
		}))
		t.Cleanup(other.Close)
		stdout, _, _ = testutil.RunBinary(t, 2*time.Minute, bin, "plugins", "list", "--config", cfgPath, "--api-url", other.URL)
		for _, line := range strings.Split(stdout, "\n") {
			switch {
			case strings.HasPrefix(line, "plugins.encoders.other_event") && !strings.HasSuffix(line, notServed),
				strings.HasPrefix(line, "plugins.transport") && !strings.HasSuffix(line, tc.builtins):
				t.Errorf("with serve's plugins %q: %q", tc.plugins, line)
			}
		}
	}
}

// Entries that run one file in several processes (other args or env) are
// told apart by their first config key; a file run once keeps its name.
func TestProcessNames(t *testing.T) {
	e := func(path string, env map[string]string) config.PluginEntry {
		return config.PluginEntry{Path: path, SHA256: strings.Repeat("a", 64), Env: env}
	}
	uses := []pluginUse{
		{key: "plugins.encoders.a", entry: e("chaos", map[string]string{"T": "a"})},
		{key: "plugins.encoders.b", entry: e("chaos", map[string]string{"T": "b"})},
		{key: "plugins.encoders.c", entry: e("chaos", map[string]string{"T": "a"})}, // shares a's process
		{key: "plugins.encoders.d", entry: e("other", nil)},
		{key: "plugins.transport", entry: config.PluginEntry{Builtin: "http-form"}},
	}
	names := processNames(uses)
	for i, want := range []string{"chaos[plugins.encoders.a]", "chaos[plugins.encoders.b]", "chaos[plugins.encoders.a]", "other"} {
		if got := names[thirdPartyKey(uses[i].entry)]; got != want {
			t.Errorf("%s: process %q, want %q", uses[i].key, got, want)
		}
	}
	if len(names) != 3 {
		t.Errorf("%d processes named, want 3: %v", len(names), names)
	}
}
