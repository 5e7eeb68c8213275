package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callbackd/callbackd/api"
	"github.com/callbackd/callbackd/plugins"
	"github.com/callbackd/callbackd/settings"
	"github.com/callbackd/callbackd/testutil"
)

const testToken = "test-token-0123456789abcdef"

// harness is an admin API over real HTTP, on a real JetStream with the
// settings store and a watched View.
type harness struct {
	t       testing.TB
	js      *testutil.JetStream
	store   *settings.Store
	view    *settings.View
	metrics *api.Metrics
	srv     *httptest.Server
	client  *api.Client
}

// newHarness starts the API. tweak may change the options before New.
func newHarness(t testing.TB, tweak func(*api.Options)) *harness {
	t.Helper()
	js := testutil.RunJetStream(t)
	ctx := testutil.Context(t)
	store, err := settings.OpenStore(ctx, js.JS, settings.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	view := settings.NewView(testutil.Logger(t), settings.ViewOptions{})
	var wg sync.WaitGroup
	runCtx, cancel := context.WithCancel(ctx)
	wg.Go(func() { _ = view.Run(runCtx, store.KV()) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	select {
	case <-view.Ready():
	case <-time.After(20 * time.Second):
		t.Fatal("settings view not ready after 20s")
	}

	metrics := api.NewMetrics(api.MetricsOptions{EventTypes: []string{"crawl_status", "report_download_available"}})
	transport := newTransport(t, true)
	o := api.Options{
		Store:     store,
		Token:     testToken,
		Guard:     plugins.NewGuard(false, nil),
		Transport: transport,
		Metrics:   metrics,
		Logger:    testutil.Logger(t),
	}
	if tweak != nil {
		tweak(&o)
	}
	metrics = o.Metrics
	s, err := api.New(o)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s)
	t.Cleanup(hs.Close)
	return &harness{
		t: t, js: js, store: store, view: view, metrics: metrics, srv: hs,
		client: &api.Client{BaseURL: hs.URL, Token: testToken, HTTP: hs.Client()},
	}
}

// gqlResponse is a decoded GraphQL answer.
type gqlResponse struct {
	Data   json.RawMessage    `json:"data"`
	Errors []api.GraphQLError `json:"errors"`
}

// post sends a raw request body to path with the token and returns the
// status and body.
func (h *harness) post(path, contentType string, body []byte) (int, []byte) {
	h.t.Helper()
	req, err := http.NewRequest(http.MethodPost, h.srv.URL+path, bytes.NewReader(body))
	if err != nil {
		h.t.Fatal(err)
	}
	req.Header.Set("Content-Type", contentType)
	req.Header.Set("Authorization", "Bearer "+testToken)
	return h.do(req)
}

func (h *harness) get(path, token string) (int, []byte) {
	h.t.Helper()
	req, err := http.NewRequest(http.MethodGet, h.srv.URL+path, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return h.do(req)
}

func (h *harness) do(req *http.Request) (int, []byte) {
	h.t.Helper()
	resp, err := h.srv.Client().Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatal(err)
	}
	return resp.StatusCode, b
}

// gql sends an operation and decodes the answer, whatever its errors.
func (h *harness) gql(query string, vars map[string]any) gqlResponse {
	h.t.Helper()
	body, _ := json.Marshal(map[string]any{"query": query, "variables": vars})
	code, b := h.post("/graphql", "application/json", body)
	var r gqlResponse
	if err := json.Unmarshal(b, &r); err != nil {
		h.t.Fatalf("HTTP %d: not JSON: %s", code, b)
	}
	return r
}

// ok sends an operation that must succeed and decodes its data into out.
func (h *harness) ok(query string, vars map[string]any, out any) {
	h.t.Helper()
	if err := h.client.Do(context.Background(), query, vars, out); err != nil {
		h.t.Fatalf("graphql: %v", err)
	}
}

// fieldsOf returns the extensions.field of every error.
func fieldsOf(r gqlResponse) []string {
	var out []string
	for _, e := range r.Errors {
		out = append(out, e.Field())
	}
	return out
}

// kvValue returns the raw value of key in the settings bucket, "" when absent.
func (h *harness) kvValue(key string) (string, uint64) {
	h.t.Helper()
	e, err := h.store.KV().Get(context.Background(), key)
	if err != nil {
		if strings.Contains(err.Error(), "not found") {
			return "", 0
		}
		h.t.Fatal(err)
	}
	return string(e.Value()), e.Revision()
}

// jsonEqual reports whether a and b hold the same JSON value.
func jsonEqual(t testing.TB, a, b []byte) bool {
	t.Helper()
	var va, vb any
	if err := json.Unmarshal(a, &va); err != nil {
		t.Fatalf("not JSON: %v: %s", err, a)
	}
	if err := json.Unmarshal(b, &vb); err != nil {
		t.Fatalf("not JSON: %v: %s", err, b)
	}
	ja, _ := json.Marshal(va)
	jb, _ := json.Marshal(vb)
	return bytes.Equal(ja, jb)
}
