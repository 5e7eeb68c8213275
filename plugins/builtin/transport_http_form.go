package builtin

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/callbackd/callbackd/plugins"
)

// Limits of the http-form transport (SPEC §3).
const (
	defaultHTTPFormTimeout     = 30 * time.Second
	defaultMaxIdleConnsPerHost = 1024
	defaultHostSlotWait        = 2 * time.Second
	maxResponseHeaderBytes     = 64 << 10
	// maxResponseRead is how much of a response body is read; past it the
	// connection is closed rather than drained.
	maxResponseRead = 64 << 10
	// maxResponseExcerpt is how much of the body is kept in the Result.
	maxResponseExcerpt = 1 << 10
	// maxRetryAfter caps a Retry-After so that absurd values cannot
	// overflow a Duration; the dispatcher caps it lower still.
	maxRetryAfter = 24 * time.Hour
	// maxErrorText bounds the error text of a failed connection.
	maxErrorText = 200
)

// Header values the transport sends on every request. They are shared
// between requests and never modified.
var (
	formContentType = []string{"application/x-www-form-urlencoded"}
)

// HTTPFormOptions configures the http-form transport.
type HTTPFormOptions struct {
	// Timeout bounds one attempt: connecting, sending the request and
	// reading the response. 0 means 30s (the seed's timeout).
	Timeout time.Duration
	// UserAgent is sent as User-Agent, for example "callbackd/1.2.3".
	// Required; when empty, "callbackd" is sent rather than Go's default.
	UserAgent string
	// Guard is the outbound-safety policy applied to every connection.
	// nil means plugins.NewGuard(false, nil): private addresses refused.
	Guard *plugins.Guard
	// MaxIdleConnsPerHost is how many idle keep-alive connections are kept
	// per host. 0 means 1024.
	MaxIdleConnsPerHost int
	// PerHostConcurrency caps the requests in flight per destination
	// (plugins.HostKey: host:port, lower-cased), as
	// dispatcher.per_host_concurrency does. 0: no cap of its own. With the
	// cap here, the dispatcher can hand the transport a few more attempts
	// per host than the cap: they wait for a slot in this process, and the
	// next request starts the moment one ends instead of after a round trip
	// through the dispatcher (two plugin crossings in process mode).
	PerHostConcurrency int
	// HostSlotWait bounds an attempt's wait for one of its host's slots
	// (0 → 2 s). When it passes, the attempt is not made: Deliver returns
	// an error, and the attempt does not count. It stays within the 5 s
	// by which a plugin call's deadline exceeds delivery.timeout.
	HostSlotWait time.Duration
}

// HTTPForm is the built-in http-form transport: it POSTs a notification,
// form-encoded in field order, to the destination URL with the destination's
// headers, and classifies the answer as SPEC §3 says. All deliveries share
// one connection pool with keep-alive; no proxy is taken from the
// environment, redirects are not followed and every connection goes through
// the Guard. It is safe for concurrent use.
type HTTPForm struct {
	timeout     time.Duration
	timeoutText string
	userAgent   []string
	transport   *http.Transport
	guard       *plugins.Guard
	hosts       *hostCaps // nil: no per-host cap
	// dog keeps the attempts' timeout.
	dog *watchdog
}

var _ plugins.Transport = (*HTTPForm)(nil)

// NewHTTPForm returns the http-form transport. Call Close when done with it.
func NewHTTPForm(opts HTTPFormOptions) *HTTPForm {
	if opts.Timeout <= 0 {
		opts.Timeout = defaultHTTPFormTimeout
	}
	if opts.UserAgent == "" {
		opts.UserAgent = "callbackd"
	}
	if opts.Guard == nil {
		opts.Guard = plugins.NewGuard(false, nil)
	}
	if opts.MaxIdleConnsPerHost <= 0 {
		opts.MaxIdleConnsPerHost = defaultMaxIdleConnsPerHost
	}
	dog := newWatchdog(opts.Timeout)
	tr := &http.Transport{
		// Never a proxy from the environment: it would bypass the guard,
		// which sees only the proxy's address.
		Proxy: nil,
		// The attempt's timeout is kept by the watchdog, not by a context
		// deadline: its dialer bounds the dial and makes the connection
		// the attempt's for the TLS handshake. The handshake's own
		// timeout is a backstop only.
		DialContext:            dog.dialer(opts.Guard.DialContext, opts.Timeout),
		TLSHandshakeTimeout:    opts.Timeout,
		MaxIdleConnsPerHost:    opts.MaxIdleConnsPerHost,
		IdleConnTimeout:        90 * time.Second,
		MaxResponseHeaderBytes: maxResponseHeaderBytes,
		// Without Accept-Encoding the request carries only the headers
		// SPEC §3 names, and the 64 KiB read limit counts wire bytes.
		DisableCompression: true,
		// HTTP/2 is not forced: with a custom dialer the transport speaks
		// HTTP/1.1, whose connection handling the read limits rely on.
	}
	t := &HTTPForm{
		timeout:     opts.Timeout,
		timeoutText: "timeout after " + opts.Timeout.String(),
		userAgent:   []string{opts.UserAgent},
		transport:   tr,
		guard:       opts.Guard,
		dog:         dog,
	}
	if opts.PerHostConcurrency > 0 {
		t.hosts = &hostCaps{limit: opts.PerHostConcurrency, wait: cmp.Or(opts.HostSlotWait, defaultHostSlotWait)}
	}
	return t
}

// Close closes the idle keep-alive connections. Deliveries in flight are not
// interrupted.
func (t *HTTPForm) Close() {
	t.transport.CloseIdleConnections()
}

// Deliver makes one attempt to deliver d. Whatever happened at or on the way
// to the endpoint is in the Result, with a nil error. The error is non-nil
// only when the attempt was not made or got no answer for reasons of our
// own: ctx ended (callbackd shutting down, or the caller's deadline; the
// error wraps ctx.Err()), or, with a per-host cap, no slot came free within
// HostSlotWait (the error wraps plugins.ErrHostBusy). The attempt then did not
// count. The per-attempt timeout (HTTPFormOptions.Timeout) is not such an
// error: it is a retryable result.
func (t *HTTPForm) Deliver(ctx context.Context, d plugins.Delivery) (plugins.Result, error) {
	if err := ctx.Err(); err != nil {
		return plugins.Result{}, fmt.Errorf("deliver %s: attempt abandoned: %w", d.DeliveryID, err)
	}
	// The dispatcher and the API check headers too, but settings written
	// straight into the KV bucket reach a transport as they are.
	if err := plugins.CheckHeaders(d.Destination.Headers); err != nil {
		return finalResult(err.Error()), nil
	}

	if t.hosts != nil {
		slot, err := t.hosts.acquire(ctx, d.Destination.URL)
		if err != nil {
			return plugins.Result{}, fmt.Errorf("deliver %s: attempt not made: %w", d.DeliveryID, err)
		}
		// Given back once the response is read and closed (or the
		// attempt failed): the request is over then.
		defer func() { <-slot }()
	}

	// The attempt's timeout is kept by the watchdog (watchdog.go), which
	// costs no timer; the caller's ctx still cancels the request.
	start := time.Now()
	dog, actx := t.dog.start(ctx, start.Add(t.timeout))
	defer t.dog.end(dog)
	req, refused, ok := t.newRequest(actx, d, start)
	if !ok {
		return refused, nil
	}

	// Straight to the transport, not through an http.Client: SPEC §3 makes
	// every 3xx a failure, so the first answer is the answer and there are
	// no redirects to follow, no cookies and no client timeout — the
	// Client would only copy the headers per request for redirects that
	// never happen. RoundTrip closes the request body, on errors too.
	resp, err := t.transport.RoundTrip(req)
	if err != nil {
		if perr := ctx.Err(); perr != nil {
			return plugins.Result{}, fmt.Errorf("deliver %s: attempt abandoned: %w", d.DeliveryID, perr)
		}
		res := plugins.Result{Outcome: plugins.OutcomeRetryable, Duration: time.Since(start)}
		switch {
		case errors.Is(err, plugins.ErrDestinationNotAllowed):
			res.Outcome = plugins.OutcomeNotAllowed
			res.Error = notAllowedText(err, req.URL.Hostname())
		case dog.expired.Load() || !time.Now().Before(dog.deadline):
			// Past the deadline, whichever bound ended it (the watchdog,
			// the dial's deadline, the handshake's backstop): one text.
			res.Error = t.timeoutText
		default:
			res.Error = connErrorText(err)
		}
		return res, nil
	}

	return answered(resp, start), nil
}

// newRequest makes the attempt's request for d: the URL checked (an
// invalid or refused one is the attempt's result, with ok false), the
// form body, the headers. start is when the attempt began.
func (t *HTTPForm) newRequest(ctx context.Context, d plugins.Delivery, start time.Time) (req *http.Request, refused plugins.Result, ok bool) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.Destination.URL, nil)
	if err != nil {
		// url.Error's text repeats the URL, which may hold secrets.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, finalResult("invalid destination URL: " + err.Error()), false
	}
	if (req.URL.Scheme != "http" && req.URL.Scheme != "https") || req.URL.Hostname() == "" {
		return nil, finalResult("invalid destination URL: must be an absolute http or https URL with a host"), false
	}
	if i := plugins.NotURIChar(d.Destination.URL); i >= 0 {
		// A raw space in the query would split the request line.
		return nil, finalResult(fmt.Sprintf("invalid destination URL: byte %d must be percent-encoded", i)), false
	}
	// The dial checks the address a name resolves to; a host written as a
	// number that resolvers may read as an IPv4 address (2130706433,
	// 0x7f.1, "127.0.0.1.") is judged as that address here, as the API
	// and the settings view judge it, instead of failing its DNS lookup
	// attempt after attempt.
	if err := t.guard.CheckURLHost(req.URL.Host); err != nil {
		return nil, plugins.Result{Outcome: plugins.OutcomeNotAllowed, Error: err.Error(), Duration: time.Since(start)}, false
	}

	// A plain byte slice behind a *bytes.Reader: net/http knows it does not
	// block and writes headers and body in one syscall; the slice is never
	// reused, so net/http may read it again (GetBody) after we return.
	body := d.Notification.AppendForm(make([]byte, 0, 512))
	if len(body) > 0 {
		req.ContentLength = int64(len(body))
		br := bytes.NewReader(body)
		req.Body = io.NopCloser(br)
		// GetBody lets net/http resend on a fresh connection when a
		// keep-alive connection turns out to be dead before the request
		// went out. Once the body has been read to its end, the request
		// may have reached the endpoint, and one attempt is one request
		// (SPEC §3): net/http would resend a POST that carries an
		// Idempotency-Key header when the connection closes without an
		// answer. GetBody runs after the write loop is done with br.
		req.GetBody = func() (io.ReadCloser, error) {
			if br.Len() == 0 {
				return nil, errNotResent
			}
			return io.NopCloser(bytes.NewReader(body)), nil
		}
	} else {
		req.Body = http.NoBody
		req.GetBody = func() (io.ReadCloser, error) { return http.NoBody, nil }
	}

	h := req.Header
	h["Content-Type"] = formContentType
	h["User-Agent"] = t.userAgent
	h["Callback-Delivery-Id"] = []string{d.DeliveryID}
	// Custom keys keep the spelling they were configured with ("sent as
	// given"): HTTP/1.1 writes map keys verbatim. CheckHeaders has ruled
	// out keys that collide, case-insensitively, with each other or with
	// the headers above.
	for _, ch := range d.Destination.Headers {
		h[ch.Key] = []string{ch.Value}
	}
	if u := req.URL.User; u != nil {
		// net/http turns userinfo into Basic auth unless "Authorization"
		// is set, a lookup that misses a custom "authorization": do it
		// here, case-insensitively, so a custom header always wins and
		// is never doubled.
		if !hasHeaderFold(d.Destination.Headers, "Authorization") {
			pw, _ := u.Password()
			req.SetBasicAuth(u.Username(), pw)
		}
		req.URL.User = nil
	}

	return req, plugins.Result{}, true
}

// answered is the result of an attempt the endpoint answered. It stands
// even if the caller's ctx ends now: the attempt happened.
func answered(resp *http.Response, start time.Time) plugins.Result {
	var excerpt string
	if resp.StatusCode != http.StatusSwitchingProtocols {
		// A 101's body is the switched connection itself, which would
		// be read until the timeout: it is a final answer as it is.
		excerpt = readExcerpt(resp.Body)
	}
	_ = resp.Body.Close()
	res := plugins.Result{
		StatusCode:      resp.StatusCode,
		Outcome:         classifyStatus(resp.StatusCode),
		ResponseExcerpt: excerpt,
		Duration:        time.Since(start),
	}
	if res.Outcome != plugins.OutcomeDelivered {
		res.Error = "HTTP " + strconv.Itoa(resp.StatusCode)
	}
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		res.RetryAfter = parseRetryAfter(resp.Header, time.Now())
	}
	return res
}

func finalResult(msg string) plugins.Result {
	return plugins.Result{Outcome: plugins.OutcomeFinal, Error: msg}
}

// classifyStatus maps an HTTP status to an outcome (SPEC §3): success is
// exactly 200-204; 408, 429 and 5xx are worth another attempt; every other
// answer, 205-299 and every 3xx included, is final.
func classifyStatus(code int) plugins.Outcome {
	switch {
	case code >= 200 && code <= 204:
		return plugins.OutcomeDelivered
	case code == http.StatusRequestTimeout, code == http.StatusTooManyRequests, code >= 500 && code <= 599:
		return plugins.OutcomeRetryable
	default:
		return plugins.OutcomeFinal
	}
}

func hasHeaderFold(hs []plugins.Header, key string) bool {
	for _, h := range hs {
		if strings.EqualFold(h.Key, key) {
			return true
		}
	}
	return false
}

// parseRetryAfter reads Retry-After as delta-seconds or an HTTP-date
// (RFC 9110 §10.2.3); 0 when absent, malformed, negative or in the past. A
// date is measured against the response's Date when it has one, so that the
// two clocks' skew does not count.
func parseRetryAfter(h http.Header, now time.Time) time.Duration {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if isDelaySeconds(v) {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n > uint64(maxRetryAfter/time.Second) {
			return maxRetryAfter // only overflow fails on digits
		}
		return time.Duration(n) * time.Second
	}
	at, err := http.ParseTime(v)
	if err != nil {
		return 0
	}
	if date, err := http.ParseTime(h.Get("Date")); err == nil {
		now = date
	}
	wait := at.Sub(now)
	if wait <= 0 {
		return 0
	}
	return min(wait, maxRetryAfter)
}

func isDelaySeconds(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// excerptPool holds the buffers responses are read into.
var excerptPool = sync.Pool{New: func() any { return new([maxResponseExcerpt]byte) }}

// readExcerpt reads the body up to maxResponseRead bytes and returns its
// first maxResponseExcerpt bytes as valid UTF-8. A read error (the attempt
// timing out mid-body) just ends the excerpt: the status is the answer.
func readExcerpt(body io.Reader) string {
	buf := excerptPool.Get().(*[maxResponseExcerpt]byte)
	defer excerptPool.Put(buf)
	n, err := io.ReadFull(body, buf[:])
	if err == nil {
		// The buffer is full and the body may go on: read on up to the
		// limit, so that a body that ends there leaves the connection
		// reusable; a longer one is cut when the caller closes it.
		_, _ = io.CopyN(io.Discard, body, maxResponseRead-maxResponseExcerpt)
	}
	return utf8Excerpt(buf[:n], err == nil)
}

// utf8Excerpt returns b as valid UTF-8 of at most maxResponseExcerpt bytes.
// When b was cut from a longer body, a rune split by the cut is dropped
// rather than shown as invalid.
func utf8Excerpt(b []byte, truncated bool) string {
	if len(b) == 0 {
		return ""
	}
	if truncated {
		i := len(b) - 1
		for i > 0 && i > len(b)-utf8.UTFMax && !utf8.RuneStart(b[i]) {
			i--
		}
		if !utf8.FullRune(b[i:]) {
			b = b[:i]
		}
	}
	s := strings.ToValidUTF8(string(b), "\uFFFD")
	if len(s) > maxResponseExcerpt {
		// Replacement characters (3 bytes each) can outgrow the bytes
		// they replace.
		i := maxResponseExcerpt
		for i > 0 && !utf8.RuneStart(s[i]) {
			i--
		}
		s = s[:i]
	}
	return s
}

// notAllowedText returns the guard's own message ("destination not allowed:
// 127.0.0.1 is in 127.0.0.0/8 (loopback)") without the url.Error and
// net.OpError prefixes around it, which repeat the URL. When host is a name,
// the address it resolved to is left out: the text reaches the delivery
// log, the API's test callback and the SSO client's callback-failed notice,
// and an internal DNS answer is nobody's business outside.
func notAllowedText(err error, host string) string {
	var nae *plugins.NotAllowedError
	if errors.As(err, &nae) {
		if _, perr := netip.ParseAddr(host); perr != nil {
			return fmt.Sprintf("%v: %s resolves to an address in a refused range (%s)", plugins.ErrDestinationNotAllowed, host, nae.Name)
		}
	}
	for e := err; e != nil; e = errors.Unwrap(e) {
		if errors.Unwrap(e) == plugins.ErrDestinationNotAllowed { //nolint:errorlint // looking for the error that wraps the sentinel itself
			return e.Error()
		}
	}
	return plugins.ErrDestinationNotAllowed.Error()
}

// errNotResent ends an attempt whose request went out and whose connection
// closed without an answer, where net/http would send it again.
var errNotResent = fmt.Errorf("request sent, not sent again in the same attempt: %w", io.ErrUnexpectedEOF)

// connErrorText describes a failure that got no response in a few words,
// never with the URL (its userinfo and query string may be secrets).
func connErrorText(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset by peer"
	case errors.Is(err, syscall.EPIPE):
		return "connection closed by peer"
	case errors.Is(err, syscall.EHOSTUNREACH):
		return "host unreachable"
	case errors.Is(err, syscall.ENETUNREACH):
		return "network unreachable"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed before a response"
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		if dnsErr.IsNotFound {
			return "DNS lookup of " + dnsErr.Name + ": no such host"
		}
		return shortErrorText("DNS lookup of " + dnsErr.Name + " failed: " + dnsErr.Err)
	}
	var certErr *tls.CertificateVerificationError
	if errors.As(err, &certErr) {
		return shortErrorText("TLS certificate not accepted: " + certErr.Err.Error())
	}
	var recErr tls.RecordHeaderError
	if errors.As(err, &recErr) {
		return "TLS handshake failed: the server does not speak TLS"
	}
	var netTimeout interface{ Timeout() bool }
	if errors.As(err, &netTimeout) && netTimeout.Timeout() {
		return "timeout"
	}
	// net/http's own reasons for giving up on a response are plain
	// strings, long and Go-specific.
	switch msg := err.Error(); {
	case strings.Contains(msg, "server response headers exceeded"):
		return "response headers over 64 KiB"
	case strings.Contains(msg, "malformed HTTP"), strings.Contains(msg, "malformed MIME header"),
		strings.Contains(msg, "bad Content-Length"), strings.Contains(msg, "multiple Content-Length"),
		strings.Contains(msg, "unsupported transfer encoding"), strings.Contains(msg, "transfer-encoding"):
		return "malformed HTTP response"
	}
	// Drop "dial tcp 192.0.2.1:443: " and the like.
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Err != nil {
		err = opErr.Err
	}
	return shortErrorText(err.Error())
}

func shortErrorText(s string) string {
	if len(s) > maxErrorText {
		i := maxErrorText
		for i > 0 && !utf8.RuneStart(s[i]) {
			i--
		}
		s = s[:i] + "…"
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

// hostCaps caps requests in flight per destination host:port. A slot is a
// token in the host's channel; the channels are kept (destinations are the
// configured callback URLs, and the SSO webhooks: few).
type hostCaps struct {
	limit int
	wait  time.Duration
	// byURL maps a destination URL to its host's slots, so that the hot
	// path neither parses nor allocates.
	byURL  sync.Map // string → chan struct{}
	mu     sync.Mutex
	byHost map[string]chan struct{}
}

// acquire takes a slot of rawURL's host and returns the channel to give it
// back to (a receive). It waits up to h.wait, or until ctx ends.
func (h *hostCaps) acquire(ctx context.Context, rawURL string) (chan struct{}, error) {
	slots := h.slots(rawURL)
	select {
	case slots <- struct{}{}:
		return slots, nil
	default:
	}
	t := time.NewTimer(h.wait)
	defer t.Stop()
	select {
	case slots <- struct{}{}:
		return slots, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.C:
		return nil, fmt.Errorf("%w: %d requests in flight for %s", plugins.ErrHostBusy, h.limit, h.wait)
	}
}

func (h *hostCaps) slots(rawURL string) chan struct{} {
	if v, ok := h.byURL.Load(rawURL); ok {
		return v.(chan struct{})
	}
	key := rawURL // text that does not parse is its own key (and fails later)
	if u, err := url.Parse(rawURL); err == nil {
		key = plugins.HostKey(u)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.byHost == nil {
		h.byHost = map[string]chan struct{}{}
	}
	slots, ok := h.byHost[key]
	if !ok {
		slots = make(chan struct{}, h.limit)
		h.byHost[key] = slots
	}
	h.byURL.Store(rawURL, slots)
	return slots
}
