package builtin

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/callbackd/callbackd/plugins"
)

// httpFormSeedNotification is the seed's crawl_status example.
func httpFormSeedNotification() plugins.Notification {
	return plugins.Notification{Fields: []plugins.Field{
		{Name: "message", Value: plugins.String("crawl_status")},
		{Name: "resource", Value: plugins.String("crawl")},
		{Name: "crawl_id", Value: plugins.Int(124234)},
		{Name: "project_id", Value: plugins.Int(1123123)},
		{Name: "account_id", Value: plugins.Int(123123)},
		{Name: "user_id", Value: plugins.Int(123123)},
		{Name: "partner_account_id", Value: plugins.String("123123")},
		{Name: "partner_user_id", Value: plugins.String("3333312")},
		{Name: "status", Value: plugins.String("finished")},
		{Name: "href", Value: plugins.String("/accounts/123123/projects/1123123/crawls/124234")},
	}}
}

const httpFormSeedBody = "message=crawl_status&resource=crawl&crawl_id=124234&project_id=1123123" +
	"&account_id=123123&user_id=123123&partner_account_id=123123&partner_user_id=3333312" +
	"&status=finished&href=%2Faccounts%2F123123%2Fprojects%2F1123123%2Fcrawls%2F124234"

// httpFormLoopback is a guard that lets tests reach httptest servers.
func httpFormLoopback() *plugins.Guard {
	return plugins.NewGuard(false, []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")})
}

func newTestHTTPForm(t testing.TB, timeout time.Duration) *HTTPForm {
	t.Helper()
	tr := NewHTTPForm(HTTPFormOptions{Timeout: timeout, UserAgent: "callbackd/1.2.3-test", Guard: httpFormLoopback()})
	t.Cleanup(tr.Close)
	return tr
}

// httpFormRequest is what a sink saw of one request.
type httpFormRequest struct {
	Method string
	Path   string
	Header http.Header
	Body   string
}

// httpFormSink is an httptest server that records requests and answers
// with what handle says (200 when handle is nil).
type httpFormSink struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []httpFormRequest
}

func newHTTPFormSink(t testing.TB, handle http.HandlerFunc) *httpFormSink {
	t.Helper()
	s := &httpFormSink{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.reqs = append(s.reqs, httpFormRequest{Method: r.Method, Path: r.URL.Path, Header: r.Header.Clone(), Body: string(b)})
		s.mu.Unlock()
		if handle != nil {
			handle(w, r)
		}
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *httpFormSink) requests() []httpFormRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]httpFormRequest(nil), s.reqs...)
}

func httpFormDelivery(url string, headers ...plugins.Header) plugins.Delivery {
	return plugins.Delivery{
		DeliveryID:   "1700000000-42",
		Destination:  plugins.Destination{URL: url, Headers: headers},
		Notification: httpFormSeedNotification(),
	}
}

func deliverOK(t testing.TB, tr *HTTPForm, d plugins.Delivery) plugins.Result {
	t.Helper()
	res, err := tr.Deliver(context.Background(), d)
	if err != nil {
		t.Fatalf("Deliver returned error %v; only a cancelled ctx may", err)
	}
	return res
}

func TestHTTPForm_sends_form_POST(t *testing.T) {
	sink := newHTTPFormSink(t, nil)
	tr := newTestHTTPForm(t, 5*time.Second)

	res := deliverOK(t, tr, httpFormDelivery(sink.URL+"/hook?x=1",
		plugins.Header{Key: "Authorization", Value: "Bearer your-token"},
		plugins.Header{Key: "x-custom-key", Value: "v a l"},
	))
	if res.Outcome != plugins.OutcomeDelivered || res.StatusCode != 200 || res.Error != "" {
		t.Fatalf("result = %+v, want delivered 200", res)
	}
	if res.Duration <= 0 {
		t.Errorf("Duration = %v, want > 0", res.Duration)
	}
	reqs := sink.requests()
	if len(reqs) != 1 {
		t.Fatalf("sink saw %d requests, want 1", len(reqs))
	}
	r := reqs[0]
	if r.Method != http.MethodPost || r.Path != "/hook" {
		t.Errorf("request %s %s, want POST /hook", r.Method, r.Path)
	}
	if r.Body != httpFormSeedBody {
		t.Errorf("body\n got %s\nwant %s", r.Body, httpFormSeedBody)
	}
	for k, want := range map[string]string{
		"Content-Type":         "application/x-www-form-urlencoded",
		"User-Agent":           "callbackd/1.2.3-test",
		"Callback-Delivery-Id": "1700000000-42",
		"Authorization":        "Bearer your-token",
		"X-Custom-Key":         "v a l",
		"Content-Length":       strconv.Itoa(len(httpFormSeedBody)),
	} {
		if got := r.Header.Values(k); len(got) != 1 || got[0] != want {
			t.Errorf("header %s = %q, want [%q]", k, got, want)
		}
	}
}

func TestHTTPForm_body_escapes_values_and_renders_null_empty(t *testing.T) {
	sink := newHTTPFormSink(t, nil)
	tr := newTestHTTPForm(t, 5*time.Second)
	d := httpFormDelivery(sink.URL)
	d.Notification = plugins.Notification{Fields: []plugins.Field{
		{Name: "message", Value: plugins.String("report_download_available")},
		{Name: "user_id", Value: plugins.Null()},
		{Name: "report_id", Value: plugins.String("124234:all_pages:basic")},
		{Name: "file_url", Value: plugins.String("https://s3.example.com/r.csv?X-Amz-Signature=a+b&c=d é")},
		{Name: "big", Value: plugins.Number("9223372036854775807")},
	}}
	if res := deliverOK(t, tr, d); res.Outcome != plugins.OutcomeDelivered {
		t.Fatalf("result = %+v", res)
	}
	want := "message=report_download_available&user_id=&report_id=124234%3Aall_pages%3Abasic" +
		"&file_url=https%3A%2F%2Fs3.example.com%2Fr.csv%3FX-Amz-Signature%3Da%2Bb%26c%3Dd+%C3%A9" +
		"&big=9223372036854775807"
	if got := sink.requests()[0].Body; got != want {
		t.Errorf("body\n got %s\nwant %s", got, want)
	}
}

// listenLocal listens on a free loopback port until the test ends, for
// endpoints that answer with raw bytes.
func listenLocal(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	return ln
}

// answerEach serves ln's connections one after another until it closes:
// answer has each, which is closed after.
func answerEach(ln net.Listener, answer func(c net.Conn)) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			answer(c)
			_ = c.Close()
		}
	}()
}

// TestHTTPForm_wire_headers reads the raw request, to check that custom keys
// keep their spelling and that nothing but the documented headers is sent.
func TestHTTPForm_wire_headers(t *testing.T) {
	ln := listenLocal(t)
	raw := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer func() { _ = c.Close() }()
		br := bufio.NewReader(c)
		var head strings.Builder
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if line == "\r\n" {
				break
			}
			head.WriteString(line)
		}
		_, _ = io.CopyN(io.Discard, br, int64(len(httpFormSeedBody)))
		_, _ = io.WriteString(c, "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
		raw <- head.String()
	}()

	tr := newTestHTTPForm(t, 5*time.Second)
	res := deliverOK(t, tr, httpFormDelivery("http://"+ln.Addr().String()+"/h",
		plugins.Header{Key: "x-api-KEY", Value: "k"},
		plugins.Header{Key: "Authorization", Value: "Bearer t"},
	))
	if res.Outcome != plugins.OutcomeDelivered || res.StatusCode != 204 {
		t.Fatalf("result = %+v, want delivered 204", res)
	}
	var head string
	select {
	case head = <-raw:
	case <-time.After(5 * time.Second):
		t.Fatal("the raw server never saw the request")
	}
	lines := strings.Split(strings.TrimSuffix(head, "\r\n"), "\r\n")
	if lines[0] != "POST /h HTTP/1.1" {
		t.Errorf("request line %q", lines[0])
	}
	got := map[string]string{}
	for _, l := range lines[1:] {
		k, v, _ := strings.Cut(l, ": ")
		got[k] = v
	}
	want := map[string]string{
		"Host":                 ln.Addr().String(),
		"User-Agent":           "callbackd/1.2.3-test",
		"Content-Length":       strconv.Itoa(len(httpFormSeedBody)),
		"Content-Type":         "application/x-www-form-urlencoded",
		"Callback-Delivery-Id": "1700000000-42",
		"x-api-KEY":            "k",
		"Authorization":        "Bearer t",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("wire headers\n got %v\nwant %v", got, want)
	}
}

func TestHTTPForm_userinfo_becomes_basic_auth_unless_a_header_sets_it(t *testing.T) {
	sink := newHTTPFormSink(t, nil)
	tr := newTestHTTPForm(t, 5*time.Second)
	u := strings.Replace(sink.URL, "http://", "http://alice:s3cret@", 1)

	deliverOK(t, tr, httpFormDelivery(u))
	deliverOK(t, tr, httpFormDelivery(u, plugins.Header{Key: "authorization", Value: "Bearer mine"}))
	reqs := sink.requests()
	if got := reqs[0].Header.Values("Authorization"); len(got) != 1 || got[0] != "Basic YWxpY2U6czNjcmV0" {
		t.Errorf("from userinfo: Authorization = %q", got)
	}
	if got := reqs[1].Header.Values("Authorization"); len(got) != 1 || got[0] != "Bearer mine" {
		t.Errorf("custom header: Authorization = %q, want only the custom one", got)
	}
}

func TestHTTPForm_bad_header_is_final_and_sends_nothing(t *testing.T) {
	sink := newHTTPFormSink(t, nil)
	tr := newTestHTTPForm(t, 5*time.Second)
	for _, h := range []plugins.Header{
		{Key: "Host", Value: "secret-host.example"},
		{Key: "content-type", Value: "secret/json"},
		{Key: "User-Agent", Value: "secret-agent"},
		{Key: "Callback-Delivery-Id", Value: "secret-id"},
		{Key: "Proxy-Authorization", Value: "secret-basic"},
		{Key: "X-Token", Value: "secret\r\nInjected: 1"},
		{Key: "Bad Key", Value: "secret"},
	} {
		res := deliverOK(t, tr, httpFormDelivery(sink.URL, h))
		if res.Outcome != plugins.OutcomeFinal || res.StatusCode != 0 {
			t.Errorf("header %q: result = %+v, want final", h.Key, res)
		}
		if !strings.Contains(res.Error, h.Key) || strings.Contains(res.Error, "secret") {
			t.Errorf("header %q: error %q must name the key and not show the value", h.Key, res.Error)
		}
	}
	if n := len(sink.requests()); n != 0 {
		t.Fatalf("sink saw %d requests, want none", n)
	}
}

func TestHTTPForm_bad_URL_is_final(t *testing.T) {
	tr := newTestHTTPForm(t, 5*time.Second)
	for _, u := range []string{
		"",
		"/relative/path",
		"www.example.com/hook",
		"ftp://example.com/hook",
		"http://",
		"http:///path",
		"http://:8080/path",
		"mailto:someone@example.com",
		"https://user:s3cret@exa mple.com/?token=s3cret",
		"http://[::1/?token=s3cret",
		"http://127.0.0.1:9/s?x=a HTTP/1.0&token=s3cret", // a raw space would split the request line
		"http://127.0.0.1:9/s?q=é&token=s3cret",
	} {
		res := deliverOK(t, tr, httpFormDelivery(u))
		if res.Outcome != plugins.OutcomeFinal || res.StatusCode != 0 {
			t.Errorf("%q: result = %+v, want final", u, res)
		}
		if res.Error == "" || strings.Contains(res.Error, "s3cret") {
			t.Errorf("%q: error %q should say what is wrong without secrets", u, res.Error)
		}
	}
}

func TestHTTPForm_status_classification(t *testing.T) {
	var otherHits atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("/other", func(w http.ResponseWriter, r *http.Request) { otherHits.Add(1) })
	mux.HandleFunc("/status/{code}", func(w http.ResponseWriter, r *http.Request) {
		code, _ := strconv.Atoi(r.PathValue("code"))
		if code >= 300 && code < 400 {
			w.Header().Set("Location", "/other")
		}
		w.WriteHeader(code)
		if code != 204 && code != 304 {
			_, _ = io.WriteString(w, "answer "+strconv.Itoa(code))
		}
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	tr := newTestHTTPForm(t, 5*time.Second)

	cases := map[plugins.Outcome][]int{
		plugins.OutcomeDelivered: {200, 201, 202, 203, 204},
		plugins.OutcomeFinal:     {205, 206, 299, 300, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404, 409, 410, 413, 422},
		plugins.OutcomeRetryable: {408, 429, 500, 501, 502, 503, 504, 599},
	}
	for want, codes := range cases {
		for _, code := range codes {
			res := deliverOK(t, tr, httpFormDelivery(srv.URL+"/status/"+strconv.Itoa(code)))
			if res.Outcome != want || res.StatusCode != code {
				t.Errorf("HTTP %d: result = %+v, want %s", code, res, want)
				continue
			}
			if want == plugins.OutcomeDelivered {
				if res.Error != "" {
					t.Errorf("HTTP %d: Error = %q, want none", code, res.Error)
				}
			} else if res.Error != "HTTP "+strconv.Itoa(code) {
				t.Errorf("HTTP %d: Error = %q", code, res.Error)
			}
			if code != 204 && code != 304 && res.ResponseExcerpt != "answer "+strconv.Itoa(code) {
				t.Errorf("HTTP %d: excerpt = %q", code, res.ResponseExcerpt)
			}
			if res.RetryAfter != 0 {
				t.Errorf("HTTP %d: RetryAfter = %v without a Retry-After", code, res.RetryAfter)
			}
		}
	}
	if n := otherHits.Load(); n != 0 {
		t.Fatalf("a redirect was followed %d times", n)
	}
}

func TestHTTPForm_retry_after(t *testing.T) {
	tr := newTestHTTPForm(t, 5*time.Second)
	inFuture := func(d time.Duration) string { return time.Now().Add(d).UTC().Format(http.TimeFormat) }
	cases := []struct {
		name  string
		code  int
		value string
		min   time.Duration
		max   time.Duration
	}{
		{"seconds on 429", 429, "120", 120 * time.Second, 120 * time.Second},
		{"seconds on 503", 503, " 7 ", 7 * time.Second, 7 * time.Second},
		{"zero", 429, "0", 0, 0},
		{"date on 429", 429, inFuture(90 * time.Second), 88 * time.Second, 91 * time.Second},
		{"date on 503", 503, inFuture(time.Hour), time.Hour - 2*time.Second, time.Hour + time.Second},
		{"RFC 850 date", 503, time.Now().Add(time.Minute).UTC().Format("Monday, 02-Jan-06 15:04:05 GMT"), 58 * time.Second, 61 * time.Second},
		{"past date", 503, inFuture(-time.Hour), 0, 0},
		{"negative", 429, "-5", 0, 0},
		{"signed", 429, "+5", 0, 0},
		{"fraction", 429, "1.5", 0, 0},
		{"garbage", 503, "soon", 0, 0},
		{"huge", 429, "99999999999999999999999", maxRetryAfter, maxRetryAfter},
		{"ignored on 500", 500, "120", 0, 0},
		{"ignored on 502", 502, "120", 0, 0},
		{"ignored on 408", 408, "120", 0, 0},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			sink := newHTTPFormSink(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Retry-After", tt.value)
				w.WriteHeader(tt.code)
			})
			res := deliverOK(t, tr, httpFormDelivery(sink.URL))
			if res.Outcome != plugins.OutcomeRetryable {
				t.Fatalf("result = %+v, want retryable", res)
			}
			if res.RetryAfter < tt.min || res.RetryAfter > tt.max {
				t.Fatalf("RetryAfter = %v, want within [%v, %v]", res.RetryAfter, tt.min, tt.max)
			}
		})
	}
}

func TestHTTPForm_timeout_is_retryable(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	sink := newHTTPFormSink(t, func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	t.Cleanup(func() { close(release) }) // runs before the sink closes
	const timeout = 200 * time.Millisecond
	tr := newTestHTTPForm(t, timeout)

	res := deliverOK(t, tr, httpFormDelivery(sink.URL))
	if res.Outcome != plugins.OutcomeRetryable || res.StatusCode != 0 {
		t.Fatalf("result = %+v, want retryable with no status", res)
	}
	if res.Error != "timeout after 200ms" {
		t.Errorf("Error = %q, want %q", res.Error, "timeout after 200ms")
	}
	if res.Duration < timeout {
		t.Errorf("Duration = %v, want at least %v", res.Duration, timeout)
	}
	select {
	case <-entered:
	default:
		t.Error("the request never reached the handler")
	}
}

func TestHTTPForm_connection_refused_is_retryable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	tr := newTestHTTPForm(t, 5*time.Second)

	res := deliverOK(t, tr, httpFormDelivery("http://bob:s3cret@"+addr+"/hook?token=s3cret"))
	if res.Outcome != plugins.OutcomeRetryable || res.StatusCode != 0 {
		t.Fatalf("result = %+v, want retryable with no status", res)
	}
	if res.Error != "connection refused" {
		t.Errorf("Error = %q, want %q", res.Error, "connection refused")
	}
}

func TestHTTPForm_closed_without_response_is_retryable(t *testing.T) {
	ln := listenLocal(t)
	answerEach(ln, func(c net.Conn) {
		// Read the request, then hang up without a word.
		_, _ = bufio.NewReader(c).ReadString('\n')
	})
	tr := newTestHTTPForm(t, 5*time.Second)
	res := deliverOK(t, tr, httpFormDelivery("http://"+ln.Addr().String()+"/?token=s3cret"))
	if res.Outcome != plugins.OutcomeRetryable || res.StatusCode != 0 {
		t.Fatalf("result = %+v, want retryable with no status", res)
	}
	if res.Error == "" || strings.Contains(res.Error, "s3cret") || strings.Contains(res.Error, "http://") {
		t.Errorf("Error = %q, want a short reason without the URL", res.Error)
	}
}

func TestHTTPForm_response_excerpt(t *testing.T) {
	long := func(prefix int, middle string) string {
		return strings.Repeat("a", prefix) + middle + strings.Repeat("z", 3000)
	}
	cases := []struct {
		name string
		body string
		want string // "" means: only check the invariants
	}{
		{"short", "ok, thanks", "ok, thanks"},
		{"empty", "", ""},
		{"exactly 1 KiB", strings.Repeat("b", 1024), strings.Repeat("b", 1024)},
		{"2-byte rune across the cut", long(1023, "é"), strings.Repeat("a", 1023)},
		{"3-byte rune across the cut", long(1022, "€"), strings.Repeat("a", 1022)},
		{"4-byte rune across the cut", long(1021, "😀"), strings.Repeat("a", 1021)},
		{"4-byte rune ending at the cut", long(1020, "😀"), strings.Repeat("a", 1020) + "😀"},
		{"invalid bytes", "ok\xff\xfe done", "ok\uFFFD done"},
		{"invalid bytes outgrowing 1 KiB", strings.Repeat("a\xff", 2000), ""},
		{"all invalid", strings.Repeat("\xff", 5000), "\uFFFD"},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			sink := newHTTPFormSink(t, func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(500)
				_, _ = io.WriteString(w, tt.body)
			})
			tr := newTestHTTPForm(t, 5*time.Second)
			res := deliverOK(t, tr, httpFormDelivery(sink.URL))
			ex := res.ResponseExcerpt
			if len(ex) > 1024 || !utf8.ValidString(ex) {
				t.Fatalf("excerpt of %d bytes, valid UTF-8 %v; want at most 1024, valid", len(ex), utf8.ValidString(ex))
			}
			if tt.want != "" && ex != tt.want {
				t.Fatalf("excerpt = %q (%d bytes), want %q", ex, len(ex), tt.want)
			}
			if tt.want == "" && tt.body != "" && len(ex) < 1000 {
				t.Fatalf("excerpt of %d bytes, want close to 1 KiB", len(ex))
			}
		})
	}
}

// TestHTTPForm_reads_no_more_than_64KiB: the handler sends exactly 64 KiB and
// then holds the response open. A client reading on would wait for the
// timeout; one that stops at 64 KiB returns at once.
func TestHTTPForm_reads_no_more_than_64KiB(t *testing.T) {
	release := make(chan struct{})
	sink := newHTTPFormSink(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(strings.Repeat("x", 64<<10)))
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	t.Cleanup(func() { close(release) })
	const timeout = 20 * time.Second
	tr := newTestHTTPForm(t, timeout)

	res := deliverOK(t, tr, httpFormDelivery(sink.URL))
	if res.Outcome != plugins.OutcomeDelivered {
		t.Fatalf("result = %+v, want delivered", res)
	}
	if res.Duration > timeout/2 {
		t.Fatalf("Deliver took %v: it read past 64 KiB", res.Duration)
	}
	if res.ResponseExcerpt != strings.Repeat("x", 1024) {
		t.Fatalf("excerpt of %d bytes, want 1 KiB", len(res.ResponseExcerpt))
	}
}

// TestHTTPForm_closes_instead_of_draining: a 64 MiB answer is cut short: the
// handler's writes fail once the client closes the connection.
func TestHTTPForm_closes_instead_of_draining(t *testing.T) {
	const size = 64 << 20
	type outcome struct {
		written int
		err     error
	}
	done := make(chan outcome, 1)
	sink := newHTTPFormSink(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(size))
		chunk := []byte(strings.Repeat("y", 32<<10))
		var o outcome
		for o.written < size {
			n, err := w.Write(chunk)
			o.written += n
			if err != nil {
				o.err = err
				break
			}
		}
		done <- o
	})
	tr := newTestHTTPForm(t, 20*time.Second)

	res := deliverOK(t, tr, httpFormDelivery(sink.URL))
	if res.Outcome != plugins.OutcomeDelivered || len(res.ResponseExcerpt) != 1024 {
		t.Fatalf("result = %+v, want delivered with a 1 KiB excerpt", res)
	}
	select {
	case o := <-done:
		if o.err == nil || o.written >= size {
			t.Fatalf("handler wrote %d bytes (err %v): the client drained the body", o.written, o.err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the handler is still writing: the connection was not closed")
	}
}

func TestHTTPForm_parent_cancelled_returns_error(t *testing.T) {
	t.Run("before the attempt", func(t *testing.T) {
		sink := newHTTPFormSink(t, nil)
		tr := newTestHTTPForm(t, 5*time.Second)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := tr.Deliver(ctx, httpFormDelivery(sink.URL))
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
		if n := len(sink.requests()); n != 0 {
			t.Fatalf("sink saw %d requests, want none", n)
		}
	})
	t.Run("during the attempt", func(t *testing.T) {
		entered := make(chan struct{})
		release := make(chan struct{})
		sink := newHTTPFormSink(t, func(w http.ResponseWriter, r *http.Request) {
			close(entered)
			select {
			case <-release:
			case <-r.Context().Done():
			}
		})
		t.Cleanup(func() { close(release) })
		tr := newTestHTTPForm(t, 20*time.Second)
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			<-entered
			cancel()
		}()
		_, err := tr.Deliver(ctx, httpFormDelivery(sink.URL))
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	})
	t.Run("parent deadline is not the attempt timeout", func(t *testing.T) {
		release := make(chan struct{})
		sink := newHTTPFormSink(t, func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		})
		t.Cleanup(func() { close(release) })
		tr := newTestHTTPForm(t, 20*time.Second)
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_, err := tr.Deliver(ctx, httpFormDelivery(sink.URL))
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want context.DeadlineExceeded", err)
		}
	})
}

func TestHTTPForm_default_guard_refuses_loopback(t *testing.T) {
	sink := newHTTPFormSink(t, nil)
	tr := NewHTTPForm(HTTPFormOptions{UserAgent: "callbackd/test"})
	t.Cleanup(tr.Close)

	_, port, _ := net.SplitHostPort(strings.TrimPrefix(sink.URL, "http://"))
	for _, tt := range []struct{ host, want string }{
		// A literal names itself and the range.
		{"127.0.0.1", "destination not allowed: 127.0.0.1 is in 127.0.0.0/8 (loopback)"},
		// A name does not tell what it resolved to: the text goes to
		// the SSO client and to API users.
		{"localhost", "destination not allowed: localhost resolves to an address in a refused range (loopback)"},
		// Numeric hosts that resolvers may read as IPv4 are judged as
		// that address, not looked up in DNS attempt after attempt.
		{"2130706433", "destination not allowed: 127.0.0.1 is in 127.0.0.0/8 (loopback)"},
		{"0x7f.1", "destination not allowed: 127.0.0.1 is in 127.0.0.0/8 (loopback)"},
		{"127.0.0.1.", "destination not allowed: 127.0.0.1 is in 127.0.0.0/8 (loopback)"},
	} {
		u := "http://user:pw@" + net.JoinHostPort(tt.host, port) + "/?token=s3cret"
		res := deliverOK(t, tr, httpFormDelivery(u))
		if res.Outcome != plugins.OutcomeNotAllowed || res.StatusCode != 0 {
			t.Fatalf("%s: result = %+v, want not_allowed", tt.host, res)
		}
		if res.Error != tt.want {
			t.Errorf("%s: Error = %q, want %q", tt.host, res.Error, tt.want)
		}
	}
	if n := len(sink.requests()); n != 0 {
		t.Fatalf("sink saw %d requests, want none", n)
	}
}

func TestHTTPForm_allow_private_reaches_loopback(t *testing.T) {
	sink := newHTTPFormSink(t, nil)
	tr := NewHTTPForm(HTTPFormOptions{UserAgent: "callbackd/test", Guard: plugins.NewGuard(true, nil)})
	t.Cleanup(tr.Close)
	if res := deliverOK(t, tr, httpFormDelivery(sink.URL)); res.Outcome != plugins.OutcomeDelivered {
		t.Fatalf("result = %+v, want delivered", res)
	}
}

func TestHTTPForm_defaults(t *testing.T) {
	tr := NewHTTPForm(HTTPFormOptions{})
	t.Cleanup(tr.Close)
	if tr.timeout != 30*time.Second || tr.timeoutText != "timeout after 30s" {
		t.Errorf("timeout = %v (%q), want 30s", tr.timeout, tr.timeoutText)
	}
	if tr.userAgent[0] != "callbackd" {
		t.Errorf("User-Agent = %q", tr.userAgent[0])
	}
	if tr.transport.Proxy != nil {
		t.Error("the transport takes a proxy from somewhere")
	}
	if tr.transport.MaxIdleConnsPerHost != 1024 || tr.transport.MaxResponseHeaderBytes != 64<<10 {
		t.Errorf("MaxIdleConnsPerHost %d, MaxResponseHeaderBytes %d", tr.transport.MaxIdleConnsPerHost, tr.transport.MaxResponseHeaderBytes)
	}
}

// A response net/http gives up on is no response: retried, no status, and
// a short reason in callbackd's words rather than Go's.
func TestHTTPForm_unreadable_response_is_retryable_with_a_short_reason(t *testing.T) {
	for _, tc := range []struct {
		name, answer, want string
	}{
		{"headers over 64 KiB", "HTTP/1.1 200 OK\r\nX-Huge: " + strings.Repeat("h", 70<<10) + "\r\nContent-Length: 0\r\n\r\n", "response headers over 64 KiB"},
		{"malformed status", "HTTP/1.1 HTTP OK\r\nContent-Length: 0\r\n\r\n", "malformed HTTP response"},
		{"malformed header line", "HTTP/1.1 200 OK\r\nno colon here\r\nContent-Length: 0\r\n\r\n", "malformed HTTP response"},
		{"bad Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nok", "malformed HTTP response"},
		{"negative Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nok", "malformed HTTP response"},
		{"two Content-Lengths", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", "malformed HTTP response"},
		{"unknown Transfer-Encoding", "HTTP/1.1 200 OK\r\nTransfer-Encoding: bogus\r\n\r\nok", "malformed HTTP response"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln := listenLocal(t)
			answerEach(ln, func(c net.Conn) {
				if _, err := http.ReadRequest(bufio.NewReader(c)); err == nil {
					_, _ = io.WriteString(c, tc.answer)
				}
			})
			tr := newTestHTTPForm(t, 5*time.Second)
			res := deliverOK(t, tr, httpFormDelivery("http://"+ln.Addr().String()+"/"))
			if res.Outcome != plugins.OutcomeRetryable || res.StatusCode != 0 || res.Error != tc.want {
				t.Fatalf("result = %+v, want retryable, no status, error %q", res, tc.want)
			}
		})
	}
}

func TestHTTPForm_reuses_connections(t *testing.T) {
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	tr := newTestHTTPForm(t, 5*time.Second)
	for range 10 {
		if res := deliverOK(t, tr, httpFormDelivery(srv.URL)); res.Outcome != plugins.OutcomeDelivered {
			t.Fatalf("result = %+v", res)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("10 sequential deliveries opened %d connections, want 1", n)
	}
}

func TestHTTPForm_concurrent(t *testing.T) {
	sink := newHTTPFormSink(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.Header.Get("Callback-Delivery-Id")[0] % 3 {
		case 0:
			w.WriteHeader(200)
		case 1:
			w.WriteHeader(503)
		default:
			w.WriteHeader(404)
		}
		_, _ = io.WriteString(w, "é"+r.Header.Get("Callback-Delivery-Id"))
	})
	tr := newTestHTTPForm(t, 10*time.Second)
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := httpFormDelivery(sink.URL, plugins.Header{Key: "X-N", Value: strconv.Itoa(i)})
			d.DeliveryID = strconv.Itoa(i)
			d.Notification.Fields = append(d.Notification.Fields, plugins.Field{Name: "n", Value: plugins.Int(int64(i))})
			res, err := tr.Deliver(context.Background(), d)
			if err != nil {
				errs <- err
				return
			}
			want := map[byte]plugins.Outcome{0: plugins.OutcomeDelivered, 1: plugins.OutcomeRetryable, 2: plugins.OutcomeFinal}[d.DeliveryID[0]%3]
			if res.Outcome != want || res.ResponseExcerpt != "é"+d.DeliveryID {
				errs <- fmt.Errorf("delivery %d: result %+v, want %s", i, res, want)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	reqs := sink.requests()
	if len(reqs) != n {
		t.Fatalf("sink saw %d requests, want %d", len(reqs), n)
	}
	seen := map[string]bool{}
	for _, r := range reqs {
		id := r.Header.Get("Callback-Delivery-Id")
		if want := httpFormSeedBody + "&n=" + id; r.Body != want || r.Header.Get("X-N") != id {
			t.Errorf("delivery %s: body %q, X-N %q: bodies or headers were mixed up", id, r.Body, r.Header.Get("X-N"))
		}
		seen[id] = true
	}
	if len(seen) != n {
		t.Fatalf("%d distinct deliveries, want %d", len(seen), n)
	}
}

// BenchmarkHTTPForm_Deliver delivers to an httptest sink in this process,
// for a caller that cannot cancel (the dispatcher in-process) and one that
// can (a plugin process's item).
func BenchmarkHTTPForm_Deliver(b *testing.B) {
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, "ok")
	}))
	b.Cleanup(sink.Close)
	cancellable, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	for _, caller := range []struct {
		name string
		ctx  context.Context
	}{{"uncancellable", context.Background()}, {"cancellable", cancellable}} {
		b.Run(caller.name, func(b *testing.B) {
			tr := newTestHTTPForm(b, 5*time.Second)
			d := httpFormDelivery(sink.URL, plugins.Header{Key: "Authorization", Value: "Bearer your-token"})
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					res, err := tr.Deliver(caller.ctx, d)
					if err != nil || res.Outcome != plugins.OutcomeDelivered {
						b.Errorf("result %+v, err %v", res, err)
						return
					}
				}
			})
		})
	}
}

// blockingSink is an httptest server whose requests wait for release, and
// which counts the requests in its handler at once.
type blockingSink struct {
	*httpFormSink
	release chan struct{}
	inside  atomic.Int64
	most    atomic.Int64
	entered chan struct{}
	once    sync.Once
}

func newBlockingSink(t *testing.T) *blockingSink {
	s := &blockingSink{release: make(chan struct{}), entered: make(chan struct{}, 100)}
	s.httpFormSink = newHTTPFormSink(t, func(w http.ResponseWriter, r *http.Request) {
		n := s.inside.Add(1)
		for m := s.most.Load(); n > m && !s.most.CompareAndSwap(m, n); m = s.most.Load() {
		}
		s.entered <- struct{}{}
		select {
		case <-s.release:
		case <-r.Context().Done():
		}
		s.inside.Add(-1)
	})
	t.Cleanup(s.unblock)
	return s
}

// unblock lets every request waiting in the handler, and every later one,
// answer.
func (s *blockingSink) unblock() { s.once.Do(func() { close(s.release) }) }

func TestHTTPForm_per_host_cap(t *testing.T) {
	const limit, attempts = 2, 7
	sink := newBlockingSink(t)
	other := newHTTPFormSink(t, nil)
	tr := NewHTTPForm(HTTPFormOptions{Guard: httpFormLoopback(), PerHostConcurrency: limit, HostSlotWait: time.Minute})
	t.Cleanup(tr.Close)

	// The same host spelled two ways counts once (host:port, lower-cased).
	port := sink.Listener.Addr().(*net.TCPAddr).Port
	spellings := []string{
		"http://localhost:" + strconv.Itoa(port),
		"HTTP://LOCALHOST:" + strconv.Itoa(port) + "/A",
	}
	results := make(chan error, attempts)
	for i := range attempts {
		u := spellings[i%2]
		go func() {
			res, err := tr.Deliver(context.Background(), httpFormDelivery(u))
			if err == nil && res.Outcome != plugins.OutcomeDelivered {
				err = fmt.Errorf("outcome %s (%s)", res.Outcome, res.Error)
			}
			results <- err
		}()
	}
	for range limit {
		<-sink.entered
	}
	// Another host is not held up by a full one.
	if res := deliverOK(t, tr, httpFormDelivery(other.URL)); res.Outcome != plugins.OutcomeDelivered {
		t.Fatalf("other host: %+v", res)
	}
	if n := sink.inside.Load(); n != limit {
		t.Fatalf("%d requests in the handler, want the cap, %d", n, limit)
	}
	sink.unblock()
	for range attempts {
		if err := <-results; err != nil {
			t.Error(err)
		}
	}
	if n := len(sink.requests()); n != attempts {
		t.Fatalf("sink saw %d requests, want %d", n, attempts)
	}
	if m := sink.most.Load(); m > limit {
		t.Fatalf("the sink had %d requests at once, cap %d", m, limit)
	}
}

func TestHTTPForm_per_host_cap_full_is_an_attempt_not_made(t *testing.T) {
	sink := newBlockingSink(t)
	tr := NewHTTPForm(HTTPFormOptions{Guard: httpFormLoopback(), PerHostConcurrency: 1, HostSlotWait: 50 * time.Millisecond})
	t.Cleanup(tr.Close)
	first := make(chan error, 1)
	go func() {
		_, err := tr.Deliver(context.Background(), httpFormDelivery(sink.URL))
		first <- err
	}()
	<-sink.entered

	tests := []struct {
		name string
		ctx  func() context.Context
		want error
	}{
		{"no slot within the wait", context.Background, plugins.ErrHostBusy},
		{"cancelled while waiting", func() context.Context {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(10*time.Millisecond, cancel)
			return ctx
		}, context.Canceled},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, err := tr.Deliver(tc.ctx(), httpFormDelivery(sink.URL))
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v (result %+v), want %v", err, res, tc.want)
			}
			if !strings.Contains(err.Error(), "attempt not made") {
				t.Errorf("error %q does not say the attempt was not made", err)
			}
		})
	}
	if n := len(sink.requests()); n != 1 {
		t.Fatalf("sink saw %d requests, want only the first", n)
	}
	sink.unblock()
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	// The slot is back: the next attempt is made.
	done := make(chan error, 1)
	go func() {
		_, err := tr.Deliver(context.Background(), httpFormDelivery(sink.URL))
		done <- err
	}()
	if err := <-done; err != nil {
		t.Fatalf("after the first ended: %v", err)
	}
}

// One attempt is one request, even with an Idempotency-Key header, for
// which net/http resends a POST whose keep-alive connection closes without
// an answer: the endpoint answers the first request of each connection
// and hangs up on the second.
func TestHTTPForm_one_request_per_attempt_with_an_idempotency_key(t *testing.T) {
	ln := listenLocal(t)
	var requests atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer func() { _ = c.Close() }()
				br := bufio.NewReader(c)
				for n := 0; ; n++ {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					_, _ = io.Copy(io.Discard, req.Body)
					requests.Add(1)
					if n > 0 {
						return // the second request on a connection: no answer
					}
					_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
				}
			}()
		}
	}()
	tr := newTestHTTPForm(t, 5*time.Second)
	for _, key := range []string{"Idempotency-Key", "X-Idempotency-Key"} {
		requests.Store(0)
		d := httpFormDelivery("http://"+ln.Addr().String()+"/", plugins.Header{Key: key, Value: "k1"})
		if res := deliverOK(t, tr, d); res.Outcome != plugins.OutcomeDelivered {
			t.Fatalf("%s: first attempt %+v, want delivered", key, res)
		}
		res := deliverOK(t, tr, d) // on the kept-alive connection, which closes
		if res.Outcome != plugins.OutcomeRetryable || res.Error != "connection closed before a response" {
			t.Errorf("%s: second attempt %+v, want retryable: connection closed before a response", key, res)
		}
		if n := requests.Load(); n != 2 {
			t.Errorf("%s: the endpoint got %d requests for 2 attempts", key, n)
		}
	}
}

// A 101 Switching Protocols is a final failure at once: its body, the
// switched connection, is not read until the timeout.
func TestHTTPForm_switching_protocols_is_final_at_once(t *testing.T) {
	ln := listenLocal(t)
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer func() { _ = c.Close() }()
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		<-done // the connection stays open
	}()
	tr := newTestHTTPForm(t, 30*time.Second)
	res := deliverOK(t, tr, httpFormDelivery("http://"+ln.Addr().String()+"/"))
	if res.Outcome != plugins.OutcomeFinal || res.StatusCode != 101 {
		t.Fatalf("result %+v, want final with status 101", res)
	}
	if res.Duration > 10*time.Second {
		t.Errorf("took %s: the switched connection was read until the timeout", res.Duration)
	}
}
