// Command bench is callbackd's end-to-end benchmark (make bench): in one
// run, against one HTTP sink in its own process, it measures the floor (a
// minimal JetStream → form POST loop with no callbackd code) and callbackd
// serve with its built-ins in-process, in a plugin process (the default)
// and with the example third-party encoder plugin. See README.md beside
// this file for what is measured and how, and for the latest results.
//
//	go run ./bench              # full run, results in bench/results/latest.*
//	go run ./bench -quick       # a small run, results in bench/results/quick.*
//
// The same binary is the sink (bench sink) and the floor (bench floor).
package main

import (
	"bufio"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

func main() {
	var err error
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "sink":
			err = runSink(os.Args[2:])
		case "floor":
			err = runFloor(os.Args[2:])
		default:
			err = runDriver(os.Args[1:])
		}
	} else {
		err = runDriver(nil)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// options are the driver's flags.
type options struct {
	n         int
	big       int
	rate      int
	steady    time.Duration
	warmup    int
	workers   int
	pull      string
	perHost   int
	scenarios string
	out       string
	readme    string
	keep      bool
	repeat    int
	hold      bool
}

var allScenarios = []scenario{
	{Name: "floor", Floor: true},
	{Name: "inprocess", Builtins: "inprocess"},
	{Name: "process", Builtins: "process", Big: true},
	{Name: "plugin", Builtins: "process", ThirdParty: true},
	// The true default, 8 requests in flight to the one sink host, beside
	// a floor with the same 8 in flight.
	{Name: "floor-cap8", Floor: true, Workers: 8},
	{Name: "process-cap8", Builtins: "process", DefaultCap: true, Against: "floor-cap8"},
}

func runDriver(args []string) error {
	var o options
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	quick := fs.Bool("quick", false, "a small run (5,000-event backlog, 10,000 big, 5 s steady) written to <out>/quick.*")
	fs.IntVar(&o.n, "n", 50000, "backlog events per scenario")
	fs.IntVar(&o.big, "big", 100000, "events of the default configuration's big backlog (peak PSS); 0 skips it")
	fs.IntVar(&o.rate, "rate", 1000, "steady load, events per second")
	fs.DurationVar(&o.steady, "steady", 20*time.Second, "steady load duration")
	fs.IntVar(&o.warmup, "warmup", 500, "events sent through before measuring")
	fs.IntVar(&o.workers, "floor-workers", 64, "the floor's messages in flight (pull-ahead and HTTP requests)")
	fs.StringVar(&o.pull, "floor-pull", "fetch", "how the floor pulls: fetch (two Fetch loops) or messages (a Messages iterator, as callbackd)")
	fs.IntVar(&o.perHost, "per-host", 1024, "callbackd dispatcher.per_host_concurrency but in process-cap8 (0: callbackd's default, 8)")
	fs.StringVar(&o.scenarios, "scenarios", "floor,inprocess,process,plugin,floor-cap8,process-cap8", "scenarios to run, comma-separated")
	fs.StringVar(&o.out, "out", "", "results directory (default: bench/results of the module)")
	fs.StringVar(&o.readme, "readme", "", "README to update between its results markers (full runs only)")
	fs.BoolVar(&o.keep, "keep", false, "keep the temporary directory (logs, data dirs)")
	fs.IntVar(&o.repeat, "repeat", 3, "rounds of backlog drains, each scenario once per round; the median drain and the median ratio to the floor's drain of the same round are reported")
	fs.BoolVar(&o.hold, "hold", false, "the sink holds its answers while each backlog is published and the drain is timed from their release (default: timed from the last publish's ack, the target consuming meanwhile)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	name := "latest"
	if *quick {
		name = "quick"
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		for _, q := range []struct {
			flag string
			fn   func()
		}{
			{"n", func() { o.n = 5000 }},
			{"big", func() { o.big = 10000 }},
			{"steady", func() { o.steady = 5 * time.Second }},
			{"warmup", func() { o.warmup = 200 }},
			{"repeat", func() { o.repeat = 1 }},
		} {
			if !set[q.flag] {
				q.fn()
			}
		}
		o.readme = ""
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()

	root, err := moduleRoot()
	if err != nil {
		return err
	}
	if o.out == "" {
		o.out = filepath.Join(root, "bench", "results")
	}
	tmp, err := os.MkdirTemp("", "callbackd-bench-")
	if err != nil {
		return err
	}
	if o.keep {
		fmt.Fprintln(os.Stderr, "bench: keeping", tmp)
	} else {
		defer os.RemoveAll(tmp)
	}

	tl := &tools{workers: o.workers, perHost: o.perHost, pull: o.pull, hold: o.hold}
	if tl.self, err = os.Executable(); err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "bench: building callbackd and the example plugin")
	tl.callbackd = filepath.Join(tmp, "callbackd")
	if out, err := goBuild(root, tl.callbackd, "-ldflags", "-X main.version=bench", "./cmd/callbackd"); err != nil {
		return fmt.Errorf("go build ./cmd/callbackd: %w\n%s", err, out)
	}
	tl.plugin = filepath.Join(tmp, "crawl_failed")
	if out, err := goBuild(root, tl.plugin, "./plugins/examples/crawl_failed"); err != nil {
		tl.pluginErr = fmt.Errorf("example plugin does not build: %s", firstLine(string(out), err))
	} else if tl.pluginSum, err = fileSHA256(tl.plugin); err != nil {
		tl.pluginErr = err
	}
	if tl.sink, err = startSink(tl.self); err != nil {
		return err
	}
	defer tl.sink.Close()

	rep := &report{
		When: start, Machine: describeMachine(root), N: o.n, Big: o.big, Rate: o.rate, Steady: o.steady,
		FloorCfg: fmt.Sprintf("embedded nats-server in its own process, %d workers (floor-cap8: 8, the requests in flight of process-cap8, which is compared with it)", o.workers),
	}
	want := map[string]bool{}
	for _, s := range strings.Split(o.scenarios, ",") {
		want[strings.TrimSpace(s)] = true
	}
	nonce := make([]byte, 4)
	_, _ = rand.Read(nonce)
	// Every target is started first and stays up; the drains then go in
	// rounds, each scenario once per round, so that the machine's drift
	// (this box is shared) falls alike on the scenarios of a round and
	// each round's rate can be paired with the floor's of the same round.
	var runs []*run
	defer func() {
		for _, r := range runs {
			r.stop()
		}
	}()
	for _, sc := range allScenarios {
		if !want[sc.Name] {
			continue
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		dir := filepath.Join(tmp, sc.Name)
		if err := os.Mkdir(dir, 0o700); err != nil {
			return err
		}
		r := &run{sc: sc}
		runs = append(runs, r)
		r.start(ctx, tl, o, dir, hex.EncodeToString(nonce))
	}
	rounds := max(o.repeat, 1)
	for round := range rounds {
		for _, r := range runs {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			r.drain(ctx, round, rounds)
		}
	}
	for _, r := range runs {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		r.finish(ctx, o)
		r.stop()
		rep.Results = append(rep.Results, r.res)
		if r.res.Unavailable == "" && !r.res.Ledger.OK() {
			rep.Void = true
		}
	}
	rep.pairRatios()
	rep.Took = time.Since(start)
	md := rep.Markdown()
	fmt.Print("\n" + md)
	if err := rep.write(filepath.Join(o.out, name)); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "bench: wrote %s.{md,json,png}\n", filepath.Join(o.out, name))
	if o.readme != "" {
		if err := updateReadme(o.readme, md, name); err != nil {
			return err
		}
	}
	if rep.Void {
		return errors.New("void run: a ledger did not balance")
	}
	return nil
}

// run is one scenario's target from its start to its stop, and its
// measurements. runDriver starts every scenario's target, then has them
// drain in rounds (run.drain), then finishes them one by one (run.finish).
type run struct {
	sc  scenario
	res result
	// t, smp and d are set while the target is up.
	t   *target
	smp *sampler
	d   *driver
	// done is set once the scenario failed or was unavailable: it takes
	// part in no more phases.
	done bool
	// n is how many events each backlog drain publishes.
	n int
	// nonce makes the run's message ids unique.
	nonce string
	// bigLedger is the ledger of the instance that drained the big
	// backlog, added to the final one.
	bigLedger ledger
	// drains are the backlog drains so far, in round order.
	drains []phase
	// The sink's counts of the target's path before the target started,
	// for the ledger.
	sinkDistinct0, sinkRequests0, sinkBad0 int
}

// logf writes a progress line for the scenario on stderr.
func (r *run) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: %-9s "+format+"\n", append([]any{r.sc.Name}, args...)...)
}

// start starts the scenario's target on an empty data dir under dir and
// warms it up; for the scenario with Big, an instance of its own drains the
// big backlog first. A failure is recorded in r.res and ends the run
// (r.done).
func (r *run) start(ctx context.Context, tl *tools, o options, dir, nonce string) {
	sc := r.sc
	r.nonce = nonce
	r.res.Name, r.res.Floor = sc.Name, sc.Floor
	if !sc.Floor {
		r.res.Against = sc.floorName()
	}
	if sc.ThirdParty && tl.pluginErr != nil {
		r.res.Unavailable = tl.pluginErr.Error()
		r.logf("unavailable: %s", r.res.Unavailable)
		r.done = true
		return
	}
	var err error
	if r.sinkDistinct0, r.sinkRequests0, r.sinkBad0, err = tl.sink.CountPath(sc.HookPath()); err != nil {
		r.res.Error = err.Error()
		r.done = true
		return
	}
	// What the machine is busy with before the target starts: this box is
	// shared, and the numbers below are only as quiet as it is. (The
	// targets started before this one are up and idle by then.)
	busy0, _ := machineCPU()
	time.Sleep(time.Second)
	busy1, _ := machineCPU()
	r.res.Background = busy1 - busy0
	// The big backlog has an instance of its own, stopped before the
	// drains: their instance then starts as every other scenario's does,
	// without the big backlog's 100,000 message ids in the 2-minute
	// de-duplication window (with them, serve's GC worked harder in this
	// scenario's drains alone).
	if sc.Big && o.big > 0 {
		bigDir := filepath.Join(dir, "big")
		if err := os.Mkdir(bigDir, 0o700); err != nil {
			r.res.Error = err.Error()
			r.done = true
			return
		}
		if !r.launch(ctx, tl, o, bigDir, r.nonce+"big") {
			return
		}
		big, err := r.d.backlog(ctx, "big", o.big)
		r.res.Big = &big
		if err != nil {
			r.fail(ctx, "big backlog", err)
			return
		}
		r.logf("backlog %d: %.0f deliveries/s, peak PSS %s MiB", o.big, big.Rate, mib(big.PeakPSS))
		led, err := r.d.settle(ctx, r.sinkDistinct0, r.sinkRequests0, r.sinkBad0)
		if err != nil || !led.OK() {
			r.fail(ctx, "big backlog's ledger", fmt.Errorf("%s %v", led, err))
			return
		}
		r.bigLedger = led
		r.stop()
		if r.sinkDistinct0, r.sinkRequests0, r.sinkBad0, err = tl.sink.CountPath(sc.HookPath()); err != nil {
			r.res.Error = err.Error()
			r.done = true
			return
		}
	}
	if !r.launch(ctx, tl, o, dir, r.nonce) {
		return
	}
	r.n = o.n
	if sc.Backlog > 0 {
		r.n = min(sc.Backlog, o.n)
	}
}

// launch starts the scenario's target on an empty data dir in dir, its
// sampler and its driver (whose message ids start with nonce, one per
// instance), and warms it up. It reports false when that failed (recorded
// in r.res; the run is done).
func (r *run) launch(ctx context.Context, tl *tools, o options, dir, nonce string) bool {
	sc := r.sc
	t, err := startTarget(ctx, tl, sc, dir)
	if err != nil {
		if sc.ThirdParty {
			r.res.Unavailable = "callbackd does not start with the example plugin: " + firstLine(err.Error(), nil)
			r.logf("unavailable: %v", err)
		} else {
			r.res.Error = err.Error()
			r.logf("failed: %v", err)
		}
		r.done = true
		return false
	}
	r.t = t
	if r.res.Ready == 0 {
		r.res.Ready = t.Ready
	}
	r.logf("ready in %s (background load before start: %.2f CPUs)", t.Ready.Round(time.Millisecond), r.res.Background)
	// The sampler runs as long as the target: every phase reads its peak
	// memory over its own time span.
	r.smp = startSampler(t.PID(), 100*time.Millisecond)
	r.d = &driver{tl: tl, t: t, sampler: r.smp, nonce: nonce}
	if err := r.d.warmUp(ctx, o.warmup); err != nil {
		r.fail(ctx, "warm-up", err)
		return false
	}
	r.logf("warmed up with %d events", o.warmup)
	return true
}

// drain runs the scenario's backlog drain of round (from 0, of rounds),
// unless the scenario is done.
func (r *run) drain(ctx context.Context, round, rounds int) {
	if r.done {
		return
	}
	// The target sat idle while the others drained: the drain is a burst
	// after a quiet spell, which callbackd must take at full speed (an
	// earlier build parked it: it judged an idle host's full slots as a
	// stall, by an answer long past).
	p, err := r.d.backlog(ctx, fmt.Sprintf("backlog%d", round), r.n) // the name keeps message ids apart
	if err != nil {
		r.fail(ctx, "backlog", err)
		return
	}
	r.drains = append(r.drains, p)
	r.logf("backlog %d, round %d/%d: %.0f deliveries/s, %.2f CPU s/10k (sink %.2f), machine %.2f CPUs busy, %d parks, %d new connections, longest gap %s",
		r.n, round+1, rounds, p.Rate, p.CPUPer10k(), p.SinkCPU/float64(max(p.Received, 1))*10000, p.MachineBusy, p.Parks,
		p.Conns, p.MaxGap.Round(time.Millisecond))
}

// finish records the drains, then runs the steady load and settles the
// ledger, unless the scenario is done. It leaves the target up (stop).
func (r *run) finish(ctx context.Context, o options) {
	if r.done {
		return
	}
	r.done = true
	// The box is shared and a single drain moves by ±20 % between runs:
	// the median drain (all its figures) is reported, with the range of
	// the rates beside it; the rates stay in round order for the ratios to
	// the floor's drains of the same rounds (report.pairRatios).
	if len(r.drains) > 0 {
		sorted := slices.SortedFunc(slices.Values(r.drains), func(a, b phase) int { return cmp.Compare(a.Rate, b.Rate) })
		r.res.Backlog = sorted[len(sorted)/2]
		for _, p := range r.drains {
			r.res.BacklogRates = append(r.res.BacklogRates, p.Rate)
			r.res.Backlog.Parks = max(r.res.Backlog.Parks, p.Parks)
			r.res.Backlog.MaxGap = max(r.res.Backlog.MaxGap, p.MaxGap)
		}
	}
	var err error
	if r.res.Steady, err = r.d.steady(ctx, o.rate, o.steady); err != nil {
		r.fail(ctx, "steady", err)
		return
	}
	r.logf("steady %d/s: p50 %s p99 %s p99.9 %s", o.rate, r.res.Steady.P50, r.res.Steady.P99, r.res.Steady.P999)
	if r.res.Ledger, err = r.d.settle(ctx, r.sinkDistinct0, r.sinkRequests0, r.sinkBad0); err != nil {
		r.res.Error = "ledger: " + err.Error()
	}
	r.res.Ledger = r.res.Ledger.plus(r.bigLedger)
	r.logf("ledger %s", r.res.Ledger)
}

// fail records the failure of a phase and the ledger so far, and ends the
// run: the target is stopped and the scenario takes part in no more phases.
func (r *run) fail(ctx context.Context, what string, err error) {
	r.res.Error = what + ": " + err.Error()
	r.logf("%s", r.res.Error)
	r.res.Ledger, _ = r.d.settle(ctx, r.sinkDistinct0, r.sinkRequests0, r.sinkBad0)
	r.res.Ledger = r.res.Ledger.plus(r.bigLedger)
	r.done = true
	r.stop()
}

// stop stops the target's sampler and the target, if they are up. It may
// be called more than once.
func (r *run) stop() {
	if r.smp != nil {
		r.smp.Stop()
		r.smp = nil
	}
	if r.t != nil {
		r.t.Stop()
		r.t = nil
	}
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("run the benchmark inside the callbackd module")
	}
	return filepath.Dir(gomod), nil
}

func goBuild(root, out string, args ...string) ([]byte, error) {
	cmd := exec.Command("go", append([]string{"build", "-o", out}, args...)...)
	cmd.Dir = root
	return cmd.CombinedOutput()
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func firstLine(s string, err error) string {
	s = strings.TrimSpace(s)
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			return l
		}
	}
	if err != nil {
		return err.Error()
	}
	return s
}

func describeMachine(root string) machine {
	m := machine{NProc: runtime.NumCPU(), Go: runtime.Version(), CPUModel: "unknown"}
	if out, err := exec.Command("nproc").Output(); err == nil {
		fmt.Sscan(string(out), &m.NProc)
	}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	cmd := exec.Command("git", "describe", "--always", "--dirty")
	cmd.Dir = root
	if out, err := cmd.Output(); err == nil {
		m.Commit = strings.TrimSpace(string(out))
	}
	return m
}

// The README shows the latest results between these markers.
const (
	readmeStart = "<!-- bench results: start -->"
	readmeEnd   = "<!-- bench results: end -->"
)

func updateReadme(path, md, name string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := string(b)
	i, j := strings.Index(s, readmeStart), strings.Index(s, readmeEnd)
	if i < 0 || j < i {
		return fmt.Errorf("%s: no %q … %q markers", path, readmeStart, readmeEnd)
	}
	body := readmeStart + "\n\n" + md + "\n![throughput and latency by scenario](results/" + name + ".png)\n\n"
	return os.WriteFile(path, []byte(s[:i]+body+s[j:]), 0o644)
}
