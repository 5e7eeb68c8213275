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
}

var allScenarios = []scenario{
	{Name: "floor", Floor: true},
	{Name: "inprocess", Builtins: "inprocess"},
	{Name: "process", Builtins: "process", Big: true},
	{Name: "plugin", Builtins: "process", ThirdParty: true},
	{Name: "process-cap8", Builtins: "process", DefaultCap: true, Backlog: 500},
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
	fs.StringVar(&o.scenarios, "scenarios", "floor,inprocess,process,plugin,process-cap8", "scenarios to run, comma-separated")
	fs.StringVar(&o.out, "out", "", "results directory (default: bench/results of the module)")
	fs.StringVar(&o.readme, "readme", "", "README to update between its results markers (full runs only)")
	fs.BoolVar(&o.keep, "keep", false, "keep the temporary directory (logs, data dirs)")
	fs.IntVar(&o.repeat, "repeat", 3, "backlog drains per scenario; the median one is reported")
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

	tl := &tools{workers: o.workers, perHost: o.perHost, pull: o.pull}
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
		FloorCfg: fmt.Sprintf("embedded nats-server in its own process, %d workers", o.workers),
	}
	want := map[string]bool{}
	for _, s := range strings.Split(o.scenarios, ",") {
		want[strings.TrimSpace(s)] = true
	}
	nonce := make([]byte, 4)
	_, _ = rand.Read(nonce)
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
		res := runScenario(ctx, tl, sc, o, dir, hex.EncodeToString(nonce))
		rep.Results = append(rep.Results, res)
		if res.Unavailable == "" && !res.Ledger.OK() {
			rep.Void = true
		}
	}
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

// runScenario starts the scenario's target on an empty data dir and runs
// every phase against it.
func runScenario(ctx context.Context, tl *tools, sc scenario, o options, dir, nonce string) (res result) {
	res.Name = sc.Name
	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "bench: %-9s "+format+"\n", append([]any{sc.Name}, args...)...)
	}
	if sc.ThirdParty && tl.pluginErr != nil {
		res.Unavailable = tl.pluginErr.Error()
		logf("unavailable: %s", res.Unavailable)
		return res
	}
	d0, r0, b0, err := tl.sink.Count()
	if err != nil {
		res.Error = err.Error()
		return res
	}
	// What the machine is busy with before the target starts: this box is
	// shared, and the numbers below are only as quiet as it is.
	busy0, _ := machineCPU()
	time.Sleep(time.Second)
	busy1, _ := machineCPU()
	res.Background = busy1 - busy0
	t, err := startTarget(ctx, tl, sc, dir)
	if err != nil {
		if sc.ThirdParty {
			res.Unavailable = "callbackd does not start with the example plugin: " + firstLine(err.Error(), nil)
			logf("unavailable: %v", err)
		} else {
			res.Error = err.Error()
			logf("failed: %v", err)
		}
		return res
	}
	defer t.Stop()
	res.Ready = t.Ready
	logf("ready in %s (background load before start: %.2f CPUs)", t.Ready.Round(time.Millisecond), res.Background)
	smp := startSampler(t.PID(), 100*time.Millisecond)
	defer smp.Stop()
	d := &driver{tl: tl, t: t, sampler: smp, nonce: nonce}

	fail := func(what string, err error) result {
		res.Error = what + ": " + err.Error()
		logf("%s", res.Error)
		res.Ledger, _ = d.settle(ctx, d0, r0, b0)
		return res
	}
	if err := d.warmUp(ctx, o.warmup); err != nil {
		return fail("warm-up", err)
	}
	logf("warmed up with %d events", o.warmup)
	// The 100,000-event backlog comes first, right after the warm-up: its
	// peak memory is the target's for that backlog alone, not with the
	// drains' message ids still in the 2-minute de-duplication window.
	if sc.Big && o.big > 0 {
		big, err := d.backlog(ctx, "big", o.big)
		res.Big = &big
		if err != nil {
			return fail("big backlog", err)
		}
		logf("backlog %d: %.0f deliveries/s, peak PSS %s MiB", o.big, big.Rate, mib(big.PeakPSS))
	}
	n := o.n
	if sc.Backlog > 0 {
		n = min(sc.Backlog, o.n)
	}
	// The box is shared and a single drain moves by ±20 % between runs:
	// drain o.repeat times and report the median drain (all its figures),
	// with the range of the rates beside it.
	var drains []phase
	for i := range max(o.repeat, 1) {
		p, err := d.backlog(ctx, fmt.Sprintf("backlog%d", i), n) // the name keeps message ids apart
		if err != nil {
			return fail("backlog", err)
		}
		drains = append(drains, p)
		logf("backlog %d: %.0f deliveries/s, %.2f CPU s/10k (sink %.2f), machine %.2f CPUs busy, %d parks, %d new connections, longest gap %s", n, p.Rate,
			p.CPUPer10k(), p.SinkCPU/float64(max(p.Received, 1))*10000, p.MachineBusy, p.Parks,
			p.Conns, p.MaxGap.Round(time.Millisecond))
	}
	slices.SortFunc(drains, func(a, b phase) int { return cmp.Compare(a.Rate, b.Rate) })
	res.Backlog = drains[len(drains)/2]
	for _, p := range drains {
		res.BacklogRates = append(res.BacklogRates, p.Rate)
		res.Backlog.Parks = max(res.Backlog.Parks, p.Parks)
		res.Backlog.MaxGap = max(res.Backlog.MaxGap, p.MaxGap)
	}
	if res.Steady, err = d.steady(ctx, o.rate, o.steady); err != nil {
		return fail("steady", err)
	}
	logf("steady %d/s: p50 %s p99 %s p99.9 %s", o.rate, res.Steady.P50, res.Steady.P99, res.Steady.P999)
	if res.Ledger, err = d.settle(ctx, d0, r0, b0); err != nil {
		res.Error = "ledger: " + err.Error()
	}
	logf("ledger %s", res.Ledger)
	return res
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
