package api_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/callbackd/callbackd/api"
	"github.com/callbackd/callbackd/dispatcher"
	"github.com/callbackd/callbackd/subjects"
	"github.com/callbackd/callbackd/testutil"
)

// Every route but /healthz answers 401 without the right bearer token.
func TestAuth_every_route_but_healthz_needs_the_token(t *testing.T) {
	h := newHarness(t, nil)
	routes := []struct{ method, path string }{
		{"POST", "/graphql"}, {"GET", "/graphql"}, {"GET", "/readyz"}, {"GET", "/metrics"},
		{"GET", "/"}, {"GET", "/nope"}, {"GET", "/healthz/../readyz"},
	}
	auths := map[string]string{
		"none":         "",
		"wrong token":  "Bearer wrong-token-0123456789abcdef",
		"token prefix": "Bearer " + testToken[:len(testToken)-1],
		"token longer": "Bearer " + testToken + "x",
		"basic":        "Basic " + testToken,
		"bare token":   testToken,
		"empty bearer": "Bearer ",
		"query param":  "",
	}
	for _, rt := range routes {
		for name, auth := range auths {
			path := rt.path
			if name == "query param" {
				path += "?access_token=" + testToken
			}
			req, _ := http.NewRequest(rt.method, h.srv.URL+path, strings.NewReader(`{"query":"{ project(id: \"1\") { id } }"}`))
			req.Header.Set("Content-Type", "application/json")
			if auth != "" {
				req.Header.Set("Authorization", auth)
			}
			code, body := h.do(req)
			if code != http.StatusUnauthorized {
				t.Errorf("%s %s with %s: HTTP %d: %s", rt.method, rt.path, name, code, body)
			}
		}
	}
	for _, tok := range []string{"", "wrong"} {
		if code, body := h.get("/healthz", tok); code != 200 || string(body) != "ok\n" {
			t.Errorf("/healthz with %q: HTTP %d %q", tok, code, body)
		}
	}
	// With the token: each route answers.
	for path, want := range map[string]int{"/readyz": 200, "/metrics": 200, "/nope": 404, "/healthz": 200} {
		if code, body := h.get(path, testToken); code != want {
			t.Errorf("GET %s with the token: HTTP %d, want %d: %s", path, code, want, body)
		}
	}
	req, _ := http.NewRequest("GET", h.srv.URL+"/readyz", nil)
	req.Header.Set("Authorization", "bearer "+testToken) // the scheme is case-insensitive
	if code, _ := h.do(req); code != 200 {
		t.Errorf("lower-case bearer: HTTP %d", code)
	}
}

// /readyz is 200 while every check passes and 503 naming the failing one
// when NATS goes away.
func TestReadyz_turns_503_when_NATS_is_gone(t *testing.T) {
	var h *harness
	h = newHarness(t, func(o *api.Options) {
		o.Checks = []api.Check{
			{Name: "nats", Fn: func(context.Context) error {
				if s := h.js.NC.Status(); s != nats.CONNECTED {
					return fmt.Errorf("not connected (%s)", s)
				}
				return nil
			}},
			{Name: "streams", Fn: func(ctx context.Context) error {
				_, err := h.js.JS.Stream(ctx, "KV_"+subjects.SettingsBucket)
				return err
			}},
			{Name: "settings", Fn: func(context.Context) error {
				select {
				case <-h.view.Ready():
					return h.view.Err()
				default:
					return errors.New("settings view not loaded")
				}
			}},
			{Name: "plugins", Fn: func(context.Context) error { return nil }, Detail: func() string { return "running builtin,\nx" }},
		}
	})
	code, body := h.get("/readyz", testToken)
	if code != 200 || !strings.Contains(string(body), "ok nats\n") || !strings.Contains(string(body), "ok streams\n") ||
		!strings.Contains(string(body), "ok plugins: running builtin, x\n") {
		t.Fatalf("ready: HTTP %d %q", code, body)
	}
	h.js.Server.Shutdown()
	testutil.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		code, body = h.get("/readyz", testToken)
		if code != http.StatusServiceUnavailable || !strings.Contains(string(body), "fail nats: not connected") {
			return fmt.Errorf("HTTP %d %q", code, body)
		}
		return nil
	})
	if !strings.HasPrefix(string(body), "fail ") {
		t.Errorf("failures do not come first: %q", body)
	}
	// The process is still alive.
	if code, _ := h.get("/healthz", ""); code != 200 {
		t.Errorf("/healthz: HTTP %d", code)
	}
}

func TestReadyz_slow_or_panicking_check_fails(t *testing.T) {
	h := newHarness(t, func(o *api.Options) {
		o.Checks = []api.Check{
			{Name: "slow", Fn: func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }},
			{Name: "boom", Fn: func(context.Context) error { panic("boom") }},
		}
	})
	code, body := h.get("/readyz", testToken)
	if code != 503 || !strings.Contains(string(body), "fail slow") || !strings.Contains(string(body), "fail boom: check panicked") {
		t.Fatalf("HTTP %d %q", code, body)
	}
}

// metricValue returns the value of the sample named by name and labels in a
// Prometheus text exposition, or -1.
func metricValue(t testing.TB, body, sample string) float64 {
	t.Helper()
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(sample) + ` (\S+)$`)
	m := re.FindStringSubmatch(body)
	if m == nil {
		return -1
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestMetrics_present_and_moving(t *testing.T) {
	lag, rev := 7.0, 41.0
	h := newHarness(t, func(o *api.Options) {
		o.Metrics = api.NewMetrics(api.MetricsOptions{
			EventTypes:       []string{"crawl_status"},
			PendingRetries:   func(context.Context) (float64, error) { return 3, nil },
			ConsumerLag:      func(context.Context) (float64, error) { return lag, nil },
			PluginRestarts:   func(context.Context) (float64, error) { return 0, errors.New("plugins not started") },
			SettingsRevision: func(context.Context) (float64, error) { return rev, nil },
		})
	})
	_, body := h.get("/metrics", testToken)
	for _, name := range []string{"callbackd_retries_pending 3", "callbackd_consumer_lag 7", "callbackd_deliveries_in_flight 0", "callbackd_settings_revision 41", "go_goroutines",
		`callbackd_events_expired_total{stream="CALLBACKS"} 0`, `callbackd_events_expired_total{stream="CALLBACKS_RETRY"} 0`} {
		if !strings.Contains(string(body), name) {
			t.Errorf("missing %q", name)
		}
	}
	if strings.Contains(string(body), "callbackd_plugin_restarts_total") {
		t.Errorf("a failing value func was reported")
	}

	obs := h.metrics
	obs.Outcome("crawl_status", "delivered")
	obs.Outcome("crawl_status", "delivered")
	obs.Outcome("made_up_type", "invalid")
	obs.Attempt("crawl_status", "delivered", 120*time.Millisecond)
	obs.InFlight(1)
	obs.InFlight(1)
	obs.InFlight(-1)
	obs.DeadLettered("delivery_failed")
	obs.Parked(dispatcher.ParkedHostBusy)
	obs.Parked(dispatcher.ParkedHostBusy)
	obs.Expired(subjects.Stream, 3)
	obs.Expired(subjects.Stream, 1)
	lag, rev = 2, 42

	_, b := h.get("/metrics", testToken)
	body2 := string(b)
	for sample, want := range map[string]float64{
		`callbackd_deliveries_total{event_type="crawl_status",outcome="delivered"}`:                                   2,
		`callbackd_deliveries_total{event_type="_other",outcome="invalid"}`:                                           1,
		`callbackd_delivery_attempt_duration_seconds_count{event_type="crawl_status",outcome="delivered"}`:            1,
		`callbackd_delivery_attempt_duration_seconds_bucket{event_type="crawl_status",outcome="delivered",le="0.25"}`: 1,
		`callbackd_delivery_attempt_duration_seconds_bucket{event_type="crawl_status",outcome="delivered",le="0.1"}`:  0,
		`callbackd_deliveries_in_flight`:                           1,
		`callbackd_dead_letters_total{reason="delivery_failed"}`:   1,
		`callbackd_parked_total{reason="host_busy"}`:               2,
		`callbackd_parked_total{reason="over_cap"}`:                0,
		`callbackd_consumer_lag`:                                   2,
		`callbackd_settings_revision`:                              42,
		`callbackd_events_expired_total{stream="CALLBACKS"}`:       4,
		`callbackd_events_expired_total{stream="CALLBACKS_RETRY"}`: 0,
	} {
		if got := metricValue(t, body2, sample); got != want {
			t.Errorf("%s = %v, want %v", sample, got, want)
		}
	}
}

// A value not available is left out of the scrape, warned about once by
// its metric's name, and said to be back when it is.
func TestMetrics_value_not_available_is_warned_once(t *testing.T) {
	var logs testutil.SyncBuffer
	var down atomic.Bool
	down.Store(true)
	m := api.NewMetrics(api.MetricsOptions{
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
		ConsumerLag: func(context.Context) (float64, error) {
			if down.Load() {
				return 0, errors.New("nats: connection closed")
			}
			return 5, nil
		},
	})
	lag := func() (bool, error) {
		mfs, err := m.Registry().Gather()
		for _, mf := range mfs {
			if mf.GetName() == "callbackd_consumer_lag" {
				return true, err
			}
		}
		return false, err
	}
	for range 3 {
		if found, _ := lag(); found {
			t.Fatal("a value not available was reported")
		}
	}
	down.Store(false)
	if found, err := lag(); !found || err != nil {
		t.Fatalf("value back: found %v, %v", found, err)
	}
	out := logs.String()
	if n := strings.Count(out, "metrics: value not available"); n != 1 || !strings.Contains(out, "metric=callbackd_consumer_lag") || strings.Contains(out, "Desc{") {
		t.Errorf("%d warnings, want one naming the metric:\n%s", n, out)
	}
	if !strings.Contains(out, `msg="metrics: value available again" metric=callbackd_consumer_lag`) {
		t.Errorf("no line when the value is back:\n%s", out)
	}
}
