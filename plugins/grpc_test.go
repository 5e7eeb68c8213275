package plugins

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/protobuf/proto"

	"github.com/callbackd/callbackd/plugins/pluginpb"
)

// Contract tests over a real gRPC connection in this process
// (plugin.TestPluginGRPCConn); plugins/host runs real plugin processes.

// connect serves c and returns the host's clients of it, started.
func connect(t *testing.T, c ServeConfig) (*EncoderClient, *TransportClient, *FailureClient, func()) {
	t.Helper()
	client, server := plugin.TestPluginGRPCConn(t, false, c.PluginSet())
	stop := func() { server.Stop() }
	// Close asks the server to stop (go-plugin's Shutdown); stopping it
	// here as well would race inside go-plugin.
	t.Cleanup(func() { _ = client.Close() })
	var enc *EncoderClient
	var tr *TransportClient
	var fh *FailureClient
	if len(c.Encoders) > 0 {
		raw, err := client.Dispense(PluginEncoder)
		if err != nil {
			t.Fatal(err)
		}
		enc = raw.(*EncoderClient)
		if err := enc.Start(StreamOptions{Plugin: "test"}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(enc.Close)
	}
	if c.Transport != nil {
		raw, err := client.Dispense(PluginTransport)
		if err != nil {
			t.Fatal(err)
		}
		tr = raw.(*TransportClient)
		if err := tr.Start(StreamOptions{Plugin: "test"}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(tr.Close)
	}
	if c.Failure != nil {
		raw, err := client.Dispense(PluginFailure)
		if err != nil {
			t.Fatal(err)
		}
		fh = raw.(*FailureClient)
		_ = fh.Start(StreamOptions{Plugin: "test"})
	}
	return enc, tr, fh, stop
}

type encoderFunc func(context.Context, Event) (Encoded, error)

func (f encoderFunc) Info(context.Context) (EncoderInfo, error) {
	return EncoderInfo{EventType: "test"}, nil
}
func (f encoderFunc) Encode(ctx context.Context, ev Event) (Encoded, error) { return f(ctx, ev) }

type transportFunc func(context.Context, Delivery) (Result, error)

func (f transportFunc) Deliver(ctx context.Context, d Delivery) (Result, error) { return f(ctx, d) }

type failureFunc func(context.Context, Failure) ([]Outbound, error)

func (f failureFunc) OnFailure(ctx context.Context, fl Failure) ([]Outbound, error) {
	return f(ctx, fl)
}

// oddNotification has every kind and the awkward texts.
var oddNotification = Notification{Fields: []Field{
	{Name: "message", Value: String("crawl_status")},
	{Name: "empty", Value: String("")},
	{Name: "null", Value: Null()},
	{Name: "big", Value: Number("123456789012345678901234567890")},
	{Name: "neg", Value: Number("-1.5e-7")},
	{Name: "yes", Value: Bool(true)},
	{Name: "no", Value: Bool(false)},
	{Name: "unicode ✓", Value: String("é\u0000\n&=+%")},
	{Name: "message", Value: String("a repeated name keeps its place")},
	{Name: "not UTF-8 \xff", Value: String("\xfe\xff bytes")},
}}

func TestGRPC_encoder_values_cross_exactly(t *testing.T) {
	enc, _, _, _ := connect(t, ServeConfig{Encoders: map[string]Encoder{"test": encoderFunc(func(_ context.Context, ev Event) (Encoded, error) {
		switch string(ev.Payload) {
		case "odd":
			return Encoded{Notification: oddNotification}, nil
		case "empty":
			return Encoded{}, nil
		case "skip":
			return Encoded{SkipReason: "crawl_type test_suite_build"}, nil
		}
		// Echo the event back.
		return Encoded{Notification: Notification{Fields: []Field{
			{Name: "type", Value: String(ev.Type)}, {Name: "account", Value: String(ev.AccountID)},
			{Name: "project", Value: String(ev.ProjectID)}, {Name: "delivery", Value: String(ev.DeliveryID)},
			{Name: "payload", Value: String(string(ev.Payload))},
		}}}, nil
	})}})
	e := enc.Encoder("", EncoderInfo{EventType: "test"})
	ctx := context.Background()
	for payload, want := range map[string]Encoded{
		"odd":   {Notification: oddNotification},
		"empty": {},
		"skip":  {SkipReason: "crawl_type test_suite_build"},
		"{\"x\": \"\xff\"}": {Notification: Notification{Fields: []Field{
			{Name: "type", Value: String("t")}, {Name: "account", Value: String("1")},
			{Name: "project", Value: String("2")}, {Name: "delivery", Value: String("3-4")},
			{Name: "payload", Value: String("{\"x\": \"\xff\"}")},
		}}},
	} {
		got, err := e.Encode(ctx, Event{Type: "t", AccountID: "1", ProjectID: "2", DeliveryID: "3-4", Payload: []byte(payload)})
		if err != nil {
			t.Fatalf("%q: %v", payload, err)
		}
		if diff := cmp.Diff(normalizeEncoded(want), normalizeEncoded(got)); diff != "" {
			t.Errorf("%q (-want +got):\n%s", payload, diff)
		}
	}
}

func normalizeEncoded(e Encoded) Encoded {
	if len(e.Notification.Fields) == 0 {
		e.Notification.Fields = nil
	}
	return e
}

func TestGRPC_transport_result_crosses_exactly(t *testing.T) {
	var got Delivery
	want := Result{
		StatusCode: 503, Outcome: OutcomeRetryable, RetryAfter: 90*time.Second + 1, Error: "HTTP 503",
		ResponseExcerpt: "busy ✓", Duration: 1234567891 * time.Nanosecond,
	}
	_, tr, _, _ := connect(t, ServeConfig{Transport: transportFunc(func(_ context.Context, d Delivery) (Result, error) {
		got = d
		if d.Destination.URL == "custom" {
			return Result{Outcome: "a_custom_outcome"}, nil
		}
		return want, nil
	})})
	d := Delivery{
		DeliveryID:   "abc",
		Destination:  Destination{URL: "https://x.example/cb?q=1", Headers: []Header{{Key: "X-A", Value: "1"}, {Key: "x-b", Value: ""}, {Key: "X-Obs", Value: "caf\xe9"}}},
		Notification: oddNotification,
	}
	res, err := tr.Deliver(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, res); diff != "" {
		t.Errorf("result (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(d, got); diff != "" {
		t.Errorf("delivery (-sent +received):\n%s", diff)
	}
	res, err = tr.Deliver(context.Background(), Delivery{Destination: Destination{URL: "custom"}})
	if err != nil || res.Outcome != "a_custom_outcome" {
		t.Errorf("custom outcome: %+v, %v", res, err)
	}
}

func TestGRPC_failure_crosses_exactly(t *testing.T) {
	var got Failure
	out := []Outbound{{Destination: Destination{URL: "https://sso.example"}, Notification: oddNotification}, {Destination: Destination{URL: "https://b.example"}}}
	_, _, fh, _ := connect(t, ServeConfig{Failure: failureFunc(func(_ context.Context, f Failure) ([]Outbound, error) {
		got = f
		return out, nil
	})})
	f := Failure{
		EventType: "crawl_status", AccountID: "1", ProjectID: "2", DeliveryID: "d", CallbackURL: "https://c.example",
		StatusCode: 500, Error: "HTTP 500", Attempts: 4, FailedAt: time.Date(2024, 1, 2, 3, 4, 5, 6, time.UTC),
		Notification: oddNotification, IDFields: []string{"crawl_id"}, SSOWebhook: &Destination{URL: "https://sso.example", Headers: []Header{{Key: "K", Value: "V"}}},
	}
	res, err := fh.OnFailure(context.Background(), f)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(f, got); diff != "" {
		t.Errorf("failure (-sent +received):\n%s", diff)
	}
	if diff := cmp.Diff(out, res); diff != "" {
		t.Errorf("outbound (-want +got):\n%s", diff)
	}
	f.SSOWebhook, f.FailedAt = nil, time.Time{}
	if _, err := fh.OnFailure(context.Background(), f); err != nil || got.SSOWebhook != nil || !got.FailedAt.IsZero() {
		t.Errorf("nil webhook and zero time: %+v, %v", got, err)
	}
}

func TestGRPC_errors_keep_their_meaning(t *testing.T) {
	enc, tr, fh, _ := connect(t, ServeConfig{
		Encoders: map[string]Encoder{"test": encoderFunc(func(ctx context.Context, ev Event) (Encoded, error) {
			switch string(ev.Payload) {
			case "invalid":
				return Encoded{}, fmt.Errorf("decode: %w", Invalid("crawl_id: want an integer"))
			case "fail":
				return Encoded{}, errors.New("out of coffee")
			case "panic":
				panic("boom")
			case "hang":
				<-ctx.Done()
				return Encoded{}, ctx.Err()
			}
			return Encoded{}, nil
		})},
		Transport: transportFunc(func(_ context.Context, d Delivery) (Result, error) {
			if d.DeliveryID == "busy" {
				return Result{}, fmt.Errorf("deliver busy: attempt not made: %w", ErrHostBusy)
			}
			return Result{}, errors.New("no sockets")
		}),
		Failure: failureFunc(func(context.Context, Failure) ([]Outbound, error) { return nil, Invalid("odd failure") }),
	})
	e := enc.Encoder("test", EncoderInfo{})
	call := func(p string, timeout time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		_, err := e.Encode(ctx, Event{Payload: []byte(p)})
		return err
	}
	if err := call("invalid", 5*time.Second); !errors.Is(err, ErrInvalidEvent) || err.Error() != "decode: crawl_id: want an integer" {
		t.Errorf("invalid: %v", err)
	}
	for _, p := range []string{"fail", "panic"} {
		if err := call(p, 5*time.Second); !errors.Is(err, ErrPluginFailed) || errors.Is(err, ErrInvalidEvent) {
			t.Errorf("%s: %v", p, err)
		}
	}
	if err := call("hang", 200*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrInvalidEvent) {
		t.Errorf("hang: %v", err)
	}
	if err := call("ok", 5*time.Second); err != nil {
		t.Errorf("after errors: %v", err)
	}
	if _, err := enc.Encoder("nope", EncoderInfo{}).Encode(context.Background(), Event{}); !errors.Is(err, ErrPluginFailed) || !strings.Contains(err.Error(), `no encoder "nope"`) {
		t.Errorf("unknown encoder: %v", err)
	}
	if _, err := tr.Deliver(context.Background(), Delivery{}); !errors.Is(err, ErrPluginFailed) || errors.Is(err, ErrHostBusy) {
		t.Errorf("transport: %v", err)
	}
	if _, err := tr.Deliver(context.Background(), Delivery{DeliveryID: "busy"}); !errors.Is(err, ErrHostBusy) || errors.Is(err, ErrPluginFailed) {
		t.Errorf("transport, host busy: %v", err)
	}
	if _, err := fh.OnFailure(context.Background(), Failure{}); !errors.Is(err, ErrInvalidEvent) {
		t.Errorf("failure: %v", err)
	}
}

func TestGRPC_cancel_reaches_the_plugin(t *testing.T) {
	cancelled := make(chan error, 1)
	started := make(chan struct{}, 1)
	enc, _, _, _ := connect(t, ServeConfig{Encoders: map[string]Encoder{"test": encoderFunc(func(ctx context.Context, _ Event) (Encoded, error) {
		started <- struct{}{}
		<-ctx.Done()
		cancelled <- ctx.Err()
		return Encoded{}, ctx.Err()
	})}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := enc.Encoder("", EncoderInfo{}).Encode(ctx, Event{})
		done <- err
	}()
	<-started
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("caller: %v", err)
	}
	select {
	case err := <-cancelled:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("plugin saw %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the plugin's context was not cancelled")
	}
}

// TestGRPC_many_concurrent_callers checks that replies find their callers
// when hundreds share the stream and the plugin answers out of order.
func TestGRPC_many_concurrent_callers(t *testing.T) {
	enc, _, _, _ := connect(t, ServeConfig{Encoders: map[string]Encoder{"test": encoderFunc(func(_ context.Context, ev Event) (Encoded, error) {
		if len(ev.DeliveryID)%3 == 0 {
			time.Sleep(time.Millisecond)
		}
		return Encoded{Notification: Notification{Fields: []Field{{Name: "id", Value: String(ev.DeliveryID)}}}}, nil
	})}})
	e := enc.Encoder("", EncoderInfo{})
	var wg sync.WaitGroup
	var bad atomic.Int32
	for i := 0; i < 500; i++ {
		wg.Go(func() {
			for j := 0; j < 10; j++ {
				id := fmt.Sprintf("%d-%d%s", i, j, strings.Repeat("x", i%5))
				out, err := e.Encode(context.Background(), Event{DeliveryID: id})
				if err != nil || len(out.Notification.Fields) != 1 || out.Notification.Fields[0].Value.Text != id {
					bad.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if bad.Load() > 0 {
		t.Fatalf("%d calls got another caller's reply or an error", bad.Load())
	}
}

func TestGRPC_stream_end_fails_calls_fast(t *testing.T) {
	release := make(chan struct{})
	client, server := plugin.TestPluginGRPCConn(t, false, ServeConfig{Encoders: map[string]Encoder{"test": encoderFunc(func(ctx context.Context, _ Event) (Encoded, error) {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return Encoded{}, nil
	})}}.PluginSet())
	defer func() { _ = client.Close() }()
	raw, _ := client.Dispense(PluginEncoder)
	enc := raw.(*EncoderClient)
	ended := make(chan error, 1)
	if err := enc.Start(StreamOptions{Plugin: "test", OnEnd: func(err error) { ended <- err }}); err != nil {
		t.Fatal(err)
	}
	e := enc.Encoder("", EncoderInfo{})
	errs := make(chan error, 1)
	go func() {
		_, err := e.Encode(context.Background(), Event{})
		errs <- err
	}()
	time.Sleep(100 * time.Millisecond)
	server.Stop()
	close(release)
	select {
	case err := <-errs:
		if !errors.Is(err, ErrPluginUnavailable) {
			t.Errorf("in-flight call: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("in-flight call still waiting after the stream ended")
	}
	select {
	case err := <-ended:
		if !errors.Is(err, ErrPluginUnavailable) {
			t.Errorf("OnEnd(%v)", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("OnEnd not called")
	}
	start := time.Now()
	if _, err := e.Encode(context.Background(), Event{}); !errors.Is(err, ErrPluginUnavailable) || time.Since(start) > time.Second {
		t.Errorf("later call: %v after %v", err, time.Since(start))
	}
}

// TestWire_host_codec_matches_generated_code checks the host's hand-written
// wire format against the generated code, both ways.
func TestWire_host_codec_matches_generated_code(t *testing.T) {
	ev := Event{Type: "crawl_status", AccountID: "1", ProjectID: "2", DeliveryID: "3", Payload: []byte(`{"a":1}`)}
	b := (&encodeBatch{items: []*encodeItem{{id: 7, timeout: time.Second, encoder: "crawl_status", ev: ev}, {id: 8}}, cancel: []uint64{3, 300}}).appendWire(nil)
	var req pluginpb.EncodeRequest
	if err := proto.Unmarshal(b, &req); err != nil {
		t.Fatal(err)
	}
	wantReq := &pluginpb.EncodeRequest{Items: []*pluginpb.EncodeItem{
		{Id: 7, Encoder: "crawl_status", TimeoutNs: int64(time.Second), Event: eventToPB(ev)},
		{Id: 8, Event: &pluginpb.Event{}},
	}, Cancel: []uint64{3, 300}}
	if !proto.Equal(wantReq, &req) {
		t.Errorf("EncodeRequest:\n got %v\nwant %v", &req, wantReq)
	}

	d := Delivery{DeliveryID: "x", Destination: Destination{URL: "u", Headers: []Header{{Key: "k", Value: "v"}}}, Notification: oddNotification}
	b = (&deliverBatch{items: []*deliverItem{{id: 1, timeout: 2, d: d}}}).appendWire(nil)
	var dreq pluginpb.DeliverRequest
	if err := proto.Unmarshal(b, &dreq); err != nil {
		t.Fatal(err)
	}
	wantD := &pluginpb.DeliverRequest{Items: []*pluginpb.DeliverItem{{Id: 1, TimeoutNs: 2, DeliveryId: "x", Destination: destinationToPB(d.Destination), Notification: notificationToPB(oddNotification)}}}
	if !proto.Equal(wantD, &dreq) {
		t.Errorf("DeliverRequest:\n got %v\nwant %v", &dreq, wantD)
	}

	resp, _ := proto.Marshal(&pluginpb.EncodeResponse{Items: []*pluginpb.EncodeResult{
		{Id: 1, Notification: notificationToPB(oddNotification)},
		{Id: 2, SkipReason: []byte("why")},
		{Id: 3, Error: &pluginpb.Error{Code: pluginpb.ErrorCode_ERROR_CODE_INVALID_EVENT, Message: []byte("bad")}},
	}})
	var er encodeReplies
	if err := er.unmarshalWire(string(resp)); err != nil {
		t.Fatal(err)
	}
	if len(er.items) != 3 || er.items[0].id != 1 || !cmp.Equal(er.items[0].out.Notification, oddNotification) ||
		er.items[1].out.SkipReason != "why" || !errors.Is(er.items[2].err.asError("p"), ErrInvalidEvent) {
		t.Errorf("EncodeResponse decoded as %+v", er.items)
	}

	res := Result{StatusCode: 429, Outcome: OutcomeRetryable, RetryAfter: time.Minute, Error: "e", ResponseExcerpt: "x", Duration: 5}
	resp, _ = proto.Marshal(&pluginpb.DeliverResponse{Items: []*pluginpb.DeliverResult{{Id: 9, Result: resultToPB(res)}}})
	var dr deliverReplies
	if err := dr.unmarshalWire(string(resp)); err != nil {
		t.Fatal(err)
	}
	if len(dr.items) != 1 || dr.items[0].id != 9 || dr.items[0].res != res {
		t.Errorf("DeliverResponse decoded as %+v", dr.items)
	}

	// Truncated input is an error, never a panic.
	for i := range resp {
		var dr deliverReplies
		_ = dr.unmarshalWire(string(resp[:i]))
	}
}

func TestGRPC_call_fails_at_its_deadline_when_the_plugin_never_answers(t *testing.T) {
	release := make(chan struct{})
	var releaseOnce sync.Once
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })
	enc, _, _, _ := connect(t, ServeConfig{Encoders: map[string]Encoder{"test": encoderFunc(func(_ context.Context, ev Event) (Encoded, error) {
		if string(ev.Payload) == "stuck" {
			<-release // ignores its deadline: only the host's sweep ends the call
		}
		return Encoded{SkipReason: "done"}, nil
	})}})
	if err := enc.Start(StreamOptions{Plugin: "test", Timeout: 200 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	e := enc.Encoder("test", EncoderInfo{})
	start := time.Now()
	_, err := e.Encode(context.Background(), Event{Payload: []byte("stuck")})
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "no answer in 200ms") {
		t.Fatalf("stuck call: err = %v, want DeadlineExceeded after 200ms", err)
	}
	if took := time.Since(start); took < 200*time.Millisecond {
		t.Errorf("stuck call failed after %v, before its 200ms deadline", took)
	}
	// The late reply is dropped, and the stream goes on serving.
	releaseOnce.Do(func() { close(release) })
	out, err := e.Encode(context.Background(), Event{Payload: []byte("ok")})
	if err != nil || out.SkipReason != "done" {
		t.Fatalf("call after the stuck one: %+v, %v", out, err)
	}
}

func TestGRPC_pipeline_returns_the_notification_only_when_not_delivered(t *testing.T) {
	fields := []Field{{Name: "crawl_id", Value: Number("1")}, {Name: "status", Value: String("finished")}}
	cfg := ServeConfig{
		Encoders: map[string]Encoder{"test": encoderFunc(func(context.Context, Event) (Encoded, error) {
			return Encoded{Notification: Notification{Fields: fields}}, nil
		})},
		Transport: transportFunc(func(_ context.Context, d Delivery) (Result, error) {
			return Result{Outcome: Outcome(d.Destination.URL)}, nil
		}),
	}
	client, server := plugin.TestPluginGRPCConn(t, false, cfg.PluginSet())
	t.Cleanup(func() { _ = client.Close() })
	t.Cleanup(server.Stop)
	pc := NewPipelineClient(client.Conn)
	if err := pc.Start(StreamOptions{Plugin: "test"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pc.Close)
	ed := pc.EncodeDeliverer("test")
	tests := []struct {
		outcome    Outcome
		wantFields []Field
	}{
		{OutcomeDelivered, nil},
		{OutcomeRetryable, fields},
		{OutcomeFinal, fields},
		{OutcomeNotAllowed, fields},
	}
	for _, tt := range tests {
		t.Run(string(tt.outcome), func(t *testing.T) {
			out, err := ed.EncodeDeliver(context.Background(), Event{Type: "test"}, &Destination{URL: string(tt.outcome)}, 0)
			if err != nil || !out.Delivered || out.Result.Outcome != tt.outcome {
				t.Fatalf("EncodeDeliver = %+v, %v", out, err)
			}
			if diff := cmp.Diff(tt.wantFields, out.Encoded.Notification.Fields); diff != "" {
				t.Errorf("notification fields (-want +got):\n%s", diff)
			}
		})
	}
}

func TestGRPC_plugin_side_context_reports_and_enforces_the_deadline(t *testing.T) {
	type seen struct {
		hasDeadline bool
		left        time.Duration
		err         error
	}
	got := make(chan seen, 1)
	_, tr, _, _ := connect(t, ServeConfig{Transport: transportFunc(func(ctx context.Context, _ Delivery) (Result, error) {
		dl, ok := ctx.Deadline()
		s := seen{hasDeadline: ok, left: time.Until(dl)}
		<-ctx.Done() // ends only by the plugin side's sweep
		s.err = ctx.Err()
		got <- s
		return Result{}, ctx.Err()
	})})
	if err := tr.Start(StreamOptions{Plugin: "test", Timeout: 300 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Deliver(context.Background(), Delivery{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Deliver: err = %v, want DeadlineExceeded", err)
	}
	select {
	case s := <-got:
		if !s.hasDeadline || s.left <= 0 || s.left > 300*time.Millisecond {
			t.Errorf("plugin saw deadline %v (%v left), want one within 300ms", s.hasDeadline, s.left)
		}
		if !errors.Is(s.err, context.DeadlineExceeded) {
			t.Errorf("plugin's ctx.Err() = %v, want DeadlineExceeded", s.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the plugin's context was never cancelled")
	}
}

// The pipeline's encoding has a deadline of its own within the item's
// (EncodeDeliver's encodeTimeout): the encoder sees it and is stopped at it,
// the delivery is not attempted, and a transport after a quick encoding
// sees the item's longer deadline.
func TestGRPC_pipeline_encoding_has_its_own_deadline(t *testing.T) {
	type seen struct {
		left time.Duration
		err  error
	}
	encSaw := make(chan seen, 2)
	trSaw := make(chan time.Duration, 2)
	cfg := ServeConfig{
		Encoders: map[string]Encoder{"test": encoderFunc(func(ctx context.Context, ev Event) (Encoded, error) {
			dl, _ := ctx.Deadline()
			s := seen{left: time.Until(dl)}
			if string(ev.Payload) == "hang" {
				<-ctx.Done() // ends only by the plugin side's sweep
				s.err = ctx.Err()
				encSaw <- s
				return Encoded{}, ctx.Err()
			}
			encSaw <- s
			return Encoded{Notification: Notification{Fields: []Field{{Name: "a", Value: String("b")}}}}, nil
		})},
		Transport: transportFunc(func(ctx context.Context, _ Delivery) (Result, error) {
			dl, _ := ctx.Deadline()
			trSaw <- time.Until(dl)
			return Result{Outcome: OutcomeDelivered}, nil
		}),
	}
	client, server := plugin.TestPluginGRPCConn(t, false, cfg.PluginSet())
	t.Cleanup(func() { _ = client.Close() })
	t.Cleanup(server.Stop)
	pc := NewPipelineClient(client.Conn)
	if err := pc.Start(StreamOptions{Plugin: "test", Timeout: time.Minute}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pc.Close)
	ed := pc.EncodeDeliverer("test")
	const encodeTimeout = 300 * time.Millisecond

	out, err := ed.EncodeDeliver(context.Background(), Event{Type: "test"}, &Destination{URL: "http://x"}, encodeTimeout)
	if err != nil || !out.Delivered {
		t.Fatalf("EncodeDeliver = %+v, %v", out, err)
	}
	if s := <-encSaw; s.left <= 0 || s.left > encodeTimeout {
		t.Errorf("encoder saw %v left, want at most the encode timeout %v", s.left, encodeTimeout)
	}
	if left := <-trSaw; left <= encodeTimeout || left > time.Minute {
		t.Errorf("transport saw %v left, want the item's deadline (1m), not the encoding's", left)
	}

	start := time.Now()
	out, err = ed.EncodeDeliver(context.Background(), Event{Type: "test", Payload: []byte("hang")}, &Destination{URL: "http://x"}, encodeTimeout)
	if !errors.Is(err, context.DeadlineExceeded) || out.Delivered {
		t.Errorf("hanging encoder: %+v, %v; want DeadlineExceeded and no delivery", out, err)
	}
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("hanging encoder stopped after %v, want about %v", took, encodeTimeout)
	}
	if s := <-encSaw; !errors.Is(s.err, context.DeadlineExceeded) {
		t.Errorf("encoder's ctx.Err() = %v, want DeadlineExceeded", s.err)
	}
	select {
	case left := <-trSaw:
		t.Errorf("transport called (%v left) after the encoding ran out of time", left)
	default:
	}
}

func TestNotification_Check(t *testing.T) {
	ok := Field{Name: "crawl_id", Value: Number("7")}
	for _, tc := range []struct {
		name string
		n    Notification
		err  string // "" means fit to send
	}{
		{"seed-like", Notification{Fields: []Field{{Name: "message", Value: String("crawl_status")}, ok, {Name: "x", Value: Null()}, {Name: "b", Value: Value{Kind: KindBool, Text: "true"}}, {Name: "a=b&c", Value: String("é")}}}, ""},
		{"negative and fraction", Notification{Fields: []Field{{Name: "n", Value: Number("-1.5e3")}}}, ""},
		{"no fields", Notification{}, "no fields"},
		{"empty name", Notification{Fields: []Field{ok, {Name: "", Value: String("v")}}}, "field 2 has no name"},
		{"name not UTF-8", Notification{Fields: []Field{{Name: "a\xff", Value: String("v")}}}, "field 1's name is not valid UTF-8"},
		{"value not UTF-8", Notification{Fields: []Field{{Name: "a", Value: String("v\xfe")}}}, `field "a": the value is not valid UTF-8`},
		{"twice", Notification{Fields: []Field{ok, {Name: "crawl_id", Value: String("dup")}}}, `field "crawl_id" is given twice`},
		{"not a number", Notification{Fields: []Field{{Name: "n", Value: Number("not a number")}}}, `field "n": "not a number" is not a JSON number`},
		{"number with space", Notification{Fields: []Field{{Name: "n", Value: Number("1 ")}}}, "is not a JSON number"},
		{"empty number", Notification{Fields: []Field{{Name: "n", Value: Number("")}}}, "is not a JSON number"},
		{"bad bool", Notification{Fields: []Field{{Name: "b", Value: Value{Kind: KindBool, Text: "yes"}}}}, "a bool is true or false"},
		{"unknown kind", Notification{Fields: []Field{{Name: "k", Value: Value{Kind: 9}}}}, "unknown kind kind(9)"},
		{"16 MiB", Notification{Fields: []Field{{Name: "p", Value: String(strings.Repeat("x", MaxNotificationBytes-1))}}}, ""},
		{"over 16 MiB", Notification{Fields: []Field{{Name: "p", Value: String(strings.Repeat("x", MaxNotificationBytes))}}}, "16777217 bytes of names and values, over 16 MiB"},
	} {
		err := tc.n.Check()
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%s: Check() = %v, want %q", tc.name, err, tc.err)
		}
	}
}

// A batch holds at most maxBatch items and maxBatchBytes of them, unless
// its first item alone is larger; what is left waits for the next.
func TestBatcher_take_caps_items_and_bytes(t *testing.T) {
	item := func(size int) *encodeItem {
		return &encodeItem{ev: Event{Payload: make([]byte, size)}}
	}
	b := newBatcher[encodeItem]()
	for _, size := range []int{400 << 10, 400 << 10, 400 << 10, 3 << 20, 10, 10} {
		b.push(item(size), 0)
	}
	for range 100 {
		b.push(item(1), 0)
	}
	var got []int
	for {
		items, _, ok := b.take()
		if !ok {
			break
		}
		got = append(got, len(items))
		size := 0
		for _, it := range items {
			size += it.wireSize()
		}
		if len(items) > 1 && size > maxBatchBytes {
			t.Errorf("a batch of %d items holds %d bytes, over %d", len(items), size, maxBatchBytes)
		}
	}
	// 2 × 400 KiB; the third alone (with the 3 MiB it would be over);
	// 3 MiB alone; then 64 of the 102 small ones, and the 38 left.
	if want := []int{2, 1, 1, 64, 38}; !slices.Equal(got, want) {
		t.Errorf("batches of %v items, want %v", got, want)
	}
}
