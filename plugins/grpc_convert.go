package plugins

import (
	"context"
	"errors"
	"fmt"
	"time"
	"unsafe"

	"github.com/callbackd/callbackd/plugins/pluginpb"
)

// This file maps the Go values of the contract to their protobuf form and
// back. Every mapping is exact: a value that crosses twice comes back
// equal.

func notificationToPB(n Notification) *pluginpb.Notification {
	if len(n.Fields) == 0 {
		return &pluginpb.Notification{}
	}
	// One allocation for all fields instead of one each.
	slab := make([]pluginpb.Field, len(n.Fields))
	fields := make([]*pluginpb.Field, len(n.Fields))
	for i, f := range n.Fields {
		slab[i].Name = bytesOf(f.Name)
		slab[i].Kind = pluginpb.Kind(f.Value.Kind)
		slab[i].Text = bytesOf(f.Value.Text)
		fields[i] = &slab[i]
	}
	return &pluginpb.Notification{Fields: fields}
}

func notificationFromPB(n *pluginpb.Notification) Notification {
	if n == nil || len(n.Fields) == 0 {
		return Notification{}
	}
	fields := make([]Field, len(n.Fields))
	for i, f := range n.Fields {
		fields[i] = Field{Name: str(f.GetName()), Value: Value{Kind: Kind(f.GetKind()), Text: str(f.GetText())}}
	}
	return Notification{Fields: fields}
}

func destinationToPB(d Destination) *pluginpb.Destination {
	out := &pluginpb.Destination{Url: bytesOf(d.URL)}
	if len(d.Headers) > 0 {
		slab := make([]pluginpb.Header, len(d.Headers))
		out.Headers = make([]*pluginpb.Header, len(d.Headers))
		for i, h := range d.Headers {
			slab[i].Key, slab[i].Value = bytesOf(h.Key), bytesOf(h.Value)
			out.Headers[i] = &slab[i]
		}
	}
	return out
}

func destinationFromPB(d *pluginpb.Destination) Destination {
	out := Destination{URL: str(d.GetUrl())}
	if len(d.GetHeaders()) > 0 {
		out.Headers = make([]Header, len(d.Headers))
		for i, h := range d.Headers {
			out.Headers[i] = Header{Key: str(h.GetKey()), Value: str(h.GetValue())}
		}
	}
	return out
}

func eventToPB(ev Event) *pluginpb.Event {
	return &pluginpb.Event{
		Type: ev.Type, AccountId: ev.AccountID, ProjectId: ev.ProjectID,
		DeliveryId: ev.DeliveryID, Payload: ev.Payload,
	}
}

func eventFromPB(ev *pluginpb.Event) Event {
	return Event{
		Type: ev.GetType(), AccountID: ev.GetAccountId(), ProjectID: ev.GetProjectId(),
		DeliveryID: ev.GetDeliveryId(), Payload: ev.GetPayload(),
	}
}

func resultToPB(r Result) *pluginpb.Result {
	return &pluginpb.Result{
		StatusCode:      int32(r.StatusCode),
		Outcome:         bytesOf(string(r.Outcome)),
		RetryAfterNs:    int64(r.RetryAfter),
		Error:           bytesOf(r.Error),
		ResponseExcerpt: bytesOf(r.ResponseExcerpt),
		DurationNs:      int64(r.Duration),
	}
}

func failureToPB(f Failure) *pluginpb.Failure {
	out := &pluginpb.Failure{
		EventType:    f.EventType,
		AccountId:    f.AccountID,
		ProjectId:    f.ProjectID,
		DeliveryId:   f.DeliveryID,
		CallbackUrl:  bytesOf(f.CallbackURL),
		StatusCode:   int32(f.StatusCode),
		Error:        bytesOf(f.Error),
		Attempts:     int32(f.Attempts),
		Notification: notificationToPB(f.Notification),
		IdFields:     f.IDFields,
	}
	if !f.FailedAt.IsZero() {
		out.FailedAtUnixNs = f.FailedAt.UnixNano()
	}
	if f.SSOWebhook != nil {
		out.SsoWebhook = destinationToPB(*f.SSOWebhook)
	}
	return out
}

func failureFromPB(f *pluginpb.Failure) Failure {
	out := Failure{
		EventType:    f.GetEventType(),
		AccountID:    f.GetAccountId(),
		ProjectID:    f.GetProjectId(),
		DeliveryID:   f.GetDeliveryId(),
		CallbackURL:  str(f.GetCallbackUrl()),
		StatusCode:   int(f.GetStatusCode()),
		Error:        str(f.GetError()),
		Attempts:     int(f.GetAttempts()),
		Notification: notificationFromPB(f.GetNotification()),
		IDFields:     f.GetIdFields(),
	}
	if ns := f.GetFailedAtUnixNs(); ns != 0 {
		out.FailedAt = time.Unix(0, ns).UTC()
	}
	if f.SsoWebhook != nil {
		d := destinationFromPB(f.SsoWebhook)
		out.SSOWebhook = &d
	}
	return out
}

func encoderInfoToPB(name string, info EncoderInfo) *pluginpb.EncoderInfo {
	return &pluginpb.EncoderInfo{Name: name, EventType: info.EventType, IdFields: info.IDFields}
}

// errorToPB classifies an implementation's error for the wire; nil for nil.
func errorToPB(err error) *pluginpb.Error {
	if err == nil {
		return nil
	}
	code := pluginpb.ErrorCode_ERROR_CODE_INTERNAL
	switch {
	case errors.Is(err, ErrInvalidEvent):
		code = pluginpb.ErrorCode_ERROR_CODE_INVALID_EVENT
	case errors.Is(err, context.DeadlineExceeded):
		code = pluginpb.ErrorCode_ERROR_CODE_DEADLINE_EXCEEDED
	case errors.Is(err, context.Canceled):
		code = pluginpb.ErrorCode_ERROR_CODE_CANCELED
	case errors.Is(err, ErrHostBusy):
		code = pluginpb.ErrorCode_ERROR_CODE_HOST_BUSY
	}
	return &pluginpb.Error{Code: code, Message: []byte(err.Error())}
}

// errorFromPB makes the host's error of a plugin's error: an invalid event
// stays one (errors.Is(err, ErrInvalidEvent)); a deadline stays one
// (errors.Is(err, context.DeadlineExceeded)), and so do a cancellation and
// a busy host (ErrHostBusy); anything else wraps
// ErrPluginFailed. plugin names the plugin in the message.
func errorFromPB(plugin string, e *pluginpb.Error) error {
	if e == nil {
		return nil
	}
	return codeError(plugin, e.GetCode(), string(e.GetMessage()))
}

func codeError(plugin string, code pluginpb.ErrorCode, msg string) error {
	switch code {
	case pluginpb.ErrorCode_ERROR_CODE_INVALID_EVENT:
		// The plugin's own message already says what is wrong; the
		// dispatcher dead-letters with it, so it is kept as it is.
		return &invalidError{msg: msg}
	case pluginpb.ErrorCode_ERROR_CODE_DEADLINE_EXCEEDED:
		return fmt.Errorf("plugin %s: %s: %w", plugin, msg, context.DeadlineExceeded)
	case pluginpb.ErrorCode_ERROR_CODE_CANCELED:
		return fmt.Errorf("plugin %s: %s: %w", plugin, msg, context.Canceled)
	case pluginpb.ErrorCode_ERROR_CODE_HOST_BUSY:
		return fmt.Errorf("plugin %s: %s: %w", plugin, msg, ErrHostBusy)
	default:
		return fmt.Errorf("%w: %s: %s", ErrPluginFailed, plugin, msg)
	}
}

// bytesOf views s as bytes without a copy, for messages that are only
// marshalled: nothing may write to the result.
func bytesOf(s string) []byte {
	if s == "" {
		return nil
	}
	return unsafe.Slice(unsafe.StringData(s), len(s))
}

// str views b as a string without a copy. b must be a buffer nothing
// writes to again: the fields of a message just unmarshalled, which
// protobuf copies out of the wire buffer.
func str(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(unsafe.SliceData(b), len(b))
}
