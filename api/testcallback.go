package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/callbackd/callbackd/api/internal/gql"
	"github.com/callbackd/callbackd/plugins"
)

// Fields of a test callback (SPEC §4).
const (
	testCallbackMessage  = "test_callback"
	testCallbackResource = "api_callback"
)

// SendTestCallback delivers message=test_callback to the project's URL, or
// the account's when the project has none and accountId is given, through
// the transport (so the outbound policy applies), and returns the attempt.
// With no URL to deliver to, it returns a Delivery with status
// NO_DESTINATION rather than an error: the call worked, and its answer is
// that nothing would be delivered.
func (m mutationResolver) SendTestCallback(ctx context.Context, projectID string, accountID *string) (*gql.Delivery, error) {
	var errs fieldErrors
	pid, err := ParseID(TypeProject, projectID)
	if err != nil {
		errs.add("projectId", "%s", trimBadID(err))
	}
	var aid string
	if accountID != nil {
		if aid, err = ParseID(TypeAccount, *accountID); err != nil {
			errs.add("accountId", "%s", trimBadID(err))
		}
	}
	if err := errs.err(); err != nil {
		return nil, err
	}
	if m.s.transport == nil {
		return nil, unavailable("test callbacks (no transport)")
	}

	dest, found, err := m.s.effectiveDestination(ctx, pid, aid)
	if err != nil {
		return nil, err
	}
	now := time.Now().UTC()
	id := testDeliveryID()
	out := &gql.Delivery{
		ID:         GlobalID(TypeDelivery, id),
		DeliveryID: id,
		EventType:  testCallbackMessage,
		AccountID:  optGlobalID(TypeAccount, aid),
		ProjectID:  GlobalID(TypeProject, pid),
		At:         now.Format(time.RFC3339Nano),
	}
	if !found {
		out.Status = gql.DeliveryStatusNoDestination
		msg := fmt.Sprintf("project %s has no apiCallbackUrl", pid)
		if aid != "" {
			msg += fmt.Sprintf(" and account %s has none either", aid)
		}
		out.Error = &msg
		return out, nil
	}

	n := plugins.Notification{Fields: []plugins.Field{
		{Name: "message", Value: plugins.String(testCallbackMessage)},
		{Name: "resource", Value: plugins.String(testCallbackResource)},
		{Name: "project_id", Value: plugins.Number(pid)},
		{Name: "account_id", Value: numberOrEmpty(aid)},
		{Name: "sent_at", Value: plugins.String(now.Format(time.RFC3339))},
	}}
	res, err := m.s.transport.Deliver(ctx, plugins.Delivery{DeliveryID: id, Destination: dest, Notification: n})
	if err != nil {
		return nil, fmt.Errorf("send test callback: %w", err)
	}
	m.s.log.Info("api: test callback sent", "project_id", pid, "account_id", aid, "url", plugins.SafeURL(dest.URL),
		"outcome", res.Outcome, "status", res.StatusCode)
	safe := plugins.SafeURL(dest.URL)
	out.URL = &safe
	out.Attempt = 1
	out.Status = testStatus(res.Outcome)
	out.StatusCode = optInt(res.StatusCode)
	out.Error = optString(res.Error)
	ms := int(res.Duration.Milliseconds())
	out.DurationMs = &ms
	out.ResponseExcerpt = optString(res.ResponseExcerpt)
	return out, nil
}

// effectiveDestination is where an event of the project (and account, when
// aid is not "") would go now: the project's URL and headers, else the
// account's. It reads the store, so a setting written just before counts.
func (s *Server) effectiveDestination(ctx context.Context, pid, aid string) (plugins.Destination, bool, error) {
	p, err := s.store.Project(ctx, pid)
	if err != nil {
		return plugins.Destination{}, false, err
	}
	if p.APICallbackURL != nil {
		return plugins.Destination{URL: *p.APICallbackURL, Headers: toPluginHeaders(p.APICallbackHeaders)}, true, nil
	}
	if aid == "" {
		return plugins.Destination{}, false, nil
	}
	a, err := s.store.Account(ctx, aid)
	if err != nil {
		return plugins.Destination{}, false, err
	}
	if a.APICallbackURL != nil {
		return plugins.Destination{URL: *a.APICallbackURL, Headers: toPluginHeaders(a.APICallbackHeaders)}, true, nil
	}
	return plugins.Destination{}, false, nil
}

// testStatus maps a transport outcome to a DeliveryStatus. A test callback
// is never retried, so a retryable answer is FAILED.
func testStatus(o plugins.Outcome) gql.DeliveryStatus {
	switch o {
	case plugins.OutcomeDelivered:
		return gql.DeliveryStatusDelivered
	case plugins.OutcomeNotAllowed:
		return gql.DeliveryStatusDestinationNotAllowed
	default:
		return gql.DeliveryStatusFailed
	}
}

// testDeliveryID is the Callback-Delivery-Id of a test callback: "test-"
// and 16 random hex digits, so a receiver can tell it from an event's.
func testDeliveryID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return "test-" + hex.EncodeToString(b)
}

// numberOrEmpty renders an ID as a number, or "" when not available.
func numberOrEmpty(id string) plugins.Value {
	if id == "" {
		return plugins.String("")
	}
	return plugins.Number(id)
}
