package plugins

import (
	"context"
	"fmt"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/callbackd/callbackd/plugins/pluginpb"
)

// ---- plugin side ----

type failureServer struct {
	pluginpb.UnimplementedFailureHandlerServiceServer
	impl FailureHandler
}

// OnFailure is unary: failures are rare, and a batch stream would buy
// nothing.
func (s *failureServer) OnFailure(ctx context.Context, req *pluginpb.OnFailureRequest) (resp *pluginpb.OnFailureResponse, _ error) {
	resp = &pluginpb.OnFailureResponse{}
	defer func() {
		if p := recover(); p != nil {
			resp = &pluginpb.OnFailureResponse{Error: panicError(p)}
		}
	}()
	out, err := s.impl.OnFailure(ctx, failureFromPB(req.GetFailure()))
	if err != nil {
		resp.Error = errorToPB(err)
		return resp, nil
	}
	resp.Outbound = make([]*pluginpb.Outbound, len(out))
	for i, o := range out {
		resp.Outbound[i] = &pluginpb.Outbound{
			Destination:  destinationToPB(o.Destination),
			Notification: notificationToPB(o.Notification),
		}
	}
	return resp, nil
}

// ---- host side ----

// FailureClient is the host's client of a plugin process's failure handler.
// It is safe for concurrent use.
type FailureClient struct {
	client pluginpb.FailureHandlerServiceClient
	mu     sync.Mutex
	opts   StreamOptions
}

var _ FailureHandler = (*FailureClient)(nil)

// NewFailureClient returns a client of the failure handler service on cc.
func NewFailureClient(cc grpc.ClientConnInterface) *FailureClient {
	return &FailureClient{client: pluginpb.NewFailureHandlerServiceClient(cc)}
}

// Start sets the plugin's name and default deadline. OnFailure is unary, so
// there is no stream to open and OnEnd is not used.
func (c *FailureClient) Start(o StreamOptions) error {
	c.mu.Lock()
	c.opts = o
	c.mu.Unlock()
	return nil
}

// OnFailure asks the plugin what to send about f.
func (c *FailureClient) OnFailure(ctx context.Context, f Failure) ([]Outbound, error) {
	c.mu.Lock()
	o := c.opts
	c.mu.Unlock()
	ctx, cancel := withDeadline(ctx, o.timeout())
	defer cancel()
	resp, err := c.client.OnFailure(ctx, &pluginpb.OnFailureRequest{Failure: failureToPB(f)})
	if err != nil {
		return nil, grpcError(o.Plugin, err)
	}
	if resp.Error != nil {
		return nil, errorFromPB(o.Plugin, resp.Error)
	}
	out := make([]Outbound, len(resp.GetOutbound()))
	for i, ob := range resp.Outbound {
		out[i] = Outbound{
			Destination:  destinationFromPB(ob.GetDestination()),
			Notification: notificationFromPB(ob.GetNotification()),
		}
	}
	return out, nil
}

// grpcError maps the error of a unary call: a deadline stays one, anything
// else (the process gone, the connection broken, the service missing) is
// ErrPluginUnavailable.
func grpcError(plugin string, err error) error {
	switch status.Code(err) {
	case codes.DeadlineExceeded:
		return fmt.Errorf("plugin %s: %w", plugin, context.DeadlineExceeded)
	case codes.Canceled:
		return fmt.Errorf("plugin %s: %w", plugin, context.Canceled)
	}
	return fmt.Errorf("%w: %s: %s", ErrPluginUnavailable, plugin, status.Convert(err).Message())
}
