package host

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"

	"github.com/callbackd/callbackd/plugins"
	"github.com/callbackd/callbackd/testutil"
)

// newManager returns a Manager closed at the end of the test, with quick
// restarts and generous start timeouts (the machine is small and shared).
func newManager(t testing.TB, o Options) *Manager {
	t.Helper()
	if o.ExecDir == "" {
		o.ExecDir = t.TempDir()
	}
	if o.MinBackoff == 0 {
		o.MinBackoff = 50 * time.Millisecond
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = 500 * time.Millisecond
	}
	if o.HealthInterval == 0 {
		o.HealthInterval = 200 * time.Millisecond
	}
	o.StartTimeout = time.Minute
	if o.CallTimeout == 0 {
		o.CallTimeout = 20 * time.Second
	}
	m, err := NewManager(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

// selfSpec runs the test binary as the named test plugin.
func selfSpec(t testing.TB, name string, kinds ...string) Spec {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return Spec{Name: "test-" + name, Builtin: true, Path: self, Args: []string{"__plugin", name}, Kinds: kinds}
}

// thirdPartySpec copies the test binary into a fresh plugins dir and
// returns that dir and a spec running the copy as the named test plugin.
func thirdPartySpec(t testing.TB, name string, kinds ...string) (string, Spec) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "plugins")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "testplugin"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	sum, err := Checksum(filepath.Join(dir, "testplugin"))
	if err != nil {
		t.Fatal(err)
	}
	return dir, Spec{Name: "testplugin", Path: "testplugin", SHA256: sum, Args: []string{"__plugin", name}, Kinds: kinds}
}

func encodeN(ctx context.Context, enc plugins.Encoder, n int, do string) (plugins.Encoded, error) {
	return enc.Encode(ctx, plugins.Event{
		Type: "test_event", AccountID: "12", ProjectID: "34", DeliveryID: "d-" + strconv.Itoa(n),
		Payload: []byte(fmt.Sprintf(`{"n": %d, "do": %q}`, n, do)),
	})
}

func TestLaunch_every_kind_round_trips(t *testing.T) {
	m := newManager(t, Options{})
	p, err := m.Launch(context.Background(), selfSpec(t, "all", plugins.PluginEncoder, plugins.PluginTransport, plugins.PluginFailure))
	if err != nil {
		t.Fatal(err)
	}
	enc, info, err := p.Encoder("test_event")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(plugins.EncoderInfo{EventType: "test_event", IDFields: []string{"n"}}, info); diff != "" {
		t.Fatalf("info (-want +got):\n%s", diff)
	}
	ctx := context.Background()
	got, err := encodeN(ctx, enc, 9223372036854775807, "")
	if err != nil {
		t.Fatal(err)
	}
	want := plugins.Notification{Fields: []plugins.Field{
		{Name: "message", Value: plugins.String("test_event")},
		{Name: "n", Value: plugins.Number("9223372036854775807")},
		{Name: "account_id", Value: plugins.Number("12")},
		{Name: "delivery_id", Value: plugins.String("d-9223372036854775807")},
		{Name: "pid", Value: plugins.Int(int64(p.PID()))},
		{Name: "nothing", Value: plugins.Null()},
		{Name: "yes", Value: plugins.Bool(true)},
	}}
	if diff := cmp.Diff(want, got.Notification); diff != "" {
		t.Fatalf("notification (-want +got):\n%s", diff)
	}

	tr, err := p.Transport()
	if err != nil {
		t.Fatal(err)
	}
	res, err := tr.Deliver(ctx, plugins.Delivery{
		DeliveryID:   "abc",
		Destination:  plugins.Destination{URL: "503", Headers: []plugins.Header{{Key: "X-Token", Value: "s3cr3t"}}},
		Notification: plugins.Notification{Fields: []plugins.Field{{Name: "a b", Value: plugins.String("c&d")}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	wantRes := plugins.Result{
		StatusCode: 503, Outcome: plugins.OutcomeRetryable, RetryAfter: 1500 * time.Millisecond,
		Error: "HTTP 503", ResponseExcerpt: "a+b=c%26d|abc|s3cr3t", Duration: 1234567 * time.Nanosecond,
	}
	if diff := cmp.Diff(wantRes, res); diff != "" {
		t.Fatalf("result (-want +got):\n%s", diff)
	}

	fh, err := p.Failure()
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)
	out, err := fh.OnFailure(ctx, plugins.Failure{DeliveryID: "abc", FailedAt: at, SSOWebhook: &plugins.Destination{URL: "https://sso.example/hook"}})
	if err != nil {
		t.Fatal(err)
	}
	wantOut := []plugins.Outbound{{
		Destination: plugins.Destination{URL: "https://sso.example/hook"},
		Notification: plugins.Notification{Fields: []plugins.Field{
			{Name: "failed", Value: plugins.String("abc")},
			{Name: "at", Value: plugins.String("2024-05-06T07:08:09.123456789Z")},
		}},
	}}
	if diff := cmp.Diff(wantOut, out); diff != "" {
		t.Fatalf("outbound (-want +got):\n%s", diff)
	}
	if err := m.Healthy(); err != nil {
		t.Fatalf("Healthy() = %v", err)
	}
}

// Items over gRPC's default 4 MiB message limit cross to a plugin process,
// one alone and many at once, without breaking its stream: the host sends
// at most 1 MiB of items a message (a larger item alone), and a plugin
// served by plugins.Serve takes messages up to plugins.MaxMessageBytes.
func TestLarge_items_cross_without_breaking_the_stream(t *testing.T) {
	m := newManager(t, Options{})
	p, err := m.Launch(context.Background(), selfSpec(t, "all", plugins.PluginTransport))
	if err != nil {
		t.Fatal(err)
	}
	tr, err := p.Transport()
	if err != nil {
		t.Fatal(err)
	}
	deliver := func(size int) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		res, err := tr.Deliver(ctx, plugins.Delivery{
			DeliveryID:   "big",
			Destination:  plugins.Destination{URL: "200", Headers: []plugins.Header{{Key: "X-Token", Value: "t"}}},
			Notification: plugins.Notification{Fields: []plugins.Field{{Name: "pad", Value: plugins.String(strings.Repeat("x", size))}}},
		})
		if err == nil && res.StatusCode != 200 {
			err = fmt.Errorf("status %d", res.StatusCode)
		}
		return err
	}
	if err := deliver(8 << 20); err != nil {
		t.Fatalf("one 8 MiB notification: %v", err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for range 32 {
		wg.Go(func() { errs <- deliver(600 << 10) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("32 notifications of 600 KiB at once: %v", err)
		}
	}
	if n := p.Restarts(); n != 0 {
		t.Errorf("%d restarts, want the stream unbroken", n)
	}
}

// A plugin's only encoder gets the events it is configured for even under
// another name, and one that declares another event type is warned about.
func TestEncoder_only_encoder_for_another_event_type_is_warned_about(t *testing.T) {
	var logs testutil.SyncBuffer
	m := newManager(t, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	spec := selfSpec(t, "encoder", plugins.PluginEncoder)
	spec.Keys = []string{"plugins.encoders.crawl_failed"}
	p, err := m.Launch(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := p.Encoder("test_event"); err != nil || strings.Contains(logs.String(), "declares another event type") {
		t.Fatalf("its own event type: %v, log:\n%s", err, logs.String())
	}
	if _, info, err := p.Encoder("crawl_failed"); err != nil || info.EventType != "test_event" {
		t.Fatalf("another event type: %+v, %v; want the only encoder", info, err)
	}
	if out := logs.String(); !strings.Contains(out, "declares another event type") || !strings.Contains(out, "configured_for=crawl_failed declares=test_event") {
		t.Errorf("no warning naming both event types:\n%s", out)
	}
	// The plugin's lines name the config keys it serves.
	if out := logs.String(); !strings.Contains(out, "plugin=test-encoder keys=plugins.encoders.crawl_failed") {
		t.Errorf("log lines do not name the config key:\n%s", out)
	}
}

func TestEncoder_errors_cross_the_boundary(t *testing.T) {
	m := newManager(t, Options{})
	p, err := m.Launch(context.Background(), selfSpec(t, "encoder", plugins.PluginEncoder))
	if err != nil {
		t.Fatal(err)
	}
	enc, _, err := p.Encoder("test_event")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	_, err = encodeN(ctx, enc, 7, "invalid")
	if !errors.Is(err, plugins.ErrInvalidEvent) || err.Error() != "n 7 is not allowed" {
		t.Errorf("invalid: err = %v, want ErrInvalidEvent with the plugin's message", err)
	}
	got, err := encodeN(ctx, enc, 1, "skip")
	if err != nil || got.SkipReason != "skipped by rule" {
		t.Errorf("skip: %+v, %v", got, err)
	}
	_, err = encodeN(ctx, enc, 1, "fail")
	if !errors.Is(err, plugins.ErrPluginFailed) || errors.Is(err, plugins.ErrInvalidEvent) || !strings.Contains(err.Error(), "database down") {
		t.Errorf("fail: err = %v, want ErrPluginFailed naming the cause", err)
	}
	_, err = encodeN(ctx, enc, 1, "panic")
	if !errors.Is(err, plugins.ErrPluginFailed) || !strings.Contains(err.Error(), "boom") {
		t.Errorf("panic: err = %v, want ErrPluginFailed", err)
	}
	hctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	start := time.Now()
	_, err = encodeN(hctx, enc, 1, "hang")
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, plugins.ErrInvalidEvent) {
		t.Errorf("hang: err = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("hang returned after %v", d)
	}
	// The plugin survived all of it.
	if _, err := encodeN(ctx, enc, 2, ""); err != nil {
		t.Errorf("after errors: %v", err)
	}
}

// A third-party encoder's notification is checked on the host: one unfit
// to send makes the event invalid, naming the problem. The built-ins'
// process is trusted (and spared the check).
func TestThirdParty_encoder_output_is_checked(t *testing.T) {
	dir, spec := thirdPartySpec(t, "encoder", plugins.PluginEncoder)
	m := newManager(t, Options{Dir: dir})
	for _, tc := range []struct {
		spec    Spec
		checked bool
	}{{spec, true}, {selfSpec(t, "encoder", plugins.PluginEncoder), false}} {
		p, err := m.Launch(context.Background(), tc.spec)
		if err != nil {
			t.Fatal(err)
		}
		enc, _, err := p.Encoder("test_event")
		if err != nil {
			t.Fatal(err)
		}
		_, err = encodeN(context.Background(), enc, 1, "dup")
		if got := errors.Is(err, plugins.ErrInvalidEvent) && strings.Contains(err.Error(), `field "a" is given twice`); got != tc.checked {
			t.Errorf("%s: err = %v, want checked %v", tc.spec.Name, err, tc.checked)
		}
		if _, err := encodeN(context.Background(), enc, 2, ""); err != nil {
			t.Errorf("%s: a fit notification: %v", tc.spec.Name, err)
		}
	}
}

// A plugin whose file changed is not restarted after a crash, and
// Healthy (/readyz) says which plugin is down and why.
func TestThirdParty_changed_file_is_not_restarted_and_Healthy_says_why(t *testing.T) {
	dir, spec := thirdPartySpec(t, "encoder", plugins.PluginEncoder)
	m := newManager(t, Options{Dir: dir})
	p, err := m.Launch(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "testplugin"), []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(p.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, func() bool {
		err := m.Healthy()
		return err != nil && strings.Contains(err.Error(), "not running: testplugin (testplugin: ") && strings.Contains(err.Error(), "checksum mismatch") &&
			!strings.Contains(err.Error(), "plugin testplugin:") // the name said once, not thrice
	})
	if p.Running() {
		t.Error("the plugin runs, from a file whose checksum changed")
	}
	// A call refused meanwhile says why, for the dead letter it may end in.
	enc, _, err := p.Encoder("test_event")
	if err != nil {
		t.Fatal(err)
	}
	_, err = enc.Encode(context.Background(), plugins.Event{Type: "test_event", Payload: []byte(`{}`)})
	if !errors.Is(err, plugins.ErrNotReached) || !strings.Contains(err.Error(), "is restarting") || !strings.Contains(err.Error(), "last start: ") || !strings.Contains(err.Error(), "checksum mismatch") {
		t.Errorf("Encode while down: %v", err)
	}
}

func TestThirdParty_verified_and_run_with_a_clean_environment(t *testing.T) {
	t.Setenv("CALLBACKD_API__TOKEN", "host-secret")
	dir, spec := thirdPartySpec(t, "env", plugins.PluginTransport)
	spec.Env = map[string]string{"PLUGIN_SETTING": "on", plugins.EnvDeliveryTimeout: "7s"}
	m := newManager(t, Options{Dir: dir, Env: map[string]string{plugins.EnvUserAgent: "callbackd/test", plugins.EnvDeliveryTimeout: "30s"}})
	p, err := m.Launch(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	tr, _ := p.Transport()
	res, err := tr.Deliver(context.Background(), plugins.Delivery{})
	if err != nil {
		t.Fatal(err)
	}
	var env []string
	if err := json.Unmarshal([]byte(res.ResponseExcerpt), &env); err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(env, "\n")
	if strings.Contains(joined, "host-secret") {
		t.Errorf("the host's environment leaked into the plugin:\n%s", joined)
	}
	if !strings.Contains(joined, "PLUGIN_SETTING=on") {
		t.Errorf("configured env missing:\n%s", joined)
	}
	// What the host tells every plugin, which the configured env overrides
	// (exec takes the last of a name given twice).
	if !strings.Contains(joined, plugins.EnvUserAgent+"=callbackd/test") {
		t.Errorf("%s missing:\n%s", plugins.EnvUserAgent, joined)
	}
	if i, j := slices.Index(env, plugins.EnvDeliveryTimeout+"=30s"), slices.Index(env, plugins.EnvDeliveryTimeout+"=7s"); j < 0 || i > j {
		t.Errorf("the configured %s does not come last:\n%s", plugins.EnvDeliveryTimeout, joined)
	}
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case k == "PATH", k == "TZ", k == "LANG", k == "PLUGIN_SETTING", k == plugins.EnvLogLevel,
			k == plugins.EnvUserAgent, k == plugins.EnvDeliveryTimeout,
			k == plugins.Handshake.MagicCookieKey, strings.HasPrefix(k, "PLUGIN_"):
		default:
			t.Errorf("unexpected variable %s in the plugin's environment", k)
		}
	}
	// The private copy that ran is gone; the exec dir stays private and
	// holds only its owner's pid.
	entries, _ := os.ReadDir(m.execDir)
	if len(entries) != 1 || entries[0].Name() != ownerFile {
		t.Errorf("exec dir holds %v after start, want only %s", entries, ownerFile)
	}
}

func TestThirdParty_wrong_checksum_is_refused(t *testing.T) {
	dir, spec := thirdPartySpec(t, "encoder", plugins.PluginEncoder)
	spec.SHA256 = strings.Repeat("ab", 32)
	m := newManager(t, Options{Dir: dir})
	_, err := m.Launch(context.Background(), spec)
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "checksum mismatch") || !strings.Contains(err.Error(), "testplugin") {
		t.Fatalf("err = %v, want a refusal naming the plugin and the checksum", err)
	}
}

func TestThirdParty_missing_file_is_refused(t *testing.T) {
	dir, spec := thirdPartySpec(t, "encoder", plugins.PluginEncoder)
	spec.Path, spec.Name = "nope", "nope"
	m := newManager(t, Options{Dir: dir})
	_, err := m.Launch(context.Background(), spec)
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("err = %v, want a refusal naming the plugin", err)
	}
}

func TestThirdParty_writable_dir_is_refused(t *testing.T) {
	dir, spec := thirdPartySpec(t, "encoder", plugins.PluginEncoder)
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	m := newManager(t, Options{Dir: dir})
	_, err := m.Launch(context.Background(), spec)
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "writable") {
		t.Fatalf("err = %v, want a refusal of the writable dir", err)
	}
}

func TestThirdParty_symlink_is_refused(t *testing.T) {
	dir, spec := thirdPartySpec(t, "encoder", plugins.PluginEncoder)
	if err := os.Symlink(filepath.Join(dir, "testplugin"), filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	spec.Path = "link"
	m := newManager(t, Options{Dir: dir})
	_, err := m.Launch(context.Background(), spec)
	if !errors.Is(err, ErrRefused) {
		t.Fatalf("err = %v, want ErrRefused", err)
	}
}

func TestHandshake_other_protocol_version_is_refused(t *testing.T) {
	m := newManager(t, Options{})
	_, err := m.Launch(context.Background(), selfSpec(t, "bad-version", plugins.PluginEncoder))
	if !errors.Is(err, ErrIncompatible) {
		t.Fatalf("err = %v, want ErrIncompatible", err)
	}
	for _, s := range []string{"test-bad-version", "version 1", "Plugin version: 42"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("err = %q, should say %q", err, s)
		}
	}
}

func TestHandshake_other_cookie_is_refused(t *testing.T) {
	m := newManager(t, Options{})
	_, err := m.Launch(context.Background(), selfSpec(t, "bad-cookie", plugins.PluginTransport))
	if !errors.Is(err, ErrIncompatible) || !strings.Contains(err.Error(), "cookie") {
		t.Fatalf("err = %v, want ErrIncompatible about the cookie", err)
	}
}

// A plugin that exits at start is reported as such, with its exit status
// and what it said on stderr, not as one that speaks another protocol.
func TestLaunch_plugin_that_exits_at_start_says_why(t *testing.T) {
	m := newManager(t, Options{})
	_, err := m.Launch(context.Background(), selfSpec(t, "no-such-plugin", plugins.PluginEncoder))
	want := `plugin test-no-such-plugin exited (exit status 2) before its handshake; its stderr: unknown test plugin "no-such-plugin"`
	if err == nil || !strings.Contains(err.Error(), want) || errors.Is(err, ErrIncompatible) || strings.Contains(err.Error(), "\n") {
		t.Fatalf("err = %v, want one line with %q", err, want)
	}
}

func TestLaunch_kind_not_served_is_refused(t *testing.T) {
	m := newManager(t, Options{})
	_, err := m.Launch(context.Background(), selfSpec(t, "encoder", plugins.PluginTransport))
	if !errors.Is(err, ErrIncompatible) || !strings.Contains(err.Error(), "configured as a transport") {
		t.Fatalf("err = %v, want ErrIncompatible", err)
	}
}

// TestCrash_mid_load_restarts kills the plugin process while many callers
// are encoding: their calls fail with infrastructure errors (never an
// invalid event, never a panic), the manager restarts the process, and
// later calls succeed.
func TestCrash_mid_load_restarts(t *testing.T) {
	var restarts atomic.Int32
	m := newManager(t, Options{OnRestart: func(string) { restarts.Add(1) }})
	p, err := m.Launch(context.Background(), selfSpec(t, "encoder", plugins.PluginEncoder))
	if err != nil {
		t.Fatal(err)
	}
	enc, _, _ := p.Encoder("test_event")
	oldPID := p.PID()

	var ok, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var badMu sync.Mutex
	var bad []error
	for w := 0; w < 16; w++ {
		wg.Go(func() {
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := encodeN(ctx, enc, n, "")
				cancel()
				switch {
				case err == nil:
					ok.Add(1)
				case errors.Is(err, plugins.ErrInvalidEvent),
					!errors.Is(err, plugins.ErrPluginUnavailable) && !errors.Is(err, context.DeadlineExceeded):
					badMu.Lock()
					bad = append(bad, err)
					badMu.Unlock()
				default:
					failed.Add(1)
					time.Sleep(5 * time.Millisecond)
				}
			}
		})
	}
	waitFor(t, 30*time.Second, func() bool { return ok.Load() > 200 })
	if err := syscall.Kill(oldPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, func() bool { return failed.Load() > 0 })
	waitFor(t, 60*time.Second, func() bool { return p.Running() && p.PID() != oldPID })
	before := ok.Load()
	waitFor(t, 30*time.Second, func() bool { return ok.Load() > before+200 })
	close(stop)
	wg.Wait()
	if len(bad) > 0 {
		t.Fatalf("calls failed with errors other than infrastructure ones: %v", bad[:min(len(bad), 5)])
	}
	if restarts.Load() != 1 || p.Restarts() != 1 {
		t.Errorf("restarts = %d (hook %d), want 1", p.Restarts(), restarts.Load())
	}
	if !processGone(oldPID) {
		t.Errorf("old process %d still there", oldPID)
	}
	t.Logf("ok %d, infrastructure errors %d", ok.Load(), failed.Load())
}

// A plugin served over unary calls only (a failure handler) has no stream
// whose end says it died: its exit is noticed by itself, not at the next
// health check (an hour away here), and it is restarted at once.
func TestCrash_of_a_unary_only_plugin_is_noticed_at_once(t *testing.T) {
	m := newManager(t, Options{HealthInterval: time.Hour})
	p, err := m.Launch(context.Background(), selfSpec(t, "failure", plugins.PluginFailure))
	if err != nil {
		t.Fatal(err)
	}
	oldPID := p.PID()
	if err := syscall.Kill(oldPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, func() bool { return p.Running() && p.PID() != oldPID })
	fh, err := p.Failure()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := fh.OnFailure(ctx, plugins.Failure{AccountID: "1", ProjectID: "2"}); err != nil {
		t.Errorf("OnFailure after the restart: %v", err)
	}
}

// Closing the manager while a restart hangs in its handshake kills that
// process and returns, instead of waiting out the start timeout (an hour
// here): serve's shutdown is not held by a plugin that will not start.
func TestClose_abandons_a_restart_that_hangs(t *testing.T) {
	m := newManager(t, Options{StartTimeout: time.Hour})
	spec := selfSpec(t, "hang-on-restart", plugins.PluginEncoder)
	spec.Args = append(spec.Args, filepath.Join(t.TempDir(), "started"))
	p, err := m.Launch(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	oldPID := p.PID()
	if err := syscall.Kill(oldPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// The restart is under way once the new process has been forked.
	var newPID int
	waitFor(t, 30*time.Second, func() bool {
		for _, pid := range childPIDs(os.Getpid()) {
			if pid != oldPID && processRunsAs(pid, "hang-on-restart") {
				newPID = pid
				return true
			}
		}
		return false
	})
	closeWithin(t, m, 30*time.Second, "the hanging restart")
	waitFor(t, 30*time.Second, func() bool { return processGone(newPID) })
}

// closeWithin closes m and fails t unless Close returns within total.
func closeWithin(t *testing.T, m *Manager, total time.Duration, what string) {
	t.Helper()
	closed := make(chan struct{})
	go func() {
		m.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(total):
		t.Fatalf("Close still waits on %s after %v", what, total)
	}
}

// A frozen process (SIGSTOP) answers neither health checks nor go-plugin's
// request to shut down: it is killed and restarted, and Close does not wait
// on a frozen one for ever either.
func TestFrozen_process_is_killed_and_restarted(t *testing.T) {
	m := newManager(t, Options{CallTimeout: time.Second})
	p, err := m.Launch(context.Background(), selfSpec(t, "encoder", plugins.PluginEncoder))
	if err != nil {
		t.Fatal(err)
	}
	enc, _, _ := p.Encoder("test_event")
	frozen := p.PID()
	if err := syscall.Kill(frozen, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(frozen, syscall.SIGKILL) })
	waitFor(t, 60*time.Second, func() bool { return p.Running() && p.PID() != frozen })
	waitFor(t, 30*time.Second, func() bool { return processGone(frozen) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := encodeN(ctx, enc, 1, ""); err != nil {
		t.Errorf("encode after the restart: %v", err)
	}

	frozen = p.PID()
	if err := syscall.Kill(frozen, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	closeWithin(t, m, 60*time.Second, "a frozen process")
	if !processGone(frozen) {
		t.Errorf("frozen process %d survived Close", frozen)
	}
}

// A process that misses one health check and answers the next is kept: a
// restart hands back every event it has in flight, and their endpoints
// may have had some of them already.
func TestHealth_one_late_answer_is_no_restart(t *testing.T) {
	var logs testutil.SyncBuffer
	m := newManager(t, Options{
		CallTimeout: 200 * time.Millisecond, HealthInterval: time.Second,
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	p, err := m.Launch(context.Background(), selfSpec(t, "encoder", plugins.PluginEncoder))
	if err != nil {
		t.Fatal(err)
	}
	pid := p.PID()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
	waitFor(t, 30*time.Second, func() bool {
		return strings.Contains(logs.String(), "did not answer its health check in time")
	})
	// The next check is a second (HealthInterval) after the last.
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	// Nothing to wait for but the checks that follow: three of them.
	time.Sleep(3 * time.Second)
	if p.PID() != pid || p.Restarts() != 0 {
		t.Errorf("restarted (pid %d → %d, %d restarts) after one late answer:\n%s", pid, p.PID(), p.Restarts(), logs.String())
	}
}

func TestClose_stops_every_process(t *testing.T) {
	m := newManager(t, Options{})
	p1, err := m.Launch(context.Background(), selfSpec(t, "encoder", plugins.PluginEncoder))
	if err != nil {
		t.Fatal(err)
	}
	p2, err := m.Launch(context.Background(), selfSpec(t, "all", plugins.PluginTransport))
	if err != nil {
		t.Fatal(err)
	}
	pids := []int{p1.PID(), p2.PID()}
	enc, _, _ := p1.Encoder("test_event")
	m.Close()
	for _, pid := range pids {
		if !processGone(pid) {
			t.Errorf("plugin process %d survived Close", pid)
		}
	}
	if _, err := encodeN(context.Background(), enc, 1, ""); !errors.Is(err, plugins.ErrPluginUnavailable) {
		t.Errorf("call after Close: %v, want ErrPluginUnavailable", err)
	}
	if err := m.Healthy(); err == nil {
		t.Errorf("Healthy() = nil after Close")
	}
}

// TestHostDeath_plugin_exits kills a host process with SIGKILL, so that it
// cannot stop its plugin, and checks that the plugin exits by itself.
func TestHostDeath_plugin_exits(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "__host", t.TempDir())
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("host said nothing: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("host said %q", line)
	}
	if processGone(pid) {
		t.Fatalf("plugin %d not running", pid)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	go func() { _, _ = io.Copy(io.Discard, out) }()
	waitFor(t, 30*time.Second, func() bool { return processGone(pid) })
}

// processGone reports whether pid has exited (a zombie counts as exited).
func processGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// pid (comm) state ...: comm may hold spaces, so look after the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] == 'Z' || s[i+2] == 'X'
}

// waitFor polls cond until it holds or total passes.
func waitFor(t testing.TB, total time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(total)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", total)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// childPIDs lists the live children of parent.
func childPIDs(parent int) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(parent) && !processGone(pid) {
			out = append(out, pid)
		}
	}
	return out
}

// processRunsAs reports whether pid's command line holds arg.
func processRunsAs(pid int, arg string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && strings.Contains(string(b), arg)
}

// A start error quotes the end of what the process wrote on stderr, cut at
// a line break, never inside a character.
func TestStartError_quotes_whole_last_lines(t *testing.T) {
	p := &Plugin{spec: Spec{Name: "x"}}
	stderr := strings.Repeat("é", 400) + "\n" + "panic: the last words é"
	err := p.startError(errors.New("plugin exited before we could connect"), stderr, nil)
	msg := err.Error()
	if !utf8.ValidString(msg) {
		t.Errorf("not valid UTF-8: %q", msg)
	}
	if !strings.HasSuffix(msg, "its stderr: panic: the last words é") {
		t.Errorf("error = %q, want it to end with the last line whole", msg)
	}
	long := strings.Repeat("ü", 500) // no line break: cut on a character boundary
	msg = p.startError(errors.New("boom"), long, nil).Error()
	if !utf8.ValidString(msg) || len(msg) > len("plugin x failed to start: boom; its stderr: ")+maxLastWords {
		t.Errorf("error = %q (%d bytes), want valid UTF-8 within the cap", msg, len(msg))
	}
}
