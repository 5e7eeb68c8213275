package deliverylog

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callbackd/callbackd/plugins"
	"github.com/callbackd/callbackd/subjects"
)

// Limits applied to every record before it is published.
const (
	// MaxExcerpt caps ResponseExcerpt (SPEC §3: at most 1 KiB kept).
	MaxExcerpt = 1024
	// MaxError caps Error.
	MaxError = 1024
	// maxURL caps URL; a longer one is an attack or a mistake, not something
	// an operator reads.
	maxURL = 2048
	// maxToken caps the short identifying fields.
	maxToken = 128
)

// WriterOptions tune a Writer. The zero value is ready to use.
type WriterOptions struct {
	// Buffer is how many records may wait to be published; once it is full,
	// new records are dropped and counted (Dropped). 0 means 8192.
	Buffer int
	// WarnEvery is the least time between two warnings about dropped or
	// failed records. 0 means 10s.
	WarnEvery time.Duration
}

// Writer publishes delivery-log records to CALLBACKS_LOG asynchronously and
// on a best-effort basis (SPEC §2): Write never blocks and never waits for
// NATS, so logging can never delay an ack. Records that do not fit the
// buffer are dropped and counted rather than queued without bound.
//
// Subjects are callbacks.log.<account>.<project>.<outcome>. A record whose
// account or project is not a valid ID (an invalid event whose subject did
// not parse) is published with subjects.LogUnparsed ("_") for that token,
// and so is one whose outcome is not one of the Outcome constants; the
// record's own fields are kept as they are.
type Writer struct {
	nc  *nats.Conn
	log *slog.Logger
	ch  chan Record

	stop      chan struct{} // closed by Close
	stopCtx   context.Context
	done      chan struct{} // closed when the publishing loop has returned
	closeOnce sync.Once
	closed    atomic.Bool

	dropped   atomic.Uint64
	failed    atomic.Uint64
	warnEvery time.Duration
	lastDrop  atomic.Int64 // unix nanos of the last drop warning
	lastFail  atomic.Int64

	// Owned by the publishing loop: the record's JSON is appended to buf,
	// which the connection copies on Publish; subjects and safe URLs are
	// kept per key, as a delivery's project and URL repeat.
	buf      []byte
	subjects map[subjectKey]string
	safeURLs map[string]string
}

// subjectKey is what a record's log subject is made of.
type subjectKey struct{ account, project, outcome string }

// maxCached bounds each of the loop's caches; a full one is cleared.
const maxCached = 4096

// NewWriter starts a Writer publishing through js's connection with core
// NATS publishes, which the CALLBACKS_LOG stream captures: the log is best
// effort, and no ack per record is waited for. Close it to flush.
func NewWriter(js jetstream.JetStream, log *slog.Logger, o WriterOptions) *Writer {
	if o.Buffer <= 0 {
		o.Buffer = 8192
	}
	if o.WarnEvery <= 0 {
		o.WarnEvery = 10 * time.Second
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := &Writer{
		nc:        js.Conn(),
		log:       log.With("component", "deliverylog"),
		ch:        make(chan Record, o.Buffer),
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
		warnEvery: o.WarnEvery,
		subjects:  map[subjectKey]string{},
		safeURLs:  map[string]string{},
	}
	go w.loop()
	return w
}

// Write queues r for publishing and returns at once. When the buffer is
// full, or the Writer is closed, r is dropped and counted.
func (w *Writer) Write(r Record) {
	if w.closed.Load() {
		w.drop(1)
		return
	}
	select {
	case w.ch <- r:
	default:
		w.drop(1)
	}
}

// Dropped returns how many records were dropped because the buffer was
// full or the Writer closed.
func (w *Writer) Dropped() uint64 { return w.dropped.Load() }

// Failed returns how many records the NATS connection refused to send.
// Records are core publishes with no ack (logging is best effort and never
// delays an ack, SPEC §2): one the stream then refuses (storage full) is
// not counted here.
func (w *Writer) Failed() uint64 { return w.failed.Load() }

// Close stops accepting records, publishes what is queued and flushes the
// connection (the server has read them; there are no acks to wait for),
// all bounded by ctx. What is still queued when ctx ends is
// dropped and counted. Close may be called more than once.
func (w *Writer) Close(ctx context.Context) error {
	w.closeOnce.Do(func() {
		w.stopCtx = ctx
		w.closed.Store(true)
		close(w.stop)
	})
	select {
	case <-w.done:
	case <-ctx.Done():
		return fmt.Errorf("delivery log: flush: %w", ctx.Err())
	}
	if err := w.nc.FlushWithContext(ctx); err != nil {
		return fmt.Errorf("delivery log: flush: %w", err)
	}
	return nil
}

func (w *Writer) loop() {
	defer close(w.done)
	for {
		select {
		case r := <-w.ch:
			w.publish(r)
		case <-w.stop:
			for {
				if w.stopCtx.Err() != nil {
					w.drop(uint64(len(w.ch)))
					return
				}
				select {
				case r := <-w.ch:
					w.publish(r)
				default:
					return
				}
			}
		}
	}
}

func (w *Writer) publish(r Record) {
	r = clean(r, w.safeURL)
	w.buf = appendJSON(w.buf[:0], &r)
	// A core publish, which the stream captures: the log is best effort
	// (SPEC §2), and not waiting for an ack per record halves the messages
	// the log costs per delivery.
	if err := w.nc.Publish(w.subject(&r), w.buf); err != nil {
		w.fail(err)
	}
}

// safeURL is plugins.SafeURL of raw, parsed once per URL.
func (w *Writer) safeURL(raw string) string {
	if s, ok := w.safeURLs[raw]; ok {
		return s
	}
	if len(w.safeURLs) >= maxCached {
		clear(w.safeURLs)
	}
	s := plugins.SafeURL(raw)
	w.safeURLs[raw] = s
	return s
}

// subject is subjectOf(r), made once per account, project and outcome.
func (w *Writer) subject(r *Record) string {
	k := subjectKey{r.AccountID, r.ProjectID, r.Outcome}
	if s, ok := w.subjects[k]; ok {
		return s
	}
	if len(w.subjects) >= maxCached {
		clear(w.subjects)
	}
	s := subjectOf(*r)
	w.subjects[k] = s
	return s
}

func (w *Writer) drop(n uint64) {
	if n == 0 {
		return
	}
	total := w.dropped.Add(n)
	if w.due(&w.lastDrop) {
		w.log.Warn("delivery log buffer full; records dropped", "dropped_total", total)
	}
}

func (w *Writer) fail(err error) {
	total := w.failed.Add(1)
	if w.due(&w.lastFail) {
		w.log.Warn("delivery log publish failed; records lost", "failed_total", total, "err", err)
	}
}

// due reports whether a warning may be logged now, at most one per
// warnEvery for each kind.
func (w *Writer) due(last *atomic.Int64) bool {
	now := time.Now().UnixNano()
	prev := last.Load()
	if prev != 0 && now-prev < int64(w.warnEvery) {
		return false
	}
	return last.CompareAndSwap(prev, now)
}

// subjectOf returns the log subject of a cleaned record.
func subjectOf(r Record) string {
	return subjects.Log(idToken(r.AccountID), idToken(r.ProjectID), outcomeToken(r.Outcome))
}

func idToken(id string) string {
	if subjects.ValidateID(id) != nil {
		return subjects.LogUnparsed
	}
	return id
}

func outcomeToken(o string) string {
	if !knownOutcome(o) {
		return subjects.LogUnparsed
	}
	return o
}

// clean enforces the record's promises whatever the caller passed: a URL
// without userinfo or query (safeURL, plugins.SafeURL or a cache of it),
// capped valid UTF-8 text, UTC times.
func clean(r Record, safeURL func(string) string) Record {
	if r.URL != "" {
		r.URL = clip(safeURL(r.URL), maxURL)
	}
	r.DeliveryID = clip(r.DeliveryID, maxToken)
	r.EventType = clip(r.EventType, maxToken)
	r.AccountID = clip(r.AccountID, maxToken)
	r.ProjectID = clip(r.ProjectID, maxToken)
	r.Outcome = clip(r.Outcome, maxToken)
	r.Error = clip(r.Error, MaxError)
	r.ResponseExcerpt = clip(r.ResponseExcerpt, MaxExcerpt)
	if r.At.IsZero() {
		r.At = time.Now()
	}
	r.At = r.At.UTC()
	if !r.StartedAt.IsZero() {
		r.StartedAt = r.StartedAt.UTC()
	}
	return r
}

// clip returns s as valid UTF-8 of at most n bytes, cut on a rune boundary.
func clip(s string, n int) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// Outcomes lists every outcome a record may carry, in the order of the
// GraphQL DeliveryStatus enum.
var Outcomes = []string{
	OutcomeDelivered, OutcomeRetrying, OutcomeFailed, OutcomeSkipped,
	OutcomeNoDestination, OutcomeInvalid, OutcomeDestinationNotAllowed,
}

func knownOutcome(o string) bool {
	for _, k := range Outcomes {
		if o == k {
			return true
		}
	}
	return false
}

// ParseOutcome accepts an outcome as a record spells it (failed), as the
// GraphQL enum does (FAILED), or with dashes (no-destination), and returns
// the record's spelling.
func ParseOutcome(s string) (string, error) {
	o := strings.ReplaceAll(strings.ToLower(strings.TrimSpace(s)), "-", "_")
	if !knownOutcome(o) {
		return "", fmt.Errorf("%w: status %q is not one of %s", ErrBadFilter, s, strings.Join(Outcomes, ", "))
	}
	return o, nil
}

// Append stores r in the delivery log and waits for the stream's ack, for a
// caller that needs the record's place (the admin API's test callbacks
// return it as the Delivery's ID). It returns the record's sequence in
// CALLBACKS_LOG. Dispatchers use a Writer, which never waits.
func Append(ctx context.Context, js jetstream.JetStream, r Record) (uint64, error) {
	r = clean(r, plugins.SafeURL)
	ack, err := js.Publish(ctx, subjectOf(r), appendJSON(nil, &r))
	if err != nil {
		return 0, fmt.Errorf("delivery log: append: %w", err)
	}
	return ack.Sequence, nil
}
