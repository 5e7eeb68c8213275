package host

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/callbackd/callbackd/plugins"
	"github.com/callbackd/callbackd/plugins/builtin"
)

// crawlStatusPayload is the seed's crawl_status example.
var crawlStatusPayload = []byte(`{"message":"crawl_status","resource":"crawl","crawl_id":124234,"project_id":1123123,"account_id":123123,"user_id":123123,"partner_account_id":"123123","partner_user_id":"3333312","status":"finished","href":"/accounts/123123/projects/1123123/crawls/124234"}`)

// BenchmarkPluginRoundTrip measures one event's plugin work as the
// dispatcher does it, with 128 events in flight: encode (crawl_status),
// then deliver (http-form) to a webhook receiver in its own process. It
// compares the built-ins called in-process (plugins.builtins: inprocess)
// with the same built-ins in their own process through go-plugin (process,
// the default). inprocess ns/op ÷ process ns/op is the throughput ratio of
// the plugin work alone; a whole dispatcher also spends CPU on NATS, the
// same in both modes, so its ratio is higher.
func BenchmarkPluginRoundTrip(b *testing.B) {
	sinkURL := startSink(b)
	b.Run("inprocess", func(b *testing.B) {
		tr := builtin.NewHTTPForm(benchHTTPFormOptions)
		b.Cleanup(tr.Close)
		runRoundTrip(b, builtin.NewCrawlStatus(), tr, sinkURL)
	})
	b.Run("process", func(b *testing.B) {
		m := newManager(b, Options{})
		p, err := m.Launch(context.Background(), benchSpec(b, "builtin"))
		if err != nil {
			b.Fatal(err)
		}
		enc, _, err := p.Encoder("crawl_status")
		if err != nil {
			b.Fatal(err)
		}
		tr, _ := p.Transport()
		runRoundTrip(b, enc, tr, sinkURL)
	})
	b.Run("process-one-crossing", func(b *testing.B) {
		m := newManager(b, Options{})
		p, err := m.Launch(context.Background(), benchSpec(b, "builtin"))
		if err != nil {
			b.Fatal(err)
		}
		enc, _, err := p.Encoder("crawl_status")
		if err != nil {
			b.Fatal(err)
		}
		tr, _ := p.Transport()
		ed := plugins.Pipeline(enc, tr)
		dest := &plugins.Destination{URL: sinkURL, Headers: []plugins.Header{{Key: "X-Api-Key", Value: "k"}}}
		var seq atomicCounter
		parallel(b, func(ctx context.Context) error {
			id := strconv.FormatInt(seq.next(), 10)
			dctx, cancel := context.WithTimeout(ctx, 40*time.Second)
			defer cancel()
			out, err := ed.EncodeDeliver(dctx, plugins.Event{Type: "crawl_status", AccountID: "123123", ProjectID: "1123123", DeliveryID: id, Payload: crawlStatusPayload}, dest, 5*time.Second)
			if err == nil && (!out.Delivered || out.Result.Outcome != plugins.OutcomeDelivered) {
				b.Errorf("deliver: %+v", out)
			}
			return err
		})
	})
}

// BenchmarkPluginHop measures each hop alone: encode, encode with an
// encoder that does nothing (the boundary's own cost), deliver.
func BenchmarkPluginHop(b *testing.B) {
	sinkURL := startSink(b)
	m := newManager(b, Options{})
	p, err := m.Launch(context.Background(), benchSpec(b, "builtin"))
	if err != nil {
		b.Fatal(err)
	}
	np, err := m.Launch(context.Background(), benchSpec(b, "noop"))
	if err != nil {
		b.Fatal(err)
	}
	penc, _, _ := p.Encoder("crawl_status")
	nenc, _, _ := np.Encoder("crawl_status")
	ptr, _ := p.Transport()
	itr := builtin.NewHTTPForm(benchHTTPFormOptions)
	b.Cleanup(itr.Close)
	ev := plugins.Event{Type: "crawl_status", AccountID: "123123", ProjectID: "1123123", DeliveryID: "x", Payload: crawlStatusPayload}
	n, err := builtin.NewCrawlStatus().Encode(context.Background(), ev)
	if err != nil {
		b.Fatal(err)
	}
	d := plugins.Delivery{DeliveryID: "x", Destination: plugins.Destination{URL: sinkURL}, Notification: n.Notification}
	enc := func(enc plugins.Encoder) func(b *testing.B) {
		return func(b *testing.B) {
			parallel(b, func(ctx context.Context) error {
				_, err := enc.Encode(ctx, ev)
				return err
			})
		}
	}
	del := func(tr plugins.Transport) func(b *testing.B) {
		return func(b *testing.B) {
			parallel(b, func(ctx context.Context) error {
				_, err := tr.Deliver(ctx, d)
				return err
			})
		}
	}
	b.Run("encode/inprocess", enc(builtin.NewCrawlStatus()))
	b.Run("encode/process", enc(penc))
	b.Run("noop/inprocess", enc(noopEncoder{}))
	b.Run("noop/process", enc(nenc))
	b.Run("deliver/inprocess", del(itr))
	b.Run("deliver/process", del(ptr))
}

// benchHTTPFormOptions allow the loopback receiver and keep enough idle
// connections for 128 deliveries in flight to one host, in both modes.
var benchHTTPFormOptions = builtin.HTTPFormOptions{UserAgent: "callbackd/test", Guard: plugins.NewGuard(true, nil), MaxIdleConnsPerHost: 256}

func benchSpec(b *testing.B, name string) Spec {
	spec := selfSpec(b, name, plugins.PluginEncoder)
	if name == "builtin" {
		spec.Kinds = append(spec.Kinds, plugins.PluginTransport)
	}
	return spec
}

func runRoundTrip(b *testing.B, enc plugins.Encoder, tr plugins.Transport, url string) {
	dest := plugins.Destination{URL: url, Headers: []plugins.Header{{Key: "X-Api-Key", Value: "k"}}}
	var seq atomicCounter
	parallel(b, func(ctx context.Context) error {
		id := strconv.FormatInt(seq.next(), 10)
		ectx, cancel := context.WithTimeout(ctx, 5*time.Second)
		out, err := enc.Encode(ectx, plugins.Event{Type: "crawl_status", AccountID: "123123", ProjectID: "1123123", DeliveryID: id, Payload: crawlStatusPayload})
		cancel()
		if err != nil {
			return err
		}
		dctx, cancel := context.WithTimeout(ctx, 35*time.Second)
		defer cancel()
		res, err := tr.Deliver(dctx, plugins.Delivery{DeliveryID: id, Destination: dest, Notification: out.Notification})
		if err == nil && res.Outcome != plugins.OutcomeDelivered {
			b.Errorf("deliver: %+v", res)
		}
		return err
	})
}

// parallel runs op b.N times from 128 goroutines (64 per core on the
// 2-core machine; BENCH_PARALLELISM per core otherwise), each call with a
// deadline as the dispatcher gives it.
func parallel(b *testing.B, op func(ctx context.Context) error) {
	p := 64
	if n, err := strconv.Atoi(os.Getenv("BENCH_PARALLELISM")); err == nil && n > 0 {
		p = n
	}
	b.SetParallelism(p)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
			err := op(ctx)
			cancel()
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
}

type atomicCounter struct{ n atomic.Int64 }

func (c *atomicCounter) next() int64 { return c.n.Add(1) }

// startSink runs the test binary as a webhook receiver in its own process
// (runSink), as a real receiver would be, and returns its URL.
func startSink(b *testing.B) string {
	b.Helper()
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(self, "__sink")
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = in.Close(); _ = cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		b.Fatalf("sink: %v", err)
	}
	return strings.TrimSpace(line)
}
