package plugins

import (
	"context"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"github.com/callbackd/callbackd/plugins/pluginpb"
)

// ProtocolVersion is the version of callbackd's plugin protocol: the
// go-plugin handshake version that host and plugin must share. It changes
// only when old plugins could no longer follow the wire contract
// (plugins/proto); a host refuses a plugin built for another version and
// says which versions each side speaks.
const ProtocolVersion = 1

// Handshake is the go-plugin handshake every callbackd plugin and host
// share. The magic cookie only keeps a plugin from being run by hand by
// mistake (it then explains itself and exits); it is not a security
// measure: checksums are (SPEC §5).
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  ProtocolVersion,
	MagicCookieKey:   "CALLBACKD_PLUGIN",
	MagicCookieValue: "a6f1c0de-callbackd-plugin",
}

// Names under which a plugin process serves each kind: the keys of the
// go-plugin plugin set, and the kinds PluginService.Describe lists.
const (
	PluginEncoder   = "encoder"
	PluginTransport = "transport"
	PluginFailure   = "failure"
	// pluginInfo serves PluginService, which every SDK plugin has.
	pluginInfo = "info"
)

// HostPluginSet returns the go-plugin plugin set a host dispenses from:
// every kind, with no implementation behind it. Dispensing a kind gives an
// *EncoderClient, a *TransportClient, a *FailureClient or an *InfoClient.
func HostPluginSet() plugin.PluginSet {
	return plugin.PluginSet{
		PluginEncoder:   &EncoderPlugin{},
		PluginTransport: &TransportPlugin{},
		PluginFailure:   &FailurePlugin{},
		pluginInfo:      &infoPlugin{},
	}
}

// InfoKind is the plugin-set key under which a host dispenses the
// *InfoClient of a plugin process.
const InfoKind = pluginInfo

// EncoderPlugin is the go-plugin glue of the encoder kind. On the plugin
// side Encoders holds the implementations served, by name; on the host side
// it is empty.
type EncoderPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	Encoders map[string]Encoder
}

// GRPCServer registers the encoder service on the plugin's gRPC server.
func (p *EncoderPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	pluginpb.RegisterEncoderServiceServer(s, newEncoderServer(p.Encoders))
	return nil
}

// GRPCClient returns the host's client of the encoder service.
func (p *EncoderPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, cc *grpc.ClientConn) (any, error) {
	return NewEncoderClient(cc), nil
}

// TransportPlugin is the go-plugin glue of the transport kind; Impl is set
// on the plugin side only.
type TransportPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	Impl Transport
}

// GRPCServer registers the transport service on the plugin's gRPC server.
func (p *TransportPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	pluginpb.RegisterTransportServiceServer(s, &transportServer{impl: p.Impl})
	return nil
}

// GRPCClient returns the host's client of the transport service.
func (p *TransportPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, cc *grpc.ClientConn) (any, error) {
	return NewTransportClient(cc), nil
}

// FailurePlugin is the go-plugin glue of the failure kind; Impl is set on
// the plugin side only.
type FailurePlugin struct {
	plugin.NetRPCUnsupportedPlugin
	Impl FailureHandler
}

// GRPCServer registers the failure handler service on the plugin's gRPC
// server.
func (p *FailurePlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	pluginpb.RegisterFailureHandlerServiceServer(s, &failureServer{impl: p.Impl})
	return nil
}

// GRPCClient returns the host's client of the failure handler service.
func (p *FailurePlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, cc *grpc.ClientConn) (any, error) {
	return NewFailureClient(cc), nil
}
