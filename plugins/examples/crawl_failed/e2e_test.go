package main

import (
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callbackd/callbackd/subjects"
	"github.com/callbackd/callbackd/testutil"
)

// These tests run the real thing: callbackd serve (the binary) with the
// built example configured as the crawl_failed encoder, an embedded NATS
// server, and a webhook receiver.

type served struct {
	proc *testutil.Process
	js   jetstream.JetStream
	sink *testutil.Sink
}

const (
	e2eAccount = "123123"
	e2eProject = "1123123"
)

func serve(t *testing.T) *served {
	t.Helper()
	if testing.Short() {
		t.Skip("runs callbackd serve")
	}
	bin := testutil.BuildBinary(t)
	dir, sum := buildPlugin(t)
	natsAddr, apiAddr := testutil.FreeAddr(t), testutil.FreeAddr(t)
	tmp := t.TempDir()
	cfg := fmt.Sprintf(`data_dir: %s
nats: {listen: %q}
api: {listen: %q, token: e2e-token-0123456789}
delivery: {allow_private: true, timeout: 10s, max_attempts: 1}
dispatcher: {workers: 64}
plugins:
  dir: %s
  encoders:
    crawl_failed: {path: crawl_failed, sha256: %s}
log: {level: info}
`, filepath.Join(tmp, "data"), natsAddr, apiAddr, dir, sum)
	path := filepath.Join(tmp, "callbackd.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	s := &served{proc: testutil.StartBinary(t, bin, "serve", "--config", path), sink: testutil.NewSink(t)}

	ready := func() error {
		if s.proc.Exited() {
			t.Fatalf("callbackd serve exited: %s", s.proc.Stderr())
		}
		req, _ := http.NewRequest(http.MethodGet, "http://"+apiAddr+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer e2e-token-0123456789")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("readyz %d", resp.StatusCode)
		}
		return nil
	}
	testutil.CheckFor(t, 2*time.Minute, 100*time.Millisecond, ready)

	nc, err := nats.Connect("nats://" + natsAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if s.js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	ctx := testutil.Context(t)
	kv, err := s.js.KeyValue(ctx, subjects.SettingsBucket)
	if err != nil {
		t.Fatal(err)
	}
	rev, err := kv.Put(ctx, "project."+e2eProject, []byte(`{"apiCallbackUrl": "`+s.sink.URL+`/hook"}`))
	if err != nil {
		t.Fatal(err)
	}
	// Events published before serve's view has the URL would be acked as
	// no_destination.
	testutil.WaitSettingsRevision(t, apiAddr, "e2e-token-0123456789", rev)
	return s
}

func (s *served) publish(t *testing.T, payload string) {
	t.Helper()
	subj, err := subjects.Event(subjects.EventKey{Type: "crawl_failed", AccountID: e2eAccount, ProjectID: e2eProject})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.js.Publish(testutil.Context(t), subj, []byte(payload)); err != nil {
		t.Fatal(err)
	}
}

// TestEndToEnd_crawl_failed_is_delivered publishes a crawl_failed event and
// checks the receiver gets the example's notification, in field order.
func TestEndToEnd_crawl_failed_is_delivered(t *testing.T) {
	s := serve(t)
	s.publish(t, `{"crawl_id": 124234, "user_id": 42, "error_code": "robots_txt_blocked", "error_message": "robots.txt disallows /"}`)
	want := "message=crawl_failed&resource=crawl&crawl_id=124234&project_id=1123123&account_id=123123&user_id=42" +
		"&error_code=robots_txt_blocked&error_message=robots.txt+disallows+%2F&href=%2Faccounts%2F123123%2Fprojects%2F1123123%2Fcrawls%2F124234"
	testutil.CheckFor(t, time.Minute, 50*time.Millisecond, func() error {
		for _, r := range s.sink.Requests() {
			if r.Body == want && r.Header.Get("Content-Type") == "application/x-www-form-urlencoded" && r.Path == "/hook" {
				return nil
			}
		}
		return fmt.Errorf("receiver got %d requests, none with the expected body", len(s.sink.Requests()))
	})
}

// TestEndToEnd_plugin_killed_mid_stream_loses_nothing publishes 1,000
// events, kills the plugin process with SIGKILL while they flow, and checks
// that every one of them is still delivered once the plugin is restarted.
func TestEndToEnd_plugin_killed_mid_stream_loses_nothing(t *testing.T) {
	s := serve(t)
	const n = 1000
	for i := 1; i <= n; i++ {
		s.publish(t, `{"crawl_id": `+strconv.Itoa(i)+`, "error_code": "timeout"}`)
		if i == 100 {
			// Kill the plugin once deliveries are flowing.
			testutil.CheckFor(t, time.Minute, 10*time.Millisecond, func() error {
				if len(s.sink.Requests()) == 0 {
					return fmt.Errorf("nothing delivered yet")
				}
				return nil
			})
			pid := pluginPID(t, s.proc)
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			t.Logf("killed plugin %d after %d deliveries", pid, len(s.sink.Requests()))
		}
	}
	testutil.CheckFor(t, 3*time.Minute, 200*time.Millisecond, func() error {
		seen := map[string]bool{}
		for _, r := range s.sink.Requests() {
			q, err := url.ParseQuery(r.Body)
			if err != nil {
				return err
			}
			seen[q.Get("crawl_id")] = true
		}
		if len(seen) < n {
			return fmt.Errorf("%d of %d events delivered", len(seen), n)
		}
		return nil
	})
	if !strings.Contains(s.proc.Stderr(), "plugin restarted") {
		t.Errorf("no restart logged")
	}
}

// pluginPID reads the crawl_failed plugin's PID from callbackd's log
// ("plugin started" names the plugin and its pid).
func pluginPID(t *testing.T, p *testutil.Process) int {
	t.Helper()
	re := regexp.MustCompile(`msg="plugin started".* plugin=crawl_failed (?:keys=\S+ )?pid=(\d+)`)
	var pid int
	testutil.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		m := re.FindAllStringSubmatch(p.Stderr(), -1)
		if len(m) == 0 {
			return fmt.Errorf("no plugin pid in the log")
		}
		pid, _ = strconv.Atoi(m[len(m)-1][1])
		return nil
	})
	return pid
}
