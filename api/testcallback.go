package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/vektah/gqlparser/v2/gqlerror"

	"github.com/callbackd/callbackd/api/internal/gql"
	"github.com/callbackd/callbackd/deliverylog"
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
	id := testDeliveryID()
	rec := deliverylog.Record{DeliveryID: id, EventType: testCallbackMessage, AccountID: aid, ProjectID: pid}
	if !found {
		rec.Outcome = deliverylog.OutcomeNoDestination
		rec.Error = fmt.Sprintf("project %s has no apiCallbackUrl", pid)
		if aid != "" {
			rec.Error += fmt.Sprintf(" and account %s has none either", aid)
		}
		rec.At = time.Now().UTC()
		return m.s.recordTest(ctx, rec), nil
	}

	rec.StartedAt = time.Now().UTC()
	n := plugins.Notification{Fields: []plugins.Field{
		{Name: "message", Value: plugins.String(testCallbackMessage)},
		{Name: "resource", Value: plugins.String(testCallbackResource)},
		{Name: "project_id", Value: plugins.Number(pid)},
		{Name: "account_id", Value: numberOrEmpty(aid)},
		{Name: "sent_at", Value: plugins.String(rec.StartedAt.Format(time.RFC3339))},
	}}
	// The request's answer must go out before the server's write timeout,
	// however many test callbacks it holds: each is cut off at the
	// request's deadline.
	deadline := requestStart(ctx).Add(m.s.testTime)
	if time.Until(deadline) <= 0 {
		return nil, timeLimit(fmt.Sprintf("test callback not sent: the request reached its time limit for test callbacks (%s); send it in a request of its own", m.s.testTime))
	}
	tctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	res, err := m.s.transport.Deliver(tctx, plugins.Delivery{DeliveryID: id, Destination: dest, Notification: n})
	if err != nil && ctx.Err() == nil && tctx.Err() != nil {
		return nil, timeLimit(fmt.Sprintf("test callback cut off at the request's time limit for test callbacks (%s); it may have reached the endpoint", m.s.testTime))
	}
	if err != nil {
		return nil, fmt.Errorf("send test callback: %w", err)
	}
	rec.URL = plugins.SafeURL(dest.URL)
	rec.Attempt = 1
	rec.Outcome = testOutcome(res.Outcome)
	m.s.log.Info("api: test callback sent", "project_id", pid, "account_id", aid, "url", rec.URL,
		"outcome", rec.Outcome, "status", res.StatusCode) // the outcome the answer and the delivery log give
	rec.StatusCode = res.StatusCode
	rec.Error = plugins.RedactDestination(res.Error, dest.URL) // a third-party transport may quote the URL whole
	rec.DurationMs = res.Duration.Milliseconds()
	rec.ResponseExcerpt = res.ResponseExcerpt
	rec.At = time.Now().UTC()
	return m.s.recordTest(ctx, rec), nil
}

// timeLimit is the error of a test callback that the request's deadline
// stopped.
func timeLimit(msg string) error {
	return &gqlerror.Error{Message: msg, Extensions: map[string]any{"code": "TIME_LIMIT_EXCEEDED"}}
}

// recordTest stores a test callback's record in the delivery log, so that
// it is listed like every attempt (SPEC §1: every attempt → delivery log),
// and returns it as the Delivery it is listed as. When it cannot be stored
// (the log is best effort) the answer still goes out, its ID made from the
// test's delivery id instead of the log's sequence.
func (s *Server) recordTest(ctx context.Context, rec deliverylog.Record) *gql.Delivery {
	key := rec.DeliveryID
	if s.recorder != nil {
		k, err := s.recorder.Append(ctx, rec)
		if err == nil {
			key = k
		} else {
			s.log.Warn("api: test callback not recorded in the delivery log", "delivery_id", rec.DeliveryID, "err", err)
		}
	}
	return deliveryOut(key, rec)
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

// testOutcome maps a transport outcome to the log's. A test callback is
// never retried, so a retryable answer is a failure.
func testOutcome(o plugins.Outcome) string {
	switch o {
	case plugins.OutcomeDelivered:
		return deliverylog.OutcomeDelivered
	case plugins.OutcomeNotAllowed:
		return deliverylog.OutcomeDestinationNotAllowed
	default:
		return deliverylog.OutcomeFailed
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
