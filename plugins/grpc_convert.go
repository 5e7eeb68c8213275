package plugins

import (
	"context"
	"errors"
	"fmt"
	"time"

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
		slab[i].Name = f.Name
		slab[i].Kind = pluginpb.Kind(f.Value.Kind)
		slab[i].Text = f.Value.Text
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
		fields[i] = Field{Name: f.GetName(), Value: Value{Kind: Kind(f.GetKind()), Text: f.GetText()}}
	}
	return Notification{Fields: fields}
}

func destinationToPB(d Destination) *pluginpb.Destination {
	out := &pluginpb.Destination{Url: d.URL}
	if len(d.Headers) > 0 {
		slab := make([]pluginpb.Header, len(d.Headers))
		out.Headers = make([]*pluginpb.Header, len(d.Headers))
		for i, h := range d.Headers {
			slab[i].Key, slab[i].Value = h.Key, h.Value
			out.Headers[i] = &slab[i]
		}
	}
	return out
}

func destinationFromPB(d *pluginpb.Destination) Destination {
	out := Destination{URL: d.GetUrl()}
	if len(d.GetHeaders()) > 0 {
		out.Headers = make([]Header, len(d.Headers))
		for i, h := range d.Headers {
			out.Headers[i] = Header{Key: h.GetKey(), Value: h.GetValue()}
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
		Outcome:         string(r.Outcome),
		RetryAfterNs:    int64(r.RetryAfter),
		Error:           r.Error,
		ResponseExcerpt: r.ResponseExcerpt,
		DurationNs:      int64(r.Duration),
	}
}

func resultFromPB(r *pluginpb.Result) Result {
	return Result{
		StatusCode:      int(r.GetStatusCode()),
		Outcome:         Outcome(r.GetOutcome()),
		RetryAfter:      time.Duration(r.GetRetryAfterNs()),
		Error:           r.GetError(),
		ResponseExcerpt: r.GetResponseExcerpt(),
		Duration:        time.Duration(r.GetDurationNs()),
	}
}

func failureToPB(f Failure) *pluginpb.Failure {
	out := &pluginpb.Failure{
		EventType:    f.EventType,
		AccountId:    f.AccountID,
		ProjectId:    f.ProjectID,
		DeliveryId:   f.DeliveryID,
		CallbackUrl:  f.CallbackURL,
		StatusCode:   int32(f.StatusCode),
		Error:        f.Error,
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
		CallbackURL:  f.GetCallbackUrl(),
		StatusCode:   int(f.GetStatusCode()),
		Error:        f.GetError(),
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
	}
	return &pluginpb.Error{Code: code, Message: err.Error()}
}

// errorFromPB makes the host's error of a plugin's error: an invalid event
// stays one (errors.Is(err, ErrInvalidEvent)); a deadline stays one
// (errors.Is(err, context.DeadlineExceeded)); anything else wraps
// ErrPluginFailed. plugin names the plugin in the message.
func errorFromPB(plugin string, e *pluginpb.Error) error {
	if e == nil {
		return nil
	}
	switch e.GetCode() {
	case pluginpb.ErrorCode_ERROR_CODE_INVALID_EVENT:
		// The plugin's own message already says what is wrong; the
		// dispatcher dead-letters with it, so it is kept as it is.
		return &invalidError{msg: e.GetMessage()}
	case pluginpb.ErrorCode_ERROR_CODE_DEADLINE_EXCEEDED:
		return fmt.Errorf("plugin %s: %s: %w", plugin, e.GetMessage(), context.DeadlineExceeded)
	case pluginpb.ErrorCode_ERROR_CODE_CANCELED:
		return fmt.Errorf("plugin %s: %s: %w", plugin, e.GetMessage(), context.Canceled)
	default:
		return fmt.Errorf("%w: %s: %s", ErrPluginFailed, plugin, e.GetMessage())
	}
}
