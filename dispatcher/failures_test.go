package dispatcher_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/callbackd/callbackd/deadletters"
	"github.com/callbackd/callbackd/deliverylog"
	"github.com/callbackd/callbackd/dispatcher"
	"github.com/callbackd/callbackd/plugins"
	"github.com/callbackd/callbackd/plugins/builtin"
	"github.com/callbackd/callbackd/settings"
	"github.com/callbackd/callbackd/subjects"
	"github.com/callbackd/callbackd/testutil"
)

// setSSO gives account the SSO client 77 with its webhook at url.
func (h *harness) setSSO(account, url string, headers ...settings.Header) {
	h.t.Helper()
	ctx := h.ctx
	client := "77"
	if _, err := h.store.UpdateAccount(ctx, account, func(a *settings.Account) error { a.SSOClientID = &client; return nil }); err != nil {
		h.t.Fatal(err)
	}
	if _, err := h.store.UpdateSSOClient(ctx, client, func(c *settings.SSOClient) error {
		c.WebhookURL, c.WebhookHeaders = &url, headers
		return nil
	}); err != nil {
		h.t.Fatal(err)
	}
	testutil.CheckFor(h.t, waitLong, 10*time.Millisecond, func() error {
		if d := h.view.SSOWebhook(account); d == nil || d.URL != url {
			return errString("SSO webhook not in the view yet")
		}
		return nil
	})
}

type errString string

func (e errString) Error() string { return string(e) }

// codes answers with the given status codes in turn, the last repeating.
func codes(cs ...int) func(testutil.Request) int {
	var mu sync.Mutex
	n := 0
	return func(testutil.Request) int {
		mu.Lock()
		defer mu.Unlock()
		c := cs[min(n, len(cs)-1)]
		n++
		return c
	}
}

// firstFails answers 500 to the first attempt of each delivery id, then 200.
func firstFails() func(testutil.Request) int {
	var mu sync.Mutex
	seen := map[string]bool{}
	return func(r testutil.Request) int {
		mu.Lock()
		defer mu.Unlock()
		id := r.Header.Get("Callback-Delivery-Id")
		if seen[id] {
			return 200
		}
		seen[id] = true
		return 500
	}
}

func TestDispatcher_retryable_failures_are_retried_with_the_same_delivery_id(t *testing.T) {
	h := newHarness(t, harnessOptions{MaxAttempts: 4, Backoff: []time.Duration{50 * time.Millisecond}})
	sink := testutil.NewSink(t)
	sink.Respond(codes(500, 503, 408, 200))
	h.setProject("2", sink.URL+"/cb")
	h.waitDestination("1", "2", sink.URL+"/cb")

	h.publish(eventSubject("crawl_status", "1", "2"), crawl(7), "evt-7")
	reqs := sink.WaitFor(t, 4, waitLong)
	for i, r := range reqs {
		if got := r.Header.Get("Callback-Delivery-Id"); got != idFromMsgID("evt-7") {
			t.Errorf("attempt %d: Callback-Delivery-Id %q, want %q", i+1, got, idFromMsgID("evt-7"))
		}
		if r.Body != crawlBody(7, "1", "2") {
			t.Errorf("attempt %d: body %q", i+1, r.Body)
		}
	}
	h.waitEventsEmpty()
	testutil.WaitStreamEmpty(t, h.js, subjects.RetryStream, waitLong)
	if n := len(h.dead()); n != 0 {
		t.Errorf("%d dead letters after a delivery that succeeded on attempt 4", n)
	}
}

func TestDispatcher_retry_waits_in_CALLBACKS_RETRY_with_its_headers(t *testing.T) {
	h := newHarness(t, harnessOptions{MaxAttempts: 3, Backoff: []time.Duration{time.Hour}})
	sink := testutil.NewSink(t)
	sink.Respond(codes(502))
	h.setProject("2", sink.URL)
	h.waitDestination("1", "2", sink.URL)

	before := time.Now()
	h.publish(eventSubject("crawl_status", "1", "2"), crawl(8), "evt-8")
	sink.WaitFor(t, 1, waitLong)
	got := testutil.WaitStreamMsgs(t, h.js, subjects.RetryStream, 1, waitLong, nil)
	m := got[0]
	if m.Subject != "callbacks.retry.event.crawl_status.1.2" {
		t.Errorf("retry subject = %q", m.Subject)
	}
	if a := m.Header.Get(subjects.HeaderAttempt); a != "2" {
		t.Errorf("%s = %q, want 2", subjects.HeaderAttempt, a)
	}
	if id := m.Header.Get(subjects.HeaderDeliveryID); id != idFromMsgID("evt-8") {
		t.Errorf("%s = %q", subjects.HeaderDeliveryID, id)
	}
	nb, err := time.Parse(time.RFC3339, m.Header.Get(subjects.HeaderNotBefore))
	if err != nil || nb.Before(before.Add(59*time.Minute)) || nb.After(time.Now().Add(61*time.Minute)) {
		t.Errorf("%s = %q (%v), want about an hour from now", subjects.HeaderNotBefore, m.Header.Get(subjects.HeaderNotBefore), err)
	}
	// The chain's origin: the event's own message, carried on.
	origin := m.Header.Get("Callbackd-Origin")
	if origin != "CALLBACKS-1" {
		t.Errorf("Callbackd-Origin = %q, want CALLBACKS-1", origin)
	}
	if id := m.Header.Get(subjects.HeaderMsgID); id != idFromMsgID("evt-8")+":2:"+origin {
		t.Errorf("retry Nats-Msg-Id = %q", id)
	}
	if string(m.Data) != string(crawl(8)) {
		t.Errorf("retry payload = %q", m.Data)
	}
	// The original was acked once the retry was stored, and the waiting
	// retry holds no worker: another event is delivered meanwhile.
	h.waitEventsEmpty()
	sink.Respond(codes(200))
	h.publish(eventSubject("crawl_status", "1", "2"), crawl(9), "")
	waitRequestWithBody(t, sink, crawlBody(9, "1", "2"))
}

func TestDispatcher_retry_after_is_honoured(t *testing.T) {
	h := newHarness(t, harnessOptions{MaxAttempts: 2, Backoff: []time.Duration{50 * time.Millisecond, 3 * time.Second}})
	sink := testutil.NewSink(t)
	var mu sync.Mutex
	n := 0
	sink.RespondWithHeaders(func(testutil.Request) (int, http.Header) {
		mu.Lock()
		defer mu.Unlock()
		n++
		if n == 1 {
			return http.StatusTooManyRequests, http.Header{"Retry-After": {"1"}}
		}
		return http.StatusOK, nil
	})
	h.setProject("2", sink.URL)
	h.waitDestination("1", "2", sink.URL)
	h.publish(eventSubject("crawl_status", "1", "2"), crawl(1), "")
	reqs := sink.WaitFor(t, 2, waitLong)
	if gap := reqs[1].At.Sub(reqs[0].At); gap < 950*time.Millisecond {
		t.Errorf("retry after %s, want at least the Retry-After of 1s (backoff was 50ms)", gap)
	}
}

func TestDispatcher_failed_for_good_reports_callback_failed_to_the_SSO_client(t *testing.T) {
	tests := []struct {
		name         string
		codes        []int
		maxAttempts  int
		wantAttempts int
		wantStatus   string
	}{
		{"attempts spent", []int{500}, 2, 2, "500"},
		{"final status at once", []int{400}, 4, 1, "400"},
		{"redirect is final", []int{302}, 4, 1, "302"},
		{"seed literally: one attempt", []int{503}, 1, 1, "503"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, harnessOptions{MaxAttempts: tt.maxAttempts, Backoff: []time.Duration{20 * time.Millisecond}, Failure: true})
			customer, sso := testutil.NewSink(t), testutil.NewSink(t)
			customer.Respond(codes(tt.codes...))
			h.setProject("1123123", customer.URL+"/webhook?token=secret")
			h.setSSO("123123", sso.URL+"/sso", settings.Header{Key: "Authorization", Value: "Bearer sso"})
			h.waitDestination("123123", "1123123", customer.URL+"/webhook?token=secret")

			subj := eventSubject("crawl_status", "123123", "1123123")
			h.publish(subj, []byte(crawlSeed), "seed-1")
			got := sso.WaitFor(t, 1, waitLong)[0]
			if n := len(customer.Requests()); n != tt.wantAttempts {
				t.Errorf("customer got %d attempts, want %d", n, tt.wantAttempts)
			}
			if got.Header.Get("Authorization") != "Bearer sso" {
				t.Errorf("SSO webhook without the client's header: %v", got.Header)
			}
			if got.Header.Get("Content-Type") != "application/x-www-form-urlencoded" {
				t.Errorf("Content-Type = %q", got.Header.Get("Content-Type"))
			}
			form, err := url.ParseQuery(got.Body)
			if err != nil {
				t.Fatal(err)
			}
			wantOrder := []string{"message", "resource", "failed_message", "callback_url", "status_code", "error",
				"attempts", "delivery_id", "account_id", "project_id", "user_id", "partner_account_id",
				"partner_user_id", "crawl_id", "failed_at"}
			if keys := formKeys(got.Body); strings.Join(keys, ",") != strings.Join(wantOrder, ",") {
				t.Errorf("callback_failed fields\n got %v\nwant %v", keys, wantOrder)
			}
			want := map[string]string{
				"message": "callback_failed", "resource": "api_callback", "failed_message": "crawl_status",
				"callback_url": customer.URL + "/webhook", "status_code": tt.wantStatus,
				"attempts": strconv.Itoa(tt.wantAttempts), "delivery_id": idFromMsgID("seed-1"),
				"account_id": "123123", "project_id": "1123123", "user_id": "123123",
				"partner_account_id": "123123", "partner_user_id": "3333312", "crawl_id": "124234",
			}
			for k, v := range want {
				if form.Get(k) != v {
					t.Errorf("%s = %q, want %q", k, form.Get(k), v)
				}
			}
			if _, err := time.Parse(time.RFC3339, form.Get("failed_at")); err != nil || !strings.HasSuffix(form.Get("failed_at"), "Z") {
				t.Errorf("failed_at = %q, want RFC 3339 UTC", form.Get("failed_at"))
			}
			if form.Get("error") == "" {
				t.Error("error is empty")
			}
			dl := h.waitDeadFor(subj, []byte(crawlSeed))
			checkDeadLetter(t, dl, "callbacks.dead.crawl_status.123123.1123123", dispatcher.ReasonDeliveryFailed,
				tt.wantStatus, strconv.Itoa(tt.wantAttempts), subj, []byte(crawlSeed), idFromMsgID("seed-1"))
			h.waitEventsEmpty()
		})
	}
}

func TestDispatcher_no_SSO_client_sends_nothing_but_still_dead_letters(t *testing.T) {
	h := newHarness(t, harnessOptions{MaxAttempts: 1, Failure: true})
	customer := testutil.NewSink(t)
	customer.Respond(codes(500))
	h.setProject("2", customer.URL)
	h.waitDestination("1", "2", customer.URL)
	subj := eventSubject("crawl_status", "1", "2")
	h.publish(subj, crawl(3), "")
	h.waitDeadFor(subj, crawl(3))
	h.waitEventsEmpty()
	if n := testutil.StreamLen(t, h.js, subjects.RetryStream); n != 0 {
		t.Errorf("%d messages in CALLBACKS_RETRY", n)
	}
}

func TestDispatcher_failed_callback_failed_is_dead_lettered_and_never_reported(t *testing.T) {
	h := newHarness(t, harnessOptions{MaxAttempts: 2, Backoff: []time.Duration{20 * time.Millisecond}, Failure: true})
	customer, sso := testutil.NewSink(t), testutil.NewSink(t)
	customer.Respond(codes(500))
	sso.Respond(codes(500))
	h.setProject("2", customer.URL)
	h.setSSO("1", sso.URL+"/hook?sig=q-s3cret", settings.Header{Key: "X-Sso-Key", Value: "h-s3cret"})
	h.waitDestination("1", "2", customer.URL)

	subj := eventSubject("crawl_status", "1", "2")
	h.publish(subj, crawl(4), "loop-1")
	got := testutil.WaitStreamMsgs(t, h.js, subjects.DeadStream, 2, waitLong, nil)
	reasons := map[string]string{}
	for _, m := range got {
		// The notice refers to the SSO client's webhook; no secret of its
		// settings is kept in CALLBACKS or CALLBACKS_DEAD.
		if strings.Contains(string(m.Data), "s3cret") {
			t.Errorf("dead letter %s holds a secret of the settings: %s", m.Subject, m.Data)
		}
		reasons[m.Header.Get(subjects.HeaderReason)] = m.Subject
		if id := m.Header.Get(subjects.HeaderDeliveryID); id != idFromMsgID("loop-1") {
			t.Errorf("dead letter %s with delivery id %q", m.Subject, id)
		}
	}
	if reasons[dispatcher.ReasonDeliveryFailed] != "callbacks.dead.crawl_status.1.2" ||
		reasons[dispatcher.ReasonCallbackFailedUndeliverable] != "callbacks.dead.callback_failed.1.2" {
		t.Errorf("dead letters %v", reasons)
	}
	h.waitEventsEmpty()
	testutil.WaitStreamEmpty(t, h.js, subjects.RetryStream, waitLong)
	// The notice got the same attempts as any delivery, and nothing more.
	if n := len(sso.Requests()); n != 2 {
		t.Errorf("SSO webhook got %d requests, want 2 (its attempts) and no report of its own failure", n)
	}
	if n := len(h.dead()); n != 2 {
		t.Errorf("%d dead letters, want 2", n)
	}
}

// A callback-failed notice goes to the account's SSO client webhook as it
// is at each attempt (SPEC §4: a change is in effect within 1 s): a fixed
// URL or a rotated credential applies to the notice's retries, and a
// client removed meanwhile ends it as no_destination.
func TestDispatcher_callback_failed_notice_follows_the_SSO_client_settings(t *testing.T) {
	t.Run("changed", func(t *testing.T) {
		h := newHarness(t, harnessOptions{MaxAttempts: 20, Backoff: []time.Duration{100 * time.Millisecond}, Failure: true})
		customer, oldSSO, newSSO := testutil.NewSink(t), testutil.NewSink(t), testutil.NewSink(t)
		customer.Respond(codes(404))
		oldSSO.Respond(codes(503))
		h.setProject("2", customer.URL)
		h.setSSO("1", oldSSO.URL, settings.Header{Key: "X-Key", Value: "old"})
		h.waitDestination("1", "2", customer.URL)

		h.publish(eventSubject("crawl_status", "1", "2"), crawl(4), "rotate-1")
		oldSSO.WaitFor(t, 1, waitLong)
		h.setSSO("1", newSSO.URL, settings.Header{Key: "X-Key", Value: "new"})
		r := newSSO.WaitFor(t, 1, waitLong)[0]
		if got := r.Header.Values("X-Key"); !slices.Equal(got, []string{"new"}) {
			t.Errorf("notice sent with X-Key %q, want the client's current [new]", got)
		}
		if !strings.Contains(r.Body, "delivery_id="+idFromMsgID("rotate-1")) {
			t.Errorf("notice body %s", r.Body)
		}
		h.waitEventsEmpty()
		testutil.WaitStreamEmpty(t, h.js, subjects.RetryStream, waitLong)
		if dl := h.dead(); len(dl) != 1 || dl[0].Header.Get(subjects.HeaderReason) != dispatcher.ReasonDeliveryFailed {
			t.Errorf("dead letters %d, want only the event's", len(dl))
		}
	})
	t.Run("removed", func(t *testing.T) {
		h := newHarness(t, harnessOptions{MaxAttempts: 20, Backoff: []time.Duration{100 * time.Millisecond}, Failure: true})
		customer, sso := testutil.NewSink(t), testutil.NewSink(t)
		customer.Respond(codes(404))
		sso.Respond(codes(503))
		h.setProject("2", customer.URL)
		h.setSSO("1", sso.URL)
		h.waitDestination("1", "2", customer.URL)

		h.publish(eventSubject("crawl_status", "1", "2"), crawl(5), "removed-1")
		sso.WaitFor(t, 1, waitLong)
		if _, err := h.store.UpdateAccount(h.ctx, "1", func(a *settings.Account) error { a.SSOClientID = nil; return nil }); err != nil {
			t.Fatal(err)
		}
		testutil.CheckFor(t, waitLong, 10*time.Millisecond, func() error {
			if h.view.SSOWebhook("1") != nil {
				return errString("SSO client still in the view")
			}
			return nil
		})
		h.waitEventsEmpty()
		testutil.WaitStreamEmpty(t, h.js, subjects.RetryStream, waitLong)
		if dl := h.dead(); len(dl) != 1 || dl[0].Header.Get(subjects.HeaderReason) != dispatcher.ReasonDeliveryFailed {
			t.Errorf("dead letters %d, want only the event's (the notice ends as no_destination)", len(dl))
		}
		n := len(sso.Requests())
		if n >= 20 {
			t.Errorf("SSO webhook got %d requests: the notice kept its old destination", n)
		}
	})
}

func TestDispatcher_refused_destination_is_final(t *testing.T) {
	// The guard allows 127.0.0.1 only; 127.0.0.2 is refused at dial time,
	// before any packet leaves.
	h := newHarness(t, harnessOptions{MaxAttempts: 4, Guard: true, AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, Failure: true})
	sso := testutil.NewSink(t)
	_, port, _ := strings.Cut(strings.TrimPrefix(sso.URL, "http://"), ":")
	refused := "http://127.0.0.2:" + port + "/cb"
	h.setProject("2", refused)
	h.setSSO("1", sso.URL)
	h.waitDestination("1", "2", refused)
	subj := eventSubject("crawl_status", "1", "2")
	h.publish(subj, crawl(5), "")
	dl := h.waitDeadFor(subj, crawl(5))
	if r := dl.Header.Get(subjects.HeaderReason); r != dispatcher.ReasonDestinationNotAllowed {
		t.Errorf("reason = %q, want %s", r, dispatcher.ReasonDestinationNotAllowed)
	}
	req := sso.WaitFor(t, 1, waitLong)[0]
	if f, _ := url.ParseQuery(req.Body); f.Get("status_code") != "" || f.Get("attempts") != "1" {
		t.Errorf("callback_failed for a refused destination: %q", req.Body)
	}
}

// hostModes are the two ways the per-host cap is held: by the dispatcher
// alone, and by the transport with the dispatcher handing it a window of
// twice the cap (serve with the built-ins in a plugin process).
var hostModes = []struct {
	name   string
	window int
}{
	{"dispatcher holds the cap", 0},
	{"transport holds the cap, window 2x", 4},
}

func TestDispatcher_slow_host_does_not_starve_others(t *testing.T) {
	for _, m := range hostModes {
		t.Run(m.name, func(t *testing.T) { testSlowHost(t, m.window) })
	}
}

func testSlowHost(t *testing.T, window int) {
	h := newHarness(t, harnessOptions{MaxAttempts: 1, PerHostConcurrency: 2, HostWindow: window, Workers: 4, DeliveryTimeout: 30 * time.Second})
	slow, fast := testutil.NewSink(t), testutil.NewSink(t)
	release := make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	slow.Respond(func(testutil.Request) int { <-release; return 200 })
	h.setProject("10", slow.URL)
	h.setProject("20", fast.URL)
	h.waitDestination("1", "10", slow.URL)
	h.waitDestination("1", "20", fast.URL)

	for i := range 20 {
		h.publish(eventSubject("crawl_status", "1", "10"), crawl(100+i), "")
	}
	for i := range 10 {
		h.publish(eventSubject("crawl_status", "1", "20"), crawl(200+i), "")
	}
	// All of the fast host's events arrive while the slow one holds its two
	// slots: the slow host's backlog is parked, not holding workers.
	fast.WaitFor(t, 10, waitLong)
	if n := len(slow.Requests()); n > 2 {
		t.Errorf("slow host has %d requests in flight, cap is 2", n)
	}
	once.Do(func() { close(release) })
	slow.WaitFor(t, 20, waitLong)
	h.waitEventsEmpty()
	testutil.WaitStreamEmpty(t, h.js, subjects.RetryStream, waitLong)
	seen := requestsByDelivery(slow.Requests())
	if len(seen) != 20 {
		t.Errorf("slow host got %d distinct deliveries, want 20", len(seen))
	}
}

func formKeys(body string) []string {
	var keys []string
	for _, kv := range strings.Split(body, "&") {
		k, _, _ := strings.Cut(kv, "=")
		keys = append(keys, k)
	}
	return keys
}

// downEncoder stands for an encoder plugin that is down: every call fails
// with an infrastructure error, never ErrInvalidEvent.
type downEncoder struct{ calls atomic.Int64 }

func (e *downEncoder) Info(context.Context) (plugins.EncoderInfo, error) {
	return plugins.EncoderInfo{EventType: "crawl_status"}, nil
}

func (e *downEncoder) Encode(context.Context, plugins.Event) (plugins.Encoded, error) {
	e.calls.Add(1)
	return plugins.Encoded{}, errors.New("plugin unavailable")
}

func TestDispatcher_plugin_errors_cost_no_attempt_and_are_capped(t *testing.T) {
	enc := &downEncoder{}
	h := newHarness(t, harnessOptions{
		MaxAttempts: 4, MaxDeliveries: 2, Log: true,
		Encoders: map[string]plugins.Encoder{"crawl_status": enc},
	})
	sink := testutil.NewSink(t)
	h.setProject("2", sink.URL)
	h.waitDestination("1", "2", sink.URL)
	subj := eventSubject("crawl_status", "1", "2")
	start := time.Now()
	h.publish(subj, crawl(1), "")
	// Handed back after 1 s; the second delivery is max_deliveries' last,
	// and its failure ends the event.
	dl := h.waitDeadFor(subj, crawl(1))
	if took := time.Since(start); took < time.Second {
		t.Errorf("dead-lettered after %s: the hand-back was not delayed (1 s)", took)
	}
	if got := enc.calls.Load(); got != 2 {
		t.Errorf("encoder called %d times, want 2 (max_deliveries)", got)
	}
	if r := dl.Header.Get(subjects.HeaderReason); r != dispatcher.ReasonDeliveryFailed {
		t.Errorf("reason %q, want %s", r, dispatcher.ReasonDeliveryFailed)
	}
	if a := dl.Header.Get(subjects.HeaderAttempts); a != "0" {
		t.Errorf("%s = %q: plugin errors are not delivery attempts", subjects.HeaderAttempts, a)
	}
	if e := dl.Header.Get(subjects.HeaderError); !strings.Contains(e, "dispatcher.max_deliveries") || !strings.Contains(e, "plugin unavailable") {
		t.Errorf("%s = %q, want the cap and the last cause named", subjects.HeaderError, e)
	}
	if n := len(sink.Requests()); n != 0 {
		t.Errorf("sink got %d requests", n)
	}
	h.waitEventsEmpty()
	// An unsuccessful end like any other: in the delivery log as failed.
	r := deliverylog.NewReader(h.js)
	testutil.CheckFor(t, waitLong, 20*time.Millisecond, func() error {
		page, err := r.Query(h.ctx, deliverylog.Filter{ProjectID: "2", First: 10})
		if err != nil {
			return err
		}
		if len(page.Records) != 1 || page.Records[0].Outcome != deliverylog.OutcomeFailed ||
			!strings.Contains(page.Records[0].Error, "dispatcher.max_deliveries") || page.Records[0].Attempt != 0 {
			return fmt.Errorf("records %+v, want one failed record naming dispatcher.max_deliveries", page.Records)
		}
		return nil
	})
}

func TestDispatcher_every_attempt_is_in_the_delivery_log(t *testing.T) {
	h := newHarness(t, harnessOptions{MaxAttempts: 3, Backoff: []time.Duration{20 * time.Millisecond}, Log: true})
	sink := testutil.NewSink(t)
	sink.Respond(codes(500, 200))
	h.setProject("2", sink.URL+"/cb?token=secret")
	h.waitDestination("1", "2", sink.URL+"/cb?token=secret")
	h.publish(eventSubject("crawl_status", "1", "2"), crawl(1), "log-1")
	h.publish(eventSubject("crawl_status", "1", "2"), []byte(`{"crawl_id":2,"crawl_type":"test_suite_build"}`), "")
	h.publish(eventSubject("crawl_status", "1", "3"), crawl(3), "")

	r := deliverylog.NewReader(h.js)
	var page deliverylog.Page
	testutil.CheckFor(t, waitLong, 20*time.Millisecond, func() error {
		var err error
		page, err = r.Query(h.ctx, deliverylog.Filter{AccountID: "1", First: 50})
		if err != nil {
			return err
		}
		if len(page.Records) < 4 {
			return fmt.Errorf("%d records", len(page.Records))
		}
		return nil
	})
	byOutcome := map[string]deliverylog.Entry{}
	for _, e := range page.Records {
		byOutcome[e.Outcome] = e
	}
	retrying, delivered := byOutcome[deliverylog.OutcomeRetrying], byOutcome[deliverylog.OutcomeDelivered]
	if retrying.Attempt != 1 || retrying.StatusCode != 500 || retrying.DeliveryID != idFromMsgID("log-1") {
		t.Errorf("retrying record = %+v", retrying.Record)
	}
	if delivered.Attempt != 2 || delivered.StatusCode != 200 || delivered.DeliveryID != idFromMsgID("log-1") {
		t.Errorf("delivered record = %+v", delivered.Record)
	}
	if delivered.URL != sink.URL+"/cb" {
		t.Errorf("logged URL %q keeps its query", delivered.URL)
	}
	if _, ok := byOutcome[deliverylog.OutcomeSkipped]; !ok {
		t.Error("no skipped record")
	}
	if e, ok := byOutcome[deliverylog.OutcomeNoDestination]; !ok || e.ProjectID != "3" || e.Error != "no callback URL for the project or its account" {
		t.Errorf("no no_destination record for project 3, with why: %+v", e)
	}
}

// At the default level the log has one line per event that ends badly, the
// warning that says why, and none for its failed attempts: an endpoint
// that is down must not bury the rest (the delivery log has every
// attempt). Events that end by rule are logged too, at most 10 a second.
func TestDispatcher_logs_an_event_that_fails_for_good_once(t *testing.T) {
	var logs testutil.SyncBuffer
	sink := testutil.NewSink(t)
	sink.Respond(codes(500))
	h := newHarness(t, harnessOptions{
		MaxAttempts: 3, Backoff: []time.Duration{10 * time.Millisecond},
		Logger: slog.New(slog.NewTextHandler(&logs, nil)), // info and above
	})
	h.setProject("1", sink.URL)
	h.waitDestination("1", "1", sink.URL)
	const events = 5
	for i := range events {
		h.publish(eventSubject("crawl_status", "1", "1"), crawl(i+1), "")
	}
	h.publish(eventSubject("crawl_status", "1", "2"), crawl(10), "")                                                 // no destination
	h.publish(eventSubject("crawl_status", "1", "1"), []byte(`{"crawl_id":11,"crawl_type":"test_suite_build"}`), "") // skipped
	testutil.WaitStreamMsgs(t, h.js, subjects.DeadStream, events, waitLong, nil)
	// Every event settled: the work-queue streams are empty once acked.
	testutil.WaitStreamMsgs(t, h.js, subjects.Stream, 0, waitLong, nil)
	testutil.WaitStreamMsgs(t, h.js, subjects.RetryStream, 0, waitLong, nil)
	testutil.CheckFor(t, waitLong, 20*time.Millisecond, func() error {
		if n := strings.Count(logs.String(), "delivery failed for good"); n != events {
			return fmt.Errorf("%d failed-for-good lines, want %d", n, events)
		}
		return nil
	})
	if n := len(sink.Requests()); n != 3*events {
		t.Errorf("%d attempts, want %d", n, 3*events)
	}
	// Every line about an event names its delivery id: the failed ones,
	// and one each for the events that end by rule (SPEC §3: logged
	// skipped, logged no_destination).
	s := logs.String()
	if n := strings.Count(s, "delivery_id="); n != events+2 {
		t.Errorf("%d lines about events, want %d:\n%s", n, events+2, s)
	}
	if !strings.Contains(s, "outcome=no_destination") || !strings.Contains(s, "outcome=skipped") {
		t.Errorf("the events that end by rule are not logged:\n%s", s)
	}
}

func TestDispatcher_restart_while_retries_are_pending_loses_none(t *testing.T) {
	h := newHarness(t, harnessOptions{MaxAttempts: 3, Backoff: []time.Duration{1500 * time.Millisecond}})
	sink := testutil.NewSink(t)
	sink.Respond(firstFails())
	h.setProject("2", sink.URL)
	h.waitDestination("1", "2", sink.URL)
	for i := range 5 {
		h.publish(eventSubject("crawl_status", "1", "2"), crawl(i+1), fmt.Sprintf("restart-%d", i))
	}
	// The first attempt of each fails; their retries wait in CALLBACKS_RETRY.
	testutil.WaitStreamMsgs(t, h.js, subjects.RetryStream, 5, waitLong, nil)
	h.stopDispatcher()
	select {
	case <-h.runDone:
	case <-time.After(waitLong):
		t.Fatal("dispatcher did not stop")
	}
	h.startDispatcher()
	testutil.CheckFor(t, waitLong, 20*time.Millisecond, func() error {
		for i := range 5 {
			id := idFromMsgID(fmt.Sprintf("restart-%d", i))
			if n := len(requestsWithID(sink, id)); n < 2 {
				return fmt.Errorf("%s: %d attempts", id, n)
			}
		}
		return nil
	})
	testutil.WaitStreamEmpty(t, h.js, subjects.RetryStream, waitLong)
	if n := len(h.dead()); n != 0 {
		t.Errorf("%d dead letters", n)
	}
}

func TestDispatcher_replayed_dead_letters_are_delivered_with_their_delivery_id(t *testing.T) {
	h := newHarness(t, harnessOptions{MaxAttempts: 1})
	sink := testutil.NewSink(t)
	sink.Respond(codes(500))
	h.setProject("2", sink.URL)
	h.waitDestination("1", "2", sink.URL)
	subj := eventSubject("crawl_status", "1", "2")
	h.publish(subj, crawl(1), "replay-me")
	h.waitDeadFor(subj, crawl(1))

	sink.Respond(codes(200))
	res, err := deadletters.Replay(h.ctx, h.js, deadletters.Filter{ProjectID: "2"}, nil)
	if err != nil || res.Replayed != 1 {
		t.Fatalf("Replay = %+v, %v", res, err)
	}
	reqs := sink.WaitFor(t, 2, waitLong)
	if id := reqs[1].Header.Get("Callback-Delivery-Id"); id != idFromMsgID("replay-me") {
		t.Errorf("replayed delivery has Callback-Delivery-Id %q, want the original %q", id, idFromMsgID("replay-me"))
	}
	if reqs[1].Body != crawlBody(1, "1", "2") {
		t.Errorf("replayed body %q", reqs[1].Body)
	}
	h.waitEventsEmpty()
	testutil.WaitStreamEmpty(t, h.js, subjects.DeadStream, waitLong)
}

// Endpoints that never answer, more of them than workers/per_host, must
// not hold up a healthy endpoint's events interleaved with theirs.
func TestDispatcher_dead_endpoints_do_not_starve_a_healthy_one(t *testing.T) {
	for _, m := range hostModes {
		t.Run(m.name, func(t *testing.T) { testDeadEndpoints(t, m.window) })
	}
}

func testDeadEndpoints(t *testing.T, window int) {
	const deadHosts = 4 // workers 4 / per_host 2 = 2 hosts could fill the workers
	h := newHarness(t, harnessOptions{MaxAttempts: 1, Workers: 4, PerHostConcurrency: 2, HostWindow: window, DeliveryTimeout: 30 * time.Second})
	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock)

	var mu sync.Mutex
	var order []string // completion order: "healthy" or "dead"
	done := func(kind string) {
		mu.Lock()
		order = append(order, kind)
		mu.Unlock()
	}
	healthy := testutil.NewSink(t)
	healthy.Respond(func(testutil.Request) int { done("healthy"); return 200 })
	h.setProject("100", healthy.URL)
	for i := range deadHosts {
		s := testutil.NewSink(t)
		s.Respond(func(testutil.Request) int { <-release; done("dead"); return 200 })
		h.setProject(strconv.Itoa(200+i), s.URL)
		h.waitDestination("1", strconv.Itoa(200+i), s.URL)
	}
	h.waitDestination("1", "100", healthy.URL)

	const healthyEvents = 20
	for i := range healthyEvents {
		for d := range deadHosts {
			h.publish(eventSubject("crawl_status", "1", strconv.Itoa(200+d)), crawl(1000+i*deadHosts+d), "")
		}
		h.publish(eventSubject("crawl_status", "1", "100"), crawl(i+1), "")
	}
	// Wait on the completions themselves: the sink records a request
	// before its answer (and so the completion) is made.
	testutil.CheckFor(t, waitLong, 10*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, k := range order {
			if k == "healthy" {
				n++
			}
		}
		if n < healthyEvents {
			return fmt.Errorf("%d of %d healthy deliveries completed", n, healthyEvents)
		}
		return nil
	})
	unblock()
	testutil.CheckFor(t, waitLong, 20*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(order) < healthyEvents+deadHosts*healthyEvents {
			return fmt.Errorf("%d of %d completions", len(order), healthyEvents+deadHosts*healthyEvents)
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	for i := range healthyEvents {
		if order[i] != "healthy" {
			t.Fatalf("completion %d was a dead endpoint's, before all %d healthy deliveries: %v", i, healthyEvents, order[:healthyEvents])
		}
	}
}

func TestDispatcher_waiting_retries_do_not_stop_fresh_events(t *testing.T) {
	h := newHarness(t, harnessOptions{MaxAttempts: 10, Workers: 4, Backoff: []time.Duration{200 * time.Millisecond}})
	dead, healthy := testutil.NewSink(t), testutil.NewSink(t)
	dead.Respond(codes(503))
	h.setProject("1", dead.URL)
	h.setProject("2", healthy.URL)
	h.waitDestination("1", "1", dead.URL)
	h.waitDestination("1", "2", healthy.URL)
	for i := range 300 {
		h.publish(eventSubject("crawl_status", "1", "1"), crawl(i+1), "")
	}
	// A burst of retries for the dead endpoint is waiting now.
	testutil.CheckFor(t, waitLong, 20*time.Millisecond, func() error {
		if n := testutil.StreamLen(t, h.js, subjects.RetryStream); n < 100 {
			return fmt.Errorf("%d retries waiting", n)
		}
		return nil
	})
	for i := range 20 {
		h.publish(eventSubject("crawl_status", "1", "2"), crawl(i+1), "")
	}
	healthy.WaitFor(t, 20, waitLong)
	if n := testutil.StreamLen(t, h.js, subjects.RetryStream); n == 0 {
		t.Error("the retries were all gone before the fresh events arrived; the test proves nothing")
	}
}

// peakObserver keeps the most attempts the dispatcher had in flight, and
// counts parked work by reason.
type peakObserver struct {
	mu        sync.Mutex
	now, peak int
	parked    map[string]int
}

func (o *peakObserver) Parked(reason string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.parked == nil {
		o.parked = map[string]int{}
	}
	o.parked[reason]++
}

func (o *peakObserver) Parks(reason string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.parked[reason]
}

func (o *peakObserver) InFlight(delta int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.now += delta
	o.peak = max(o.peak, o.now)
}

func (o *peakObserver) Peak() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.peak
}

func (*peakObserver) Outcome(string, string)                {}
func (*peakObserver) Attempt(string, string, time.Duration) {}
func (*peakObserver) DeadLettered(string)                   {}

func TestDispatcher_host_window_keeps_the_cap_at_the_endpoint(t *testing.T) {
	const limit, window, events = 2, 4, 200
	obs := &peakObserver{}
	h := newHarness(t, harnessOptions{PerHostConcurrency: limit, HostWindow: window, Workers: 8, Observer: obs})
	var inside, most atomic.Int64
	sink := testutil.NewSink(t)
	sink.Respond(func(testutil.Request) int {
		n := inside.Add(1)
		defer inside.Add(-1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		return 200
	})
	h.setProject("10", sink.URL)
	h.waitDestination("1", "10", sink.URL)
	for i := range events {
		h.publish(eventSubject("crawl_status", "1", "10"), crawl(i+1), "")
	}
	sink.WaitFor(t, events, waitLong)
	h.waitEventsEmpty()
	if m := most.Load(); m > limit {
		t.Errorf("the endpoint had %d requests at once; per-host cap %d", m, limit)
	}
	// The window was used: more attempts in flight than the cap (the
	// extra ones waiting in the transport), never more than the window.
	if p := obs.Peak(); p <= limit || p > window {
		t.Errorf("at most %d attempts in flight, want %d < n <= %d", p, limit, window)
	}
	seen := requestsByDelivery(sink.Requests())
	if len(seen) != events || len(sink.Requests()) != events {
		t.Errorf("%d requests, %d distinct deliveries; want %d of each", len(sink.Requests()), len(seen), events)
	}
}

// busyFirst is the transport with its host cap full on the first attempt of
// each delivery id: that attempt is not made (plugins.ErrHostBusy).
type busyFirst struct {
	plugins.Transport
	mu   sync.Mutex
	seen map[string]bool
}

func (b *busyFirst) Deliver(ctx context.Context, d plugins.Delivery) (plugins.Result, error) {
	b.mu.Lock()
	first := !b.seen[d.DeliveryID]
	b.seen[d.DeliveryID] = true
	b.mu.Unlock()
	if first {
		return plugins.Result{}, fmt.Errorf("deliver %s: attempt not made: %w", d.DeliveryID, plugins.ErrHostBusy)
	}
	return b.Transport.Deliver(ctx, d)
}

func TestDispatcher_host_busy_at_the_transport_is_parked(t *testing.T) {
	const events = 3
	obs := &peakObserver{}
	h := newHarness(t, harnessOptions{MaxAttempts: 1, MaxDeliveries: 2, Observer: obs, Log: true, WrapTransport: func(tr plugins.Transport) plugins.Transport {
		return &busyFirst{Transport: tr, seen: map[string]bool{}}
	}})
	sink := testutil.NewSink(t)
	h.setProject("10", sink.URL)
	h.waitDestination("1", "10", sink.URL)
	for i := range events {
		h.publish(eventSubject("crawl_status", "1", "10"), crawl(i+1), "")
	}
	// Parked in CALLBACKS_RETRY, not handed back as an infrastructure
	// error (which publishes nothing), and not counted as an attempt
	// (parking keeps the attempt number, SPEC §3).
	reqs := sink.WaitFor(t, events, waitLong)
	h.waitEventsEmpty()
	testutil.WaitStreamEmpty(t, h.js, subjects.RetryStream, waitLong)
	info, err := h.js.Stream(h.ctx, subjects.RetryStream)
	if err != nil {
		t.Fatal(err)
	}
	if n := info.CachedInfo().State.LastSeq; n < events {
		t.Errorf("CALLBACKS_RETRY took %d messages, want the %d parked events", n, events)
	}
	if d := h.dead(); len(d) != 0 {
		t.Errorf("%d dead letters, want none", len(d))
	}
	if n := obs.Parks(dispatcher.ParkedHostBusy); n != events {
		t.Errorf("%d parks counted as host_busy, want %d", n, events)
	}
	if len(reqs) != events {
		t.Errorf("%d requests, want %d", len(reqs), events)
	}
	var page deliverylog.Page
	testutil.CheckFor(t, waitLong, 20*time.Millisecond, func() error {
		var err error
		page, err = deliverylog.NewReader(h.js).Query(h.ctx, deliverylog.Filter{ProjectID: "10", First: 50})
		if err != nil {
			return err
		}
		if len(page.Records) < events {
			return fmt.Errorf("%d log records", len(page.Records))
		}
		return nil
	})
	for _, e := range page.Records {
		if e.Outcome != deliverylog.OutcomeDelivered || e.Attempt != 1 {
			t.Errorf("log record %+v: want delivered at attempt 1, the park not counted", e.Record)
		}
	}
}

func TestDispatcher_a_stalled_hosts_backlog_is_parked_and_delivered_once(t *testing.T) {
	const events = 6
	obs := &peakObserver{}
	h := newHarness(t, harnessOptions{MaxAttempts: 1, PerHostConcurrency: 1, DeliveryTimeout: 30 * time.Second, Observer: obs})
	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock)
	sink := testutil.NewSink(t)
	sink.Respond(func(testutil.Request) int { <-release; return 200 })
	h.setProject("10", sink.URL)
	h.waitDestination("1", "10", sink.URL)
	for i := range events {
		h.publish(eventSubject("crawl_status", "1", "10"), crawl(i+1), "")
	}
	// One attempt hangs; once nothing has answered for 500 ms the host
	// counts as stalled and the attempts queued for it are parked.
	testutil.CheckFor(t, waitLong, 20*time.Millisecond, func() error {
		if n := obs.Parks(dispatcher.ParkedOverCap); n == 0 {
			return errString("nothing parked yet")
		}
		return nil
	})
	if n := len(sink.Requests()); n != 1 {
		t.Fatalf("the stalled host got %d requests at once, cap 1", n)
	}
	unblock()
	sink.WaitFor(t, events, waitLong)
	h.waitEventsEmpty()
	testutil.WaitStreamEmpty(t, h.js, subjects.RetryStream, waitLong)
	seen := requestsByDelivery(sink.Requests())
	if len(seen) != events || len(sink.Requests()) != events {
		t.Errorf("%d requests, %d distinct deliveries; want %d of each", len(sink.Requests()), len(seen), events)
	}
}

// Work that waits for one of delivery.max_in_flight's slots while slow
// endpoints hold them all is kept alive past its ack wait: the server does
// not hand it out again, and each event is delivered once.
func TestDispatcher_a_wait_for_an_attempt_slot_outlasts_the_ack_wait(t *testing.T) {
	const events = 4
	const ackWait, answerIn = 3 * time.Second, 1200 * time.Millisecond // the last event waits 3 × 1.2 s for its slot
	h := newHarness(t, harnessOptions{MaxInFlight: 1, PerHostConcurrency: events, DeliveryTimeout: 2 * time.Second, AckWait: ackWait})
	sink := testutil.NewSink(t)
	sink.Respond(func(testutil.Request) int {
		time.Sleep(answerIn) // a slow endpoint
		return 200
	})
	h.setProject("10", sink.URL)
	h.waitDestination("1", "10", sink.URL)
	for i := range events {
		h.publish(eventSubject("crawl_status", "1", "10"), crawl(i+1), "")
	}
	sink.WaitFor(t, events, waitLong)
	h.waitEventsEmpty()
	seen := requestsByDelivery(sink.Requests())
	if len(seen) != events || len(sink.Requests()) != events {
		t.Errorf("%d requests for %d deliveries (%v); want %d, each once", len(sink.Requests()), len(seen), seen, events)
	}
}

// While the settings view is stale (its watch broken for StaleAfter), no
// event is routed by it: what a pull delivers is handed back and the pull
// loops pause; once the view is fresh again the event is delivered.
func TestDispatcher_pauses_while_the_settings_view_is_stale(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	sink := testutil.NewSink(t)
	h.setProject("10", sink.URL+"/a")
	h.waitDestination("1", "10", sink.URL+"/a")
	h.publish(eventSubject("crawl_status", "1", "10"), crawl(1), "")
	sink.WaitFor(t, 1, waitLong)

	if err := h.js.DeleteKeyValue(h.ctx, subjects.SettingsBucket); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, settings.StaleAfter+10*time.Second, 50*time.Millisecond, func() error {
		if h.view.Err() == nil {
			return errors.New("view not stale yet")
		}
		return nil
	})
	h.publish(eventSubject("crawl_status", "1", "10"), crawl(2), "")
	// A bounded look for something that must not happen: the event is
	// not delivered by the stale view.
	deadline := time.Now().Add(1500 * time.Millisecond)
	for time.Now().Before(deadline) {
		if n := len(sink.Requests()); n != 1 {
			t.Fatalf("%d requests while the settings view was stale, want the first one only", n)
		}
		time.Sleep(20 * time.Millisecond)
	}

	store, err := settings.OpenStore(h.ctx, h.js, settings.StoreOptions{}) // makes the bucket again
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.UpdateProject(h.ctx, "10", func(p *settings.Project) error {
		u := sink.URL + "/b"
		p.APICallbackURL = &u
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	reqs := sink.WaitFor(t, 2, waitLong)
	if reqs[1].Path != "/b" || reqs[1].Body != crawlBody(2, "1", "10") {
		t.Errorf("second request %s %q, want event 2 at /b, routed by the fresh view", reqs[1].Path, reqs[1].Body)
	}
	h.waitEventsEmpty()
}

// downFailure is a failure plugin that always fails.
type downFailure struct{ calls atomic.Int64 }

func (f *downFailure) OnFailure(context.Context, plugins.Failure) ([]plugins.Outbound, error) {
	f.calls.Add(1)
	return nil, errors.New("failure plugin unavailable")
}

// A failure plugin that keeps failing is asked again in place, then the
// event is dead-lettered with its own status and error, without a notice.
// Handing the message back instead made the attempt again: the endpoint
// got the event once more per hand-back, and the log had none of them.
func TestDispatcher_a_failing_failure_plugin_does_not_repeat_the_attempt(t *testing.T) {
	fail := &downFailure{}
	h := newHarness(t, harnessOptions{MaxAttempts: 1, FailureHandler: fail, Log: true})
	sink := testutil.NewSink(t)
	sink.Respond(func(testutil.Request) int { return 404 })
	h.setProject("2", sink.URL)
	h.waitDestination("1", "2", sink.URL)
	subj := eventSubject("crawl_status", "1", "2")
	h.publish(subj, crawl(1), "")

	dl := h.waitDeadFor(subj, crawl(1))
	for k, want := range map[string]string{subjects.HeaderReason: dispatcher.ReasonDeliveryFailed, subjects.HeaderStatus: "404", subjects.HeaderAttempts: "1"} {
		if got := dl.Header.Get(k); got != want {
			t.Errorf("dead letter %s = %q, want %q", k, got, want)
		}
	}
	h.waitEventsEmpty()
	if n := len(sink.Requests()); n != 1 {
		t.Errorf("the endpoint got %d requests, want the one attempt", n)
	}
	if n := fail.calls.Load(); n != 3 {
		t.Errorf("failure plugin asked %d times, want 3", n)
	}
	testutil.CheckFor(t, waitLong, 20*time.Millisecond, func() error {
		page, err := deliverylog.NewReader(h.js).Query(h.ctx, deliverylog.Filter{ProjectID: "2", First: 10})
		if err != nil {
			return err
		}
		if len(page.Records) != 1 || page.Records[0].Outcome != deliverylog.OutcomeFailed || page.Records[0].StatusCode != 404 || page.Records[0].Attempt != 1 {
			return fmt.Errorf("records %+v, want the one attempt, failed with 404", page.Records)
		}
		return nil
	})
}

// Retries waiting beyond dispatcher.max_retry_pending make due ones late
// (the server hands out nothing more while the limit is reached): the
// operator is told, once.
func TestDispatcher_says_when_retries_reach_their_pending_limit(t *testing.T) {
	var logs testutil.SyncBuffer
	sink := testutil.NewSink(t)
	sink.Respond(codes(500))
	h := newHarness(t, harnessOptions{
		MaxAttempts: 3, Backoff: []time.Duration{time.Hour}, MaxRetryPending: 4,
		StreamCheck: 50 * time.Millisecond,
		Logger:      slog.New(slog.NewTextHandler(&logs, nil)),
	})
	h.setProject("1", sink.URL)
	h.waitDestination("1", "1", sink.URL)
	for i := range 6 {
		h.publish(eventSubject("crawl_status", "1", "1"), crawl(i+1), "")
	}
	sink.WaitFor(t, 6, waitLong)
	const warning = "retries waiting reached dispatcher.max_retry_pending"
	testutil.CheckFor(t, waitLong, 20*time.Millisecond, func() error {
		if !strings.Contains(logs.String(), warning) {
			return errString("no warning yet")
		}
		return nil
	})
	// Said once while the limit holds.
	time.Sleep(200 * time.Millisecond) // a window of several checks, for a warning that must not come
	if n := strings.Count(logs.String(), warning); n != 1 {
		t.Errorf("warned %d times, want once", n)
	}
}

// alwaysBusy is a transport that finds every host busy, as a third-party
// transport might.
type alwaysBusy struct{ plugins.Transport }

func (alwaysBusy) Deliver(context.Context, plugins.Delivery) (plugins.Result, error) {
	return plugins.Result{}, fmt.Errorf("attempt not made: %w", plugins.ErrHostBusy)
}

// Parking costs no attempt, so work for a host that stays busy waits as
// long as it does: an event parked 20 times in a row is warned about, not
// only counted in the metrics.
func TestDispatcher_warns_about_an_event_parked_again_and_again(t *testing.T) {
	var logs testutil.SyncBuffer
	h := newHarness(t, harnessOptions{
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		WrapTransport: func(tr plugins.Transport) plugins.Transport {
			return alwaysBusy{tr}
		},
	})
	h.setProject("10", "https://busy.example.com/hook")
	h.waitDestination("1", "10", "https://busy.example.com/hook")
	const warning = "event still waiting for its host"
	// An event parked 19 times so far is parked once more: the 20th park
	// warns (and the 21st is half a minute away).
	orig := eventSubject("crawl_status", "1", "10")
	retry, err := subjects.Retry(orig)
	if err != nil {
		t.Fatal(err)
	}
	m := nats.NewMsg(retry)
	m.Data = crawl(1)
	m.Header.Set(subjects.HeaderAttempt, "1")
	m.Header.Set(subjects.HeaderSubject, orig)
	m.Header.Set("Callbackd-Parked", "19")
	h.publishMsg(m)
	testutil.CheckFor(t, waitLong, 20*time.Millisecond, func() error {
		if !strings.Contains(logs.String(), warning) {
			return errString("no warning yet")
		}
		return nil
	})
	if s := logs.String(); strings.Count(s, warning) != 1 || !strings.Contains(s, "reason=host_busy parked=20 attempt=1") {
		t.Errorf("log:\n%s", s)
	}
}

// An event given up on whose dead letter cannot be written (its stream
// gone, storage full) is handed back; the letter written at a later
// delivery keeps the first reason — not "its process died", which the
// hand-back would otherwise read as — and the event is logged and counted
// as failed once, not at every try.
func TestDispatcher_a_give_up_whose_dead_letter_fails_keeps_its_reason(t *testing.T) {
	var logs testutil.SyncBuffer
	enc := &downEncoder{}
	h := newHarness(t, harnessOptions{
		MaxAttempts: 4, MaxDeliveries: 2, Log: true, StreamCheck: time.Hour,
		Encoders: map[string]plugins.Encoder{"crawl_status": enc},
		Logger:   slog.New(slog.NewTextHandler(&logs, nil)),
	})
	h.setProject("2", "https://example.com/hook")
	h.waitDestination("1", "2", "https://example.com/hook")
	restoreDead := h.removeStream(subjects.DeadStream)
	subj := eventSubject("crawl_status", "1", "2")
	h.publish(subj, crawl(1), "")
	waitLogged(t, &logs, "dead-letter publish failed; event handed back", 1)
	restoreDead()
	dl := h.waitDeadFor(subj, crawl(1))
	if e := dl.Header.Get(subjects.HeaderError); !strings.Contains(e, "plugin unavailable") || strings.Contains(e, "process died") {
		t.Errorf("%s = %q, want the first give-up's reason", subjects.HeaderError, e)
	}
	h.waitEventsEmpty()
	if n := strings.Count(logs.String(), "giving up on an event"); n != 1 {
		t.Errorf("%d give-up lines, want 1:\n%s", n, logs.String())
	}
	failed := 0
	testutil.CheckFor(t, waitLong, 20*time.Millisecond, func() error { // the log is written asynchronously
		page, err := deliverylog.NewReader(h.js).Query(h.ctx, deliverylog.Filter{ProjectID: "2", First: 10})
		if err != nil {
			return err
		}
		failed = 0
		for _, r := range page.Records {
			if r.Outcome == deliverylog.OutcomeFailed {
				failed++
			}
		}
		if failed == 0 {
			return errString("no failed record yet")
		}
		return nil
	})
	if failed != 1 {
		t.Errorf("%d failed records, want 1", failed)
	}
}

// slowSink is an endpoint that answers after hold, counting its requests.
type slowSink struct {
	*httptest.Server
	done atomic.Int64
}

func newSlowSink(t *testing.T, hold time.Duration) *slowSink {
	s := &slowSink{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		select {
		case <-time.After(hold): // the endpoint's slowness, not a synchronisation
		case <-r.Context().Done():
		}
		w.WriteHeader(http.StatusOK)
		s.done.Add(1)
	}))
	t.Cleanup(s.Close)
	return s
}

// Slow hosts share half of delivery.max_in_flight: with as many of them
// busy as would take every attempt slot, a healthy host's event goes out at
// once instead of after one of their answers (SPEC §3: a slow endpoint
// must not delay the others).
func TestDispatcher_slow_hosts_share_half_the_attempt_slots(t *testing.T) {
	const hold = 2 * time.Second
	obs := &peakObserver{}
	h := newHarness(t, harnessOptions{PerHostConcurrency: 2, MaxInFlight: 4, DeliveryTimeout: 10 * time.Second, Observer: obs})
	slow := []*slowSink{newSlowSink(t, hold), newSlowSink(t, hold)}
	healthy := testutil.NewSink(t)
	for i, s := range slow {
		id := strconv.Itoa(i + 1)
		h.setProject(id, s.URL)
		h.waitDestination("1", id, s.URL)
	}
	h.setProject("9", healthy.URL)
	h.waitDestination("1", "9", healthy.URL)

	// Two rounds of their cap each: their attempts average 2 s × (1 −
	// (7/8)⁴) ≈ 0.8 s, over the 500 ms that makes a host slow.
	for i := range 4 {
		for p := range slow {
			h.publish(eventSubject("crawl_status", "1", strconv.Itoa(p+1)), crawl(100*p+i+1), "")
		}
	}
	testutil.CheckFor(t, waitLong, 20*time.Millisecond, func() error {
		for i, s := range slow {
			if n := s.done.Load(); n < 4 {
				return fmt.Errorf("slow host %d answered %d of 4", i+1, n)
			}
		}
		return nil
	})
	// Both slow hosts busy again, with work enough to take every slot:
	// two attempts go out, the other six are parked (over the slow hosts'
	// share, or queued behind it); without the share, four would take
	// every slot and four wait for them.
	parked := obs.Parks(dispatcher.ParkedOverCap)
	for i := range 4 {
		for p := range slow {
			h.publish(eventSubject("crawl_status", "1", strconv.Itoa(p+1)), crawl(100*p+i+11), "")
		}
	}
	testutil.CheckFor(t, waitLong, 20*time.Millisecond, func() error {
		if n := obs.Parks(dispatcher.ParkedOverCap) - parked; n < 6 {
			return fmt.Errorf("%d parked", n)
		}
		return nil
	})
	h.publish(eventSubject("crawl_status", "1", "9"), crawl(999), "")
	healthy.WaitFor(t, 1, waitLong)
	if n := slow[0].done.Load() + slow[1].done.Load(); n != 8 {
		t.Errorf("the healthy host's event waited for %d answers of the slow hosts", n-8)
	}
}

// Two branches of one chain — a parked copy whose source's ack was lost
// with a NATS leader, and that source redelivered — make the same attempt
// and publish the same dead letter, which CALLBACKS_DEAD keeps once. A
// message of another chain at the same attempt keeps its own letter.
func TestDispatcher_two_branches_of_one_chain_write_one_dead_letter(t *testing.T) {
	h := newHarness(t, harnessOptions{MaxAttempts: 3})
	sink := testutil.NewSink(t)
	sink.Respond(func(testutil.Request) int { return 404 })
	h.setProject("2", sink.URL)
	h.waitDestination("1", "2", sink.URL)
	orig := eventSubject("crawl_status", "1", "2")
	retry, err := subjects.Retry(orig)
	if err != nil {
		t.Fatal(err)
	}
	branch := func(msgID, origin string) {
		m := nats.NewMsg(retry)
		m.Data = crawl(1)
		m.Header.Set(subjects.HeaderMsgID, msgID)
		m.Header.Set(subjects.HeaderAttempt, "3")
		m.Header.Set(subjects.HeaderSubject, orig)
		m.Header.Set(subjects.HeaderDeliveryID, "0123456789abcdef")
		m.Header.Set("Callbackd-Origin", origin)
		h.publishMsg(m)
	}
	branch("0123456789abcdef:3:CALLBACKS-77", "CALLBACKS-77")
	branch("park:CALLBACKS-77:3:1", "CALLBACKS-77") // the parked copy
	branch("0123456789abcdef:3:CALLBACKS-78", "CALLBACKS-78")

	testutil.CheckFor(t, waitLong, 20*time.Millisecond, func() error {
		if n := len(sink.Requests()); n != 3 {
			return fmt.Errorf("%d attempts so far", n)
		}
		return nil
	})
	testutil.WaitStreamEmpty(t, h.js, subjects.RetryStream, waitLong)
	letters := h.dead()
	var ids []string
	for _, m := range letters {
		ids = append(ids, m.Header.Get(subjects.HeaderMsgID))
	}
	slices.Sort(ids)
	if want := []string{"dead:CALLBACKS-77:3", "dead:CALLBACKS-78:3"}; !slices.Equal(ids, want) {
		t.Errorf("dead letters %q, want %q", ids, want)
	}
}

// hungEncoder stands for an encoder in a plugin process of its own (a
// PipelineEncoder with no one-crossing pipeline for this transport) that
// answers nothing until released.
type hungEncoder struct {
	calls   atomic.Int64
	release chan struct{}
}

func (e *hungEncoder) Info(context.Context) (plugins.EncoderInfo, error) {
	return plugins.EncoderInfo{EventType: "slow_type"}, nil
}

func (e *hungEncoder) Encode(ctx context.Context, ev plugins.Event) (plugins.Encoded, error) {
	e.calls.Add(1)
	select {
	case <-e.release:
	case <-ctx.Done():
		return plugins.Encoded{}, ctx.Err()
	}
	return plugins.Encoded{Notification: plugins.Notification{Fields: []plugins.Field{{Name: "message", Value: plugins.String("slow_type")}}}}, nil
}

func (e *hungEncoder) PipelineWith(plugins.Transport) plugins.EncodeDeliverer { return nil }

// An encoder in a plugin process of its own is waited for before the
// attempt takes a slot of its host: hung encodings of one event type hold
// none of the slots that another type's events for the same customer
// need.
func TestDispatcher_a_hung_encoder_holds_no_slot_of_the_host(t *testing.T) {
	hung := &hungEncoder{release: make(chan struct{})}
	h := newHarness(t, harnessOptions{
		PerHostConcurrency: 2, Workers: 16,
		Encoders: map[string]plugins.Encoder{"crawl_status": builtin.NewCrawlStatus(), "slow_type": hung},
	})
	sink := testutil.NewSink(t)
	h.setProject("2", sink.URL)
	h.waitDestination("1", "2", sink.URL)
	for i := range 6 {
		h.publish(eventSubject("slow_type", "1", "2"), []byte(fmt.Sprintf(`{"n":%d}`, i)), "")
	}
	testutil.CheckFor(t, waitLong, 10*time.Millisecond, func() error {
		if n := hung.calls.Load(); n < 6 {
			return fmt.Errorf("%d encodings under way", n)
		}
		return nil
	})
	h.publish(eventSubject("crawl_status", "1", "2"), crawl(5), "")
	r := sink.WaitFor(t, 1, waitLong)
	if r[0].Body != crawlBody(5, "1", "2") {
		t.Fatalf("first delivery %q, want the crawl_status event", r[0].Body)
	}
	if n := len(sink.Requests()); n != 1 {
		t.Errorf("%d deliveries while the encodings hang, want 1", n)
	}
	close(hung.release)
	sink.WaitFor(t, 7, waitLong)
	h.waitEventsEmpty()
}

// restartingEncoder refuses its first calls as a host refuses a call while
// the plugin process restarts: the event never reached the plugin.
type restartingEncoder struct{ refuse, calls atomic.Int64 }

func (e *restartingEncoder) Info(context.Context) (plugins.EncoderInfo, error) {
	return plugins.EncoderInfo{EventType: "crawl_status"}, nil
}

func (e *restartingEncoder) Encode(ctx context.Context, ev plugins.Event) (plugins.Encoded, error) {
	if e.calls.Add(1) <= e.refuse.Load() {
		return plugins.Encoded{}, fmt.Errorf("%w: crawl_status is restarting (%w)", plugins.ErrPluginUnavailable, plugins.ErrNotReached)
	}
	return builtin.NewCrawlStatus().Encode(ctx, ev)
}

// Deliveries refused before they reached a restarting plugin are not the
// event's to pay for: they do not count against max_deliveries, so an
// event that crashes its plugin every time does not take the others down
// with it.
func TestDispatcher_refusals_of_a_restarting_plugin_do_not_use_up_max_deliveries(t *testing.T) {
	enc := &restartingEncoder{}
	enc.refuse.Store(4)
	h := newHarness(t, harnessOptions{MaxDeliveries: 2, Encoders: map[string]plugins.Encoder{"crawl_status": enc}})
	sink := testutil.NewSink(t)
	h.setProject("2", sink.URL)
	h.waitDestination("1", "2", sink.URL)
	h.publish(eventSubject("crawl_status", "1", "2"), crawl(3), "")
	r := sink.WaitFor(t, 1, waitLong)
	if r[0].Body != crawlBody(3, "1", "2") {
		t.Errorf("delivered %q", r[0].Body)
	}
	h.waitEventsEmpty()
	if n := enc.calls.Load(); n != 5 {
		t.Errorf("%d encodings, want 4 refused and 1", n)
	}
	if n := len(h.dead()); n != 0 {
		t.Errorf("%d dead letters, want none", n)
	}
}

// An attempt the endpoint answered is not made again when what it asks for
// cannot be published: the message is handed back until the dead letter
// (or the retry) is written, and its next deliveries publish it without
// posting to the endpoint once more per hand-back.
func TestDispatcher_a_failed_settlement_does_not_repeat_the_attempt(t *testing.T) {
	tests := []struct {
		name        string
		stream      string // deleted until the handing back is seen
		maxAttempts int
		status      int
		wantLog     string
	}{
		{"final status, dead letter refused", subjects.DeadStream, 1, http.StatusNotFound, "dead-letter publish failed; event handed back"},
		{"retryable status, retry refused", subjects.RetryStream, 2, http.StatusServiceUnavailable, "infrastructure error; message handed back"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs testutil.SyncBuffer
			sink := testutil.NewSink(t)
			sink.Respond(func(testutil.Request) int { return tt.status })
			h := newHarness(t, harnessOptions{
				MaxAttempts: tt.maxAttempts, Backoff: []time.Duration{50 * time.Millisecond},
				StreamCheck: time.Hour, Logger: slog.New(slog.NewTextHandler(&logs, nil)),
			})
			h.setProject("2", sink.URL+"/hook")
			h.waitDestination("1", "2", sink.URL+"/hook")
			restore := h.removeStream(tt.stream)
			subj := eventSubject("crawl_status", "1", "2")
			h.publish(subj, crawl(1), "")
			// Two hand-backs: the message came back once and was not
			// posted again.
			waitLogged(t, &logs, tt.wantLog, 2)
			if n := len(sink.Requests()); n != 1 {
				t.Fatalf("the endpoint got %d requests while the settlement could not be published, want 1", n)
			}
			restore()
			if tt.stream == subjects.RetryStream {
				// The retry is attempt 2, which also fails: dead-lettered.
				sink.WaitFor(t, 2, waitLong)
			}
			dl := h.waitDeadFor(subj, crawl(1))
			if got, want := dl.Header.Get(subjects.HeaderAttempts), strconv.Itoa(tt.maxAttempts); got != want {
				t.Errorf("%s = %s, want %s", subjects.HeaderAttempts, got, want)
			}
			h.waitEventsEmpty()
			if n := len(sink.Requests()); n != tt.maxAttempts {
				t.Errorf("the endpoint got %d requests, want %d (max_attempts)", n, tt.maxAttempts)
			}
		})
	}
}

// Consumers kept from an install with a shorter delivery.timeout (streams
// are left as they are without --update-streams) have an ack wait shorter
// than an attempt may take: the message is kept alive during the attempt,
// so the server does not hand it out again while the endpoint is still
// answering the first request.
func TestDispatcher_an_ack_wait_shorter_than_the_attempt_is_kept_alive(t *testing.T) {
	sink := newSlowSink(t, 3*time.Second)
	var requests atomic.Int64
	counted := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		sink.Config.Handler.ServeHTTP(w, r)
	})
	front := httptest.NewServer(counted)
	t.Cleanup(front.Close)
	h := newHarness(t, harnessOptions{DeliveryTimeout: 10 * time.Second, AckWait: time.Second})
	h.setProject("2", front.URL+"/hook")
	h.waitDestination("1", "2", front.URL+"/hook")
	h.publish(eventSubject("crawl_status", "1", "2"), crawl(1), "")
	testutil.CheckFor(t, waitLong, 20*time.Millisecond, func() error {
		if sink.done.Load() < 1 {
			return errString("not answered yet")
		}
		return nil
	})
	h.waitEventsEmpty()
	if n := requests.Load(); n != 1 {
		t.Errorf("the endpoint got %d requests for one event, want 1 (handed out again during the attempt)", n)
	}
}

// noticeFailure is a failure plugin that asks for one notice to url and
// counts its calls.
type noticeFailure struct {
	url   string
	calls atomic.Int64
}

func (f *noticeFailure) OnFailure(_ context.Context, fl plugins.Failure) ([]plugins.Outbound, error) {
	f.calls.Add(1)
	return []plugins.Outbound{{
		Destination:  plugins.Destination{URL: f.url},
		Notification: plugins.Notification{Fields: []plugins.Field{{Name: "delivery_id", Value: plugins.String(fl.DeliveryID)}}},
	}}, nil
}

// While a failed event's dead letter cannot be written, its hand-backs do
// not ask the failure plugin again: the notices are queued once (after the
// de-duplication window, queueing them again would reach the SSO client
// once more per hand-back).
func TestDispatcher_a_failed_settlement_queues_its_notices_once(t *testing.T) {
	var logs testutil.SyncBuffer
	sink := testutil.NewSink(t)
	sink.Respond(func(testutil.Request) int { return http.StatusNotFound })
	fail := &noticeFailure{url: sink.URL + "/sso"}
	h := newHarness(t, harnessOptions{
		MaxAttempts: 1, FailureHandler: fail, StreamCheck: time.Hour,
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	h.setProject("2", sink.URL+"/hook")
	h.waitDestination("1", "2", sink.URL+"/hook")
	restoreDead := h.removeStream(subjects.DeadStream)
	subj := eventSubject("crawl_status", "1", "2")
	h.publish(subj, crawl(1), "")
	waitLogged(t, &logs, "dead-letter publish failed; event handed back", 2)
	if n := fail.calls.Load(); n != 1 {
		t.Errorf("the failure plugin was asked %d times while the dead letter could not be written, want 1", n)
	}
	restoreDead()
	h.waitDeadFor(subj, crawl(1))
	h.waitEventsEmpty()
	if n := fail.calls.Load(); n != 1 {
		t.Errorf("the failure plugin was asked %d times in all, want 1", n)
	}
}

// A remembered settlement belongs to one stored message: a stream made
// again numbers its messages from 1, and a new event with the sequence of
// an old one is attempted as itself, not settled as the old one was.
func TestDispatcher_a_remembered_settlement_is_not_applied_to_a_new_message(t *testing.T) {
	var logs testutil.SyncBuffer
	old := testutil.NewSink(t)
	old.Respond(func(testutil.Request) int { return http.StatusNotFound })
	fresh := testutil.NewSink(t)
	h := newHarness(t, harnessOptions{
		MaxAttempts: 1, StreamCheck: time.Hour,
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	h.setProject("2", old.URL+"/old")
	h.setProject("3", fresh.URL+"/fresh")
	h.waitDestination("1", "2", old.URL+"/old")
	h.waitDestination("1", "3", fresh.URL+"/fresh")
	restoreDead := h.removeStream(subjects.DeadStream)
	ack := h.publish(eventSubject("crawl_status", "1", "2"), crawl(1), "")
	waitLogged(t, &logs, "dead-letter publish failed; event handed back", 1)
	// The stream is made again (by the dispatcher, once its pulls are
	// refused), and its first message has the old one's sequence.
	if err := h.js.DeleteStream(h.ctx, subjects.Stream); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, waitLong, 50*time.Millisecond, func() error {
		_, err := h.js.Consumer(h.ctx, subjects.Stream, subjects.DispatcherConsumer)
		return err
	})
	restoreDead()
	again := h.publish(eventSubject("crawl_status", "1", "3"), crawl(2), "")
	if again.Sequence != ack.Sequence {
		t.Fatalf("new message at sequence %d, want the old one's %d", again.Sequence, ack.Sequence)
	}
	r := fresh.WaitFor(t, 1, waitLong)
	if r[0].Body != crawlBody(2, "1", "3") {
		t.Errorf("fresh endpoint got %q", r[0].Body)
	}
	h.waitEventsEmpty()
	for _, m := range h.dead() {
		if m.Subject == subjects.DeadFor(subjects.EventKey{Type: "crawl_status", AccountID: "1", ProjectID: "3"}) {
			t.Errorf("the new event was dead-lettered as the old one: %v", m.Header)
		}
	}
}
