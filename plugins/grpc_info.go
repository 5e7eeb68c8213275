package plugins

import (
	"context"
	"fmt"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"github.com/callbackd/callbackd/plugins/pluginpb"
)

// Description is what a plugin process serves.
type Description struct {
	// Kinds lists PluginEncoder, PluginTransport and PluginFailure, for
	// those the process serves.
	Kinds []string
	// Encoders are the process's encoders, by the name requests use.
	Encoders []NamedEncoderInfo
}

// NamedEncoderInfo is an encoder of a plugin process: the name requests
// address it by, and its info.
type NamedEncoderInfo struct {
	Name string
	Info EncoderInfo
}

// Serves reports whether the process serves the kind.
func (d Description) Serves(kind string) bool {
	for _, k := range d.Kinds {
		if k == kind {
			return true
		}
	}
	return false
}

// infoPlugin serves PluginService. On the plugin side it knows what the
// process serves.
type infoPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	kinds     []string
	encoders  map[string]Encoder
	transport Transport
}

func (p *infoPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	pluginpb.RegisterPluginServiceServer(s, &infoServer{kinds: p.kinds, encoders: p.encoders})
	if len(p.encoders) > 0 && p.transport != nil {
		pluginpb.RegisterPipelineServiceServer(s, &pipelineServer{enc: newEncoderServer(p.encoders), tr: p.transport})
	}
	return nil
}

func (p *infoPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, cc *grpc.ClientConn) (any, error) {
	return &InfoClient{client: pluginpb.NewPluginServiceClient(cc)}, nil
}

type infoServer struct {
	pluginpb.UnimplementedPluginServiceServer
	kinds    []string
	encoders map[string]Encoder
}

func (s *infoServer) Describe(ctx context.Context, _ *pluginpb.DescribeRequest) (*pluginpb.DescribeResponse, error) {
	resp := &pluginpb.DescribeResponse{Kinds: s.kinds}
	for _, name := range sortedKeys(s.encoders) {
		info, err := s.encoders[name].Info(ctx)
		if err != nil {
			return nil, fmt.Errorf("encoder %s: info: %w", name, err)
		}
		resp.Encoders = append(resp.Encoders, encoderInfoToPB(name, info))
	}
	return resp, nil
}

// InfoClient is the host's client of a plugin process's PluginService.
type InfoClient struct {
	client pluginpb.PluginServiceClient
}

// NewInfoClient returns a client of the PluginService on cc.
func NewInfoClient(cc grpc.ClientConnInterface) *InfoClient {
	return &InfoClient{client: pluginpb.NewPluginServiceClient(cc)}
}

// Describe asks the process what it serves.
func (c *InfoClient) Describe(ctx context.Context) (Description, error) {
	resp, err := c.client.Describe(ctx, &pluginpb.DescribeRequest{})
	if err != nil {
		return Description{}, err
	}
	d := Description{Kinds: resp.GetKinds()}
	for _, e := range resp.GetEncoders() {
		d.Encoders = append(d.Encoders, NamedEncoderInfo{
			Name: e.GetName(),
			Info: EncoderInfo{EventType: e.GetEventType(), IDFields: e.GetIdFields()},
		})
	}
	return d, nil
}
