package plugins

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"

	"github.com/callbackd/callbackd/plugins/pluginpb"
)

// ---- plugin side ----

type transportServer struct {
	pluginpb.UnimplementedTransportServiceServer
	impl Transport
}

// Deliver serves one host's stream of deliveries. Each runs in its own
// goroutine: the transport owns its HTTP concurrency.
func (s *transportServer) Deliver(stream pluginpb.TransportService_DeliverServer) error {
	return serveMux(stream.Context(), deliverServerStream{stream},
		func(it *pluginpb.DeliverItem) (uint64, time.Duration) {
			return it.GetId(), time.Duration(it.GetTimeoutNs())
		},
		s.deliver)
}

func (s *transportServer) deliver(ctx context.Context, it *pluginpb.DeliverItem) (res *pluginpb.DeliverResult) {
	res = &pluginpb.DeliverResult{Id: it.GetId()}
	defer func() {
		if p := recover(); p != nil {
			res = &pluginpb.DeliverResult{Id: it.GetId(), Error: panicError(p)}
		}
	}()
	r, err := s.impl.Deliver(ctx, Delivery{
		DeliveryID:   it.GetDeliveryId(),
		Destination:  destinationFromPB(it.GetDestination()),
		Notification: notificationFromPB(it.GetNotification()),
	})
	if err != nil {
		res.Error = errorToPB(err)
		return res
	}
	res.Result = resultToPB(r)
	return res
}

type deliverServerStream struct {
	s pluginpb.TransportService_DeliverServer
}

func (w deliverServerStream) send(items []*pluginpb.DeliverResult, _ []uint64) error {
	return w.s.Send(&pluginpb.DeliverResponse{Items: items})
}

func (w deliverServerStream) recv() ([]*pluginpb.DeliverItem, []uint64, error) {
	req, err := w.s.Recv()
	if err != nil {
		return nil, nil, err
	}
	return req.GetItems(), req.GetCancel(), nil
}

// ---- host side ----

// TransportClient is the host's client of a plugin process's transport: a
// Transport whose Deliver calls travel on one stream, which Start opens. It
// is safe for concurrent use. Its StreamOptions.Timeout should be the
// delivery timeout plus a margin (SPEC §5: delivery.timeout + 5s).
type TransportClient struct {
	streamClient[deliverItem, deliverResult]
}

var _ Transport = (*TransportClient)(nil)

// NewTransportClient returns a client of the transport service on cc.
func NewTransportClient(cc grpc.ClientConnInterface) *TransportClient {
	return &TransportClient{streamClient[deliverItem, deliverResult]{
		cc: cc, desc: &pluginpb.TransportService_ServiceDesc.Streams[0],
		method: pluginpb.TransportService_Deliver_FullMethodName, what: "deliver",
		wrap: func(st grpc.ClientStream) batchStream[deliverItem, deliverResult] {
			return deliverClientStream{st}
		},
		setID:    func(it *deliverItem, id uint64, timeout time.Duration) { it.id, it.timeout = id, timeout },
		resultID: func(r *deliverResult) uint64 { return r.id },
	}}
}

// Deliver makes one delivery attempt through the plugin.
func (c *TransportClient) Deliver(ctx context.Context, d Delivery) (Result, error) {
	mux, o := c.current()
	if mux == nil {
		return Result{}, fmt.Errorf("%w: deliver stream not started", ErrPluginUnavailable)
	}
	res, err := mux.call(ctx, &deliverItem{d: d}, o.timeout())
	if err != nil {
		return Result{}, err
	}
	if res.err != nil {
		return Result{}, res.err.asError(o.Plugin)
	}
	return res.res, nil
}

type deliverClientStream struct {
	s grpc.ClientStream
}

func (w deliverClientStream) send(items []*deliverItem, cancel []uint64) error {
	return w.s.SendMsg(&deliverBatch{items: items, cancel: cancel})
}

func (w deliverClientStream) recv() ([]*deliverResult, []uint64, error) {
	var r deliverReplies
	if err := w.s.RecvMsg(&r); err != nil {
		return nil, nil, err
	}
	return r.items, nil, nil
}
