package api_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/callbackd/callbackd/api"
	"github.com/callbackd/callbackd/deliverylog"
)

// fakeLog is a DeliveryLog over records in memory, newest first, with the
// index as cursor.
type fakeLog struct {
	mu      sync.Mutex
	records []deliverylog.Record
	last    api.DeliveryFilter
}

func (l *fakeLog) Query(_ context.Context, f api.DeliveryFilter) (api.DeliveryPage, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.last = f
	start := 0
	if f.After != "" {
		n, err := strconv.Atoi(f.After)
		if err != nil {
			return api.DeliveryPage{}, fmt.Errorf("fake log: %w", api.ErrBadCursor)
		}
		start = n + 1
	}
	var page api.DeliveryPage
	for i := start; i < len(l.records); i++ {
		r := l.records[i]
		if (f.AccountID != "" && r.AccountID != f.AccountID) || (f.ProjectID != "" && r.ProjectID != f.ProjectID) || (f.Outcome != "" && r.Outcome != f.Outcome) {
			continue
		}
		if len(page.Deliveries) == f.First {
			page.HasNextPage = true
			break
		}
		page.Deliveries = append(page.Deliveries, api.LoggedDelivery{Key: strconv.Itoa(100 + i), Cursor: strconv.Itoa(i), Record: r})
	}
	return page, nil
}

const deliveriesQ = `query($p: ID, $a: ID, $s: DeliveryStatus, $first: Int, $after: String) {
	deliveries(projectId: $p, accountId: $a, status: $s, first: $first, after: $after) {
		edges { cursor node { id deliveryId eventType accountId projectId url attempt status statusCode error durationMs responseExcerpt at } }
		pageInfo { hasNextPage endCursor } } }`

type deliveriesOut struct {
	Deliveries struct {
		Edges []struct {
			Cursor string
			Node   map[string]any
		}
		PageInfo struct {
			HasNextPage bool
			EndCursor   *string
		}
	}
}

func TestDeliveries_pages_and_filters(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	log := &fakeLog{}
	for i := range 5 {
		log.records = append(log.records, deliverylog.Record{
			DeliveryID: fmt.Sprintf("d%d", i), EventType: "crawl_status", AccountID: "7", ProjectID: strconv.Itoa(10 + i%2),
			URL: "https://example.com/hook", Attempt: 1, StatusCode: 500, Outcome: deliverylog.OutcomeRetrying,
			Error: "HTTP 500", DurationMs: 12, ResponseExcerpt: "oops", StartedAt: at, At: at,
		})
	}
	log.records[4].Outcome, log.records[4].StatusCode, log.records[4].Error = deliverylog.OutcomeDelivered, 200, ""
	h := newHarness(t, func(o *api.Options) { o.Deliveries = log })

	var got deliveriesOut
	h.ok(deliveriesQ, map[string]any{"p": api.GlobalID("Project", "10"), "first": 2}, &got)
	if f := log.last; f.ProjectID != "10" || f.First != 2 || f.AccountID != "" || f.Outcome != "" {
		t.Fatalf("filter = %+v", f)
	}
	e := got.Deliveries.Edges
	if len(e) != 2 || !got.Deliveries.PageInfo.HasNextPage || *got.Deliveries.PageInfo.EndCursor != e[1].Cursor {
		t.Fatalf("page = %+v", got.Deliveries)
	}
	n := e[0].Node
	want := map[string]any{
		"id": api.GlobalID("Delivery", "100"), "deliveryId": "d0", "eventType": "crawl_status",
		"accountId": api.GlobalID("Account", "7"), "projectId": api.GlobalID("Project", "10"),
		"url": "https://example.com/hook", "attempt": 1.0, "status": "RETRYING", "statusCode": 500.0,
		"error": "HTTP 500", "durationMs": 12.0, "responseExcerpt": "oops", "at": "2026-01-02T03:04:05Z",
	}
	for k, w := range want {
		if n[k] != w {
			t.Errorf("node.%s = %#v, want %#v", k, n[k], w)
		}
	}
	// Next page.
	h.ok(deliveriesQ, map[string]any{"p": "10", "first": 2, "after": *got.Deliveries.PageInfo.EndCursor}, &got)
	if len(got.Deliveries.Edges) != 1 || got.Deliveries.PageInfo.HasNextPage {
		t.Fatalf("page 2 = %+v", got.Deliveries)
	}
	// Status maps to the record's outcome; first is capped at 500.
	h.ok(deliveriesQ, map[string]any{"a": "7", "s": "DELIVERED", "first": 10000}, &got)
	if f := log.last; f.Outcome != "delivered" || f.AccountID != "7" || f.First != 500 {
		t.Fatalf("filter = %+v", f)
	}
	if len(got.Deliveries.Edges) != 1 || got.Deliveries.Edges[0].Node["statusCode"] != 200.0 || got.Deliveries.Edges[0].Node["error"] != nil {
		t.Fatalf("delivered = %+v", got.Deliveries.Edges)
	}
	// The default page size.
	h.ok(`{ deliveries { edges { cursor } } }`, nil, &got)
	if log.last.First != 50 {
		t.Fatalf("default first = %d", log.last.First)
	}
	// Bad arguments name themselves.
	for name, c := range map[string]struct {
		vars  map[string]any
		field string
	}{
		"project": {map[string]any{"p": "nope"}, "projectId"},
		"account": {map[string]any{"a": api.GlobalID("Project", "1")}, "accountId"},
		"first":   {map[string]any{"first": 0}, "first"},
		"cursor":  {map[string]any{"after": "zz"}, "after"},
	} {
		r := h.gql(deliveriesQ, c.vars)
		if got := fieldsOf(r); !slices.Equal(got, []string{c.field}) {
			t.Errorf("%s: fields %q (%+v)", name, got, r.Errors)
		}
	}
}

func TestDeliveries_and_replay_unavailable_without_backends(t *testing.T) {
	h := newHarness(t, nil)
	for _, q := range []string{`{ deliveries { edges { cursor } } }`, `mutation { replayDeadLetters(input: {}) { matched } }`} {
		r := h.gql(q, nil)
		if len(r.Errors) != 1 || r.Errors[0].Extensions["code"] != "UNAVAILABLE" {
			t.Errorf("%s: %+v", q, r.Errors)
		}
	}
}

func TestReplayDeadLetters_passes_the_filter(t *testing.T) {
	var got api.ReplayFilter
	h := newHarness(t, func(o *api.Options) {
		o.Replayer = api.ReplayerFunc(func(_ context.Context, f api.ReplayFilter) (api.ReplayResult, error) {
			got = f
			if f.DryRun {
				return api.ReplayResult{Matched: 3}, nil
			}
			return api.ReplayResult{Matched: 3, Replayed: 2}, nil
		})
	})
	var out struct {
		ReplayDeadLetters struct{ Matched, Replayed int }
	}
	h.ok(`mutation($in: ReplayInput!) { replayDeadLetters(input: $in) { matched replayed } }`, map[string]any{"in": map[string]any{
		"accountId": api.GlobalID("Account", "7"), "projectId": "10", "eventType": "crawl_status", "reason": "delivery_failed",
		"since": "2026-01-01T00:00:00Z", "until": "2026-01-02T00:00:00+01:00",
	}}, &out)
	want := api.ReplayFilter{AccountID: "7", ProjectID: "10", EventType: "crawl_status", Reason: "delivery_failed",
		Since: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), Until: time.Date(2026, 1, 1, 23, 0, 0, 0, time.UTC)}
	if got.AccountID != want.AccountID || got.ProjectID != want.ProjectID || got.EventType != want.EventType ||
		got.Reason != want.Reason || !got.Since.Equal(want.Since) || !got.Until.Equal(want.Until) || got.DryRun {
		t.Fatalf("filter = %+v", got)
	}
	if out.ReplayDeadLetters.Matched != 3 || out.ReplayDeadLetters.Replayed != 2 {
		t.Fatalf("payload = %+v", out)
	}
	h.ok(`mutation { replayDeadLetters(input: {dryRun: true}) { matched replayed } }`, nil, &out)
	if !got.DryRun || out.ReplayDeadLetters.Replayed != 0 || got.AccountID != "" {
		t.Fatalf("dry run: %+v %+v", got, out)
	}

	// RFC 3339 allows a lower-case t and z.
	h.ok(`mutation { replayDeadLetters(input: {since: "2026-01-01t00:00:00z"}) { matched replayed } }`, nil, &out)
	if !got.Since.Equal(want.Since) {
		t.Fatalf("since %v, want %v", got.Since, want.Since)
	}
	// A Boolean is true or false: gqlgen's own took "yes" as false, a
	// replay that was not dry.
	got = api.ReplayFilter{}
	r := h.gql(`mutation($in: ReplayInput!) { replayDeadLetters(input: $in) { matched } }`, map[string]any{"in": map[string]any{"dryRun": "yes"}})
	if len(r.Errors) != 1 || r.Errors[0].Message != "must be a boolean (true or false)" || got != (api.ReplayFilter{}) {
		t.Fatalf("dryRun \"yes\": errors %+v, replayer called with %+v", r.Errors, got)
	}

	r = h.gql(`mutation($in: ReplayInput!) { replayDeadLetters(input: $in) { matched } }`, map[string]any{"in": map[string]any{
		"accountId": "x", "eventType": "Crawl-Status", "reason": "because", "since": "yesterday", "until": "2020-01-01T00:00:00Z",
	}})
	if got := fieldsOf(r); !slices.Equal(got, []string{"accountId", "eventType", "reason", "since"}) {
		t.Fatalf("fields %q", got)
	}
	r = h.gql(`mutation { replayDeadLetters(input: {since: "2026-01-02T00:00:00Z", until: "2026-01-01T00:00:00Z"}) { matched } }`, nil)
	if got := fieldsOf(r); !slices.Equal(got, []string{"until"}) {
		t.Fatalf("fields %q", got)
	}
}
