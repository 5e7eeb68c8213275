package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/callbackd/callbackd/api"
	"github.com/callbackd/callbackd/testutil"
)

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// `callbackd serve` end to end: the seed's mutation verbatim, an event
// delivered to the URL it set, and the metrics that delivery moved.
func TestServe_admin_API_end_to_end(t *testing.T) {
	if testing.Short() {
		t.Skip("starts callbackd serve")
	}
	sink := testutil.NewSink(t)
	dataDir := filepath.Join(t.TempDir(), "data")
	apiAddr, natsAddr := freeAddr(t), freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		root := newRootCmd()
		root.SetOut(io.Discard)
		root.SetErr(io.Discard)
		root.SetArgs([]string{"serve", "--config", "", "--log.level", "error", "--data_dir", dataDir,
			"--nats.listen", natsAddr, "--api.listen", apiAddr, "--delivery.allow_private",
			"--plugins.builtins", "inprocess", "--delivery.max_attempts", "1"})
		done <- root.ExecuteContext(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(60 * time.Second):
			t.Error("serve did not stop within 60s")
		}
	})

	base := "http://" + apiAddr
	call := func(method, path, token, body string) (int, string) {
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	testutil.CheckFor(t, 60*time.Second, 50*time.Millisecond, func() error {
		if code, body := call("GET", "/healthz", "", ""); code != 200 {
			return fmt.Errorf("/healthz: %d %s", code, body)
		}
		return nil
	})
	token, err := api.ReadToken(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 60*time.Second, 50*time.Millisecond, func() error {
		if code, body := call("GET", "/readyz", token, ""); code != 200 {
			return fmt.Errorf("/readyz: %d %s", code, body)
		}
		return nil
	})

	// The seed's operation, verbatim.
	seed, err := os.ReadFile("../../api/testdata/seed_request.json")
	if err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile("../../api/testdata/seed_response.json")
	code, body := call("POST", "/graphql", token, string(seed))
	if code != 200 || strings.Join(strings.Fields(body), "") != strings.Join(strings.Fields(string(want)), "") {
		t.Fatalf("seed: HTTP %d %s", code, body)
	}

	// Point project 123 at the sink and deliver an event there.
	code, body = call("POST", "/graphql", token, fmt.Sprintf(`{"query":"mutation { updateProject(input: {projectId: \"TjAwNlByb2plY3QxMjM\", apiCallbackUrl: \"%s/cb\"}) { project { apiCallbackUrl } } }"}`, sink.URL))
	if code != 200 || strings.Contains(body, "errors") {
		t.Fatalf("update: HTTP %d %s", code, body)
	}
	nc, err := nats.Connect("nats://" + natsAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// A settings change takes effect within a second of the answer (SPEC
	// §4); an event that beats it is acked as no_destination. So publish
	// until one arrives.
	testutil.CheckFor(t, 60*time.Second, 250*time.Millisecond, func() error {
		if len(sink.Requests()) > 0 {
			return nil
		}
		if err := nc.Publish("callbacks.event.crawl_status.123123.123", []byte(`{"crawl_id": 124234, "user_id": 5}`)); err != nil {
			t.Fatal(err)
		}
		return errors.New("no delivery yet")
	})
	reqs := sink.WaitFor(t, 1, 60*time.Second)
	if reqs[0].Path != "/cb" || reqs[0].Header.Get("Authorization") != "Bearer your-token" || !strings.HasPrefix(reqs[0].Body, "message=crawl_status&") {
		t.Fatalf("delivered %s %v %q", reqs[0].Path, reqs[0].Header, reqs[0].Body)
	}

	// The delivery moved the metrics.
	delivered := regexp.MustCompile(`(?m)^callbackd_deliveries_total\{event_type="crawl_status",outcome="delivered"\} (\S+)$`)
	attempts := regexp.MustCompile(`(?m)^callbackd_delivery_attempt_duration_seconds_count\{event_type="crawl_status",outcome="delivered"\} (\S+)$`)
	testutil.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		_, m := call("GET", "/metrics", token, "")
		for _, re := range []*regexp.Regexp{delivered, attempts} {
			got := re.FindStringSubmatch(m)
			if got == nil {
				return errors.New("no " + re.String())
			}
			if n, _ := strconv.ParseFloat(got[1], 64); n < 1 {
				return fmt.Errorf("%s = %s", re, got[1])
			}
		}
		if !strings.Contains(m, "callbackd_consumer_lag ") || !strings.Contains(m, "callbackd_retries_pending ") {
			return errors.New("no consumer lag or pending retries")
		}
		return nil
	})
}
