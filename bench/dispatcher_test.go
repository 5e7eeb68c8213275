package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/pflag"

	"github.com/callbackd/callbackd/api"
	"github.com/callbackd/callbackd/config"
	"github.com/callbackd/callbackd/deliverylog"
	"github.com/callbackd/callbackd/dispatcher"
	"github.com/callbackd/callbackd/embedded"
	"github.com/callbackd/callbackd/plugins"
	"github.com/callbackd/callbackd/plugins/builtin"
	"github.com/callbackd/callbackd/plugins/host"
	"github.com/callbackd/callbackd/settings"
	"github.com/callbackd/callbackd/testutil"
)

// The benchmarks here drive callbackd's dispatcher in-process, wired as
// `callbackd serve` wires it (embedded NATS, streams, settings view,
// delivery log, metrics observer, built-in plugins in-process or in their
// own process), against the bench sink in a process of its own, so that a
// CPU or memory profile shows callbackd's hot path and nothing else:
//
//	go test ./bench -run '^$' -bench Dispatcher -benchtime 50000x -o bench.test \
//	    -drain.cpuprofile cpu.out -drain.memprofile mem.out
//	go tool pprof -top bench.test cpu.out
//	go tool pprof -sample_index=alloc_space -diff_base mem.out.base -top bench.test mem.out
//
// Each iteration is one event: b.N events are published to a stopped
// dispatcher, the timer starts with the dispatcher, and stops once the
// sink has them all. The -drain.* profiles cover that drain only (go
// test's own -cpuprofile also covers the publishing before it).

var (
	drainCPUProfile = flag.String("drain.cpuprofile", "", "write a CPU profile of the drain alone to this file")
	drainNoLog      = flag.Bool("drain.nolog", false, "run without the delivery log, to measure its share")
	drainMemProfile = flag.String("drain.memprofile", "", "write the allocation profile after the drain to this file, and before it to <file>.base")
	drainHeapMid    = flag.String("drain.heapprofile", "", "write the heap profile (in-use memory) to this file half-way through the drain")
	drainInFlight   = flag.Int("drain.inflight", 0, "delivery.max_in_flight (0: callbackd's default, 1024)")
	// The sink is one host: lifted as in make bench (see README.md).
	drainPerHost = flag.Int("drain.perhost", 1024, "dispatcher.per_host_concurrency (callbackd's default is 8)")
)

func TestMain(m *testing.M) {
	// The test binary is also the sink (startSink runs os.Executable()).
	if len(os.Args) > 1 && os.Args[1] == "sink" {
		if err := runSink(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func BenchmarkDispatcher_backlog_inprocess(b *testing.B) { benchDispatcher(b, "inprocess") }
func BenchmarkDispatcher_backlog_process(b *testing.B)   { benchDispatcher(b, "process") }

func benchDispatcher(b *testing.B, builtins string) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sink := benchSink(b)

	fs := pflag.NewFlagSet("bench", pflag.ContinueOnError)
	config.RegisterFlags(fs)
	cfg, _, err := config.Load(fs, nil)
	if err != nil {
		b.Fatal(err)
	}
	cfg.DataDir = b.TempDir()
	log := slog.New(slog.DiscardHandler)

	var (
		enc       plugins.Encoder
		transport plugins.Transport
		failure   plugins.FailureHandler
	)
	if builtins == "inprocess" {
		enc = builtin.Encoders()[builtin.CrawlStatusName]
		t := builtin.NewHTTPForm(builtin.HTTPFormOptions{
			Timeout: cfg.Delivery.Timeout, UserAgent: "callbackd/bench", Guard: plugins.NewGuard(true, nil),
			PerHostConcurrency: *drainPerHost,
		})
		defer t.Close()
		transport, failure = t, builtin.NewSSOWebhook()
	} else {
		bin := testutil.BuildBinary(b)
		m, err := host.NewManager(host.Options{
			Dir: filepath.Dir(bin), Logger: log, LogLevel: "warn",
			CallTimeout: cfg.Plugins.CallTimeout, TransportTimeout: cfg.Delivery.Timeout + 5*time.Second,
		})
		if err != nil {
			b.Fatal(err)
		}
		defer m.Close()
		p, err := m.Launch(ctx, host.Spec{
			Name: "builtin", Builtin: true, Path: bin,
			Args: []string{"plugin", "builtin", "--delivery-timeout=" + cfg.Delivery.Timeout.String(), "--user-agent=callbackd/bench", "--allow-private",
				"--per-host-concurrency=" + strconv.Itoa(*drainPerHost)},
			Kinds: []string{plugins.PluginEncoder, plugins.PluginTransport, plugins.PluginFailure},
		})
		if err != nil {
			b.Fatal(err)
		}
		if enc, _, err = p.Encoder(builtin.CrawlStatusName); err != nil {
			b.Fatal(err)
		}
		if transport, err = p.Transport(); err != nil {
			b.Fatal(err)
		}
		if failure, err = p.Failure(); err != nil {
			b.Fatal(err)
		}
	}

	srv, err := embedded.Start(ctx, embedded.Options{DataDir: cfg.DataDir, Logger: log})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Shutdown()
	nc, err := srv.Connect()
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		b.Fatal(err)
	}
	top, err := dispatcher.EnsureStreams(ctx, js, dispatcher.StreamOptions{
		Replicas: 1, Duplicates: cfg.NATS.Duplicates,
		RetentionEvents: cfg.Retention.Events, RetentionDead: cfg.Retention.Dead,
		RetentionLog: cfg.Retention.Log, LogBytes: int64(cfg.Retention.LogBytes),
		AckWait: cfg.AckWait(), MaxAckPending: cfg.Dispatcher.MaxAckPending, MaxRetryPending: cfg.Dispatcher.MaxRetryPending,
	}, log)
	if err != nil {
		b.Fatal(err)
	}
	store, err := settings.OpenStore(ctx, js, settings.StoreOptions{Replicas: 1})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := store.KV().Put(ctx, "project."+benchProject, fmt.Appendf(nil, `{"apiCallbackUrl":%q}`, sink.URL+"/hook")); err != nil {
		b.Fatal(err)
	}
	view := settings.NewView(log, settings.ViewOptions{})
	go func() { _ = view.Run(ctx, store.KV()) }()
	for {
		if _, ok := view.Destination(benchAccount, benchProject); ok {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	logw := deliverylog.NewWriter(js, log, deliverylog.WriterOptions{})
	defer func() { _ = logw.Close(context.Background()) }()
	var recorder dispatcher.Recorder = logw
	if *drainNoLog {
		recorder = nil
	}
	metrics := api.NewMetrics(api.MetricsOptions{EventTypes: []string{"callback_failed", "crawl_status", "report_download_available"}, Logger: log})

	d, err := dispatcher.New(js, top, view, dispatcher.Options{
		Workers:    cfg.Dispatcher.Workers,
		MaxPayload: int64(cfg.Dispatcher.MaxPayload), MaxDeliveries: cfg.Dispatcher.MaxDeliveries,
		DeliveryTimeout: cfg.Delivery.Timeout, CallTimeout: cfg.Plugins.CallTimeout,
		Encoders:  map[string]plugins.Encoder{"crawl_status": enc},
		Transport: transport, Failure: failure,
		MaxAttempts: cfg.Delivery.MaxAttempts, Backoff: cfg.Delivery.Backoff,
		// As serve wires them: in process mode the transport holds the
		// cap and gets a window of twice it.
		PerHostConcurrency: *drainPerHost,
		HostWindow:         map[bool]int{true: 2 * *drainPerHost}[builtins == "process"],
		MaxInFlight:        cmp.Or(*drainInFlight, cfg.Delivery.MaxInFlight),
		Logger:             log, Observer: metrics, Recorder: recorder,
	})
	if err != nil {
		b.Fatal(err)
	}

	measureDrain(b, ctx, js, sink, d.Run, builtins != "inprocess")
}

// BenchmarkFloor_backlog is the floor of make bench (floor.go: nats-server
// in-process, a durable pull consumer, two Fetch loops, 64 workers, one
// net/http client) measured as the dispatcher benchmarks are, so that
// their CPU profiles compare function by function.
func BenchmarkFloor_backlog(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sink := benchSink(b)
	ns, nc, err := startFloorServer("127.0.0.1", server.RANDOM_PORT, b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer func() { nc.Close(); ns.Shutdown(); ns.WaitForShutdown() }()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		b.Fatal(err)
	}
	const workers = 64
	cons, err := floorConsumer(ctx, js, 4*workers)
	if err != nil {
		b.Fatal(err)
	}
	measureDrain(b, ctx, js, sink, func(ctx context.Context) error {
		return consumeFloor(ctx, cons, sink.URL+"/hook", workers, "fetch")
	}, false)
}

// measureDrain publishes b.N crawl_status events to js, then times run
// (until its ctx ends) draining them into sink: deliveries/s, CPU of this
// process tree but the sink per 10k deliveries (and of this process alone
// when host, the plugin process being the rest), new sink connections per
// delivery, and the -drain.* profiles.
func measureDrain(b *testing.B, ctx context.Context, js jetstream.JetStream, sink *sinkClient, run func(context.Context) error, host bool) {
	sc := scenario{Name: "gobench"}
	subject := "callbacks.event.crawl_status." + benchAccount + "." + benchProject
	for i := 1; i <= b.N; i++ {
		id := fmt.Sprintf("gobench-%d-%d", time.Now().UnixNano(), i)
		for {
			_, err := js.PublishAsync(subject, sc.payload(i), jetstream.WithMsgID(id))
			if err == nil {
				break
			}
			if err != jetstream.ErrTooManyStalledMsgs {
				b.Fatal(err)
			}
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		b.Fatal("publishes not acknowledged")
	}

	conns0, err := sink.Conns()
	if err != nil {
		b.Fatal(err)
	}
	runtime.GC()
	if *drainMemProfile != "" {
		writeProfile(b, "allocs", *drainMemProfile+".base")
	}
	if *drainCPUProfile != "" {
		f, err := os.Create(*drainCPUProfile)
		if err != nil {
			b.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			b.Fatal(err)
		}
		defer f.Close()
	}
	// CPU of the system under test: this process and the plugin process,
	// not the sink (a child too).
	sutCPU := func() float64 { return treeCPU(os.Getpid()) - treeCPU(sink.cmd.Process.Pid) }
	selfCPU := func() float64 {
		st, err := readStat(os.Getpid())
		if err != nil {
			b.Fatal(err)
		}
		return st.cpu
	}
	cpu0, self0 := sutCPU(), selfCPU()
	b.ReportAllocs()
	b.ResetTimer()
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- run(runCtx) }()
	deadline := time.Now().Add(5 * time.Minute)
	for {
		n, _, _, err := sink.Count()
		if err != nil {
			b.Fatal(err)
		}
		if n >= b.N {
			break
		}
		if *drainHeapMid != "" && n >= b.N/2 {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			b.Logf("half-way: heap in use %d MiB, heap system %d MiB, stacks %d MiB, goroutines %d",
				ms.HeapInuse>>20, ms.HeapSys>>20, ms.StackSys>>20, runtime.NumGoroutine())
			writeProfile(b, "heap", *drainHeapMid)
			*drainHeapMid = ""
		}
		if time.Now().After(deadline) {
			b.Fatalf("sink has %d of %d after 5 minutes", n, b.N)
		}
		time.Sleep(10 * time.Millisecond)
	}
	b.StopTimer()
	cpu1, self1 := sutCPU(), selfCPU()
	// Every delivery reached the sink once, as a form body it could parse.
	if distinct, _, bad, err := sink.Count(); err != nil {
		b.Fatal(err)
	} else if distinct != b.N || bad != 0 {
		b.Fatalf("sink has %d distinct deliveries of %d, %d bodies it could not parse", distinct, b.N, bad)
	}
	if *drainCPUProfile != "" {
		pprof.StopCPUProfile()
	}
	if *drainMemProfile != "" {
		writeProfile(b, "allocs", *drainMemProfile)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "deliveries/s")
	// The machine's CPU is the bottleneck of a drain: CPU per delivery is
	// the figure that noise from other processes moves least.
	b.ReportMetric((cpu1-cpu0)/float64(b.N)*1e4, "cpu-s/10k")
	if host {
		b.ReportMetric((self1-self0)/float64(b.N)*1e4, "host-cpu-s/10k")
	}
	if conns1, err := sink.Conns(); err == nil {
		// New TCP connections per delivery: above 0, keep-alive
		// connections are being closed and dialled again.
		b.ReportMetric(float64(conns1-conns0)/float64(b.N), "dials/delivery")
	}
	stop()
	<-done
}

// benchSink starts the sink in a process of its own (this test binary,
// "sink"), stopped when the benchmark ends.
func benchSink(b *testing.B) *sinkClient {
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	sink, err := startSink(self)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { sink.Close() })
	return sink
}

func writeProfile(b *testing.B, name, path string) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := pprof.Lookup(name).WriteTo(f, 0); err != nil {
		b.Fatal(err)
	}
}
