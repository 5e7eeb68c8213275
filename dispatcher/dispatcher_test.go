package dispatcher_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callbackd/callbackd/dispatcher"
	"github.com/callbackd/callbackd/settings"
	"github.com/callbackd/callbackd/subjects"
	"github.com/callbackd/callbackd/testutil"
)

// The seed's two example payloads arrive as the seed describes them: POST,
// exactly application/x-www-form-urlencoded, the fields in order with the
// seed's values, callbackd's User-Agent and Callback-Delivery-Id, and the
// project's custom headers as given.
func TestDispatcher_seed_payloads_arrive_exactly(t *testing.T) {
	sink := testutil.NewSink(t)
	h := newHarness(t, harnessOptions{})
	url := sink.URL + "/webhook"
	h.setProject(seedProject, url,
		settings.Header{Key: "Authorization", Value: "Bearer your-token"},
		settings.Header{Key: "X-Team", Value: "crawler ops"})
	h.waitDestination(seedAccount, seedProject, url)

	tests := []struct {
		name      string
		eventType string
		payload   string
		body      string
	}{
		{"crawl finished", "crawl_status", crawlSeed, crawlSeedBody},
		{"report download generated", "report_download_available", reportSeed, reportSeedBody},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msgID := "seed-" + tt.eventType
			h.publish(eventSubject(tt.eventType, seedAccount, seedProject), []byte(tt.payload), msgID)
			r := waitRequestWithID(t, sink, idFromMsgID(msgID))

			if r.Method != http.MethodPost {
				t.Errorf("method = %s, want POST", r.Method)
			}
			if r.Path != "/webhook" {
				t.Errorf("path = %q, want /webhook", r.Path)
			}
			if got := r.Header["Content-Type"]; !slices.Equal(got, []string{"application/x-www-form-urlencoded"}) {
				t.Errorf("Content-Type = %q, want exactly [application/x-www-form-urlencoded]", got)
			}
			if got := r.Header["User-Agent"]; !slices.Equal(got, []string{userAgent}) {
				t.Errorf("User-Agent = %q, want [%s]", got, userAgent)
			}
			if got := r.Header["Authorization"]; !slices.Equal(got, []string{"Bearer your-token"}) {
				t.Errorf("Authorization = %q, want [Bearer your-token]", got)
			}
			if got := r.Header["X-Team"]; !slices.Equal(got, []string{"crawler ops"}) {
				t.Errorf("X-Team = %q, want [crawler ops]", got)
			}
			if r.Body != tt.body {
				t.Errorf("body\n got %s\nwant %s", r.Body, tt.body)
			}
		})
	}
	h.waitEventsEmpty()
	if got := len(sink.Requests()); got != len(tests) {
		t.Errorf("sink got %d requests, want %d", got, len(tests))
	}
	if dead := h.dead(); len(dead) != 0 {
		t.Errorf("%d dead letters, want none", len(dead))
	}
}

// The project's URL wins over the account's, and each URL travels with its
// own headers only. A project with headers but no URL uses the account's
// URL and headers.
func TestDispatcher_project_URL_wins_over_account_URL(t *testing.T) {
	sink := testutil.NewSink(t)
	h := newHarness(t, harnessOptions{})
	const account = "42"
	projectHeader := settings.Header{Key: "X-Project-Token", Value: "p-secret"}
	accountHeader := settings.Header{Key: "X-Account-Token", Value: "a-secret"}
	h.setAccount(account, sink.URL+"/account", accountHeader)
	h.setProject("1", sink.URL+"/project", projectHeader)
	h.setProjectHeaders("3", projectHeader)
	h.waitDestination(account, "1", sink.URL+"/project")
	h.waitDestination(account, "2", sink.URL+"/account")
	h.waitDestination(account, "3", sink.URL+"/account")

	tests := []struct {
		name        string
		project     string
		wantPath    string
		wantHeader  settings.Header
		otherHeader string
	}{
		{"both set: the project's URL and headers", "1", "/project", projectHeader, accountHeader.Key},
		{"project without settings: the account's", "2", "/account", accountHeader, projectHeader.Key},
		{"project with headers but no URL: the account's URL and headers", "3", "/account", accountHeader, projectHeader.Key},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ack := h.publish(eventSubject("crawl_status", account, tt.project), crawl(100+i), "")
			r := waitRequestWithID(t, sink, h.seqID(ack.Sequence))
			if r.Path != tt.wantPath {
				t.Errorf("delivered to %q, want %q", r.Path, tt.wantPath)
			}
			if got := r.Header.Get(tt.wantHeader.Key); got != tt.wantHeader.Value {
				t.Errorf("%s = %q, want %q", tt.wantHeader.Key, got, tt.wantHeader.Value)
			}
			if got, ok := r.Header[http.CanonicalHeaderKey(tt.otherHeader)]; ok {
				t.Errorf("%s = %q sent, but it belongs to the other destination", tt.otherHeader, got)
			}
			if want := crawlBody(100+i, account, tt.project); r.Body != want {
				t.Errorf("body\n got %s\nwant %s", r.Body, want)
			}
		})
	}
}

// Callback-Delivery-Id is the first 16 hex digits of SHA-256 of the
// publisher's Nats-Msg-Id, else <CALLBACKS created, unix>-<stream seq>.
func TestDispatcher_callback_delivery_id(t *testing.T) {
	sink := testutil.NewSink(t)
	h := newHarness(t, harnessOptions{})
	h.setProject("1", sink.URL)
	h.waitDestination("1", "1", sink.URL)
	subject := eventSubject("crawl_status", "1", "1")

	t.Run("from Nats-Msg-Id", func(t *testing.T) {
		const msgID = "crawl-124234-finished"
		h.publish(subject, crawl(1), msgID)
		want := idFromMsgID(msgID)
		r := waitRequestWithBody(t, sink, crawlBody(1, "1", "1"))
		if got := r.Header["Callback-Delivery-Id"]; !slices.Equal(got, []string{want}) {
			t.Errorf("Callback-Delivery-Id = %q, want [%s]", got, want)
		}
	})
	t.Run("from stream creation time and sequence", func(t *testing.T) {
		ack := h.publish(subject, crawl(2), "")
		want := h.seqID(ack.Sequence)
		r := waitRequestWithBody(t, sink, crawlBody(2, "1", "1"))
		if got := r.Header["Callback-Delivery-Id"]; !slices.Equal(got, []string{want}) {
			t.Errorf("Callback-Delivery-Id = %q, want [%s]", got, want)
		}
	})
	// Only callbackd's own messages (retries, notifications, replays) keep
	// a Callbackd-Delivery-Id; a publisher's would let two events share one.
	for i, msgID := range []string{"crawl-7-finished", ""} {
		t.Run("a publisher's Callbackd-Delivery-Id is ignored, Nats-Msg-Id "+strconv.Quote(msgID), func(t *testing.T) {
			m := nats.NewMsg(subject)
			m.Data = crawl(3 + i)
			m.Header.Set(subjects.HeaderDeliveryID, "spoofed-id")
			if msgID != "" {
				m.Header.Set(jetstream.MsgIDHeader, msgID)
			}
			ack := h.publishMsg(m)
			want := h.seqID(ack.Sequence)
			if msgID != "" {
				want = idFromMsgID(msgID)
			}
			r := waitRequestWithBody(t, sink, crawlBody(3+i, "1", "1"))
			if got := r.Header["Callback-Delivery-Id"]; !slices.Equal(got, []string{want}) {
				t.Errorf("Callback-Delivery-Id = %q, want [%s]", got, want)
			}
		})
	}
}

// codeEndpoint answers /code/<n> with status n; a 3xx carries a Location
// on moved, which must never be requested (redirects are not followed).
func codeEndpoint(t *testing.T, moved *testutil.Sink) (*httptest.Server, *atomic.Int64) {
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		code, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/code/"))
		if err != nil {
			code = http.StatusNotFound
		}
		if code >= 300 && code < 400 {
			w.Header().Set("Location", moved.URL+"/moved")
		}
		w.WriteHeader(code)
		if code != http.StatusNoContent && code != http.StatusNotModified && code != http.StatusResetContent {
			_, _ = fmt.Fprintf(w, "answer %d", code)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, &hits
}

// Exactly 200, 201, 202, 203 and 204 are successes: the event is acked
// (gone from the work queue) and nothing is dead-lettered.
func TestDispatcher_success_codes_are_delivered(t *testing.T) {
	sink := testutil.NewSink(t)
	sink.Respond(func(r testutil.Request) int {
		code, _ := strconv.Atoi(strings.TrimPrefix(r.Path, "/code/"))
		return code
	})
	h := newHarness(t, harnessOptions{})
	for code := 200; code <= 204; code++ {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			project := strconv.Itoa(code)
			url := sink.URL + "/code/" + project
			h.setProject(project, url)
			h.waitDestination("1", project, url)
			subject := eventSubject("crawl_status", "1", project)
			ack := h.publish(subject, crawl(code), "")
			r := waitRequestWithID(t, sink, h.seqID(ack.Sequence))
			if r.Path != "/code/"+project {
				t.Errorf("path = %q", r.Path)
			}
			h.waitEventsEmpty()
			for _, m := range h.dead() {
				if m.Header.Get(subjects.HeaderSubject) == subject {
					t.Errorf("HTTP %d dead-lettered (%s: %s)", code, m.Header.Get(subjects.HeaderReason), m.Header.Get(subjects.HeaderError))
				}
			}
		})
	}
	if dead := h.dead(); len(dead) != 0 {
		t.Errorf("%d dead letters, want none", len(dead))
	}
}

// Every other answer is a failure, and with one attempt a final one:
// 205-299, every 3xx (not followed), 4xx and 5xx end in CALLBACKS_DEAD with
// reason delivery_failed, the status, one attempt, an error, the original
// subject, delivery ID and payload; the event is acked.
func TestDispatcher_failure_codes_are_dead_lettered(t *testing.T) {
	moved := testutil.NewSink(t)
	srv, hits := codeEndpoint(t, moved)
	h := newHarness(t, harnessOptions{})
	codes := []int{205, 206, 299, 301, 302, 303, 304, 307, 308, 400, 404, 408, 429, 500, 503}
	for _, code := range codes {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			project := strconv.Itoa(code)
			url := srv.URL + "/code/" + project
			h.setProject(project, url)
			h.waitDestination("7", project, url)
			subject := eventSubject("crawl_status", "7", project)
			payload := crawl(code)
			ack := h.publish(subject, payload, "")

			m := h.waitDeadFor(subject, payload)
			checkDeadLetter(t, m, "callbacks.dead.crawl_status.7."+project, dispatcher.ReasonDeliveryFailed,
				project, "1", subject, payload, h.seqID(ack.Sequence))
			h.waitEventsEmpty()
		})
	}
	if got := hits.Load(); got != int64(len(codes)) {
		t.Errorf("endpoint got %d requests, want one per code (%d)", got, len(codes))
	}
	if got := moved.Requests(); len(got) != 0 {
		t.Errorf("a redirect was followed: %d requests to its Location, first %s %s", len(got), got[0].Method, got[0].Path)
	}
	if got := len(h.dead()); got != len(codes) {
		t.Errorf("%d dead letters, want %d", got, len(codes))
	}
}

// blockingSink is a sink whose every request is held until release is
// closed (at the latest when the test ends, before the sink closes).
func blockingSink(t *testing.T) (sink *testutil.Sink, release func()) {
	sink = testutil.NewSink(t)
	ch := make(chan struct{})
	var once sync.Once
	release = func() { once.Do(func() { close(ch) }) }
	sink.Respond(func(testutil.Request) int {
		<-ch
		return http.StatusOK
	})
	t.Cleanup(release) // runs before the sink's Close, registered earlier
	return sink, release
}

// An endpoint that does not answer within delivery.timeout fails the
// attempt: with one attempt the event is dead-lettered with an empty
// Callbackd-Status (there was no response).
func TestDispatcher_timeout_is_a_failure_without_status(t *testing.T) {
	sink, _ := blockingSink(t)
	h := newHarness(t, harnessOptions{DeliveryTimeout: 300 * time.Millisecond})
	h.setProject("1", sink.URL)
	h.waitDestination("1", "1", sink.URL)
	subject := eventSubject("crawl_status", "1", "1")
	payload := crawl(1)
	start := time.Now()
	ack := h.publish(subject, payload, "")

	m := h.waitDeadFor(subject, payload)
	checkDeadLetter(t, m, "callbacks.dead.crawl_status.1.1", dispatcher.ReasonDeliveryFailed,
		"", "1", subject, payload, h.seqID(ack.Sequence))
	if got := m.Header.Get(subjects.HeaderError); !strings.Contains(strings.ToLower(got), "timeout") {
		t.Errorf("%s = %q, want it to say timeout", subjects.HeaderError, got)
	}
	if elapsed := time.Since(start); elapsed < 300*time.Millisecond {
		t.Errorf("dead-lettered after %s, before the 300ms timeout", elapsed)
	}
	if got := len(sink.Requests()); got != 1 {
		t.Errorf("sink got %d requests, want 1", got)
	}
	h.waitEventsEmpty()
}

// Crawls that are test-suite builds or did not finish are skipped: acked,
// never delivered, never dead-lettered.
func TestDispatcher_skip_rules(t *testing.T) {
	sink := testutil.NewSink(t)
	h := newHarness(t, harnessOptions{})
	h.setProject("1", sink.URL)
	h.waitDestination("1", "1", sink.URL)
	h.setProject(seedProject, sink.URL)
	h.waitDestination(seedAccount, seedProject, sink.URL)
	subject := eventSubject("crawl_status", "1", "1")
	seedSubject := eventSubject("crawl_status", seedAccount, seedProject)
	tests := []struct {
		name    string
		subject string
		payload string
	}{
		{"test suite build", subject, `{"crawl_id":11,"crawl_type":"test_suite_build"}`},
		{"test suite build, finished", subject, `{"crawl_id":12,"crawl_type":"test_suite_build","status":"finished"}`},
		{"status failed", subject, `{"crawl_id":13,"status":"failed"}`},
		{"the seed's example, failed", seedSubject, strings.Replace(crawlSeed, `"finished"`, `"failed"`, 1)},
		{"the seed's example, test suite build", seedSubject, strings.Replace(crawlSeed, `"status"`, `"crawl_type":"test_suite_build","status"`, 1)},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.publish(tt.subject, []byte(tt.payload), "")
			good := 1000 + i
			h.publish(subject, crawl(good), "")
			waitRequestWithBody(t, sink, crawlBody(good, "1", "1"))
			h.waitEventsEmpty()
			if got := len(sink.Requests()); got != i+1 {
				t.Errorf("sink got %d requests, want %d: the skipped event was delivered", got, i+1)
			}
			if dead := h.dead(); len(dead) != 0 {
				t.Errorf("%d dead letters, want none; first: %s %s", len(dead), dead[0].Header.Get(subjects.HeaderReason), dead[0].Header.Get(subjects.HeaderError))
			}
		})
	}
}

// An event whose project and account have no URL is acked, not delivered
// and not dead-lettered.
func TestDispatcher_no_destination_is_acked(t *testing.T) {
	sink := testutil.NewSink(t)
	h := newHarness(t, harnessOptions{})
	h.setProject("1", sink.URL)
	h.setProjectHeaders("2", settings.Header{Key: "X-A", Value: "b"}) // headers but no URL
	h.waitDestination("1", "1", sink.URL)

	h.publish(eventSubject("crawl_status", "5", "5"), crawl(1), "")
	h.publish(eventSubject("crawl_status", "5", "2"), crawl(2), "")
	h.publish(eventSubject("crawl_status", "1", "1"), crawl(3), "")
	waitRequestWithBody(t, sink, crawlBody(3, "1", "1"))
	h.waitEventsEmpty()
	if got := sink.Requests(); len(got) != 1 {
		t.Errorf("sink got %d requests, want 1", len(got))
	}
	if dead := h.dead(); len(dead) != 0 {
		t.Errorf("%d dead letters, want none; first: %s %s", len(dead), dead[0].Header.Get(subjects.HeaderReason), dead[0].Header.Get(subjects.HeaderError))
	}
}

// Nothing a publisher sends stalls the dispatcher: every kind of event that
// cannot be encoded goes to CALLBACKS_DEAD with reason invalid_event, and
// the next valid event is still delivered. Two workers only, so bad events
// that stalled them would soon hold up the good ones.
func TestDispatcher_invalid_events_are_dead_lettered_and_the_next_is_delivered(t *testing.T) {
	sink := testutil.NewSink(t)
	const maxPayload = 1 << 10
	h := newHarness(t, harnessOptions{Workers: 2, MaxPayload: maxPayload})
	h.setProject("1", sink.URL)
	h.waitDestination("1", "1", sink.URL)

	crawlSubj := eventSubject("crawl_status", "1", "1")
	reportSubj := eventSubject("report_download_available", "1", "1")
	const report = `"report_download_id":5,"crawl_id":3,"report_template_code":"all_pages","report_type_code":"basic"`
	oversize := `{"crawl_id":7,"pad":"` + strings.Repeat("x", maxPayload) + `"}`

	tests := []struct {
		name     string
		subject  string
		payload  string
		deadSubj string // "" = callbacks.dead.<rest of subject>
		errHas   string // the error names this (case-insensitive)
		status   string // a Status header, as the server's status messages have
	}{
		{"malformed JSON", crawlSubj, `{"crawl_id":7`, "", "json", ""},
		{"empty payload", crawlSubj, ``, "", "empty", ""},
		// No payload and a Status header: the look of a pull request's
		// status message from the server. (Projects of their own: dead
		// letters are told apart by subject and payload.)
		{"empty payload with a Status header 100", eventSubject("crawl_status", "1", "2"), ``, "", "empty", "100"},
		{"empty payload with a Status header 408", eventSubject("crawl_status", "1", "3"), ``, "", "empty", "408"},
		{"not an object", crawlSubj, `[{"crawl_id":7}]`, "", "object", ""},
		{"trailing data", crawlSubj, `{"crawl_id":7} {}`, "", "after", ""},
		{"crawl_id as a string", crawlSubj, `{"crawl_id":"7"}`, "", "crawl_id", ""},
		{"crawl_id as a float", crawlSubj, `{"crawl_id":7.0}`, "", "crawl_id", ""},
		{"crawl_id over 2^63-1", crawlSubj, `{"crawl_id":9223372036854775808}`, "", "crawl_id", ""},
		{"user_id as a bool", crawlSubj, `{"crawl_id":7,"user_id":true}`, "", "user_id", ""},
		{"status as a number", crawlSubj, `{"crawl_id":7,"status":1}`, "", "status", ""},
		{"file_url as a number", reportSubj, `{` + report + `,"file_url":5}`, "", "file_url", ""},
		{"file_url not absolute", reportSubj, `{` + report + `,"file_url":"/x"}`, "", "file_url", ""},
		{"crawl_id missing", crawlSubj, `{}`, "", "crawl_id", ""},
		{"report_download_id missing", reportSubj, `{"crawl_id":3,"report_id":"3:all_pages:basic","file_url":"https://e.com/f"}`, "", "report_download_id", ""},
		{"file_url missing", reportSubj, `{` + report + `}`, "", "file_url", ""},
		{"project_id differs from the subject", crawlSubj, `{"crawl_id":7,"project_id":99}`, "", "project_id", ""},
		{"account_id differs from the subject", crawlSubj, `{"crawl_id":7,"account_id":99}`, "", "account_id", ""},
		{"report_id of another crawl", reportSubj, `{"report_download_id":5,"crawl_id":3,"report_id":"4:all_pages:basic","file_url":"https://e.com/f"}`, "", "report_id", ""},
		{"href that is not the computed one", crawlSubj, `{"crawl_id":7,"href":"/accounts/1/projects/1/crawls/8"}`, "", "href", ""},
		{"unknown event type", eventSubject("no_such_type", "1", "1"), `{"crawl_id":7}`, "", "no_such_type", ""},
		{"oversize payload", crawlSubj, oversize, "", "payload", ""},
		{"account with a leading zero", "callbacks.event.crawl_status.0123.1", `{"crawl_id":7}`, subjects.DeadInvalid, "0123", ""},
		{"upper-case event type", "callbacks.event.Bad.1.1", `{"crawl_id":7}`, subjects.DeadInvalid, "bad", ""},
		{"event type with a dash", "callbacks.event.crawl-status.1.1", `{"crawl_id":7}`, subjects.DeadInvalid, "crawl-status", ""},
		{"project of 20 digits", "callbacks.event.crawl_status.1.99999999999999999999", `{"crawl_id":7}`, subjects.DeadInvalid, "99999999999999999999", ""},
		{"too few tokens", "callbacks.event.crawl_status.1", `{"crawl_id":7}`, subjects.DeadInvalid, "callbacks.event.crawl_status.1", ""},
		{"too many tokens", "callbacks.event.crawl_status.1.1.1", `{"crawl_id":7}`, subjects.DeadInvalid, "callbacks.event.crawl_status.1.1.1", ""},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			deadSubj := tt.deadSubj
			if deadSubj == "" {
				deadSubj = "callbacks.dead." + strings.TrimPrefix(tt.subject, "callbacks.event.")
			}
			var ack *jetstream.PubAck
			if tt.status != "" {
				m := nats.NewMsg(tt.subject)
				m.Header.Set("Status", tt.status)
				ack = h.publishMsg(m)
			} else {
				ack = h.publish(tt.subject, []byte(tt.payload), "")
			}
			good := 1000 + i
			h.publish(crawlSubj, crawl(good), "")

			waitRequestWithBody(t, sink, crawlBody(good, "1", "1"))
			m := h.waitDeadFor(tt.subject, []byte(tt.payload))
			checkDeadLetter(t, m, deadSubj, dispatcher.ReasonInvalidEvent, "", "", tt.subject, []byte(tt.payload), h.seqID(ack.Sequence))
			if got := m.Header.Get(subjects.HeaderError); !strings.Contains(strings.ToLower(got), strings.ToLower(tt.errHas)) {
				t.Errorf("%s = %q, want it to mention %q", subjects.HeaderError, got, tt.errHas)
			}
		})
	}
	h.waitEventsEmpty()
	if got := len(sink.Requests()); got != len(tests) {
		t.Errorf("sink got %d requests, want %d (only the valid events)", got, len(tests))
	}
	if got := len(h.dead()); got != len(tests) {
		t.Errorf("%d dead letters, want %d (only the invalid events)", got, len(tests))
	}
}

// The stream de-duplicates on Nats-Msg-Id: the same event published twice
// within the window is delivered once.
func TestDispatcher_dedup_by_Nats_Msg_Id(t *testing.T) {
	sink := testutil.NewSink(t)
	h := newHarness(t, harnessOptions{})
	h.setProject("1", sink.URL)
	h.waitDestination("1", "1", sink.URL)
	subject := eventSubject("crawl_status", "1", "1")

	first := h.publish(subject, crawl(1), "crawl-1")
	again := h.publish(subject, crawl(1), "crawl-1")
	if !again.Duplicate || again.Sequence != first.Sequence {
		t.Errorf("second publish: duplicate %v seq %d, want a duplicate of seq %d", again.Duplicate, again.Sequence, first.Sequence)
	}
	// A third, distinct event: once it is in, the first had its chance to be
	// delivered twice.
	h.publish(subject, crawl(2), "crawl-2")
	waitRequestWithID(t, sink, idFromMsgID("crawl-2"))
	waitRequestWithID(t, sink, idFromMsgID("crawl-1"))
	h.waitEventsEmpty()

	if got := requestsWithID(sink, idFromMsgID("crawl-1")); len(got) != 1 {
		t.Errorf("crawl-1 delivered %d times, want once", len(got))
	}
	if got := len(sink.Requests()); got != 2 {
		t.Errorf("sink got %d requests, want 2", got)
	}
}

// dispatcher.workers: 1 is a valid configuration: events still flow, one
// at a time.
func TestDispatcher_one_worker_delivers(t *testing.T) {
	sink := testutil.NewSink(t)
	h := newHarness(t, harnessOptions{Workers: 1})
	h.setProject("1", sink.URL)
	h.waitDestination("1", "1", sink.URL)
	for i := range 3 {
		h.publish(eventSubject("crawl_status", "1", "1"), crawl(i+1), "")
	}
	sink.WaitFor(t, 3, waitLong)
	h.waitEventsEmpty()
}

// Settings first: events published before any settings existed, with the
// project's URL written before the dispatcher starts, are all delivered.
// The dispatcher is started before the settings view, so one that consumed
// before the view had loaded would find no destination and ack them
// undelivered.
func TestDispatcher_waits_for_settings_view_before_consuming(t *testing.T) {
	sink := testutil.NewSink(t)
	h := newHarness(t, harnessOptions{Manual: true})
	const n = 20
	subject := eventSubject("crawl_status", "3", "9")
	for i := range n {
		h.publish(subject, crawl(i+1), "")
	}
	h.setProject("9", sink.URL)

	h.startDispatcher()
	// Not synchronisation: a window in which a dispatcher that does not wait
	// for the view would consume against an empty one.
	time.Sleep(300 * time.Millisecond)
	h.startView()

	sink.WaitFor(t, n, waitLong)
	h.waitEventsEmpty()
	for i := range n {
		want := crawlBody(i+1, "3", "9")
		if !slices.ContainsFunc(sink.Requests(), func(r testutil.Request) bool { return r.Body == want }) {
			t.Errorf("crawl %d not delivered", i+1)
		}
	}
	if got := len(sink.Requests()); got != n {
		t.Errorf("sink got %d requests, want %d", got, n)
	}
	if dead := h.dead(); len(dead) != 0 {
		t.Errorf("%d dead letters, want none", len(dead))
	}
}

// Shutdown drains: a delivery in flight when the dispatcher is told to stop
// is finished and acked before Run returns, and delivered once.
func TestDispatcher_shutdown_drains_in_flight_delivery(t *testing.T) {
	sink, release := blockingSink(t)
	h := newHarness(t, harnessOptions{})
	h.setProject("1", sink.URL)
	h.waitDestination("1", "1", sink.URL)
	subject := eventSubject("crawl_status", "1", "1")
	h.publish(subject, crawl(1), "")
	// The request is in flight, held by the sink. (Sink.WaitFor wakes only
	// once an answer is written, so poll.)
	testutil.CheckFor(t, waitLong, 10*time.Millisecond, func() error {
		if len(sink.Requests()) == 0 {
			return fmt.Errorf("no request yet")
		}
		return nil
	})

	h.stopDispatcher()
	select {
	case <-h.runDone:
		t.Fatalf("Run returned (%v) with a delivery in flight", h.runErr)
	case <-time.After(500 * time.Millisecond):
	}
	release()
	select {
	case <-h.runDone:
	case <-time.After(waitLong):
		t.Fatalf("Run did not return within %s of the delivery finishing", waitLong)
	}
	if h.runErr != nil {
		t.Errorf("Run = %v, want nil", h.runErr)
	}
	h.waitEventsEmpty()
	if got := len(sink.Requests()); got != 1 {
		t.Errorf("sink got %d requests, want 1", got)
	}
	if dead := h.dead(); len(dead) != 0 {
		t.Errorf("%d dead letters, want none; first: %s %s", len(dead), dead[0].Header.Get(subjects.HeaderReason), dead[0].Header.Get(subjects.HeaderError))
	}
}

// Shutdown waits only for attempts in flight: attempts queued for their
// host's slot hand their message back at once (not delivered, not parked,
// not acked), for another instance or the next start.
func TestDispatcher_shutdown_hands_back_queued_attempts(t *testing.T) {
	sink, release := blockingSink(t)
	h := newHarness(t, harnessOptions{PerHostConcurrency: 1, Workers: 8})
	h.setProject("1", sink.URL)
	h.waitDestination("1", "1", sink.URL)
	subject := eventSubject("crawl_status", "1", "1")
	for i := range 5 {
		h.publish(subject, crawl(i+1), "")
	}
	// One request in flight, held by the sink; the other four queue for
	// the host's one slot (a fast host's queue: none is parked within
	// slowHost, 500 ms, of the first attempt).
	testutil.CheckFor(t, waitLong, 5*time.Millisecond, func() error {
		if len(sink.Requests()) == 0 {
			return fmt.Errorf("no request yet")
		}
		return nil
	})
	h.stopDispatcher()
	release()
	select {
	case <-h.runDone:
	case <-time.After(waitLong):
		t.Fatalf("Run did not return within %s of the delivery finishing", waitLong)
	}
	if got := len(sink.Requests()); got != 1 {
		t.Errorf("sink got %d requests, want 1: queued attempts started after the stop", got)
	}
	if n := len(testutil.StreamMsgs(t, h.js, subjects.RetryStream)); n != 0 {
		t.Errorf("%d messages parked in %s, want 0 (handed back instead)", n, subjects.RetryStream)
	}
	// The delivered one's ack is on its way (acks are not waited for).
	testutil.CheckFor(t, waitLong, 10*time.Millisecond, func() error {
		if n := len(testutil.StreamMsgs(t, h.js, subjects.Stream)); n != 4 {
			return fmt.Errorf("%d messages left in %s, want the 4 not delivered", n, subjects.Stream)
		}
		return nil
	})
}

// Many events to several projects, in parallel: each is delivered exactly
// once, to its own project's URL.
func TestDispatcher_concurrent_events_are_each_delivered_once(t *testing.T) {
	sink := testutil.NewSink(t)
	h := newHarness(t, harnessOptions{Workers: 16})
	projects := []string{"1", "2", "3"}
	for _, p := range projects {
		h.setProject(p, sink.URL+"/p/"+p)
		h.waitDestination("8", p, sink.URL+"/p/"+p)
	}

	const n = 500
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	futures := make([]jetstream.PubAckFuture, n)
	for i := range n {
		m := nats.NewMsg(eventSubject("crawl_status", "8", projects[i%len(projects)]))
		m.Data = crawl(i + 1)
		f, err := h.js.PublishMsgAsync(m)
		if err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
		futures[i] = f
	}
	select {
	case <-h.js.PublishAsyncComplete():
	case <-ctx.Done():
		t.Fatal("async publishes not acknowledged in time")
	}
	want := map[string]string{} // delivery ID → project
	for i, f := range futures {
		select {
		case ack := <-f.Ok():
			want[h.seqID(ack.Sequence)] = projects[i%len(projects)]
		case err := <-f.Err():
			t.Fatalf("publish %d: %v", i, err)
		}
	}

	sink.WaitFor(t, n, 60*time.Second)
	h.waitEventsEmpty()
	got := sink.Requests()
	if len(got) != n {
		t.Errorf("sink got %d requests, want %d", len(got), n)
	}
	seen := map[string]int{}
	for _, r := range got {
		id := r.Header.Get("Callback-Delivery-Id")
		seen[id]++
		p, ok := want[id]
		if !ok {
			t.Errorf("request with unknown Callback-Delivery-Id %q", id)
			continue
		}
		if r.Path != "/p/"+p || !strings.Contains(r.Body, "&project_id="+p+"&") {
			t.Errorf("delivery %s for project %s went to %s with body %s", id, p, r.Path, r.Body)
		}
	}
	for id, c := range seen {
		if c != 1 {
			t.Errorf("delivery %s arrived %d times", id, c)
		}
	}
	if len(seen) != n {
		t.Errorf("%d distinct deliveries, want %d", len(seen), n)
	}
	if dead := h.dead(); len(dead) != 0 {
		t.Errorf("%d dead letters, want none", len(dead))
	}
}

// At start the dispatcher says how many messages a consumer has out unacked
// (after a kill -9, the dead run's): a restart that waits for their ack wait
// does not look like a hang.
func TestDispatcher_start_reports_messages_held_by_an_earlier_run(t *testing.T) {
	var buf testutil.SyncBuffer
	h := newHarness(t, harnessOptions{Manual: true, Logger: slog.New(slog.NewTextHandler(&buf, nil))})
	subject := eventSubject("crawl_status", "1", "1")
	for i := range 3 {
		h.publish(subject, crawl(i+1), "")
	}
	takenByADeadRun(t, h, 3)
	h.startView()
	h.startDispatcher()
	testutil.CheckFor(t, waitLong, 10*time.Millisecond, func() error {
		if s := buf.String(); !strings.Contains(s, "not acked yet") || !strings.Contains(s, "consumer=dispatcher pending=3") {
			return fmt.Errorf("log:\n%s", s)
		}
		return nil
	})
}

// A consumer at its pending limit at start is warned about only when it
// hands out nothing new meanwhile: the dead run's messages hold it until
// their ack wait passes.
func TestDispatcher_start_warns_when_held_messages_fill_the_pending_limit(t *testing.T) {
	var buf testutil.SyncBuffer
	h := newHarness(t, harnessOptions{Manual: true, Logger: slog.New(slog.NewTextHandler(&buf, nil))})
	subject := eventSubject("crawl_status", "1", "1")
	const limit = 256 // the harness's max_ack_pending
	for i := range limit + 1 {
		h.publish(subject, crawl(i+1), "")
	}
	takenByADeadRun(t, h, limit)
	h.startView()
	h.startDispatcher()
	testutil.CheckFor(t, waitLong, 20*time.Millisecond, func() error {
		if s := buf.String(); !strings.Contains(s, "level=WARN") || !strings.Contains(s, "hands out nothing new until their ack wait passes") {
			return fmt.Errorf("no warning yet:\n%s", s)
		}
		return nil
	})
}

// takenByADeadRun pulls n messages from the dispatcher consumer and leaves
// them unacked, as a run that took them and died would.
func takenByADeadRun(t *testing.T, h *harness, n int) {
	t.Helper()
	cons, err := h.js.Consumer(h.ctx, subjects.Stream, subjects.DispatcherConsumer)
	if err != nil {
		t.Fatal(err)
	}
	for got := 0; got < n; {
		b, err := cons.Fetch(n-got, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for range b.Messages() {
			got++
		}
	}
}
