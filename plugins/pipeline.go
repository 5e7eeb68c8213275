package plugins

import (
	"context"
	"fmt"
	"slices"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/callbackd/callbackd/plugins/pluginpb"
)

// PluginPipeline is the kind PluginService.Describe lists for a process
// that serves encoders and a transport together (PipelineService).
const PluginPipeline = "pipeline"

// EncodeDeliverer encodes an event and delivers its notification in one
// call: one plugin crossing per event instead of two when the encoder and
// the transport live in the same plugin process. It is optional: a
// dispatcher may use it where Pipeline gives one, with the same meaning as
// Encode followed by Deliver.
type EncodeDeliverer interface {
	// EncodeDeliver encodes ev (bounded by encodeTimeout when > 0 and ctx
	// has a deadline; else by the encoder's own bound) and,
	// when that gives a notification and dest is not nil, delivers it to
	// dest. The returned Encoded may lack the notification's fields when
	// the delivery succeeded: nothing needs them then. The error is Encode's (ErrInvalidEvent or an infrastructure
	// error) or Deliver's (an infrastructure error); it is nil whenever
	// the result stands.
	EncodeDeliver(ctx context.Context, ev Event, dest *Destination, encodeTimeout time.Duration) (EncodeDelivered, error)
}

// EncodeDelivered is the outcome of EncodeDeliver.
type EncodeDelivered struct {
	Encoded Encoded
	// Delivered reports whether a delivery was attempted; Result is its
	// result.
	Delivered bool
	Result    Result
}

// Pipeline returns the EncodeDeliverer of enc and tr: a single crossing
// when enc comes from a plugin process whose own transport is tr (see
// host.Plugin.Pipeline), else Encode followed by Deliver.
func Pipeline(enc Encoder, tr Transport) EncodeDeliverer {
	if pe, ok := enc.(PipelineEncoder); ok {
		if p := pe.PipelineWith(tr); p != nil {
			return p
		}
	}
	return sequence{enc: enc, tr: tr}
}

// PipelineEncoder is an Encoder that can encode and deliver in one
// crossing with some transports: the host's encoders of a plugin process
// that serves PipelineService, with that process's transport.
type PipelineEncoder interface {
	Encoder
	// PipelineWith returns the one-crossing EncodeDeliverer of the encoder
	// with tr, or nil when tr is not the transport of its process.
	PipelineWith(tr Transport) EncodeDeliverer
}

// sequence is the two-call EncodeDeliverer.
type sequence struct {
	enc Encoder
	tr  Transport
}

func (s sequence) EncodeDeliver(ctx context.Context, ev Event, dest *Destination, encodeTimeout time.Duration) (EncodeDelivered, error) {
	return encodeDeliver(ctx, s.enc, s.tr, ev, dest, encodeTimeout)
}

func encodeDeliver(ctx context.Context, enc Encoder, tr Transport, ev Event, dest *Destination, encodeTimeout time.Duration) (EncodeDelivered, error) {
	out, err := encode(ctx, enc, ev, encodeTimeout)
	if err != nil || out.SkipReason != "" || dest == nil {
		return EncodeDelivered{Encoded: out}, err
	}
	res, err := tr.Deliver(ctx, Delivery{DeliveryID: ev.DeliveryID, Destination: *dest, Notification: out.Notification})
	if err != nil {
		return EncodeDelivered{Encoded: out}, err
	}
	return EncodeDelivered{Encoded: out, Delivered: true, Result: res}, nil
}

// encode calls enc, within encodeTimeout when ctx has a deadline (a
// longer one than the encoding should take). Without one, the encoder's
// own bound applies: a plugin process's client has its call timeout, and
// an in-process encoder is CPU work that no context could stop, so it is
// spared a timer and a context per event.
func encode(ctx context.Context, enc Encoder, ev Event, encodeTimeout time.Duration) (Encoded, error) {
	if _, ok := ctx.Deadline(); !ok || encodeTimeout <= 0 {
		return enc.Encode(ctx, ev)
	}
	ectx, cancel := context.WithTimeout(ctx, encodeTimeout)
	defer cancel()
	return enc.Encode(ectx, ev)
}

// ---- plugin side ----

type pipelineServer struct {
	pluginpb.UnimplementedPipelineServiceServer
	enc *encoderServer
	tr  Transport
}

func (s *pipelineServer) EncodeDeliver(stream pluginpb.PipelineService_EncodeDeliverServer) error {
	return serveMux(stream.Context(), pipelineServerStream{stream},
		func(it *pluginpb.EncodeDeliverItem) (uint64, time.Duration) {
			return it.GetId(), time.Duration(it.GetTimeoutNs())
		},
		s.handle)
}

func (s *pipelineServer) handle(ctx context.Context, it *pluginpb.EncodeDeliverItem) (res *pluginpb.EncodeDeliverResult) {
	res = &pluginpb.EncodeDeliverResult{Id: it.GetId()}
	// The encoding's own deadline, within the item's: a step of the item
	// (no timer of its own). An encoding that outlives it ends the item:
	// the delivery is not attempted, and the host hands the event back.
	ectx, endEncode := stepContext(ctx, time.Duration(it.GetEncodeTimeoutNs()))
	var out Encoded
	var deliver bool
	res.Encoded, out, deliver = s.enc.encodeEvent(ectx, 0, it.GetEncoder(), it.GetEvent())
	endEncode()
	if !deliver || it.Destination == nil {
		res.Encoded.Notification = notificationToPB(out.Notification)
		return res
	}
	defer func() {
		if p := recover(); p != nil {
			res.Result, res.DeliverError = nil, panicError(p)
		}
		// The host needs the notification only when the delivery did not
		// succeed (a failure notice repeats its ID fields): a delivered
		// event's fields do not travel back.
		if string(res.Result.GetOutcome()) != string(OutcomeDelivered) {
			res.Encoded.Notification = notificationToPB(out.Notification)
		}
	}()
	ev := it.GetEvent()
	r, err := s.tr.Deliver(ctx, Delivery{
		DeliveryID:   ev.GetDeliveryId(),
		Destination:  destinationFromPB(it.GetDestination()),
		Notification: out.Notification,
	})
	if err != nil {
		res.DeliverError = errorToPB(err)
		return res
	}
	res.Result = resultToPB(r)
	return res
}

type pipelineServerStream struct {
	s pluginpb.PipelineService_EncodeDeliverServer
}

func (w pipelineServerStream) send(items []*pluginpb.EncodeDeliverResult, _ []uint64) error {
	return w.s.Send(&pluginpb.EncodeDeliverResponse{Items: items})
}

func (w pipelineServerStream) recv() ([]*pluginpb.EncodeDeliverItem, []uint64, error) {
	req, err := w.s.Recv()
	if err != nil {
		return nil, nil, err
	}
	return req.GetItems(), req.GetCancel(), nil
}

// ---- host side ----

// PipelineClient is the host's client of a plugin process's
// PipelineService; Start opens its stream. It is safe for concurrent use.
// Its StreamOptions.Timeout should cover an encoding and a delivery.
type PipelineClient struct {
	streamClient[pipelineItem, pipelineResult]
}

// NewPipelineClient returns a client of the PipelineService on cc.
func NewPipelineClient(cc grpc.ClientConnInterface) *PipelineClient {
	return &PipelineClient{streamClient[pipelineItem, pipelineResult]{
		cc: cc, desc: &pluginpb.PipelineService_ServiceDesc.Streams[0],
		method: pluginpb.PipelineService_EncodeDeliver_FullMethodName, what: "pipeline",
		wrap: func(st grpc.ClientStream) batchStream[pipelineItem, pipelineResult] {
			return pipelineClientStream{st}
		},
		setID:    func(it *pipelineItem, id uint64, timeout time.Duration) { it.id, it.timeout = id, timeout },
		resultID: func(r *pipelineResult) uint64 { return r.id },
	}}
}

// EncodeDeliverer returns the EncodeDeliverer of the process's encoder of
// the given name with the process's own transport.
func (c *PipelineClient) EncodeDeliverer(encoder string) EncodeDeliverer {
	return &remotePipeline{c: c, encoder: encoder}
}

type remotePipeline struct {
	c       *PipelineClient
	encoder string
}

func (p *remotePipeline) EncodeDeliver(ctx context.Context, ev Event, dest *Destination, encodeTimeout time.Duration) (EncodeDelivered, error) {
	mux, o := p.c.current()
	if mux == nil {
		return EncodeDelivered{}, fmt.Errorf("%w: pipeline stream not started", ErrPluginUnavailable)
	}
	r, err := mux.call(ctx, &pipelineItem{encoder: p.encoder, ev: ev, dest: dest, encodeTimeout: encodeTimeout}, o.timeout())
	if err != nil {
		return EncodeDelivered{}, err
	}
	out := EncodeDelivered{Encoded: r.enc.out}
	if r.enc.err != nil {
		return out, r.enc.err.asError(o.Plugin)
	}
	if r.deliverErr != nil {
		return out, r.deliverErr.asError(o.Plugin)
	}
	if r.delivered {
		out.Delivered, out.Result = true, r.res
	}
	return out, nil
}

type pipelineClientStream struct {
	s grpc.ClientStream
}

func (w pipelineClientStream) send(items []*pipelineItem, cancel []uint64) error {
	return w.s.SendMsg(&pipelineBatch{items: items, cancel: cancel})
}

func (w pipelineClientStream) recv() ([]*pipelineResult, []uint64, error) {
	var r pipelineReplies
	if err := w.s.RecvMsg(&r); err != nil {
		return nil, nil, err
	}
	return r.items, nil, nil
}

// pipelineItem is an EncodeDeliverItem on its way to the plugin.
type pipelineItem struct {
	id            uint64
	timeout       time.Duration
	encoder       string
	ev            Event
	dest          *Destination
	encodeTimeout time.Duration
}

type pipelineBatch struct {
	items  []*pipelineItem
	cancel []uint64
}

func (it *pipelineItem) wireSize() int {
	n := 2*itemOverhead + len(it.encoder) + eventSize(it.ev)
	if it.dest != nil {
		n += destinationSize(*it.dest)
	}
	return n
}

func (b *pipelineBatch) appendWire(dst []byte) []byte {
	n := batchOverhead(len(b.cancel))
	for _, it := range b.items {
		n += it.wireSize()
	}
	dst = slices.Grow(dst, n)
	item, sub := make([]byte, 0, scratchSize), make([]byte, 0, scratchSize)
	for _, it := range b.items {
		item = appendVarint(item[:0], 1, it.id)
		item = appendVarint(item, 2, uint64(it.timeout))
		item = appendString(item, 3, it.encoder)
		sub = appendEvent(sub[:0], it.ev)
		item = protowire.AppendTag(item, 4, protowire.BytesType)
		item = protowire.AppendBytes(item, sub)
		if it.dest != nil {
			sub = appendDestination(sub[:0], *it.dest)
			item = protowire.AppendTag(item, 5, protowire.BytesType)
			item = protowire.AppendBytes(item, sub)
		}
		item = appendVarint(item, 6, uint64(it.encodeTimeout))
		dst = protowire.AppendTag(dst, 1, protowire.BytesType)
		dst = protowire.AppendBytes(dst, item)
	}
	return appendPacked(dst, 2, b.cancel)
}

// pipelineResult is an EncodeDeliverResult.
type pipelineResult struct {
	id         uint64
	enc        encodeResult
	delivered  bool
	res        Result
	deliverErr *wireError
}

type pipelineReplies struct {
	items []*pipelineResult
}

func (r *pipelineReplies) unmarshalWire(s string) error {
	return eachField(s, func(num protowire.Number, typ protowire.Type, v uint64, b string) error {
		if num != 1 || typ != protowire.BytesType {
			return nil
		}
		pr := &pipelineResult{}
		err := eachField(b, func(num protowire.Number, typ protowire.Type, v uint64, b string) error {
			switch {
			case num == 1 && typ == protowire.VarintType:
				pr.id = v
			case num == 2 && typ == protowire.BytesType:
				return parseEncodeResult(b, &pr.enc)
			case num == 3 && typ == protowire.BytesType:
				pr.delivered = true
				return parseResult(b, &pr.res)
			case num == 4 && typ == protowire.BytesType:
				e, err := parseError(b)
				pr.deliverErr = e
				return err
			}
			return nil
		})
		r.items = append(r.items, pr)
		return err
	})
}
