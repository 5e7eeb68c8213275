package api_test

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/callbackd/callbackd/api"
	"github.com/callbackd/callbackd/testutil"
)

const sendTest = `mutation($p: ID!, $a: ID) { sendTestCallback(projectId: $p, accountId: $a) {
	id deliveryId eventType accountId projectId url attempt status statusCode error durationMs responseExcerpt at } }`

type testDelivery struct {
	SendTestCallback struct {
		ID, DeliveryID, EventType, AccountID, ProjectID string
		URL                                             *string
		Attempt                                         int
		Status                                          string
		StatusCode                                      *int
		Error                                           *string
		DurationMs                                      *int
		ResponseExcerpt                                 *string
		At                                              string
	}
}

func TestSendTestCallback_delivers_to_the_project_url(t *testing.T) {
	h := newHarness(t, func(o *api.Options) { o.Guard = allowPrivateGuard() })
	sink := testutil.NewSink(t)
	h.ok(`mutation($in: UpdateProjectInput!) { updateProject(input: $in) { project { id } } }`, map[string]any{"in": map[string]any{
		"projectId":          "123",
		"apiCallbackUrl":     sink.URL + "/hook?sig=secret",
		"apiCallbackHeaders": []map[string]string{{"key": "Authorization", "value": "Bearer your-token"}},
	}}, nil)

	var got testDelivery
	h.ok(sendTest, map[string]any{"p": "TjAwNlByb2plY3QxMjM", "a": "456"}, &got)
	d := got.SendTestCallback
	if d.Status != "DELIVERED" || d.StatusCode == nil || *d.StatusCode != 200 || d.Attempt != 1 || d.EventType != "test_callback" {
		t.Fatalf("delivery = %+v", d)
	}
	if d.ProjectID != "TjAwNlByb2plY3QxMjM" || d.AccountID != api.GlobalID("Account", "456") {
		t.Errorf("ids = %s, %s", d.ProjectID, d.AccountID)
	}
	if d.URL == nil || strings.Contains(*d.URL, "secret") {
		t.Errorf("url = %v: the query string must be dropped", d.URL)
	}
	if _, err := time.Parse(time.RFC3339, d.At); err != nil {
		t.Errorf("at = %q: %v", d.At, err)
	}

	reqs := sink.WaitFor(t, 1, 10*time.Second)
	r := reqs[0]
	if r.Method != http.MethodPost || r.Path != "/hook" {
		t.Errorf("%s %s", r.Method, r.Path)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/x-www-form-urlencoded" {
		t.Errorf("Content-Type = %q", ct)
	}
	if a := r.Header.Get("Authorization"); a != "Bearer your-token" {
		t.Errorf("Authorization = %q", a)
	}
	if id := r.Header.Get("Callback-Delivery-Id"); id != d.DeliveryID {
		t.Errorf("Callback-Delivery-Id = %q, answer says %q", id, d.DeliveryID)
	}
	re := regexp.MustCompile(`^message=test_callback&resource=api_callback&project_id=123&account_id=456&sent_at=([^&]+)$`)
	m := re.FindStringSubmatch(r.Body)
	if m == nil {
		t.Fatalf("body = %q", r.Body)
	}
	sentAt, _ := url.QueryUnescape(m[1])
	if ts, err := time.Parse(time.RFC3339, sentAt); err != nil || ts.Location() != time.UTC || !strings.HasSuffix(sentAt, "Z") {
		t.Errorf("sent_at = %q (%v)", sentAt, err)
	}
}

func TestSendTestCallback_falls_back_to_the_account_url(t *testing.T) {
	h := newHarness(t, func(o *api.Options) { o.Guard = allowPrivateGuard() })
	sink := testutil.NewSink(t)
	sink.Respond(func(testutil.Request) int { return http.StatusServiceUnavailable })
	h.ok(`mutation($in: UpdateAccountInput!) { updateAccount(input: $in) { account { id } } }`, map[string]any{"in": map[string]any{
		"accountId": "456", "apiCallbackUrl": sink.URL + "/acct",
	}}, nil)

	var got testDelivery
	h.ok(sendTest, map[string]any{"p": "123", "a": "456"}, &got)
	d := got.SendTestCallback
	if d.Status != "FAILED" || d.StatusCode == nil || *d.StatusCode != 503 || d.Error == nil {
		t.Fatalf("delivery = %+v", d)
	}
	if reqs := sink.WaitFor(t, 1, 10*time.Second); reqs[0].Path != "/acct" {
		t.Errorf("path = %s", reqs[0].Path)
	}

	// Without accountId the account's URL is not used.
	h.ok(sendTest, map[string]any{"p": "123"}, &got)
	if d := got.SendTestCallback; d.Status != "NO_DESTINATION" || d.URL != nil || d.Error == nil {
		t.Fatalf("without accountId: %+v", d)
	}
	if n := len(sink.Requests()); n != 1 {
		t.Errorf("sink got %d requests", n)
	}
}

// A host name that resolves to a refused address is refused at dial time:
// the transport's guard covers test callbacks too.
func TestSendTestCallback_outbound_policy_applies(t *testing.T) {
	h := newHarness(t, func(o *api.Options) {
		o.Transport = newTransport(t, false)
	})
	sink := testutil.NewSink(t)
	u := strings.Replace(sink.URL, "127.0.0.1", "localhost", 1)
	h.ok(`mutation($in: UpdateProjectInput!) { updateProject(input: $in) { project { id } } }`, map[string]any{"in": map[string]any{
		"projectId": "1", "apiCallbackUrl": u,
	}}, nil)
	var got testDelivery
	h.ok(sendTest, map[string]any{"p": "1"}, &got)
	if d := got.SendTestCallback; d.Status != "DESTINATION_NOT_ALLOWED" || d.StatusCode != nil {
		t.Fatalf("delivery = %+v", d)
	}
	if n := len(sink.Requests()); n != 0 {
		t.Errorf("sink got %d requests", n)
	}
}

func TestSendTestCallback_bad_ids_and_no_transport(t *testing.T) {
	h := newHarness(t, func(o *api.Options) { o.Transport = nil })
	r := h.gql(sendTest, map[string]any{"p": "x", "a": api.GlobalID("Project", "1")})
	if got := fieldsOf(r); len(got) != 2 || got[0] != "projectId" || got[1] != "accountId" {
		t.Fatalf("fields %q", got)
	}
	r = h.gql(sendTest, map[string]any{"p": "1"})
	if len(r.Errors) != 1 || r.Errors[0].Extensions["code"] != "UNAVAILABLE" {
		t.Fatalf("errors %+v", r.Errors)
	}
}

// A request's test callbacks end by its deadline, so the answer goes out
// before the server's write timeout however many the request holds.
func TestSendTestCallback_stops_at_the_request_deadline(t *testing.T) {
	h := newHarness(t, func(o *api.Options) {
		o.Guard = allowPrivateGuard()
		o.TestCallbackDeadline = time.Second
	})
	release := make(chan struct{})
	var hits atomic.Int64
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(slow.Close)
	t.Cleanup(func() { close(release) })
	h.ok(`mutation($in: UpdateProjectInput!) { updateProject(input: $in) { project { id } } }`, map[string]any{"in": map[string]any{
		"projectId": "7", "apiCallbackUrl": slow.URL + "/slow",
	}}, nil)

	r := h.gql(`mutation { a: sendTestCallback(projectId: "7") { status } b: sendTestCallback(projectId: "7") { status } }`, nil)
	if len(r.Errors) != 2 {
		t.Fatalf("errors %+v, want one per test callback", r.Errors)
	}
	for i, want := range []string{"test callback cut off at the request's time limit for test callbacks (1s)", "test callback not sent: the request reached its time limit"} {
		if e := r.Errors[i]; !strings.HasPrefix(e.Message, want) || e.Extensions["code"] != "TIME_LIMIT_EXCEEDED" {
			t.Errorf("error %d: %+v, want %q", i, e, want)
		}
	}
	if n := hits.Load(); n != 1 {
		t.Errorf("endpoint got %d requests, want 1 (the second was not sent)", n)
	}
}
