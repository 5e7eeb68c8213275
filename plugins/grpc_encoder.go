package plugins

import (
	"context"
	"fmt"
	"sort"
	"time"

	"google.golang.org/grpc"

	"github.com/callbackd/callbackd/plugins/pluginpb"
)

// StreamOptions configure the host side of a plugin's stream.
type StreamOptions struct {
	// Plugin names the plugin in errors, for example "builtin" or
	// "crawl_failed".
	Plugin string
	// Timeout bounds every call, so that none waits forever; a context's
	// earlier deadline wins. 0 means 5s.
	Timeout time.Duration
	// OnEnd, if not nil, is called once when the stream ends other than by
	// Close: the plugin process died or the connection broke. Calls fail
	// with ErrPluginUnavailable from then on.
	OnEnd func(error)
}

func (o StreamOptions) timeout() time.Duration {
	if o.Timeout <= 0 {
		return 5 * time.Second
	}
	return o.Timeout
}

// withDeadline gives ctx the default deadline when it has none.
func withDeadline(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, d)
}

// ---- plugin side ----

// encoderServer serves the encoders of one plugin process, by name.
type encoderServer struct {
	pluginpb.UnimplementedEncoderServiceServer
	encoders map[string]Encoder
	only     Encoder // the encoder when there is exactly one
}

func newEncoderServer(encoders map[string]Encoder) *encoderServer {
	s := &encoderServer{encoders: encoders}
	if len(encoders) == 1 {
		for _, e := range encoders {
			s.only = e
		}
	}
	return s
}

// Encode serves one host's stream of encode requests.
func (s *encoderServer) Encode(stream pluginpb.EncoderService_EncodeServer) error {
	return serveMux(stream.Context(), encodeServerStream{stream},
		func(it *pluginpb.EncodeItem) (uint64, time.Duration) {
			return it.GetId(), time.Duration(it.GetTimeoutNs())
		},
		s.encode)
}

func (s *encoderServer) encode(ctx context.Context, it *pluginpb.EncodeItem) *pluginpb.EncodeResult {
	res, out, _ := s.encodeEvent(ctx, it.GetId(), it.GetEncoder(), it.GetEvent())
	res.Notification = notificationToPB(out.Notification)
	return res
}

// encodeEvent runs the named encoder on ev. res carries the error or the
// skip reason; ok reports a notification to deliver (no error, no skip),
// which is out's, and which the caller adds to res when it is to be sent.
func (s *encoderServer) encodeEvent(ctx context.Context, id uint64, name string, ev *pluginpb.Event) (res *pluginpb.EncodeResult, out Encoded, ok bool) {
	res = &pluginpb.EncodeResult{Id: id}
	enc := s.only
	if name != "" || enc == nil {
		enc = s.encoders[name]
	}
	if enc == nil {
		res.Error = &pluginpb.Error{
			Code:    pluginpb.ErrorCode_ERROR_CODE_UNKNOWN_ENCODER,
			Message: fmt.Appendf(nil, "no encoder %q in this plugin (it serves %v)", name, sortedKeys(s.encoders)),
		}
		return res, Encoded{}, false
	}
	defer func() {
		if p := recover(); p != nil {
			res, out, ok = &pluginpb.EncodeResult{Id: id, Error: panicError(p)}, Encoded{}, false
		}
	}()
	out, err := enc.Encode(ctx, eventFromPB(ev))
	if err != nil {
		res.Error = errorToPB(err)
		return res, Encoded{}, false
	}
	res.SkipReason = bytesOf(out.SkipReason)
	return res, out, out.SkipReason == ""
}

type encodeServerStream struct {
	s pluginpb.EncoderService_EncodeServer
}

func (w encodeServerStream) send(items []*pluginpb.EncodeResult, _ []uint64) error {
	return w.s.Send(&pluginpb.EncodeResponse{Items: items})
}

func (w encodeServerStream) recv() ([]*pluginpb.EncodeItem, []uint64, error) {
	req, err := w.s.Recv()
	if err != nil {
		return nil, nil, err
	}
	return req.GetItems(), req.GetCancel(), nil
}

func panicError(p any) *pluginpb.Error {
	return &pluginpb.Error{Code: pluginpb.ErrorCode_ERROR_CODE_INTERNAL, Message: fmt.Appendf(nil, "panic: %v", p)}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// ---- host side ----

// EncoderClient is the host's client of a plugin process's encoders. It
// carries every Encode call of every encoder of the process on one stream;
// Start opens it. It is safe for concurrent use.
type EncoderClient struct {
	streamClient[encodeItem, encodeResult]
}

// NewEncoderClient returns a client of the encoder service on cc.
func NewEncoderClient(cc grpc.ClientConnInterface) *EncoderClient {
	return &EncoderClient{streamClient[encodeItem, encodeResult]{
		cc: cc, desc: &pluginpb.EncoderService_ServiceDesc.Streams[0],
		method: pluginpb.EncoderService_Encode_FullMethodName, what: "encode",
		wrap: func(st grpc.ClientStream) batchStream[encodeItem, encodeResult] {
			return encodeClientStream{st}
		},
		setID:    func(it *encodeItem, id uint64, timeout time.Duration) { it.id, it.timeout = id, timeout },
		resultID: func(r *encodeResult) uint64 { return r.id },
	}}
}

// Encoder returns the Encoder that calls the process's encoder of the
// given name ("" when the process serves only one); Info answers with info
// without a call.
func (c *EncoderClient) Encoder(name string, info EncoderInfo) Encoder {
	return &remoteEncoder{c: c, name: name, info: info}
}

type encodeClientStream struct {
	s grpc.ClientStream
}

func (w encodeClientStream) send(items []*encodeItem, cancel []uint64) error {
	return w.s.SendMsg(&encodeBatch{items: items, cancel: cancel})
}

func (w encodeClientStream) recv() ([]*encodeResult, []uint64, error) {
	var r encodeReplies
	if err := w.s.RecvMsg(&r); err != nil {
		return nil, nil, err
	}
	return r.items, nil, nil
}

// remoteEncoder is one encoder of a plugin process.
type remoteEncoder struct {
	c    *EncoderClient
	name string
	info EncoderInfo
}

func (e *remoteEncoder) Info(context.Context) (EncoderInfo, error) {
	return e.info, nil
}

func (e *remoteEncoder) Encode(ctx context.Context, ev Event) (Encoded, error) {
	mux, o := e.c.current()
	if mux == nil {
		return Encoded{}, fmt.Errorf("%w: encoder stream not started", ErrPluginUnavailable)
	}
	res, err := mux.call(ctx, &encodeItem{encoder: e.name, ev: ev}, o.timeout())
	if err != nil {
		return Encoded{}, err
	}
	if res.err != nil {
		return Encoded{}, res.err.asError(o.Plugin)
	}
	return res.out, nil
}
