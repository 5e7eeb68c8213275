package host

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"

	"github.com/callbackd/callbackd/plugins"
	"github.com/callbackd/callbackd/plugins/builtin"
)

// The test binary doubles as the plugins under test: run as
// "<binary> __plugin <name>" it serves the plugin of that name (see
// servePlugin), and as "<binary> __host <dir>" it is a host that launches
// one plugin and waits to be killed (TestHostDeath_plugin_exits).
func TestMain(m *testing.M) {
	if len(os.Args) >= 3 && os.Args[1] == "__plugin" {
		servePlugin(os.Args[2])
		os.Exit(0)
	}
	if len(os.Args) >= 2 && os.Args[1] == "__sink" {
		runSink()
		os.Exit(0)
	}
	if len(os.Args) >= 3 && os.Args[1] == "__host" {
		runHost(os.Args[2])
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func servePlugin(name string) {
	switch name {
	case "all":
		plugins.Serve(plugins.ServeConfig{
			Encoders:  map[string]plugins.Encoder{"test_event": testEncoder{}},
			Transport: testTransport{},
			Failure:   testFailure{},
		})
	case "encoder":
		plugins.ServeEncoder(testEncoder{})
	case "failure":
		plugins.ServeFailure(testFailure{})
	case "hang-on-restart":
		// Serves the first time; started again (the marker file left
		// by the first run), it never completes its handshake.
		marker := os.Args[3]
		if _, err := os.Stat(marker); err == nil {
			select {}
		}
		_ = os.WriteFile(marker, nil, 0o600)
		plugins.ServeEncoder(testEncoder{})
	case "bad-version":
		hs := plugins.Handshake
		hs.ProtocolVersion = plugins.ProtocolVersion + 41
		plugin.Serve(&plugin.ServeConfig{
			HandshakeConfig: hs,
			Plugins:         plugins.ServeConfig{Encoders: map[string]plugins.Encoder{"test_event": testEncoder{}}}.PluginSet(),
			GRPCServer:      plugin.DefaultGRPCServer,
			Logger:          hclog.New(&hclog.LoggerOptions{Level: hclog.Error, Output: os.Stderr, JSONFormat: true}),
		})
	case "bad-cookie":
		hs := plugins.Handshake
		hs.MagicCookieKey = "SOME_OTHER_PROGRAM_PLUGIN"
		hs.MagicCookieValue = "hello"
		plugin.Serve(&plugin.ServeConfig{
			HandshakeConfig: hs,
			Plugins:         plugins.ServeConfig{Transport: testTransport{}}.PluginSet(),
			GRPCServer:      plugin.DefaultGRPCServer,
		})
	case "builtin":
		plugins.Serve(plugins.ServeConfig{
			Encoders:  builtin.Encoders(),
			Transport: builtin.NewHTTPForm(builtin.HTTPFormOptions{UserAgent: "callbackd/test", Guard: plugins.NewGuard(true, nil), MaxIdleConnsPerHost: 256}),
			Failure:   builtin.NewSSOWebhook(),
		})
	case "builtin-guarded":
		plugins.Serve(plugins.ServeConfig{Transport: builtin.NewHTTPForm(builtin.HTTPFormOptions{UserAgent: "callbackd/test"})})
	case "noop":
		plugins.ServeEncoder(noopEncoder{})
	case "env":
		// Reports its environment through the transport's result.
		plugins.ServeTransport(envTransport{})
	default:
		fmt.Fprintf(os.Stderr, "unknown test plugin %q\n", name)
		os.Exit(2)
	}
}

// testEncoder encodes {"n": <int>, "do": "<behaviour>"}.
type testEncoder struct{}

func (testEncoder) Info(context.Context) (plugins.EncoderInfo, error) {
	return plugins.EncoderInfo{EventType: "test_event", IDFields: []string{"n"}}, nil
}

func (testEncoder) Encode(ctx context.Context, ev plugins.Event) (plugins.Encoded, error) {
	var in struct {
		N  int64  `json:"n"`
		Do string `json:"do"`
	}
	if err := json.Unmarshal(ev.Payload, &in); err != nil {
		return plugins.Encoded{}, plugins.Invalid("bad JSON: %v", err)
	}
	switch in.Do {
	case "invalid":
		return plugins.Encoded{}, plugins.Invalid("n %d is not allowed", in.N)
	case "skip":
		return plugins.Encoded{SkipReason: "skipped by rule"}, nil
	case "fail":
		return plugins.Encoded{}, errors.New("database down")
	case "hang":
		<-ctx.Done()
		return plugins.Encoded{}, ctx.Err()
	case "panic":
		panic("boom")
	case "slow":
		time.Sleep(50 * time.Millisecond)
	case "dup":
		return plugins.Encoded{Notification: plugins.Notification{Fields: []plugins.Field{
			{Name: "a", Value: plugins.String("1")}, {Name: "a", Value: plugins.String("2")},
		}}}, nil
	}
	return plugins.Encoded{Notification: plugins.Notification{Fields: []plugins.Field{
		{Name: "message", Value: plugins.String(ev.Type)},
		{Name: "n", Value: plugins.Int(in.N)},
		{Name: "account_id", Value: plugins.Number(ev.AccountID)},
		{Name: "delivery_id", Value: plugins.String(ev.DeliveryID)},
		{Name: "pid", Value: plugins.Int(int64(os.Getpid()))},
		{Name: "nothing", Value: plugins.Null()},
		{Name: "yes", Value: plugins.Bool(true)},
	}}}, nil
}

// testTransport answers with a result made from the notification.
type testTransport struct{}

func (testTransport) Deliver(ctx context.Context, d plugins.Delivery) (plugins.Result, error) {
	if d.Destination.URL == "hang" {
		<-ctx.Done()
		return plugins.Result{}, ctx.Err()
	}
	code, _ := strconv.Atoi(d.Destination.URL)
	return plugins.Result{
		StatusCode:      code,
		Outcome:         plugins.OutcomeRetryable,
		RetryAfter:      1500 * time.Millisecond,
		Error:           "HTTP " + d.Destination.URL,
		ResponseExcerpt: string(d.Notification.AppendForm(nil)) + "|" + d.DeliveryID + "|" + d.Destination.Headers[0].Value,
		Duration:        1234567 * time.Nanosecond,
	}, nil
}

type testFailure struct{}

func (testFailure) OnFailure(_ context.Context, f plugins.Failure) ([]plugins.Outbound, error) {
	if f.SSOWebhook == nil {
		return nil, nil
	}
	return []plugins.Outbound{{
		Destination: *f.SSOWebhook,
		Notification: plugins.Notification{Fields: []plugins.Field{
			{Name: "failed", Value: plugins.String(f.DeliveryID)},
			{Name: "at", Value: plugins.String(f.FailedAt.UTC().Format(time.RFC3339Nano))},
		}},
	}}, nil
}

type envTransport struct{}

func (envTransport) Deliver(context.Context, plugins.Delivery) (plugins.Result, error) {
	b, _ := json.Marshal(os.Environ())
	return plugins.Result{Outcome: plugins.OutcomeDelivered, ResponseExcerpt: string(b)}, nil
}

// runHost launches the "encoder" test plugin, prints its PID and waits.
func runHost(execDir string) {
	self, err := os.Executable()
	if err != nil {
		panic(err)
	}
	m, err := NewManager(Options{ExecDir: execDir})
	if err != nil {
		panic(err)
	}
	p, err := m.Launch(context.Background(), Spec{Name: "enc", Builtin: true, Path: self, Args: []string{"__plugin", "encoder"}, Kinds: []string{plugins.PluginEncoder}})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Println(p.PID())
	select {}
}

// runSink answers every request with 204 on a loopback port it prints,
// until its stdin closes: a webhook receiver in its own process, as a real
// one would be, for the benchmarks.
func runSink() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	fmt.Println("http://" + ln.Addr().String())
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); os.Exit(0) }()
	_ = http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusNoContent)
	}))
}

// noopEncoder answers every event with the same notification: the cost of
// the plugin boundary alone.
type noopEncoder struct{}

var noopNotification = func() plugins.Notification {
	var n plugins.Notification
	for i := 0; i < 10; i++ {
		n.Fields = append(n.Fields, plugins.Field{Name: "field_" + strconv.Itoa(i), Value: plugins.String("value number " + strconv.Itoa(i))})
	}
	return n
}()

func (noopEncoder) Info(context.Context) (plugins.EncoderInfo, error) {
	return plugins.EncoderInfo{EventType: "crawl_status"}, nil
}

func (noopEncoder) Encode(context.Context, plugins.Event) (plugins.Encoded, error) {
	return plugins.Encoded{Notification: noopNotification}, nil
}
