package api

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/99designs/gqlgen/graphql"
	"github.com/vektah/gqlparser/v2/gqlerror"

	"github.com/callbackd/callbackd/api/internal/gql"
	"github.com/callbackd/callbackd/deadletters"
	"github.com/callbackd/callbackd/deliverylog"
	"github.com/callbackd/callbackd/subjects"
)

// DeliveryFilter selects delivery-log records for the deliveries query.
type DeliveryFilter struct {
	// AccountID and ProjectID are plain numbers; "" matches any.
	AccountID string
	ProjectID string
	// Outcome is a deliverylog outcome (deliverylog.OutcomeDelivered …); ""
	// matches any.
	Outcome string
	// First is how many records to return, 1 to MaxDeliveriesFirst.
	First int
	// After is the cursor of the last record of the previous page; ""
	// starts at the beginning.
	After string
}

// LoggedDelivery is one record of the delivery log with its place in it.
type LoggedDelivery struct {
	// Key identifies the record for good, for example its CALLBACKS_LOG
	// sequence; the API returns it as the global ID of a Delivery.
	Key string
	// Cursor is what DeliveryFilter.After takes to continue after it.
	Cursor string
	Record deliverylog.Record
}

// DeliveryPage is one page of the delivery log.
type DeliveryPage struct {
	Deliveries  []LoggedDelivery
	HasNextPage bool
}

// DeliveryLog is what the deliveries query needs of the delivery log.
type DeliveryLog interface {
	Query(ctx context.Context, f DeliveryFilter) (DeliveryPage, error)
}

// DeliveryRecorder stores one record in the delivery log and returns its
// key (as LoggedDelivery.Key): sendTestCallback records its attempt so that
// it is in the log like every other and its Delivery has the ID it is
// listed under.
type DeliveryRecorder interface {
	Append(ctx context.Context, r deliverylog.Record) (key string, err error)
}

// DeliveryLogFunc adapts a function to DeliveryLog.
type DeliveryLogFunc func(ctx context.Context, f DeliveryFilter) (DeliveryPage, error)

// Query calls fn.
func (fn DeliveryLogFunc) Query(ctx context.Context, f DeliveryFilter) (DeliveryPage, error) {
	return fn(ctx, f)
}

// ReplayFilter selects the dead letters replayDeadLetters sends back.
type ReplayFilter struct {
	// AccountID and ProjectID are plain numbers; "" matches any.
	AccountID string
	ProjectID string
	// EventType and Reason ("delivery_failed" …) match exactly; "" matches any.
	EventType string
	Reason    string
	// Since and Until bound when the dead letter was made; zero is open.
	Since time.Time
	Until time.Time
	// DryRun counts the matches and replays nothing.
	DryRun bool
}

// ReplayResult is what a replay did.
type ReplayResult struct {
	// Matched is how many dead letters matched the filter.
	Matched int
	// Replayed is how many of them were sent back and deleted.
	Replayed int
}

// Replayer is what replayDeadLetters needs of the dead-letter replay.
// Replay stops when ctx ends; on error it returns what it did before the
// error with it (as deadletters.Replay does), and replayDeadLetters reports
// both.
type Replayer interface {
	Replay(ctx context.Context, f ReplayFilter) (ReplayResult, error)
}

// ReplayerFunc adapts a function to Replayer.
type ReplayerFunc func(ctx context.Context, f ReplayFilter) (ReplayResult, error)

// Replay calls fn.
func (fn ReplayerFunc) Replay(ctx context.Context, f ReplayFilter) (ReplayResult, error) {
	return fn(ctx, f)
}

// unavailable is the GraphQL error of a resolver whose backing service the
// server was not given.
func unavailable(what string) error {
	return &gqlerror.Error{
		Message:    fmt.Sprintf("%s: %s", what, ErrUnavailable),
		Extensions: map[string]any{"code": codeUnavailable},
	}
}

func (q queryResolver) Deliveries(ctx context.Context, projectID, accountID *string, status *gql.DeliveryStatus, first *int, after *string) (*gql.DeliveryConnection, error) {
	var errs fieldErrors
	f := DeliveryFilter{First: 50}
	if projectID != nil {
		id, err := ParseID(TypeProject, *projectID)
		if err != nil {
			errs.add("projectId", "%s", trimBadID(err))
		}
		f.ProjectID = id
	}
	if accountID != nil {
		id, err := ParseID(TypeAccount, *accountID)
		if err != nil {
			errs.add("accountId", "%s", trimBadID(err))
		}
		f.AccountID = id
	}
	if status != nil {
		f.Outcome = strings.ToLower(string(*status))
	}
	if first != nil {
		if *first < 1 {
			errs.add("first", "must be at least 1")
		}
		f.First = min(*first, MaxDeliveriesFirst)
	}
	if after != nil {
		f.After = *after
	}
	if err := errs.err(); err != nil {
		return nil, err
	}
	if q.s.deliveries == nil {
		return nil, unavailable("the delivery log")
	}
	page, err := q.s.deliveries.Query(ctx, f)
	if errors.Is(err, ErrBadCursor) {
		return nil, fieldError("after", "is not a cursor of this query (use pageInfo.endCursor)")
	}
	if err != nil {
		return nil, err
	}
	conn := &gql.DeliveryConnection{Edges: make([]gql.DeliveryEdge, 0, len(page.Deliveries)), PageInfo: &gql.PageInfo{HasNextPage: page.HasNextPage}}
	for _, d := range page.Deliveries {
		conn.Edges = append(conn.Edges, gql.DeliveryEdge{Cursor: d.Cursor, Node: deliveryOut(d.Key, d.Record)})
	}
	if n := len(page.Deliveries); n > 0 {
		c := page.Deliveries[n-1].Cursor
		conn.PageInfo.EndCursor = &c
	}
	return conn, nil
}

// deliveryOut renders a record. An outcome outside the DeliveryStatus enum
// (a newer dispatcher's) is passed on upper-cased, as the enum's values are.
func deliveryOut(key string, r deliverylog.Record) *gql.Delivery {
	d := &gql.Delivery{
		ID:         GlobalID(TypeDelivery, key),
		DeliveryID: r.DeliveryID,
		EventType:  r.EventType,
		AccountID:  optGlobalID(TypeAccount, r.AccountID),
		ProjectID:  optGlobalID(TypeProject, r.ProjectID),
		URL:        optString(r.URL),
		Attempt:    r.Attempt,
		Status:     gql.DeliveryStatus(strings.ToUpper(r.Outcome)),
		StatusCode: optInt(r.StatusCode),
		Error:      optString(r.Error),
		// Always a string: the schema makes at non-null.
		At:              r.At.UTC().Format(time.RFC3339Nano),
		ResponseExcerpt: optString(r.ResponseExcerpt),
	}
	if !r.StartedAt.IsZero() || r.DurationMs > 0 {
		ms := int(r.DurationMs)
		d.DurationMs = &ms
	}
	return d
}

// optGlobalID is the global ID of id, "" when id is "" (a dead letter of
// an unparseable subject has no account or project).
func optGlobalID(typ, id string) string {
	if id == "" {
		return ""
	}
	return GlobalID(typ, id)
}

func optString(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func optInt(n int) *int {
	if n == 0 {
		return nil
	}
	return &n
}

func (m mutationResolver) ReplayDeadLetters(ctx context.Context, in gql.ReplayInput) (*gql.ReplayPayload, error) {
	var errs fieldErrors
	var f ReplayFilter
	if v, _ := in.AccountID.ValueOK(); v != nil {
		id, err := ParseID(TypeAccount, *v)
		if err != nil {
			errs.add("accountId", "%s", trimBadID(err))
		}
		f.AccountID = id
	}
	if v, _ := in.ProjectID.ValueOK(); v != nil {
		id, err := ParseID(TypeProject, *v)
		if err != nil {
			errs.add("projectId", "%s", trimBadID(err))
		}
		f.ProjectID = id
	}
	if v, _ := in.EventType.ValueOK(); v != nil {
		if err := subjects.ValidateEventType(*v); err != nil {
			errs.add("eventType", "must match [a-z0-9_]{1,64}")
		}
		f.EventType = *v
	}
	if v, _ := in.Reason.ValueOK(); v != nil {
		ok := false
		for _, r := range deadletters.Reasons {
			ok = ok || r == *v
		}
		if !ok {
			errs.add("reason", "must be one of %s", strings.Join(deadletters.Reasons, ", "))
		}
		f.Reason = *v
	}
	f.Since = parseTimeField(&errs, "since", in.Since.Value())
	f.Until = parseTimeField(&errs, "until", in.Until.Value())
	if !f.Since.IsZero() && !f.Until.IsZero() && f.Until.Before(f.Since) {
		errs.add("until", "is before since")
	}
	if v, _ := in.DryRun.ValueOK(); v != nil {
		f.DryRun = *v
	}
	if err := errs.err(); err != nil {
		return nil, err
	}
	if m.s.replayer == nil {
		return nil, unavailable("dead-letter replay")
	}
	rctx, cancel := context.WithDeadline(ctx, requestStart(ctx).Add(m.s.replayTime))
	defer cancel()
	res, err := m.s.replayer.Replay(rctx, f)
	if err != nil {
		// The payload keeps the counts (SPEC §4 fixes its fields) and the
		// error says why they fall short: data and errors together, as
		// GraphQL allows, so the operator learns both.
		outOfTime := errors.Is(rctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil
		graphql.AddError(ctx, graphql.AddFieldLocationToError(ctx, m.s.replayIncomplete(res, err, outOfTime)))
	}
	return &gql.ReplayPayload{Matched: res.Matched, Replayed: res.Replayed}, nil
}

// replayIncomplete is the error of a replay that stopped before replaying
// every dead letter it matched: code REPLAY_INCOMPLETE, with the counts in
// extensions.matched and extensions.replayed as in the payload.
func (s *Server) replayIncomplete(res ReplayResult, err error, outOfTime bool) *gqlerror.Error {
	why := err.Error()
	if outOfTime {
		why = fmt.Sprintf("it reached its time limit of %s", s.replayTime)
	}
	return &gqlerror.Error{
		Message: fmt.Sprintf("replay stopped after replaying %d of %d matched dead letters; the others are still dead letters, run it again to go on: %s",
			res.Replayed, res.Matched, why),
		Err: err,
		Extensions: map[string]any{
			"code":     codeReplayIncomplete,
			"matched":  res.Matched,
			"replayed": res.Replayed,
		},
	}
}

func parseTimeField(errs *fieldErrors, field string, v *string) time.Time {
	if v == nil {
		return time.Time{}
	}
	// RFC 3339 allows a lower-case "t" and "z" (section 5.6, NOTE); Go's
	// layout does not.
	t, err := time.Parse(time.RFC3339, strings.NewReplacer("t", "T", "z", "Z").Replace(*v))
	if err != nil {
		errs.add(field, "must be an RFC 3339 time such as 2026-01-02T15:04:05Z")
	}
	return t
}
