package dispatcher_test

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callbackd/callbackd/deliverylog"
	"github.com/callbackd/callbackd/dispatcher"
	"github.com/callbackd/callbackd/plugins"
	"github.com/callbackd/callbackd/plugins/builtin"
	"github.com/callbackd/callbackd/settings"
	"github.com/callbackd/callbackd/subjects"
	"github.com/callbackd/callbackd/testutil"
)

// Generous deadlines: the suite runs under -race on small, busy machines.
const (
	waitLong  = 20 * time.Second
	userAgent = "callbackd/test"
)

// The seed's examples as JSON, and the form bodies they must give.
const (
	seedAccount = "123123"
	seedProject = "1123123"

	crawlSeed = `{"message":"crawl_status","resource":"crawl","crawl_id":124234,"project_id":1123123,"account_id":123123,` +
		`"user_id":123123,"partner_account_id":"123123","partner_user_id":"3333312","status":"finished",` +
		`"href":"/accounts/123123/projects/1123123/crawls/124234"}`
	crawlSeedBody = "message=crawl_status&resource=crawl&crawl_id=124234&project_id=1123123&account_id=123123" +
		"&user_id=123123&partner_account_id=123123&partner_user_id=3333312&status=finished" +
		"&href=%2Faccounts%2F123123%2Fprojects%2F1123123%2Fcrawls%2F124234"

	reportSeed = `{"message":"report_download_available","resource":"report_download","report_download_id":567890,` +
		`"report_id":"124234:all_pages:basic","crawl_id":124234,"project_id":1123123,"account_id":123123,` +
		`"user_id":123123,"partner_account_id":"123123","partner_user_id":"3333312","status":"generated",` +
		`"file_url":"https://...",` +
		`"href":"/accounts/123123/projects/1123123/crawls/124234/reports/124234:all_pages:basic/downloads/567890"}`
	reportSeedBody = "message=report_download_available&resource=report_download&report_download_id=567890" +
		"&report_id=124234%3Aall_pages%3Abasic&crawl_id=124234&project_id=1123123&account_id=123123" +
		"&user_id=123123&partner_account_id=123123&partner_user_id=3333312&status=generated" +
		"&file_url=https%3A%2F%2F..." +
		"&href=%2Faccounts%2F123123%2Fprojects%2F1123123%2Fcrawls%2F124234%2Freports%2F124234%3Aall_pages%3Abasic%2Fdownloads%2F567890"
)

// crawl is a minimal finished standard crawl event.
func crawl(id int) []byte { return []byte(`{"crawl_id":` + strconv.Itoa(id) + `}`) }

// crawlBody is the form body of crawl(id) published under account a,
// project p.
func crawlBody(id int, a, p string) string {
	c := strconv.Itoa(id)
	return "message=crawl_status&resource=crawl&crawl_id=" + c + "&project_id=" + p + "&account_id=" + a +
		"&user_id=&partner_account_id=&partner_user_id=&status=finished" +
		"&href=%2Faccounts%2F" + a + "%2Fprojects%2F" + p + "%2Fcrawls%2F" + c
}

func eventSubject(typ, account, project string) string {
	return "callbacks.event." + typ + "." + account + "." + project
}

// requestsByDelivery counts requests by their Callback-Delivery-Id.
func requestsByDelivery(reqs []testutil.Request) map[string]int {
	seen := map[string]int{}
	for _, r := range reqs {
		seen[r.Header.Get("Callback-Delivery-Id")]++
	}
	return seen
}

// idFromMsgID is the Callback-Delivery-Id of an event published with
// Nats-Msg-Id msgID (SPEC §3), computed independently of the dispatcher.
func idFromMsgID(msgID string) string {
	sum := sha256.Sum256([]byte(msgID))
	return hex.EncodeToString(sum[:])[:16]
}

// harnessOptions vary the harness; zero values give a dispatcher with 8
// workers, a 5 s delivery timeout, the default max payload, one attempt per
// delivery (every failure final at once), no failure handler and private
// addresses allowed.
type harnessOptions struct {
	Workers         int
	DeliveryTimeout time.Duration
	MaxPayload      int64
	// MaxAttempts is the attempts per delivery (0 → 1, not the
	// dispatcher's default of 4).
	MaxAttempts int
	// Backoff is the wait before each retry (nil → the dispatcher's default).
	Backoff []time.Duration
	// PerHostConcurrency caps attempts per host (0 → the dispatcher's default).
	PerHostConcurrency int
	// MaxInFlight caps attempts in flight in all (0 → the dispatcher's default).
	MaxInFlight int
	// AckWait is the consumers' ack wait (0 → DeliveryTimeout + 10 s, as
	// serve sets it).
	AckWait time.Duration
	// HostWindow, when set, makes the transport cap its own requests per
	// host at PerHostConcurrency and the dispatcher hand it HostWindow per
	// host, as serve does with the built-ins in a plugin process.
	HostWindow int
	// WrapTransport, when set, stands between the dispatcher and the
	// http-form transport.
	WrapTransport func(plugins.Transport) plugins.Transport
	// Observer is told what the dispatcher does (nil: nothing).
	Observer dispatcher.Observer
	// Failure installs the built-in sso-webhook failure handler.
	Failure bool
	// FailureHandler, when set, is the failure handler instead.
	FailureHandler plugins.FailureHandler
	// Guard applies the default outbound-safety policy (private addresses
	// refused) except for AllowCIDRs; without it every address is allowed.
	Guard      bool
	AllowCIDRs []netip.Prefix
	// Encoders replace the built-in encoders when set.
	Encoders map[string]plugins.Encoder
	// MaxDeliveries caps hand-backs (0 → the dispatcher's default).
	MaxDeliveries int
	// Logger, when set, is the dispatcher's logger (else the test's).
	Logger *slog.Logger
	// Log writes the delivery log to CALLBACKS_LOG.
	Log bool
	// StreamCheck is how often the dispatcher looks for deleted streams
	// and at the retrier's pending limit (0 → its default).
	StreamCheck time.Duration
	// MaxRetryPending is the retrier consumer's pending limit (0 → 100000).
	MaxRetryPending int
	// Manual leaves the settings view and the dispatcher unstarted: the
	// test calls startView and startDispatcher itself.
	Manual bool
}

// harness is a dispatcher on an embedded JetStream, wired as serve wires it,
// with the built-in encoders and the http-form transport (private
// addresses allowed: the sinks are on loopback).
type harness struct {
	t     *testing.T
	nats  *testutil.JetStream
	js    jetstream.JetStream
	store *settings.Store
	view  *settings.View
	d     *dispatcher.Dispatcher

	ctx     context.Context    // lives as long as the test
	cancel  context.CancelFunc // stops the dispatcher
	runDone chan struct{}      // closed when Run has returned
	runErr  error              // Run's result, once runDone is closed
}

func newHarness(t *testing.T, o harnessOptions) *harness {
	t.Helper()
	if o.Workers == 0 {
		o.Workers = 8
	}
	if o.DeliveryTimeout == 0 {
		o.DeliveryTimeout = 5 * time.Second
	}
	if o.MaxAttempts == 0 {
		o.MaxAttempts = 1
	}
	log := testutil.Logger(t)
	h := &harness{t: t, nats: testutil.RunJetStream(t)}
	h.js = h.nats.JS
	h.ctx = testutil.Context(t)

	ctx, cancel := context.WithTimeout(h.ctx, waitLong)
	defer cancel()
	top, err := dispatcher.EnsureStreams(ctx, h.js, dispatcher.StreamOptions{
		AckWait:         cmp.Or(o.AckWait, o.DeliveryTimeout+10*time.Second),
		MaxAckPending:   256,
		MaxRetryPending: cmp.Or(o.MaxRetryPending, 100000),
		RetentionEvents: time.Hour,
		RetentionDead:   time.Hour,
		RetentionLog:    time.Hour,
		LogBytes:        64 << 20,
	}, log)
	if err != nil {
		t.Fatalf("EnsureStreams: %v", err)
	}
	if h.store, err = settings.OpenStore(ctx, h.js, settings.StoreOptions{}); err != nil {
		t.Fatalf("OpenStore: %v", err)
	}
	h.view = settings.NewView(log, settings.ViewOptions{})

	httpForm := builtin.NewHTTPForm(builtin.HTTPFormOptions{
		Timeout:   o.DeliveryTimeout,
		UserAgent: userAgent,
		Guard:     plugins.NewGuard(!o.Guard, o.AllowCIDRs),
		PerHostConcurrency: func() int {
			if o.HostWindow > 0 {
				return cmp.Or(o.PerHostConcurrency, 8)
			}
			return 0
		}(),
	})
	t.Cleanup(httpForm.Close)
	var transport plugins.Transport = httpForm
	if o.WrapTransport != nil {
		transport = o.WrapTransport(transport)
	}
	var failure plugins.FailureHandler
	if o.Failure {
		failure = builtin.NewSSOWebhook()
	}
	if o.FailureHandler != nil {
		failure = o.FailureHandler
	}
	encoders := o.Encoders
	if encoders == nil {
		encoders = builtin.Encoders()
	}
	var recorder dispatcher.Recorder
	if o.Log {
		w := deliverylog.NewWriter(h.js, log, deliverylog.WriterOptions{})
		t.Cleanup(func() { _ = w.Close(context.Background()) })
		recorder = w
	}
	h.d, err = dispatcher.New(h.js, top, h.view, dispatcher.Options{
		Workers:            o.Workers,
		MaxPayload:         o.MaxPayload,
		MaxDeliveries:      o.MaxDeliveries,
		Recorder:           recorder,
		DeliveryTimeout:    o.DeliveryTimeout,
		Encoders:           encoders,
		Transport:          transport,
		Failure:            failure,
		MaxAttempts:        o.MaxAttempts,
		Backoff:            o.Backoff,
		PerHostConcurrency: o.PerHostConcurrency,
		MaxInFlight:        o.MaxInFlight,
		HostWindow:         o.HostWindow,
		Observer:           o.Observer,
		Logger:             cmp.Or(o.Logger, log),
		StreamCheck:        o.StreamCheck,
	})
	if err != nil {
		t.Fatalf("dispatcher.New: %v", err)
	}
	if !o.Manual {
		h.startView()
		h.startDispatcher()
	}
	return h
}

// startView runs the settings view until the test ends.
func (h *harness) startView() {
	ctx, cancel := context.WithCancel(h.ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = h.view.Run(ctx, h.store.KV())
	}()
	// Cleanups run last-registered first: this one runs before the NATS
	// server's, registered earlier.
	h.t.Cleanup(func() {
		cancel()
		<-done
	})
}

// startDispatcher runs the dispatcher until stopDispatcher or the end of
// the test.
func (h *harness) startDispatcher() {
	ctx, cancel := context.WithCancel(h.ctx)
	h.cancel = cancel
	h.runDone = make(chan struct{})
	go func() {
		h.runErr = h.d.Run(ctx)
		close(h.runDone)
	}()
	h.t.Cleanup(func() {
		// Cancel before waiting: Run returns only once told to stop.
		cancel()
		select {
		case <-h.runDone:
		case <-time.After(waitLong):
			h.t.Errorf("dispatcher Run did not return within %s of being stopped", waitLong)
		}
	})
}

// stopDispatcher tells the dispatcher to stop; runDone is closed when Run
// has returned, and runErr is its result.
func (h *harness) stopDispatcher() { h.cancel() }

func (h *harness) setProject(id, url string, headers ...settings.Header) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(h.ctx, waitLong)
	defer cancel()
	_, err := h.store.UpdateProject(ctx, id, func(p *settings.Project) error {
		p.APICallbackURL = &url
		p.APICallbackHeaders = headers
		return nil
	})
	if err != nil {
		h.t.Fatalf("UpdateProject(%s): %v", id, err)
	}
}

// setProjectHeaders gives the project headers but no URL.
func (h *harness) setProjectHeaders(id string, headers ...settings.Header) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(h.ctx, waitLong)
	defer cancel()
	_, err := h.store.UpdateProject(ctx, id, func(p *settings.Project) error {
		p.APICallbackURL = nil
		p.APICallbackHeaders = headers
		return nil
	})
	if err != nil {
		h.t.Fatalf("UpdateProject(%s): %v", id, err)
	}
}

func (h *harness) setAccount(id, url string, headers ...settings.Header) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(h.ctx, waitLong)
	defer cancel()
	_, err := h.store.UpdateAccount(ctx, id, func(a *settings.Account) error {
		a.APICallbackURL = &url
		a.APICallbackHeaders = headers
		return nil
	})
	if err != nil {
		h.t.Fatalf("UpdateAccount(%s): %v", id, err)
	}
}

// waitDestination waits until the view routes account/project to url, so
// that a test does not race the KV watch.
func (h *harness) waitDestination(account, project, url string) {
	h.t.Helper()
	testutil.CheckFor(h.t, waitLong, 10*time.Millisecond, func() error {
		d, ok := h.view.Destination(account, project)
		if !ok || d.URL != url {
			return fmt.Errorf("view routes %s/%s to %q (set %v), want %q", account, project, d.URL, ok, url)
		}
		return nil
	})
}

// publish publishes payload to subject, with Nats-Msg-Id msgID unless it is
// empty, and returns the stream's ack.
func (h *harness) publish(subject string, payload []byte, msgID string) *jetstream.PubAck {
	h.t.Helper()
	m := nats.NewMsg(subject)
	m.Data = payload
	if msgID != "" {
		m.Header.Set(jetstream.MsgIDHeader, msgID)
	}
	ctx, cancel := context.WithTimeout(h.ctx, waitLong)
	defer cancel()
	ack, err := h.js.PublishMsg(ctx, m)
	if err != nil {
		h.t.Fatalf("publish %s: %v", subject, err)
	}
	if ack.Stream != subjects.Stream {
		h.t.Fatalf("publish %s: stored in %s, want %s", subject, ack.Stream, subjects.Stream)
	}
	return ack
}

// publishMsg publishes m as it is (headers included) and returns the
// stream's ack.
func (h *harness) publishMsg(m *nats.Msg) *jetstream.PubAck {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(h.ctx, waitLong)
	defer cancel()
	ack, err := h.js.PublishMsg(ctx, m)
	if err != nil {
		h.t.Fatalf("publish %s: %v", m.Subject, err)
	}
	return ack
}

// seqID is the Callback-Delivery-Id of an event published without
// Nats-Msg-Id: <CALLBACKS created, unix seconds>-<stream sequence>.
func (h *harness) seqID(seq uint64) string {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(h.ctx, waitLong)
	defer cancel()
	s, err := h.js.Stream(ctx, subjects.Stream)
	if err != nil {
		h.t.Fatalf("stream %s: %v", subjects.Stream, err)
	}
	return strconv.FormatInt(s.CachedInfo().Created.Unix(), 10) + "-" + strconv.FormatUint(seq, 10)
}

// waitEventsEmpty waits until every event has been acked out of CALLBACKS.
func (h *harness) waitEventsEmpty() {
	h.t.Helper()
	testutil.WaitStreamEmpty(h.t, h.js, subjects.Stream, waitLong)
}

// dead returns the dead letters now in CALLBACKS_DEAD.
func (h *harness) dead() []*jetstream.RawStreamMsg {
	h.t.Helper()
	return testutil.StreamMsgs(h.t, h.js, subjects.DeadStream)
}

// waitDeadFor waits for the dead letter of the event published to subject
// with payload, and returns it.
func (h *harness) waitDeadFor(subject string, payload []byte) *jetstream.RawStreamMsg {
	h.t.Helper()
	got := testutil.WaitStreamMsgs(h.t, h.js, subjects.DeadStream, 1, waitLong, func(m *jetstream.RawStreamMsg) bool {
		return m.Header.Get(subjects.HeaderSubject) == subject && string(m.Data) == string(payload)
	})
	if len(got) != 1 {
		h.t.Fatalf("%d dead letters for %s %q, want 1", len(got), subject, payload)
	}
	return got[0]
}

// checkDeadLetter checks a dead letter's subject, headers and payload
// against SPEC §2/§3. status "" means Callbackd-Status must be empty;
// attempts "" leaves Callbackd-Attempts unchecked.
func checkDeadLetter(t *testing.T, m *jetstream.RawStreamMsg, wantSubject, reason, status, attempts, origSubject string, payload []byte, deliveryID string) {
	t.Helper()
	if m.Subject != wantSubject {
		t.Errorf("dead letter subject = %q, want %q", m.Subject, wantSubject)
	}
	if got := m.Header.Get(subjects.HeaderReason); got != reason {
		t.Errorf("%s = %q, want %q", subjects.HeaderReason, got, reason)
	}
	if got := m.Header.Get(subjects.HeaderStatus); got != status {
		t.Errorf("%s = %q, want %q", subjects.HeaderStatus, got, status)
	}
	if attempts != "" {
		if got := m.Header.Get(subjects.HeaderAttempts); got != attempts {
			t.Errorf("%s = %q, want %q", subjects.HeaderAttempts, got, attempts)
		}
	}
	if got := m.Header.Get(subjects.HeaderError); strings.TrimSpace(got) == "" {
		t.Errorf("%s is empty, want a short reason", subjects.HeaderError)
	}
	if got := m.Header.Get(subjects.HeaderSubject); got != origSubject {
		t.Errorf("%s = %q, want %q", subjects.HeaderSubject, got, origSubject)
	}
	if deliveryID != "" {
		if got := m.Header.Get(subjects.HeaderDeliveryID); got != deliveryID {
			t.Errorf("%s = %q, want %q", subjects.HeaderDeliveryID, got, deliveryID)
		}
	} else if m.Header.Get(subjects.HeaderDeliveryID) == "" {
		t.Errorf("%s is empty", subjects.HeaderDeliveryID)
	}
	if string(m.Data) != string(payload) {
		t.Errorf("dead letter payload = %q, want the original %q", m.Data, payload)
	}
}

// requestsWithID returns the sink's requests with Callback-Delivery-Id id.
func requestsWithID(s *testutil.Sink, id string) []testutil.Request {
	var out []testutil.Request
	for _, r := range s.Requests() {
		if r.Header.Get("Callback-Delivery-Id") == id {
			out = append(out, r)
		}
	}
	return out
}

// waitRequestWithID waits until the sink has a request carrying delivery id
// and returns the first such request.
func waitRequestWithID(t *testing.T, s *testutil.Sink, id string) testutil.Request {
	t.Helper()
	var got testutil.Request
	testutil.CheckFor(t, waitLong, 10*time.Millisecond, func() error {
		rs := requestsWithID(s, id)
		if len(rs) == 0 {
			return fmt.Errorf("no request with Callback-Delivery-Id %s among %d", id, len(s.Requests()))
		}
		got = rs[0]
		return nil
	})
	return got
}

// waitRequestWithBody waits until the sink has a request with exactly body.
func waitRequestWithBody(t *testing.T, s *testutil.Sink, body string) testutil.Request {
	t.Helper()
	var got testutil.Request
	testutil.CheckFor(t, waitLong, 10*time.Millisecond, func() error {
		for _, r := range s.Requests() {
			if r.Body == body {
				got = r
				return nil
			}
		}
		return fmt.Errorf("no request with body %q among %d", body, len(s.Requests()))
	})
	return got
}

// removeStream deletes stream name, so that writes to it are refused, and
// returns a func that makes it again with its config.
func (h *harness) removeStream(name string) (restore func()) {
	h.t.Helper()
	st, err := h.js.Stream(h.ctx, name)
	if err != nil {
		h.t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	if err := h.js.DeleteStream(h.ctx, name); err != nil {
		h.t.Fatal(err)
	}
	return func() {
		h.t.Helper()
		if _, err := h.js.CreateStream(h.ctx, cfg); err != nil {
			h.t.Fatal(err)
		}
	}
}

// waitLogged waits until logs holds line at least n times.
func waitLogged(t *testing.T, logs *testutil.SyncBuffer, line string, n int) {
	t.Helper()
	testutil.CheckFor(t, waitLong, 20*time.Millisecond, func() error {
		if got := strings.Count(logs.String(), line); got < n {
			return fmt.Errorf("%q logged %d times, want %d", line, got, n)
		}
		return nil
	})
}
