package main_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callbackd/callbackd/settings"
	"github.com/callbackd/callbackd/testutil"
)

// Helpers of the scale-out and fault tests (cluster_test.go, faults_test.go):
// `callbackd serve` instances as subprocesses, a fast counting sink, and
// events whose Callback-Delivery-Id is known in advance.

const (
	// faultWait bounds the delivery of a whole load, restarts and
	// redeliveries (AckWait = delivery.timeout 2s + 10s) included.
	faultWait = 150 * time.Second
	// loadAccount is the account every load event belongs to; its callback
	// URL is the sink.
	loadAccount = "1"
)

// instance is one `callbackd serve` subprocess with its own data dir and
// admin API port; start, kill and start again on the same data.
type instance struct {
	name    string
	bin     string
	config  string
	dataDir string
	apiAddr string
	// args are added to `serve --config <file>`: flags override the file.
	args []string
	proc *testutil.Process
}

// newInstance writes the config of an instance: data_dir, api.listen and
// the test's defaults (2s delivery timeout so that redelivery after a kill
// comes within 12s; private destinations allowed; 32 attempts in flight to
// the one sink host, so that little work is parked), then extra YAML, which
// must hold the nats section.
func newInstance(t *testing.T, name, extra string) *instance {
	t.Helper()
	dir := t.TempDir()
	in := &instance{
		name:    name,
		bin:     testutil.BuildBinary(t),
		config:  filepath.Join(dir, "callbackd.yaml"),
		dataDir: filepath.Join(dir, "data"),
		apiAddr: testutil.FreeAddr(t),
	}
	cfg := fmt.Sprintf(`data_dir: %s
api:
  listen: %s
dispatcher:
  per_host_concurrency: 32
delivery:
  allow_private: true
  timeout: 2s
  backoff: [1s]
log:
  level: info
%s`, in.dataDir, in.apiAddr, extra)
	if err := os.WriteFile(in.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return in
}

// start runs `callbackd serve` on the instance's config. At cleanup a
// running instance gets SIGTERM, then SIGKILL if it does not exit, and
// plugin processes it leaves behind are killed.
func (in *instance) start(t *testing.T) {
	t.Helper()
	p := testutil.StartBinary(t, in.bin, append([]string{"serve", "--config", in.config}, in.args...)...)
	in.proc = p
	t.Cleanup(func() {
		kids := in.children()
		if !p.Exited() {
			_ = p.Signal(syscall.SIGTERM)
			select {
			case <-p.Done():
			case <-time.After(30 * time.Second):
				t.Errorf("%s did not exit within 30s of SIGTERM at cleanup", in.name)
				p.Kill()
			}
		}
		killPIDs(kids)
	})
}

// waitReady polls the admin API's /readyz until it answers 200.
func (in *instance) waitReady(t *testing.T) {
	t.Helper()
	testutil.CheckFor(t, 90*time.Second, 100*time.Millisecond, func() error {
		if in.proc.Exited() {
			t.Fatalf("%s exited with %d while starting\n%s", in.name, in.proc.ExitCode(), in.proc.Stderr())
		}
		code, body, err := in.get("/readyz")
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("%s /readyz: %d %s", in.name, code, body)
		}
		return nil
	})
}

func (in *instance) token() (string, error) {
	b, err := os.ReadFile(filepath.Join(in.dataDir, "admin.token"))
	return strings.TrimSpace(string(b)), err
}

// get calls the admin API with the instance's token.
func (in *instance) get(path string) (int, string, error) {
	return in.call(http.MethodGet, path, "")
}

func (in *instance) call(method, path, body string) (int, string, error) {
	token, err := in.token()
	if err != nil {
		return 0, "", err
	}
	req, _ := http.NewRequest(method, "http://"+in.apiAddr+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// delivered returns the instance's callbackd_deliveries_total for
// delivered events, read from /metrics.
func (in *instance) delivered(t *testing.T) float64 {
	t.Helper()
	code, body, err := in.get("/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("%s /metrics: %d %v", in.name, code, err)
	}
	return metricSum(body, "callbackd_deliveries_total", `outcome="delivered"`)
}

// metricSum adds the values of a metric's samples whose labels contain
// every given label.
func metricSum(exposition, name string, labels ...string) float64 {
	var sum float64
	sc := bufio.NewScanner(strings.NewReader(exposition))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(line, l)
		}
		if !ok {
			continue
		}
		if v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64); err == nil {
			sum += v
		}
	}
	return sum
}

// pid finds the running serve process of this instance in /proc (by its
// config path on the command line), 0 when there is none.
func (in *instance) pid() int {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		if len(args) >= 2 && args[1] == "serve" && strings.Contains(string(cmdline), "\x00"+in.config) && processState(pid) != "Z" {
			return pid
		}
	}
	return 0
}

// children returns the PIDs of the instance's child processes (its plugin
// processes).
func (in *instance) children() []int {
	if pid := in.pid(); pid != 0 {
		return childPIDs(pid)
	}
	return nil
}

// childPIDs lists the live children of pid, from /proc/*/stat.
func childPIDs(parent int) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppid, state := statOf(pid); ppid == parent && state != "Z" {
			out = append(out, pid)
		}
	}
	return out
}

// statOf returns a process's parent PID and state from /proc/<pid>/stat.
func statOf(pid int) (ppid int, state string) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, ""
	}
	// pid (comm) state ppid …; comm may hold spaces and parentheses.
	rest := string(b[bytes.LastIndexByte(b, ')')+1:])
	f := strings.Fields(rest)
	if len(f) < 2 {
		return 0, ""
	}
	ppid, _ = strconv.Atoi(f[1])
	return ppid, f[0]
}

func processState(pid int) string {
	_, s := statOf(pid)
	return s
}

// killPIDs SIGKILLs the given processes (plugin processes orphaned by a
// killed callbackd), ignoring those already gone.
func killPIDs(pids []int) {
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// kill SIGKILLs the instance and waits for it to be gone. Its plugin
// processes are reported and killed too: a killed host cannot stop them.
func (in *instance) kill(t *testing.T) {
	t.Helper()
	kids := in.children()
	in.proc.Kill()
	<-in.proc.Done()
	var orphans []int
	for _, pid := range kids {
		if s := processState(pid); s != "" && s != "Z" {
			orphans = append(orphans, pid)
		}
	}
	if len(orphans) > 0 {
		t.Logf("%s: %d plugin process(es) still running just after the SIGKILL of their host (they exit when they notice); killing them", in.name, len(orphans))
	}
	killPIDs(orphans)
}

// deliveryID is the Callback-Delivery-Id of an event published with
// Nats-Msg-Id msgID (SPEC §3).
func deliveryID(msgID string) string {
	sum := sha256.Sum256([]byte(msgID))
	return hex.EncodeToString(sum[:])[:16]
}

func eventMsgID(i int) string { return "load-" + strconv.Itoa(i) }

// publishLoad publishes crawl_status events from..to-1 (crawl_id = i) for
// loadAccount and project 1 with Nats-Msg-Id eventMsgID(i), asynchronously,
// and republishes (the same Nats-Msg-Id, so never twice) whatever was not
// acked, until every one is.
func publishLoad(t *testing.T, js jetstream.JetStream, from, to int) {
	t.Helper()
	subject := "callbacks.event.crawl_status." + loadAccount + ".1"
	body := func(i int) []byte { return []byte(`{"crawl_id":` + strconv.Itoa(i) + `}`) }
	var failed []int
	futures := make(map[int]jetstream.PubAckFuture, to-from)
	for i := from; i < to; i++ {
		f, err := js.PublishAsync(subject, body(i), jetstream.WithMsgID(eventMsgID(i)))
		if err != nil {
			failed = append(failed, i)
			continue
		}
		futures[i] = f
	}
	for i, f := range futures {
		select {
		case <-f.Ok():
		case <-f.Err():
			failed = append(failed, i)
		case <-time.After(30 * time.Second):
			failed = append(failed, i)
		}
	}
	for _, i := range failed {
		testutil.CheckFor(t, 60*time.Second, 200*time.Millisecond, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := js.Publish(ctx, subject, body(i), jetstream.WithMsgID(eventMsgID(i)))
			return err
		})
	}
	if len(failed) > 0 {
		t.Logf("publish: %d of %d events needed a second try", len(failed), to-from)
	}
}

// loadSink is a fast HTTP sink that counts deliveries by
// Callback-Delivery-Id and remembers which ids each crawl came with.
type loadSink struct {
	*httptest.Server

	mu      sync.Mutex
	total   int
	byID    map[string]int             // delivery id → deliveries
	byCrawl map[string]map[string]bool // crawl_id → delivery ids seen
	byPath  map[string]int             // URL path → deliveries
	delay   time.Duration
	arrived chan struct{}
}

func newLoadSink(t *testing.T, delay time.Duration) *loadSink {
	t.Helper()
	s := &loadSink{byID: map[string]int{}, byCrawl: map[string]map[string]bool{}, byPath: map[string]int{},
		delay: delay, arrived: make(chan struct{}, 1)}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

func (s *loadSink) serve(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	if s.delay > 0 {
		time.Sleep(s.delay)
	}
	form, _ := url.ParseQuery(string(b))
	id, crawl := r.Header.Get("Callback-Delivery-Id"), form.Get("crawl_id")
	s.mu.Lock()
	s.total++
	s.byID[id]++
	if s.byCrawl[crawl] == nil {
		s.byCrawl[crawl] = map[string]bool{}
	}
	s.byCrawl[crawl][id] = true
	s.byPath[r.URL.Path]++
	s.mu.Unlock()
	select {
	case s.arrived <- struct{}{}:
	default:
	}
	w.WriteHeader(http.StatusOK)
}

// unique is how many distinct events (delivery ids) arrived.
func (s *loadSink) unique() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byID)
}

// waitUnique waits until n distinct events have arrived.
func (s *loadSink) waitUnique(t *testing.T, n int, total time.Duration) {
	t.Helper()
	deadline := time.After(total)
	for s.unique() < n {
		select {
		case <-s.arrived:
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			t.Fatalf("sink: %d of %d events after %s", s.unique(), n, total)
		}
	}
}

// check verifies that every event from..to-1 arrived with its own
// Callback-Delivery-Id and no other, and returns the number of duplicate
// deliveries.
func (s *loadSink) check(t *testing.T, from, to int) (dups int) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	missing := 0
	for i := from; i < to; i++ {
		want := deliveryID(eventMsgID(i))
		n := s.byID[want]
		if n == 0 {
			missing++
			continue
		}
		dups += n - 1
		ids := s.byCrawl[strconv.Itoa(i)]
		if len(ids) != 1 || !ids[want] {
			t.Errorf("crawl %d arrived with delivery ids %v, want only %s", i, keys(ids), want)
		}
	}
	if missing > 0 {
		t.Errorf("%d of %d events never arrived", missing, to-from)
	}
	return dups
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// putAccountURL points loadAccount's callbacks at u, writing the settings
// bucket directly as an operator's tool may (SPEC §4), creating it with the
// given replicas when absent.
func putAccountURL(t *testing.T, js jetstream.JetStream, replicas int, u string) (revision uint64) {
	t.Helper()
	value, _ := json.Marshal(map[string]any{"apiCallbackUrl": u})
	testutil.CheckFor(t, 30*time.Second, 200*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		store, err := settings.OpenStore(ctx, js, settings.StoreOptions{Replicas: replicas})
		if err != nil {
			return err
		}
		revision, err = store.KV().Put(ctx, "account."+loadAccount, value)
		return err
	})
	return revision
}

// waitSettings waits until each running instance's settings view has
// applied revision (callbackd_settings_revision on /metrics), so that
// events published next find the settings written before.
func waitSettings(t *testing.T, revision uint64, ins ...*instance) {
	t.Helper()
	for _, in := range ins {
		var token string
		testutil.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() (err error) {
			token, err = in.token()
			return err
		})
		testutil.WaitSettingsRevision(t, in.apiAddr, token, revision)
	}
}
