package main

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Names the benchmark shares with callbackd's contract (SPEC §2, §4); the
// floor uses the same stream and consumer names.
const (
	eventsStream   = "CALLBACKS"
	retryStream    = "CALLBACKS_RETRY"
	deadStream     = "CALLBACKS_DEAD"
	consumerName   = "dispatcher"
	settingsBucket = "callbackd_settings"
	benchAccount   = "123123"
	benchProject   = "1123123"
)

// scenario is one system under test.
type scenario struct {
	// Name is the scenario's name in the results.
	Name string
	// Floor is the no-callbackd loop; otherwise callbackd serve runs.
	Floor bool
	// Builtins is plugins.builtins for callbackd: inprocess or process.
	Builtins string
	// ThirdParty runs the example third-party encoder (crawl_failed) and
	// publishes its event type.
	ThirdParty bool
	// Big adds the 100,000-event backlog (peak PSS target).
	Big bool
	// DefaultCap keeps callbackd's default dispatcher.per_host_concurrency
	// (8) instead of the lifted one (-per-host) the other scenarios run
	// with: the sink is a single host.
	DefaultCap bool
	// Backlog, when not 0, is the backlog size instead of -n.
	Backlog int
	// Workers, for a floor, is its requests in flight instead of
	// -floor-workers.
	Workers int
	// Against names the floor the scenario's ratios are to ("" → "floor").
	Against string
}

// floorName is the floor the scenario is compared with.
func (s scenario) floorName() string { return cmp.Or(s.Against, "floor") }

// EventType is the type of the events published to the scenario.
func (s scenario) EventType() string {
	if s.ThirdParty {
		return "crawl_failed"
	}
	return "crawl_status"
}

// HookPath is the path of the sink's URL that the scenario's target posts
// to: one per scenario, so that the sink can count each target's deliveries
// apart while all of a run's targets are up.
func (s scenario) HookPath() string { return "/hook/" + s.Name }

// payload is the JSON of event i (from 1) of the scenario's type.
func (s scenario) payload(i int) []byte {
	if s.ThirdParty {
		return fmt.Appendf(nil, `{"crawl_id":%d,"user_id":42,"error_code":"timeout","error_message":"crawl timed out"}`, i)
	}
	return fmt.Appendf(nil, `{"crawl_id":%d,"user_id":123123,"partner_account_id":"123123","partner_user_id":"3333312"}`, i)
}

// target is a running system under test: the floor process or callbackd
// serve, each with its embedded NATS server.
type target struct {
	sc      scenario
	cmd     *exec.Cmd
	dir     string
	logPath string
	exited  chan struct{}

	natsURL string
	apiURL  string
	token   string
	// Ready is how long the target took from exec to ready: /readyz 200
	// for callbackd, "ready" on stdout for the floor.
	Ready time.Duration

	nc *nats.Conn
	js jetstream.JetStream
	// pubErrs counts asynchronous publishes that failed.
	pubErrs atomic.Int64
}

// tools is what the driver built or started once for all scenarios.
type tools struct {
	self      string // this program, for the floor
	callbackd string // the callbackd binary
	// plugin is the built example plugin, or "" with pluginErr saying why.
	plugin    string
	pluginSum string
	pluginErr error
	sink      *sinkClient
	workers   int    // floor workers
	pull      string // floor pull style
	perHost   int    // dispatcher.per_host_concurrency, 0 = callbackd's default
	hold      bool   // the sink holds its answers while a backlog is published
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// startTarget launches the scenario's process on an empty data directory
// under dir and waits until it is ready.
func startTarget(ctx context.Context, tl *tools, sc scenario, dir string) (*target, error) {
	t := &target{sc: sc, dir: dir, logPath: filepath.Join(dir, "output.log"), exited: make(chan struct{})}
	natsAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	t.natsURL = "nats://" + natsAddr
	logf, err := os.Create(t.logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()

	var ready func() (bool, error)
	if sc.Floor {
		t.cmd = exec.Command(tl.self, "floor", "-listen", natsAddr, "-store", filepath.Join(dir, "data"),
			"-sink", tl.sink.URL+sc.HookPath(), "-workers", strconv.Itoa(cmp.Or(sc.Workers, tl.workers)), "-pull", tl.pull)
		t.cmd.Stderr = logf
		out, err := t.cmd.StdoutPipe()
		if err != nil {
			return nil, err
		}
		lines := make(chan string, 1)
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				select {
				case lines <- sc.Text():
				default:
				}
			}
		}()
		ready = func() (bool, error) {
			select {
			case l := <-lines:
				return l == "ready", nil
			default:
				return false, nil
			}
		}
	} else {
		apiAddr, err := freeAddr()
		if err != nil {
			return nil, err
		}
		t.apiURL = "http://" + apiAddr
		cfg, err := t.writeConfig(tl, natsAddr, apiAddr)
		if err != nil {
			return nil, err
		}
		t.cmd = exec.Command(tl.callbackd, "serve", "--config", cfg)
		t.cmd.Stdout, t.cmd.Stderr = logf, logf
		ready = t.readyz
	}
	t.cmd.Dir = dir
	t.cmd.Env = cleanEnv()
	start := time.Now()
	if err := t.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { _ = t.cmd.Wait(); close(t.exited) }()
	for {
		ok, err := ready()
		if ok {
			t.Ready = time.Since(start)
			break
		}
		select {
		case <-t.exited:
			return nil, fmt.Errorf("%s exited before it was ready: %v\n%s", sc.Name, err, t.logTail())
		default:
		}
		if time.Since(start) > time.Minute {
			t.Stop()
			return nil, fmt.Errorf("%s not ready after a minute: %v\n%s", sc.Name, err, t.logTail())
		}
		time.Sleep(5 * time.Millisecond)
	}

	if t.nc, err = nats.Connect(t.natsURL, nats.Name("bench")); err != nil {
		t.Stop()
		return nil, err
	}
	if t.js, err = jetstream.New(t.nc, jetstream.WithPublishAsyncMaxPending(4096),
		jetstream.WithPublishAsyncErrHandler(func(jetstream.JetStream, *nats.Msg, error) { t.pubErrs.Add(1) })); err != nil {
		t.Stop()
		return nil, err
	}
	if !sc.Floor {
		// The project's URL, straight into the settings bucket (README:
		// operators' tools may write it directly).
		kv, err := t.js.KeyValue(ctx, settingsBucket)
		if err != nil {
			t.Stop()
			return nil, err
		}
		if _, err := kv.Put(ctx, "project."+benchProject, fmt.Appendf(nil, `{"apiCallbackUrl":%q}`, tl.sink.URL+sc.HookPath())); err != nil {
			t.Stop()
			return nil, err
		}
	}
	return t, nil
}

// writeConfig writes callbackd's config for the scenario and returns its path.
func (t *target) writeConfig(tl *tools, natsAddr, apiAddr string) (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "data_dir: %s\n", filepath.Join(t.dir, "data"))
	fmt.Fprintf(&b, "nats: {listen: %q}\n", natsAddr)
	fmt.Fprintf(&b, "api: {listen: %q}\n", apiAddr)
	b.WriteString("delivery: {allow_private: true}\n")
	b.WriteString("log: {level: warn}\n")
	if tl.perHost > 0 && !t.sc.DefaultCap {
		fmt.Fprintf(&b, "dispatcher: {per_host_concurrency: %d}\n", tl.perHost)
	}
	fmt.Fprintf(&b, "plugins:\n  builtins: %s\n", t.sc.Builtins)
	if t.sc.ThirdParty {
		if tl.pluginErr != nil {
			return "", tl.pluginErr
		}
		pdir := filepath.Join(t.dir, "plugins")
		if err := os.Mkdir(pdir, 0o755); err != nil {
			return "", err
		}
		if err := copyFile(tl.plugin, filepath.Join(pdir, "crawl_failed"), 0o755); err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "  dir: %s\n  encoders:\n    crawl_failed: {path: crawl_failed, sha256: %s}\n", pdir, tl.pluginSum)
	}
	path := filepath.Join(t.dir, "callbackd.yaml")
	return path, os.WriteFile(path, []byte(b.String()), 0o600)
}

// readyz reports whether callbackd's /readyz answers 200, with the token
// serve wrote into its data dir.
func (t *target) readyz() (bool, error) {
	if t.token == "" {
		b, err := os.ReadFile(filepath.Join(t.dir, "data", "admin.token"))
		if err != nil {
			return false, err
		}
		t.token = strings.TrimSpace(string(b))
		if t.token == "" {
			return false, errors.New("empty admin.token")
		}
	}
	req, _ := http.NewRequest(http.MethodGet, t.apiURL+"/readyz", nil)
	req.Header.Set("Authorization", "Bearer "+t.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false, err
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("readyz %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	return true, nil
}

// PID is the target's process id, the root of its process tree.
func (t *target) PID() int { return t.cmd.Process.Pid }

// Alive reports whether the target's process is still running.
func (t *target) Alive() bool {
	select {
	case <-t.exited:
		return false
	default:
		return true
	}
}

// Subject is where the scenario's events are published.
func (t *target) Subject() string {
	return "callbacks.event." + t.sc.EventType() + "." + benchAccount + "." + benchProject
}

// streamCount returns a stream's message count and last sequence (0, 0 when
// the stream does not exist, as in the floor).
func (t *target) streamCount(ctx context.Context, name string) (msgs, lastSeq uint64, err error) {
	s, err := t.js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0, 0, err
	}
	return info.State.Msgs, info.State.LastSeq, nil
}

// outcomes returns callbackd's deliveries_total by outcome, summed over
// event types, from /metrics (empty for the floor).
func (t *target) outcomes() (map[string]float64, error) {
	out := map[string]float64{}
	if t.sc.Floor {
		return out, nil
	}
	req, _ := http.NewRequest(http.MethodGet, t.apiURL+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+t.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	const name = "callbackd_deliveries_total{"
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		labels, value, ok := strings.Cut(line[len(name):], "} ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			continue
		}
		for _, l := range strings.Split(labels, ",") {
			if k, val, ok := strings.Cut(l, "="); ok && k == "outcome" {
				out[strings.Trim(val, `"`)] += v
			}
		}
	}
	return out, sc.Err()
}

// Stop ends the target: SIGTERM, then SIGKILL after 10 s.
func (t *target) Stop() {
	if t.nc != nil {
		t.nc.Close()
	}
	if t.cmd == nil || t.cmd.Process == nil {
		return
	}
	_ = t.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-t.exited:
	case <-time.After(10 * time.Second):
		_ = t.cmd.Process.Kill()
		<-t.exited
	}
}

// logTail is the end of the target's output, for error messages.
func (t *target) logTail() string {
	b, _ := os.ReadFile(t.logPath)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// cleanEnv is the environment without CALLBACKD_ variables, so that the
// generated config alone decides.
func cleanEnv() []string {
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CALLBACKD_") {
			env = append(env, kv)
		}
	}
	return env
}

func copyFile(src, dst string, mode os.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, mode)
}
