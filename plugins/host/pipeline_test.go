package host

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/callbackd/callbackd/plugins"
)

// TestPipeline_one_crossing checks EncodeDeliver through a process that
// serves an encoder and a transport: the same outcomes as Encode then
// Deliver.
func TestPipeline_one_crossing(t *testing.T) {
	m := newManager(t, Options{})
	p, err := m.Launch(context.Background(), selfSpec(t, "all", plugins.PluginEncoder, plugins.PluginTransport))
	if err != nil {
		t.Fatal(err)
	}
	if !p.Description().Serves(plugins.PluginPipeline) {
		t.Fatalf("kinds %v", p.Description().Kinds)
	}
	enc, _, _ := p.Encoder("test_event")
	tr, _ := p.Transport()
	ed := plugins.Pipeline(enc, tr)
	if _, ok := ed.(*pipelineHandle); !ok {
		t.Fatalf("Pipeline gave %T, want the one-crossing pipeline", ed)
	}
	ctx := context.Background()
	ev := func(do string) plugins.Event {
		return plugins.Event{Type: "test_event", AccountID: "12", ProjectID: "34", DeliveryID: "d-1", Payload: []byte(`{"n": 5, "do": "` + do + `"}`)}
	}
	dest := &plugins.Destination{URL: "503", Headers: []plugins.Header{{Key: "X-K", Value: "v"}}}

	got, err := ed.EncodeDeliver(ctx, ev(""), dest, time.Second)
	if err != nil || !got.Delivered {
		t.Fatalf("%+v, %v", got, err)
	}
	want, _ := enc.Encode(ctx, ev(""))
	if diff := cmp.Diff(want, got.Encoded); diff != "" {
		t.Errorf("encoded (-want +got):\n%s", diff)
	}
	wantRes, _ := tr.Deliver(ctx, plugins.Delivery{DeliveryID: "d-1", Destination: *dest, Notification: want.Notification})
	if diff := cmp.Diff(wantRes, got.Result); diff != "" {
		t.Errorf("result (-want +got):\n%s", diff)
	}

	if got, err := ed.EncodeDeliver(ctx, ev(""), nil, 0); err != nil || got.Delivered || len(got.Encoded.Notification.Fields) == 0 {
		t.Errorf("no destination: %+v, %v", got, err)
	}
	if got, err := ed.EncodeDeliver(ctx, ev("skip"), dest, 0); err != nil || got.Delivered || got.Encoded.SkipReason == "" {
		t.Errorf("skip: %+v, %v", got, err)
	}
	if _, err := ed.EncodeDeliver(ctx, ev("invalid"), dest, 0); !errors.Is(err, plugins.ErrInvalidEvent) {
		t.Errorf("invalid: %v", err)
	}
	if _, err := ed.EncodeDeliver(ctx, ev("hang"), dest, 200*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("encode timeout: %v", err)
	}
	hang := &plugins.Destination{URL: "hang", Headers: dest.Headers}
	dctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if got, err := ed.EncodeDeliver(dctx, ev(""), hang, 0); !errors.Is(err, context.DeadlineExceeded) || got.Delivered {
		t.Errorf("deliver past the deadline: %+v, %v", got, err)
	}

	// Another process's transport: two calls.
	other, err := m.Launch(context.Background(), selfSpec(t, "env", plugins.PluginTransport))
	if err != nil {
		t.Fatal(err)
	}
	otr, _ := other.Transport()
	if _, ok := plugins.Pipeline(enc, otr).(*pipelineHandle); ok {
		t.Errorf("Pipeline fused an encoder with another process's transport")
	}
}
