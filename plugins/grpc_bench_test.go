package plugins

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/go-plugin"
)

// benchT lets a benchmark use go-plugin's test helpers, which want a T.
type benchT struct{ *testing.B }

func (benchT) Parallel() {}

// BenchmarkPipelineStream measures the plugin boundary alone: one
// EncodeDeliver crossing per op over a real gRPC connection (in-process
// here, so that one profile shows both sides), with an encoder that makes
// the crawl_status notification and a transport that answers at once, 128
// calls in flight. Both sides' allocations count in allocs/op.
func BenchmarkPipelineStream(b *testing.B) {
	fields := []Field{
		{Name: "message", Value: String("crawl_status")}, {Name: "resource", Value: String("crawl")},
		{Name: "crawl_id", Value: Number("124234")}, {Name: "project_id", Value: Number("1123123")},
		{Name: "account_id", Value: Number("123123")}, {Name: "user_id", Value: Number("123123")},
		{Name: "partner_account_id", Value: String("123123")}, {Name: "partner_user_id", Value: String("3333312")},
		{Name: "status", Value: String("finished")}, {Name: "href", Value: String("/accounts/123123/projects/1123123/crawls/124234")},
	}
	cfg := ServeConfig{
		Encoders: map[string]Encoder{"crawl_status": encoderFunc(func(context.Context, Event) (Encoded, error) {
			return Encoded{Notification: Notification{Fields: append([]Field(nil), fields...)}}, nil
		})},
		Transport: transportFunc(func(context.Context, Delivery) (Result, error) {
			return Result{StatusCode: 200, Outcome: OutcomeDelivered, Duration: 1000}, nil
		}),
	}
	client, server := plugin.TestPluginGRPCConn(benchT{b}, false, cfg.PluginSet())
	defer server.Stop()
	defer client.Close()
	pc := NewPipelineClient(client.Conn)
	if err := pc.Start(StreamOptions{Plugin: "bench"}); err != nil {
		b.Fatal(err)
	}
	defer pc.Close()
	ed := pc.EncodeDeliverer("crawl_status")
	payload := []byte(`{"message":"crawl_status","resource":"crawl","crawl_id":124234,"project_id":1123123,"account_id":123123,"user_id":123123,"partner_account_id":"123123","partner_user_id":"3333312","status":"finished","href":"/accounts/123123/projects/1123123/crawls/124234"}`)
	dest := &Destination{URL: "http://127.0.0.1:1/hook", Headers: []Header{{Key: "X-Api-Key", Value: "k"}}}
	var seq atomic.Int64
	b.SetParallelism(64)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := strconv.FormatInt(seq.Add(1), 10)
			out, err := ed.EncodeDeliver(context.Background(), Event{Type: "crawl_status", AccountID: "123123", ProjectID: "1123123", DeliveryID: id, Payload: payload}, dest, 0)
			if err != nil || !out.Delivered {
				b.Errorf("EncodeDeliver: %+v, %v", out, err)
				return
			}
		}
	})
}
