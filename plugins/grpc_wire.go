package plugins

import (
	"errors"
	"fmt"
	"slices"
	"time"
	"unsafe"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/callbackd/callbackd/plugins/pluginpb"
)

// This file is the host's side of the two batch streams, written straight
// to and read straight from the protobuf wire format of plugin.proto
// (EncodeRequest/EncodeResponse, DeliverRequest/DeliverResponse) instead of
// through the generated structs. The bytes are the same; what changes is
// the cost: the generated decoder allocates a struct per field and a string
// per name and text, which on a 2-core machine was a quarter of the host's
// CPU per event. Here a whole batch is one string, and every name and text
// of every notification in it is a substring of it. Plugins, whatever their
// language, keep the generated code; the host-side tests run against it.

// wireCodec marshals and unmarshals the host's batch types, and anything
// else as protobuf.
type wireCodec struct{}

// Name is "proto": the content-subtype stays the plugin's default codec.
func (wireCodec) Name() string { return "proto" }

type wireMarshaler interface{ appendWire([]byte) []byte }

type wireUnmarshaler interface{ unmarshalWire(s string) error }

func (wireCodec) Marshal(v any) (mem.BufferSlice, error) {
	if m, ok := v.(wireMarshaler); ok {
		return mem.BufferSlice{mem.SliceBuffer(m.appendWire(nil))}, nil
	}
	return encoding.GetCodecV2("proto").Marshal(v)
}

func (wireCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if m, ok := v.(wireUnmarshaler); ok {
		b := data.Materialize() // a fresh copy that nothing else writes
		if len(b) == 0 {
			return m.unmarshalWire("")
		}
		return m.unmarshalWire(unsafe.String(&b[0], len(b)))
	}
	return encoding.GetCodecV2("proto").Unmarshal(data, v)
}

// errBadWire is returned when a plugin's reply does not parse.
var errBadWire = errors.New("malformed message from plugin")

// ---- outgoing ----

// encodeItem is one Encode call on its way to the plugin (EncodeItem).
type encodeItem struct {
	id      uint64
	timeout time.Duration
	encoder string
	ev      Event
}

// encodeBatch is an EncodeRequest.
type encodeBatch struct {
	items  []*encodeItem
	cancel []uint64
}

func (b *encodeBatch) appendWire(dst []byte) []byte {
	n := batchOverhead(len(b.cancel))
	for _, it := range b.items {
		n += it.wireSize()
	}
	dst = slices.Grow(dst, n)
	item, ev := make([]byte, 0, scratchSize), make([]byte, 0, scratchSize)
	for _, it := range b.items {
		ev = appendEvent(ev[:0], it.ev)
		item = appendVarint(item[:0], 1, it.id)
		item = appendString(item, 2, it.encoder)
		item = appendVarint(item, 3, uint64(it.timeout))
		item = protowire.AppendTag(item, 4, protowire.BytesType)
		item = protowire.AppendBytes(item, ev)
		dst = protowire.AppendTag(dst, 1, protowire.BytesType)
		dst = protowire.AppendBytes(dst, item)
	}
	return appendPacked(dst, 2, b.cancel)
}

// deliverItem is one Deliver call on its way to the plugin (DeliverItem).
type deliverItem struct {
	id      uint64
	timeout time.Duration
	d       Delivery
}

// deliverBatch is a DeliverRequest.
type deliverBatch struct {
	items  []*deliverItem
	cancel []uint64
}

func (b *deliverBatch) appendWire(dst []byte) []byte {
	n := batchOverhead(len(b.cancel))
	for _, it := range b.items {
		n += it.wireSize()
	}
	dst = slices.Grow(dst, n)
	item, sub := make([]byte, 0, scratchSize), make([]byte, 0, scratchSize)
	for _, it := range b.items {
		item = appendVarint(item[:0], 1, it.id)
		item = appendVarint(item, 2, uint64(it.timeout))
		item = appendString(item, 3, it.d.DeliveryID)
		sub = appendDestination(sub[:0], it.d.Destination)
		item = protowire.AppendTag(item, 4, protowire.BytesType)
		item = protowire.AppendBytes(item, sub)
		sub = appendNotification(sub[:0], it.d.Notification)
		item = protowire.AppendTag(item, 5, protowire.BytesType)
		item = protowire.AppendBytes(item, sub)
		dst = protowire.AppendTag(dst, 1, protowire.BytesType)
		dst = protowire.AppendBytes(dst, item)
	}
	return appendPacked(dst, 2, b.cancel)
}

// Sizes for the capacity a batch's encoding is given up front: a batch is
// encoded once into a buffer that does not grow (growing it from nil cost
// ~1.4 KB of garbage per event), with item and sub-message scratch
// buffers shared by its items. The sizes are generous estimates: tags and
// length prefixes are a few bytes each.
const (
	itemOverhead  = 48
	fieldOverhead = 6
	scratchSize   = 1024
)

func batchOverhead(cancels int) int { return 16 + 10*cancels }

// wireSize is an estimate of the item's size on the wire, never below it.
func (it *encodeItem) wireSize() int { return itemOverhead + len(it.encoder) + eventSize(it.ev) }

func (it *deliverItem) wireSize() int {
	return itemOverhead + len(it.d.DeliveryID) + destinationSize(it.d.Destination) + notificationSize(it.d.Notification)
}

func eventSize(ev Event) int {
	return 5*fieldOverhead + len(ev.Type) + len(ev.AccountID) + len(ev.ProjectID) + len(ev.DeliveryID) + len(ev.Payload)
}

func destinationSize(d Destination) int {
	n := fieldOverhead + len(d.URL)
	for _, h := range d.Headers {
		n += 3*fieldOverhead + len(h.Key) + len(h.Value)
	}
	return n
}

func notificationSize(nt Notification) int {
	n := 0
	for _, f := range nt.Fields {
		n += 4*fieldOverhead + len(f.Name) + len(f.Value.Text)
	}
	return n
}

// appendEvent appends an Event message's fields.
func appendEvent(dst []byte, ev Event) []byte {
	dst = appendString(dst, 1, ev.Type)
	dst = appendString(dst, 2, ev.AccountID)
	dst = appendString(dst, 3, ev.ProjectID)
	dst = appendString(dst, 4, ev.DeliveryID)
	if len(ev.Payload) > 0 {
		dst = protowire.AppendTag(dst, 5, protowire.BytesType)
		dst = protowire.AppendBytes(dst, ev.Payload)
	}
	return dst
}

// appendDestination appends a Destination message's fields.
func appendDestination(dst []byte, d Destination) []byte {
	dst = appendString(dst, 1, d.URL)
	var buf [256]byte
	hdr := buf[:0]
	for _, h := range d.Headers {
		hdr = appendString(hdr[:0], 1, h.Key)
		hdr = appendString(hdr, 2, h.Value)
		dst = protowire.AppendTag(dst, 2, protowire.BytesType)
		dst = protowire.AppendBytes(dst, hdr)
	}
	return dst
}

// appendNotification appends a Notification message's fields.
func appendNotification(dst []byte, n Notification) []byte {
	var buf [256]byte
	f := buf[:0]
	for _, fl := range n.Fields {
		f = appendString(f[:0], 1, fl.Name)
		f = appendVarint(f, 2, uint64(fl.Value.Kind))
		f = appendString(f, 3, fl.Value.Text)
		dst = protowire.AppendTag(dst, 1, protowire.BytesType)
		dst = protowire.AppendBytes(dst, f)
	}
	return dst
}

// appendString appends a string field; proto3 omits the empty string.
func appendString(dst []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return dst
	}
	dst = protowire.AppendTag(dst, num, protowire.BytesType)
	return protowire.AppendString(dst, s)
}

// appendVarint appends an integer field; proto3 omits zero.
func appendVarint(dst []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return dst
	}
	dst = protowire.AppendTag(dst, num, protowire.VarintType)
	return protowire.AppendVarint(dst, v)
}

func appendPacked(dst []byte, num protowire.Number, vs []uint64) []byte {
	if len(vs) == 0 {
		return dst
	}
	n := 0
	for _, v := range vs {
		n += protowire.SizeVarint(v)
	}
	dst = protowire.AppendTag(dst, num, protowire.BytesType)
	dst = protowire.AppendVarint(dst, uint64(n))
	for _, v := range vs {
		dst = protowire.AppendVarint(dst, v)
	}
	return dst
}

// ---- incoming ----

// wireError is an Error message.
type wireError struct {
	code    int32
	message string
}

// encodeResult is an EncodeResult.
type encodeResult struct {
	id  uint64
	out Encoded
	err *wireError
}

// encodeReplies is an EncodeResponse.
type encodeReplies struct {
	items []*encodeResult
}

func (r *encodeReplies) unmarshalWire(s string) error {
	return eachField(s, func(num protowire.Number, typ protowire.Type, v uint64, b string) error {
		if num != 1 || typ != protowire.BytesType {
			return nil
		}
		res := &encodeResult{}
		err := parseEncodeResult(b, res)
		r.items = append(r.items, res)
		return err
	})
}

func parseEncodeResult(s string, res *encodeResult) error {
	return eachField(s, func(num protowire.Number, typ protowire.Type, v uint64, b string) error {
		switch {
		case num == 1 && typ == protowire.VarintType:
			res.id = v
		case num == 2 && typ == protowire.BytesType:
			n, err := parseNotification(b)
			res.out.Notification = n
			return err
		case num == 3 && typ == protowire.BytesType:
			res.out.SkipReason = b
		case num == 4 && typ == protowire.BytesType:
			e, err := parseError(b)
			res.err = e
			return err
		}
		return nil
	})
}

// deliverResult is a DeliverResult.
type deliverResult struct {
	id  uint64
	res Result
	err *wireError
}

// deliverReplies is a DeliverResponse.
type deliverReplies struct {
	items []*deliverResult
}

// outcomes interns the outcomes of SPEC §5, so that they cost no string.
var outcomes = map[string]Outcome{
	string(OutcomeDelivered): OutcomeDelivered, string(OutcomeRetryable): OutcomeRetryable,
	string(OutcomeFinal): OutcomeFinal, string(OutcomeNotAllowed): OutcomeNotAllowed,
}

func (r *deliverReplies) unmarshalWire(s string) error {
	return eachField(s, func(num protowire.Number, typ protowire.Type, v uint64, b string) error {
		if num != 1 || typ != protowire.BytesType {
			return nil
		}
		dr := &deliverResult{}
		err := eachField(b, func(num protowire.Number, typ protowire.Type, v uint64, b string) error {
			switch {
			case num == 1 && typ == protowire.VarintType:
				dr.id = v
			case num == 2 && typ == protowire.BytesType:
				return parseResult(b, &dr.res)
			case num == 3 && typ == protowire.BytesType:
				e, err := parseError(b)
				dr.err = e
				return err
			}
			return nil
		})
		r.items = append(r.items, dr)
		return err
	})
}

func parseResult(s string, res *Result) error {
	return eachField(s, func(num protowire.Number, typ protowire.Type, v uint64, b string) error {
		switch {
		case num == 1 && typ == protowire.VarintType:
			res.StatusCode = int(int32(v))
		case num == 2 && typ == protowire.BytesType:
			if o, ok := outcomes[b]; ok {
				res.Outcome = o
			} else {
				res.Outcome = Outcome(b)
			}
		case num == 3 && typ == protowire.VarintType:
			res.RetryAfter = time.Duration(int64(v))
		case num == 4 && typ == protowire.BytesType:
			res.Error = b
		case num == 5 && typ == protowire.BytesType:
			res.ResponseExcerpt = b
		case num == 6 && typ == protowire.VarintType:
			res.Duration = time.Duration(int64(v))
		}
		return nil
	})
}

func parseNotification(s string) (Notification, error) {
	// Count the fields first, so that they take one allocation.
	n := 0
	if err := eachField(s, func(num protowire.Number, typ protowire.Type, _ uint64, _ string) error {
		if num == 1 && typ == protowire.BytesType {
			n++
		}
		return nil
	}); err != nil {
		return Notification{}, err
	}
	if n == 0 {
		return Notification{}, nil
	}
	fields := make([]Field, 0, n)
	err := eachField(s, func(num protowire.Number, typ protowire.Type, _ uint64, b string) error {
		if num != 1 || typ != protowire.BytesType {
			return nil
		}
		var f Field
		err := eachField(b, func(num protowire.Number, typ protowire.Type, v uint64, b string) error {
			switch {
			case num == 1 && typ == protowire.BytesType:
				f.Name = b
			case num == 2 && typ == protowire.VarintType:
				f.Value.Kind = Kind(v)
			case num == 3 && typ == protowire.BytesType:
				f.Value.Text = b
			}
			return nil
		})
		fields = append(fields, f)
		return err
	})
	return Notification{Fields: fields}, err
}

// asError is the host's error for e (see errorFromPB).
func (e *wireError) asError(plugin string) error {
	return codeError(plugin, pluginpb.ErrorCode(e.code), e.message)
}

func parseError(s string) (*wireError, error) {
	e := &wireError{}
	err := eachField(s, func(num protowire.Number, typ protowire.Type, v uint64, b string) error {
		switch {
		case num == 1 && typ == protowire.VarintType:
			e.code = int32(v)
		case num == 2 && typ == protowire.BytesType:
			e.message = b
		}
		return nil
	})
	return e, err
}

// eachField calls fn for each field of the message s: its number, its wire
// type, and its value (v for varints and fixed-size values, b for
// length-delimited ones, a substring of s). Groups are skipped.
func eachField(s string, fn func(num protowire.Number, typ protowire.Type, v uint64, b string) error) error {
	b := unsafe.Slice(unsafe.StringData(s), len(s)) // read only
	for off := 0; off < len(b); {
		num, typ, n := protowire.ConsumeTag(b[off:])
		if n < 0 {
			return fmt.Errorf("%w: %v", errBadWire, protowire.ParseError(n))
		}
		off += n
		var v uint64
		var sub string
		switch typ {
		case protowire.VarintType:
			v, n = protowire.ConsumeVarint(b[off:])
		case protowire.Fixed32Type:
			var x uint32
			x, n = protowire.ConsumeFixed32(b[off:])
			v = uint64(x)
		case protowire.Fixed64Type:
			v, n = protowire.ConsumeFixed64(b[off:])
		case protowire.BytesType:
			var m []byte
			m, n = protowire.ConsumeBytes(b[off:])
			if n >= 0 {
				start := off + n - len(m)
				sub = s[start : start+len(m)]
			}
		default:
			n = protowire.ConsumeFieldValue(num, typ, b[off:])
		}
		if n < 0 {
			return fmt.Errorf("%w: %v", errBadWire, protowire.ParseError(n))
		}
		off += n
		if typ == protowire.StartGroupType || typ == protowire.EndGroupType {
			continue
		}
		if err := fn(num, typ, v, sub); err != nil {
			return err
		}
	}
	return nil
}
