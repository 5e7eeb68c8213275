package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"

	"github.com/callbackd/callbackd/api"
	"github.com/callbackd/callbackd/config"
	"github.com/callbackd/callbackd/deliverylog"
	"github.com/callbackd/callbackd/dispatcher"
	"github.com/callbackd/callbackd/plugins"
	"github.com/callbackd/callbackd/plugins/builtin"
	"github.com/callbackd/callbackd/settings"
	"github.com/callbackd/callbackd/subjects"
	"github.com/callbackd/callbackd/testutil"
)

// apiEnv is a running admin API as serve starts it, on a real JetStream.
type apiEnv struct {
	cfg  *config.Config
	adm  *adminAPI
	js   *testutil.JetStream
	view *settings.View
	logs *lockedBuffer
}

// lockedBuffer collects log output from several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startTestAPI runs startAPI with tweak applied to a default config whose
// data_dir is a temp dir and whose API listens on a random loopback port.
func startTestAPI(t *testing.T, tweak func(*config.Config)) *apiEnv {
	t.Helper()
	return startTestAPIWith(t, tweak, adminLimits{})
}

// startTestAPIWith is startTestAPI with the HTTP server's limits (zero:
// the defaults).
func startTestAPIWith(t *testing.T, tweak func(*config.Config), limits adminLimits) *apiEnv {
	t.Helper()
	js := testutil.RunJetStream(t)
	ctx := testutil.Context(t)
	top, err := dispatcher.EnsureStreams(ctx, js.JS, dispatcher.StreamOptions{
		RetentionEvents: time.Hour, RetentionDead: time.Hour, RetentionLog: time.Hour, LogBytes: 1 << 30,
		AckWait: 40 * time.Second, MaxAckPending: 64, MaxRetryPending: 1000,
	}, testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	store, err := settings.OpenStore(ctx, js.JS, settings.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	view := settings.NewView(testutil.Logger(t), settings.ViewOptions{})
	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { _ = view.Run(runCtx, store.KV()) })
	t.Cleanup(func() { cancel(); wg.Wait() })

	cfg := config.Default()
	cfg.DataDir = filepath.Join(t.TempDir(), "data")
	cfg.API.Listen = "127.0.0.1:0"
	if tweak != nil {
		tweak(cfg)
	}
	logs := &lockedBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	transport := builtin.NewHTTPForm(builtin.HTTPFormOptions{
		UserAgent: "callbackd/test",
		Guard:     plugins.NewGuard(cfg.Delivery.AllowPrivate, cfg.AllowCIDRs()),
	})
	t.Cleanup(transport.Close)
	adm, err := startAPI(ctx, cfg, log, apiDeps{
		NC: js.NC, JS: js.JS, Store: store, View: view, Transport: transport,
		Metrics: newMetrics(cfg, top, nil, log, nil), Limits: limits,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		_ = adm.Shutdown(sctx)
	})
	return &apiEnv{cfg: cfg, adm: adm, js: js, view: view, logs: logs}
}

// settingsCLI runs callbackd with args pointed at e's API and data dir.
func (e *apiEnv) settingsCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(io.Discard)
	listen := e.adm.Addr.String()
	root.SetArgs(append(args, "--config", "", "--log.level", "error", "--data_dir", e.cfg.DataDir, "--api.listen", listen,
		"--api.tls.cert", e.cfg.API.TLS.Cert, "--api.tls.key", e.cfg.API.TLS.Key))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

func TestStartAPI_generates_the_token_and_serves(t *testing.T) {
	e := startTestAPI(t, nil)
	tok, err := api.ReadToken(e.cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(api.TokenPath(e.cfg.DataDir))
	di, _ := os.Stat(e.cfg.DataDir)
	if fi.Mode().Perm() != 0o600 || di.Mode().Perm() != 0o700 {
		t.Errorf("modes: token %v, data_dir %v", fi.Mode().Perm(), di.Mode().Perm())
	}
	base := "http://" + e.adm.Addr.String()
	get := func(path, token string) int {
		req, _ := http.NewRequest(http.MethodGet, base+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	if c := get("/healthz", ""); c != 200 {
		t.Errorf("/healthz: %d", c)
	}
	if c := get("/readyz", ""); c != 401 {
		t.Errorf("/readyz without token: %d", c)
	}
	testutil.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if c := get("/readyz", tok); c != 200 {
			return errors.New("not ready")
		}
		return nil
	})
	if c := get("/metrics", tok); c != 200 {
		t.Errorf("/metrics: %d", c)
	}
	if strings.Contains(e.logs.String(), tok) {
		t.Fatal("the token was logged")
	}
	if !strings.Contains(e.logs.String(), "admin API token generated") || strings.Contains(e.logs.String(), "beyond loopback") {
		t.Errorf("logs: %s", e.logs.String())
	}
}

func TestSettingsCLI_through_the_API(t *testing.T) {
	e := startTestAPI(t, nil)

	out, err := e.settingsCLI(t, "project", "set", "123", "--url", "https://www.example.com/webhook?sig=abc", "--header", "Authorization: Bearer your-token")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"project 123 (TjAwNlByb2plY3QxMjM)", "apiCallbackUrl: https://www.example.com/webhook\n", "Authorization: [REDACTED]"} {
		if !strings.Contains(out, want) {
			t.Errorf("set output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "your-token") || strings.Contains(out, "sig=abc") {
		t.Errorf("secrets printed:\n%s", out)
	}
	// The dispatcher's view has it.
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if _, ok := e.view.Destination("1", "123"); !ok {
			return errors.New("not in the view")
		}
		return nil
	})

	out, err = e.settingsCLI(t, "project", "get", "TjAwNlByb2plY3QxMjM", "--show-secrets")
	if err != nil || !strings.Contains(out, "Authorization: Bearer your-token") || !strings.Contains(out, "sig=abc") {
		t.Errorf("get --show-secrets: %v\n%s", err, out)
	}
	out, err = e.settingsCLI(t, "project", "get", "123", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var j map[string]any
	if err := json.Unmarshal([]byte(out), &j); err != nil {
		t.Fatalf("--json: %v\n%s", err, out)
	}
	if j["id"] != "TjAwNlByb2plY3QxMjM" || j["apiCallbackUrl"] != "https://www.example.com/webhook" {
		t.Errorf("--json: %v", j)
	}
	if hs, _ := j["apiCallbackHeaders"].([]any); len(hs) != 1 || hs[0].(map[string]any)["value"] != "[REDACTED]" {
		t.Errorf("--json headers: %v", j["apiCallbackHeaders"])
	}

	// Clearing, and the account's SSO client.
	out, err = e.settingsCLI(t, "project", "set", "123", "--clear-url", "--clear-headers")
	if err != nil || !strings.Contains(out, "apiCallbackUrl: (not set)") || !strings.Contains(out, "apiCallbackHeaders: (none)") {
		t.Errorf("clear: %v\n%s", err, out)
	}
	out, err = e.settingsCLI(t, "account", "set", "9", "--sso-client", "77", "--url", "https://a.example.com/")
	if err != nil || !strings.Contains(out, "ssoClientId: 77 (TjAwNlNzb0NsaWVudDc3)") {
		t.Errorf("account set: %v\n%s", err, out)
	}
	out, err = e.settingsCLI(t, "sso-client", "set", "77", "--url", "https://sso.example.com/hook", "--header", "X-Sig: s")
	if err != nil || !strings.Contains(out, "SSO client 77") || !strings.Contains(out, "webhookUrl: https://sso.example.com/hook") {
		t.Errorf("sso-client set: %v\n%s", err, out)
	}

	// A field error is one clear line and a usage error.
	_, err = e.settingsCLI(t, "project", "set", "123", "--url", "ftp://x")
	var ue usageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "apiCallbackUrl") || strings.Contains(err.Error(), "\n") {
		t.Errorf("bad URL: %v", err)
	}
	if _, err := e.settingsCLI(t, "project", "set", "123"); !errors.As(err, &ue) {
		t.Errorf("nothing to change: %v", err)
	}
	// An empty URL is pointed at the flag that clears it, not at GraphQL's null.
	if _, err := e.settingsCLI(t, "project", "set", "123", "--url", ""); !errors.As(err, &ue) || !strings.Contains(err.Error(), "--clear-url") {
		t.Errorf("empty URL: %v", err)
	}
	// Bytes that are not UTF-8 are refused, not stored as U+FFFD.
	if _, err := e.settingsCLI(t, "project", "set", "123", "--header", "X-Lat: caf\xe9"); !errors.As(err, &ue) || !strings.Contains(err.Error(), `"X-Lat": the value is not valid UTF-8`) {
		t.Errorf("header not UTF-8: %v", err)
	}
	if out, err := e.settingsCLI(t, "project", "get", "123", "--show-secrets"); err != nil || !strings.Contains(out, "apiCallbackHeaders: (none)") {
		t.Errorf("after a refused header: %v\n%s", err, out)
	}
}

func TestParseHeaderFlag(t *testing.T) {
	for _, tc := range []struct {
		in, key, value, err string
	}{
		{in: "Authorization: Bearer t", key: "Authorization", value: "Bearer t"},
		{in: " X-A :\t1 \t", key: "X-A", value: "1"},
		{in: "X-A:", key: "X-A", value: ""},
		{in: "X-Url: https://a.example/x?y=1", key: "X-Url", value: "https://a.example/x?y=1"},
		// Only spaces and tabs are dropped: a no-break space is the value's.
		{in: "X-A: \u00a0v\u00a0", key: "X-A", value: "\u00a0v\u00a0"},
		{in: "Authorization Bearer s3cret", err: `--header: want 'Key: Value', found no ':' (the argument is not shown: it may hold a secret)`},
		{in: "X-Api-Key=s3cret", err: `--header: want 'Key: Value', found no ':' (the argument is not shown: it may hold a secret)`},
		{in: "X-A: caf\xe9", err: `--header "X-A": the value is not valid UTF-8`},
		{in: "X-\xff: v", err: `--header: the key is not valid UTF-8`},
	} {
		key, value, err := parseHeaderFlag(tc.in)
		if tc.err != "" {
			if err == nil || err.Error() != tc.err {
				t.Errorf("parseHeaderFlag(%q) = %q, %q, %v; want error %q", tc.in, key, value, err, tc.err)
			}
			continue
		}
		if err != nil || key != tc.key || value != tc.value {
			t.Errorf("parseHeaderFlag(%q) = %q, %q, %v; want %q, %q", tc.in, key, value, err, tc.key, tc.value)
		}
	}
}

func TestSettingsCLI_token_sources(t *testing.T) {
	e := startTestAPI(t, func(c *config.Config) { c.API.Token = "configured-token-0123456789" })
	if _, err := os.Stat(api.TokenPath(e.cfg.DataDir)); err == nil {
		t.Error("a token file was written although api.token is set")
	}
	// No token anywhere the CLI looks.
	if _, err := e.settingsCLI(t, "project", "get", "1"); err == nil || !strings.Contains(err.Error(), "no admin token") {
		t.Errorf("no token: %v", err)
	}
	if _, err := e.settingsCLI(t, "project", "get", "1", "--token", "wrong-token-0123456789"); !errors.Is(err, api.ErrUnauthorized) {
		t.Errorf("wrong token: %v", err)
	}
	if _, err := e.settingsCLI(t, "project", "get", "1", "--token", "configured-token-0123456789"); err != nil {
		t.Errorf("--token: %v", err)
	}
	if _, err := e.settingsCLI(t, "project", "get", "1", "--api.token", "configured-token-0123456789"); err != nil {
		t.Errorf("--api.token: %v", err)
	}
	t.Setenv(tokenEnv, "configured-token-0123456789")
	if _, err := e.settingsCLI(t, "project", "get", "1"); err != nil {
		t.Errorf("%s: %v", tokenEnv, err)
	}
}

func TestStartAPI_warns_beyond_loopback_without_TLS(t *testing.T) {
	e := startTestAPI(t, func(c *config.Config) { c.API.Listen = "0.0.0.0:0" })
	if !strings.Contains(e.logs.String(), "beyond loopback without TLS") {
		t.Errorf("no warning: %s", e.logs.String())
	}
}

func TestStartAPI_serves_TLS(t *testing.T) {
	dir := t.TempDir()
	cert, key := selfSignedCert(t, dir)
	e := startTestAPI(t, func(c *config.Config) {
		c.API.Listen = "0.0.0.0:0"
		c.API.TLS.Cert, c.API.TLS.Key = cert, key
	})
	if strings.Contains(e.logs.String(), "beyond loopback") {
		t.Errorf("warned although TLS is on: %s", e.logs.String())
	}
	port := e.adm.Addr.(*net.TCPAddr).Port
	resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(port) + "/healthz")
	if err == nil {
		_ = resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Error("plain HTTP answered on the TLS listener")
		}
	}
	// The CLI trusts the configured certificate.
	out, err := e.settingsCLI(t, "project", "set", "5", "--url", "https://tls.example.com/")
	if err != nil || !strings.Contains(out, "project 5") {
		t.Fatalf("CLI over TLS: %v\n%s", err, out)
	}
}

// selfSignedCert writes a certificate for 127.0.0.1 and its key to dir.
func selfSignedCert(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "callbackd test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// The deliveries query and replayDeadLetters run on the real delivery log
// and dead-letter stream through serve's adapters.
func TestStartAPI_deliveries_and_replay_on_the_real_streams(t *testing.T) {
	e := startTestAPI(t, nil)
	ctx := testutil.Context(t)
	tok, err := api.ReadToken(e.cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	c := &api.Client{BaseURL: "http://" + e.adm.Addr.String(), Token: tok}

	at := time.Now().UTC().Truncate(time.Second)
	for i, outcome := range []string{deliverylog.OutcomeRetrying, deliverylog.OutcomeFailed, deliverylog.OutcomeDelivered} {
		rec := deliverylog.Record{
			DeliveryID: "d" + strconv.Itoa(i), EventType: "crawl_status", AccountID: "7", ProjectID: "10",
			URL: "https://example.com/hook", Attempt: i + 1, StatusCode: 500, Outcome: outcome, At: at,
		}
		b, _ := json.Marshal(rec)
		if _, err := e.js.JS.Publish(ctx, subjects.Log("7", "10", outcome), b); err != nil {
			t.Fatal(err)
		}
	}
	var got struct {
		Deliveries struct {
			Edges []struct {
				Cursor string
				Node   struct{ ID, DeliveryID, Status, ProjectID string }
			}
			PageInfo struct {
				HasNextPage bool
				EndCursor   *string
			}
		}
	}
	const q = `query($after: String, $s: DeliveryStatus) { deliveries(projectId: "TjAwNlByb2plY3QxMA", first: 2, after: $after, status: $s) {
		edges { cursor node { id deliveryId status projectId } } pageInfo { hasNextPage endCursor } } }`
	if err := c.Do(ctx, q, nil, &got); err != nil {
		t.Fatal(err)
	}
	d := got.Deliveries
	if len(d.Edges) != 2 || !d.PageInfo.HasNextPage || d.Edges[0].Node.DeliveryID != "d2" || d.Edges[0].Node.Status != "DELIVERED" ||
		d.Edges[0].Node.ProjectID != "TjAwNlByb2plY3QxMA" {
		t.Fatalf("page 1 = %+v", d)
	}
	if err := c.Do(ctx, q, map[string]any{"after": *d.PageInfo.EndCursor}, &got); err != nil {
		t.Fatal(err)
	}
	if d := got.Deliveries; len(d.Edges) != 1 || d.Edges[0].Node.DeliveryID != "d0" || d.PageInfo.HasNextPage {
		t.Fatalf("page 2 = %+v", d)
	}
	if err := c.Do(ctx, q, map[string]any{"s": "FAILED"}, &got); err != nil {
		t.Fatal(err)
	}
	if d := got.Deliveries; len(d.Edges) != 1 || d.Edges[0].Node.DeliveryID != "d1" {
		t.Fatalf("FAILED = %+v", d)
	}
	err = c.Do(ctx, q, map[string]any{"after": "not-a-cursor"}, &got)
	var gerrs api.GraphQLErrors
	if !errors.As(err, &gerrs) || gerrs[0].Field() != "after" {
		t.Fatalf("bad cursor: %v", err)
	}

	// A dead letter, replayed back to its subject.
	key := subjects.EventKey{Type: "crawl_status", AccountID: "7", ProjectID: "10"}
	orig, _ := subjects.Event(key)
	m := nats.NewMsg(subjects.DeadFor(key))
	m.Data = []byte(`{"crawl_id":1}`)
	m.Header.Set(subjects.HeaderReason, "delivery_failed")
	m.Header.Set(subjects.HeaderSubject, orig)
	m.Header.Set(subjects.HeaderDeliveryID, "abc")
	if _, err := e.js.JS.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	var rp struct {
		ReplayDeadLetters struct{ Matched, Replayed int }
	}
	const rq = `mutation($in: ReplayInput!) { replayDeadLetters(input: $in) { matched replayed } }`
	if err := c.Do(ctx, rq, map[string]any{"in": map[string]any{"projectId": "10", "dryRun": true}}, &rp); err != nil {
		t.Fatal(err)
	}
	if rp.ReplayDeadLetters.Matched != 1 || rp.ReplayDeadLetters.Replayed != 0 {
		t.Fatalf("dry run = %+v", rp)
	}
	if err := c.Do(ctx, rq, map[string]any{"in": map[string]any{"reason": "delivery_failed"}}, &rp); err != nil {
		t.Fatal(err)
	}
	if rp.ReplayDeadLetters.Matched != 1 || rp.ReplayDeadLetters.Replayed != 1 {
		t.Fatalf("replay = %+v", rp)
	}
	s, err := e.js.JS.Stream(ctx, subjects.Stream)
	if err != nil {
		t.Fatal(err)
	}
	if msg, err := s.GetLastMsgForSubject(ctx, orig); err != nil || string(msg.Data) != `{"crawl_id":1}` {
		t.Fatalf("replayed event: %v", err)
	}
}

// sendTestCallback's attempt is in the delivery log like every other, and
// its Delivery has the global ID it is listed under there.
func TestStartAPI_test_callback_is_in_the_delivery_log(t *testing.T) {
	e := startTestAPI(t, func(c *config.Config) { c.Delivery.AllowPrivate = true })
	ctx := testutil.Context(t)
	sink := testutil.NewSink(t)
	if _, err := e.settingsCLI(t, "project", "set", "10", "--url", sink.URL+"/t?sig=secret"); err != nil {
		t.Fatal(err)
	}
	tok, err := api.ReadToken(e.cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	c := &api.Client{BaseURL: "http://" + e.adm.Addr.String(), Token: tok}
	type delivery struct{ ID, DeliveryID, EventType, Status, ProjectID, AccountID, URL string }
	for _, p := range []string{"10", "11"} { // delivered; no destination
		var sent struct{ SendTestCallback delivery }
		if err := c.Do(ctx, `mutation($p: ID!) { sendTestCallback(projectId: $p) { id deliveryId eventType status projectId accountId url } }`,
			map[string]any{"p": p}, &sent); err != nil {
			t.Fatal(err)
		}
		d := sent.SendTestCallback
		raw, err := base64.RawStdEncoding.DecodeString(d.ID)
		if err != nil || !regexp.MustCompile(`^N006Delivery[1-9][0-9]*$`).Match(raw) {
			t.Fatalf("id %q (%q, %v), want the global ID of a log sequence", d.ID, raw, err)
		}
		var listed struct {
			Deliveries struct{ Edges []struct{ Node delivery } }
		}
		if err := c.Do(ctx, `query($p: ID) { deliveries(projectId: $p) { edges { node { id deliveryId eventType status projectId accountId url } } } }`,
			map[string]any{"p": p}, &listed); err != nil {
			t.Fatal(err)
		}
		want := []delivery{d}
		var got []delivery
		for _, e := range listed.Deliveries.Edges {
			got = append(got, e.Node)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("project %s: deliveries (-sent +listed):\n%s", p, diff)
		}
		wantStatus := map[string]string{"10": "DELIVERED", "11": "NO_DESTINATION"}[p]
		if d.Status != wantStatus || d.EventType != "test_callback" || strings.Contains(d.URL, "secret") {
			t.Errorf("project %s: %+v, want %s", p, d, wantStatus)
		}
	}
}

// startAPI serves the admin API on api.listen (TLS when api.tls is set)
// until Shutdown: listenAPI, then serveAPI, as serve does around its start.
func startAPI(ctx context.Context, cfg *config.Config, log *slog.Logger, deps apiDeps) (*adminAPI, error) {
	a, err := listenAPI(ctx, cfg, log, deps.Limits)
	if err != nil {
		return nil, err
	}
	if err := a.serveAPI(cfg, log, deps); err != nil {
		_ = a.Shutdown(context.Background())
		return nil, err
	}
	return a, nil
}
