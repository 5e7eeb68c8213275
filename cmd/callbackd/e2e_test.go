package main_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callbackd/callbackd/testutil"
)

// End-to-end tests of the real callbackd binary: built once per test run,
// started as a subprocess with a config file, driven through its NATS
// listener and its CLI, delivering to an httptest sink.

const (
	// startWait bounds start-up and shutdown: generous, since these run on
	// small machines next to other builds.
	startWait = 30 * time.Second
	waitLong  = 20 * time.Second

	seedAccount = "123123"
	seedProject = "1123123"

	crawlSeed = `{"message":"crawl_status","resource":"crawl","crawl_id":124234,"project_id":1123123,"account_id":123123,` +
		`"user_id":123123,"partner_account_id":"123123","partner_user_id":"3333312","status":"finished",` +
		`"href":"/accounts/123123/projects/1123123/crawls/124234"}`
	crawlSeedBody = "message=crawl_status&resource=crawl&crawl_id=124234&project_id=1123123&account_id=123123" +
		"&user_id=123123&partner_account_id=123123&partner_user_id=3333312&status=finished" +
		"&href=%2Faccounts%2F123123%2Fprojects%2F1123123%2Fcrawls%2F124234"
)

func crawlBody(id int, a, p string) string {
	c := strconv.Itoa(id)
	return "message=crawl_status&resource=crawl&crawl_id=" + c + "&project_id=" + p + "&account_id=" + a +
		"&user_id=&partner_account_id=&partner_user_id=&status=finished" +
		"&href=%2Faccounts%2F" + a + "%2Fprojects%2F" + p + "%2Fcrawls%2F" + c
}

func skipShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test of the callbackd binary; skipped with -short")
	}
}

// writeConfig writes a config file for a callbackd on free loopback ports
// with its data in a temporary directory, plus extra YAML, and returns its
// path.
func writeConfig(t *testing.T, natsAddr, apiAddr, extra string) string {
	t.Helper()
	dir := t.TempDir()
	cfg := fmt.Sprintf(`data_dir: %s
nats:
  listen: %s
delivery:
  allow_private: true
api:
  listen: %s
log:
  level: debug
%s`, filepath.Join(dir, "data"), natsAddr, apiAddr, extra)
	path := filepath.Join(dir, "callbackd.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// served is a running `callbackd serve`.
type served struct {
	bin     string
	config  string
	apiAddr string
	proc    *testutil.Process
	js      jetstream.JetStream
}

// startServe starts `callbackd serve --config <file>` and waits until its
// NATS listener holds the CALLBACKS stream and its admin API answers. At
// cleanup it is sent SIGTERM (so that it stops its plugin processes) and
// killed only if it does not exit.
func startServe(t *testing.T) *served {
	t.Helper()
	bin := testutil.BuildBinary(t)
	natsAddr, apiAddr := testutil.FreeAddr(t), testutil.FreeAddr(t)
	s := &served{bin: bin, config: writeConfig(t, natsAddr, apiAddr, ""), apiAddr: apiAddr}
	s.proc = testutil.StartBinary(t, bin, "serve", "--config", s.config)
	t.Cleanup(func() {
		if !s.proc.Exited() {
			_ = s.proc.Signal(syscall.SIGTERM)
			select {
			case <-s.proc.Done():
			case <-time.After(startWait):
				t.Errorf("serve did not exit within %s of SIGTERM at cleanup", startWait)
			}
		}
	})

	var nc *nats.Conn
	testutil.CheckFor(t, startWait, 50*time.Millisecond, func() error {
		if s.proc.Exited() {
			t.Fatalf("serve exited with %d while starting\n%s", s.proc.ExitCode(), s.proc.Stderr())
		}
		if nc == nil {
			c, err := nats.Connect("nats://"+natsAddr, nats.Timeout(time.Second), nats.MaxReconnects(-1))
			if err != nil {
				return err
			}
			nc = c
			t.Cleanup(nc.Close)
			if s.js, err = jetstream.New(nc); err != nil {
				return err
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if _, err := s.js.Stream(ctx, "CALLBACKS"); err != nil {
			return fmt.Errorf("stream CALLBACKS: %w", err)
		}
		// Ready, not only listening: the API answers from the start of
		// serve, with 503 until the dispatcher runs.
		token, err := os.ReadFile(filepath.Join(filepath.Dir(s.config), "data", "admin.token"))
		if err != nil {
			return err
		}
		req, err := http.NewRequest(http.MethodGet, "http://"+apiAddr+"/readyz", nil)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /readyz: %s", resp.Status)
		}
		return nil
	})
	return s
}

// cli runs a callbackd command against the served instance's config and
// fails the test unless it exits 0.
func (s *served) cli(t *testing.T, args ...string) string {
	t.Helper()
	stdout, stderr, code := testutil.RunBinary(t, waitLong, s.bin, append(args, "--config", s.config)...)
	if code != 0 {
		t.Fatalf("callbackd %s: exit %d\n--- stdout\n%s--- stderr\n%s", strings.Join(args, " "), code, stdout, stderr)
	}
	return stdout
}

func (s *served) publish(t *testing.T, subject, payload, msgID string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	var opts []jetstream.PublishOpt
	if msgID != "" {
		opts = append(opts, jetstream.WithMsgID(msgID))
	}
	if _, err := s.js.Publish(ctx, subject, []byte(payload), opts...); err != nil {
		t.Fatalf("publish %s: %v", subject, err)
	}
}

// waitRouted publishes probe events to the project until one reaches the
// sink: settings written through the API take effect on the dispatcher
// shortly after the answer (SPEC §4: within 1 s), and an event that came
// first would be acked as no_destination.
func (s *served) waitRouted(t *testing.T, sink *testutil.Sink, account, project string) {
	t.Helper()
	probe := 900000
	testutil.CheckFor(t, waitLong, 200*time.Millisecond, func() error {
		for _, r := range sink.Requests() {
			if strings.Contains(r.Body, "&crawl_id=9") && strings.Contains(r.Body, "&project_id="+project+"&") {
				return nil
			}
		}
		probe++
		s.publish(t, "callbacks.event.crawl_status."+account+"."+project, `{"crawl_id":`+strconv.Itoa(probe)+`}`, "")
		return fmt.Errorf("no probe delivered yet")
	})
}

func findBody(sink *testutil.Sink, body string) (testutil.Request, bool) {
	for _, r := range sink.Requests() {
		if r.Body == body {
			return r, true
		}
	}
	return testutil.Request{}, false
}

func waitBody(t *testing.T, sink *testutil.Sink, body string) testutil.Request {
	t.Helper()
	var got testutil.Request
	testutil.CheckFor(t, waitLong, 20*time.Millisecond, func() error {
		var ok bool
		if got, ok = findBody(sink, body); !ok {
			return fmt.Errorf("no request with body %s among %d", body, len(sink.Requests()))
		}
		return nil
	})
	return got
}

// The spine, on the real binary: a project URL set with the CLI, the seed's
// crawl event published with a NATS client to serve's listener, and the
// exact POST at the sink.
func TestServe_delivers_the_seed_crawl_event(t *testing.T) {
	skipShort(t)
	sink := testutil.NewSink(t)
	s := startServe(t)
	out := s.cli(t, "project", "set", seedProject, "--url", sink.URL+"/webhook", "--header", "Authorization: Bearer t")
	if !strings.Contains(out, sink.URL+"/webhook") {
		t.Errorf("project set printed %q, want the URL in it", out)
	}
	s.waitRouted(t, sink, seedAccount, seedProject)

	s.publish(t, "callbacks.event.crawl_status."+seedAccount+"."+seedProject, crawlSeed, "e2e-seed")
	r := waitBody(t, sink, crawlSeedBody)
	if r.Method != http.MethodPost || r.Path != "/webhook" {
		t.Errorf("request = %s %s, want POST /webhook", r.Method, r.Path)
	}
	checks := map[string]string{
		"Content-Type":  "application/x-www-form-urlencoded",
		"User-Agent":    "callbackd/" + testutil.BinaryVersion,
		"Authorization": "Bearer t",
	}
	sum := sha256.Sum256([]byte("e2e-seed"))
	checks["Callback-Delivery-Id"] = hex.EncodeToString(sum[:])[:16]
	for k, want := range checks {
		if got := r.Header[k]; !slices.Equal(got, []string{want}) {
			t.Errorf("%s = %q, want [%s]", k, got, want)
		}
	}
	testutil.WaitStreamEmpty(t, s.js, "CALLBACKS", waitLong)
}

// `callbackd publish` puts an event on the stream that serve delivers.
func TestPublish_command_event_is_delivered(t *testing.T) {
	skipShort(t)
	sink := testutil.NewSink(t)
	s := startServe(t)
	s.cli(t, "project", "set", "5", "--url", sink.URL+"/p5")
	s.waitRouted(t, sink, "4", "5")

	out := s.cli(t, "publish", "crawl_status", "--account", "4", "--project", "5", "--data", `{"crawl_id":7}`)
	if !strings.Contains(out, "callbacks.event.crawl_status.4.5") {
		t.Errorf("publish printed %q, want the subject in it", out)
	}
	r := waitBody(t, sink, crawlBody(7, "4", "5"))
	if r.Path != "/p5" {
		t.Errorf("delivered to %s, want /p5", r.Path)
	}
}

// SIGTERM, SIGINT and SIGHUP (a closed terminal) each stop serve promptly,
// through its drain, with exit status 0.
func TestServe_exits_zero_on_SIGTERM(t *testing.T) {
	skipShort(t)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP} {
		t.Run(sig.String(), func(t *testing.T) {
			s := startServe(t)
			if err := s.proc.Signal(sig); err != nil {
				t.Fatal(err)
			}
			if code := s.proc.Wait(t, startWait); code != 0 {
				t.Fatalf("serve exited with %d after %v, want 0\n%s", code, sig, s.proc.Stderr())
			}
			if !strings.Contains(s.proc.Stderr(), "callbackd stopped") {
				t.Errorf("no drain after %v:\n%s", sig, s.proc.Stderr())
			}
			if strings.Contains(s.proc.Stderr(), "panic:") {
				t.Errorf("serve panicked on the way out:\n%s", s.proc.Stderr())
			}
		})
	}
}

// A second signal during the drain exits at once (128+signal), as Ctrl-C
// pressed twice should; the first waits for the attempt in flight.
func TestServe_second_signal_ends_the_drain(t *testing.T) {
	skipShort(t)
	s := startServe(t)
	arrived := make(chan struct{}, 100)
	release := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(hang.Close)
	t.Cleanup(func() { close(release) })
	s.cli(t, "project", "set", "8", "--url", hang.URL+"/hang")
	// Settings apply within a second: publish until an attempt is held.
	n := 0
	testutil.CheckFor(t, waitLong, 200*time.Millisecond, func() error {
		select {
		case <-arrived:
			return nil
		default:
		}
		n++
		s.publish(t, "callbacks.event.crawl_status.1.8", `{"crawl_id":`+strconv.Itoa(n)+`}`, "")
		return errors.New("no attempt held yet")
	})

	if err := s.proc.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, waitLong, 20*time.Millisecond, func() error {
		if !strings.Contains(s.proc.Stderr(), "stopping: finishing the deliveries in flight") {
			return errors.New("the drain has not started")
		}
		return nil
	})
	if s.proc.Exited() {
		t.Fatalf("serve exited (%d) with an attempt in flight for delivery.timeout", s.proc.ExitCode())
	}
	if err := s.proc.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if code := s.proc.Wait(t, waitLong); code != 128+int(syscall.SIGINT) {
		t.Fatalf("exit %d after the second SIGINT, want %d\n%s", code, 128+int(syscall.SIGINT), s.proc.Stderr())
	}
	if !strings.Contains(s.proc.Stderr(), "exiting now, without waiting for the drain") {
		t.Errorf("no word of the forced exit:\n%s", s.proc.Stderr())
	}
}

// `callbackd version` prints the version stamped at build time.
func TestVersion_prints_the_version(t *testing.T) {
	skipShort(t)
	bin := testutil.BuildBinary(t)
	stdout, stderr, code := testutil.RunBinary(t, waitLong, bin, "version")
	if code != 0 {
		t.Fatalf("callbackd version: exit %d\n%s", code, stderr)
	}
	if want := "callbackd " + testutil.BinaryVersion + "\n"; stdout != want {
		t.Errorf("callbackd version printed %q, want %q", stdout, want)
	}
}

// An unknown key in the config file stops serve at once with a non-zero
// status and a message naming the key.
func TestServe_unknown_config_key_fails_naming_it(t *testing.T) {
	skipShort(t)
	bin := testutil.BuildBinary(t)
	tests := []struct {
		name  string
		extra string
		key   string
	}{
		{"nested", "dispatcher:\n  wokers: 8\n", "dispatcher.wokers"},
		{"top level", "colour: blue\n", "colour"},
		// Several at once: each named, on one line (SPEC §7).
		{"two", "colour: blue\nplugins:\n  call_timout: 3s\n", `config: unknown key "colour" in`},
		{"two", "colour: blue\nplugins:\n  call_timout: 3s\n", `; config: unknown key "plugins.call_timout" in`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := writeConfig(t, testutil.FreeAddr(t), testutil.FreeAddr(t), tt.extra)
			_, stderr, code := testutil.RunBinary(t, startWait, bin, "serve", "--config", cfg)
			if code == 0 {
				t.Fatalf("serve with %q exited 0, want a failure", tt.extra)
			}
			if !strings.Contains(stderr, tt.key) {
				t.Errorf("stderr does not name %s:\n%s", tt.key, stderr)
			}
			if n := strings.Count(strings.TrimSpace(stderr), "\n"); n != 0 {
				t.Errorf("stderr is %d lines, want one:\n%s", n+1, stderr)
			}
		})
	}
}

// SIGTERM while serve still waits for its NATS server is a clean stop too.
func TestServe_exits_zero_on_SIGTERM_while_waiting_for_NATS(t *testing.T) {
	skipShort(t)
	bin := testutil.BuildBinary(t)
	apiAddr := testutil.FreeAddr(t)
	cfg := writeConfig(t, testutil.FreeAddr(t), apiAddr, "")
	// Nothing listens on the external URL: serve waits for it.
	p := testutil.StartBinary(t, bin, "serve", "--config", cfg, "--api.token=test-token-0123456789",
		"--nats.embedded=false", "--nats.url=nats://"+testutil.FreeAddr(t))
	testutil.CheckFor(t, startWait, 50*time.Millisecond, func() error {
		if p.Exited() {
			t.Fatalf("serve exited with %d instead of waiting\n%s", p.ExitCode(), p.Stderr())
		}
		// It says what it waits for, and where.
		if !strings.Contains(p.Stderr(), `msg="waiting for JetStream"`) || !strings.Contains(p.Stderr(), "not connected to NATS at nats://") {
			return fmt.Errorf("serve does not say it is waiting for the NATS it names yet")
		}
		return nil
	})
	// Meanwhile the admin API answers: alive, not ready, and why.
	get := func(path, token string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, "http://"+apiAddr+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("GET %s while waiting for NATS: %v", path, err)
		}
		defer func() { _ = resp.Body.Close() }()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz", ""); code != http.StatusOK {
		t.Errorf("/healthz %d while waiting for NATS, want 200", code)
	}
	if code, body := get("/readyz", "test-token-0123456789"); code != http.StatusServiceUnavailable || !strings.Contains(body, "fail starting: connecting to NATS at nats://") {
		t.Errorf("/readyz %d %q while waiting for NATS, want 503 saying so", code, body)
	}
	if code, _ := get("/readyz", ""); code != http.StatusUnauthorized {
		t.Errorf("/readyz without the token %d while waiting for NATS, want 401", code)
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.Wait(t, startWait); code != 0 {
		t.Fatalf("serve exited with %d after SIGTERM during start-up, want 0\n%s", code, p.Stderr())
	}
}

// An operator who sets nats.url but leaves nats.embedded on is told that
// the URL is not used (serve runs its own server).
func TestServe_warns_that_nats_url_is_unused_with_the_embedded_server(t *testing.T) {
	skipShort(t)
	bin := testutil.BuildBinary(t)
	cfg := writeConfig(t, testutil.FreeAddr(t), testutil.FreeAddr(t), "")
	p := testutil.StartBinary(t, bin, "serve", "--config", cfg, "--nats.url=nats://user:pw@nats.example:4222")
	testutil.CheckFor(t, startWait, 50*time.Millisecond, func() error {
		if p.Exited() {
			t.Fatalf("serve exited with %d\n%s", p.ExitCode(), p.Stderr())
		}
		if !strings.Contains(p.Stderr(), "nats.url is set but nats.embedded is true") {
			return fmt.Errorf("no warning yet")
		}
		return nil
	})
	if strings.Contains(p.Stderr(), "pw@") {
		t.Errorf("the URL's password is logged:\n%s", p.Stderr())
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.Wait(t, startWait); code != 0 {
		t.Fatalf("serve exited with %d after SIGTERM\n%s", code, p.Stderr())
	}
}

// A start-up failure after the settings view has started (the admin port
// in use) ends serve at once with one line that names the key, instead of
// hanging until a signal.
func TestServe_admin_port_in_use_fails_at_once(t *testing.T) {
	skipShort(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "callbackd.yaml")
	body := fmt.Sprintf("data_dir: %s\nnats: {listen: \"127.0.0.1:0\"}\napi: {listen: %q}\n", filepath.Join(dir, "data"), busy.Addr().String())
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	p := testutil.StartBinary(t, testutil.BuildBinary(t), "serve", "--config", cfg)
	if code := p.Wait(t, startWait); code == 0 {
		t.Fatalf("serve exited 0 with its admin port in use\n%s", p.Stderr())
	}
	lines := strings.Split(strings.TrimSpace(p.Stderr()), "\n")
	if last := lines[len(lines)-1]; !strings.Contains(last, "api.listen") || !strings.Contains(last, "address already in use") {
		t.Errorf("last line %q, want the api.listen key and the cause", last)
	}
}
