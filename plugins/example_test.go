package plugins_test

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"

	"github.com/callbackd/callbackd/plugins"
)

// greeting is a custom encoder for a "greeting" event type.
type greeting struct{}

func (greeting) Info(context.Context) (plugins.EncoderInfo, error) {
	return plugins.EncoderInfo{EventType: "greeting", IDFields: []string{"greeting_id"}}, nil
}

func (greeting) Encode(_ context.Context, ev plugins.Event) (plugins.Encoded, error) {
	var in struct {
		ID   json.Number `json:"greeting_id"`
		Name string      `json:"name"`
	}
	if err := json.Unmarshal(ev.Payload, &in); err != nil || in.ID == "" {
		return plugins.Encoded{}, plugins.Invalid("greeting: want {\"greeting_id\": <int>, \"name\": <string>}")
	}
	return plugins.Encoded{Notification: plugins.Notification{Fields: []plugins.Field{
		{Name: "message", Value: plugins.String("greeting")},
		{Name: "greeting_id", Value: plugins.Number(in.ID.String())},
		{Name: "text", Value: plugins.String("hello " + in.Name)},
		{Name: "account_id", Value: plugins.Number(ev.AccountID)},
	}}}, nil
}

// A plugin's main is one call:
//
//	func main() { plugins.ServeEncoder(greeting{}) }
//
// Here the same plugin is served in go-plugin's test mode, in this process,
// and called through the gRPC boundary the way callbackd calls it, so that
// the example runs.
func Example() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reattach := make(chan *plugin.ReattachConfig, 1)
	go plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: plugins.Handshake,
		Plugins:         plugins.ServeConfig{Encoders: map[string]plugins.Encoder{"greeting": greeting{}}}.PluginSet(),
		GRPCServer:      plugin.DefaultGRPCServer,
		Logger:          hclog.NewNullLogger(),
		Test:            &plugin.ServeTestConfig{Context: ctx, ReattachConfigCh: reattach},
	})

	// The host side, as callbackd's plugin manager does it.
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  plugins.Handshake,
		Plugins:          plugins.HostPluginSet(),
		Reattach:         <-reattach,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           hclog.NewNullLogger(),
	})
	defer client.Kill()
	rpc, err := client.Client()
	if err != nil {
		panic(err)
	}
	raw, _ := rpc.Dispense(plugins.PluginEncoder)
	conn := raw.(*plugins.EncoderClient)
	if err := conn.Start(plugins.StreamOptions{Plugin: "greeting"}); err != nil {
		panic(err)
	}
	defer conn.Close()
	enc := conn.Encoder("greeting", plugins.EncoderInfo{EventType: "greeting"})

	out, err := enc.Encode(ctx, plugins.Event{Type: "greeting", AccountID: "7", ProjectID: "8", Payload: []byte(`{"greeting_id": 12, "name": "world"}`)})
	fmt.Println(string(out.Notification.AppendForm(nil)), err)
	_, err = enc.Encode(ctx, plugins.Event{Type: "greeting", AccountID: "7", ProjectID: "8", Payload: []byte(`{}`)})
	fmt.Println(err)
	// Output:
	// message=greeting&greeting_id=12&text=hello+world&account_id=7 <nil>
	// greeting: want {"greeting_id": <int>, "name": <string>}
}
