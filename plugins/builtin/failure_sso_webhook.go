package builtin

import (
	"context"
	"strconv"
	"time"

	"github.com/callbackd/callbackd/plugins"
)

// SSOWebhook is the built-in failure handler: it tells the account's SSO
// client that a callback failed for good, with the callback_failed
// notification of SPEC §3. Stateless and safe for concurrent use.
type SSOWebhook struct{}

// NewSSOWebhook returns the sso-webhook failure handler.
func NewSSOWebhook() *SSOWebhook { return &SSOWebhook{} }

// OnFailure returns one callback_failed notification for the account's SSO
// client webhook, or none when the account has no SSO client or the client
// has no webhook URL.
func (*SSOWebhook) OnFailure(_ context.Context, f plugins.Failure) ([]plugins.Outbound, error) {
	if f.SSOWebhook == nil || f.SSOWebhook.URL == "" {
		return nil, nil
	}
	return []plugins.Outbound{{Destination: *f.SSOWebhook, Notification: CallbackFailed(f)}}, nil
}

// CallbackFailed builds the callback_failed notification for f, fields in
// the order of SPEC §3. callback_url drops userinfo and query, which may
// hold the customer's secrets.
func CallbackFailed(f plugins.Failure) plugins.Notification {
	failedMessage, ok := f.Notification.Get("message")
	if !ok {
		failedMessage = plugins.String(f.EventType)
	}
	status := plugins.String("")
	if f.StatusCode > 0 {
		status = plugins.Int(int64(f.StatusCode))
	}
	orig := func(name string) plugins.Value {
		if v, ok := f.Notification.Get(name); ok {
			return v
		}
		return plugins.String("")
	}
	failedAt := f.FailedAt
	if failedAt.IsZero() {
		failedAt = time.Now()
	}
	fields := make([]plugins.Field, 0, 14+len(f.IDFields))
	fields = append(fields,
		plugins.Field{Name: "message", Value: plugins.String("callback_failed")},
		plugins.Field{Name: "resource", Value: plugins.String("api_callback")},
		plugins.Field{Name: "failed_message", Value: failedMessage},
		plugins.Field{Name: "callback_url", Value: plugins.String(safeCallbackURL(f.CallbackURL))},
		plugins.Field{Name: "status_code", Value: status},
		plugins.Field{Name: "error", Value: plugins.String(f.Error)},
		plugins.Field{Name: "attempts", Value: plugins.Int(int64(f.Attempts))},
		plugins.Field{Name: "delivery_id", Value: plugins.String(f.DeliveryID)},
		plugins.Field{Name: "account_id", Value: idValue(f.AccountID)},
		plugins.Field{Name: "project_id", Value: idValue(f.ProjectID)},
		plugins.Field{Name: "user_id", Value: orig("user_id")},
		plugins.Field{Name: "partner_account_id", Value: orig("partner_account_id")},
		plugins.Field{Name: "partner_user_id", Value: orig("partner_user_id")},
	)
	for _, name := range f.IDFields {
		fields = append(fields, plugins.Field{Name: name, Value: orig(name)})
	}
	fields = append(fields, plugins.Field{Name: "failed_at", Value: plugins.String(failedAt.UTC().Format(time.RFC3339))})
	return plugins.Notification{Fields: fields}
}

func safeCallbackURL(u string) string {
	if u == "" {
		return ""
	}
	return plugins.SafeURL(u)
}

// idValue renders a decimal ID from a subject as a JSON number.
func idValue(id string) plugins.Value {
	if _, err := strconv.ParseUint(id, 10, 64); err != nil {
		return plugins.String(id)
	}
	return plugins.Number(id)
}
