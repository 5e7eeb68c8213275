package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/callbackd/callbackd/deliverylog"
	"github.com/callbackd/callbackd/plugins"
)

// attempt makes one delivery attempt for j, within the per-host and global
// caps, and settles the message by the result. Work over its host's cap is
// parked in CALLBACKS_RETRY instead of waiting here.
func (d *Dispatcher) attempt(ctx context.Context, j *job, release func()) {
	if j.pipeline == nil && !j.notify && !j.encoded {
		// The encoder is a plugin process of its own (see New): waited
		// for holding no worker and no slot of the host.
		release()
		out, err := d.o.Encoders[j.key.Type].Encode(ctx, d.event(j))
		if !d.encoded(ctx, j, "encode", out, err) {
			return
		}
	}
	u := d.urls.get(j.dest.URL)
	hs := d.hosts.get(u.host)
	if !hs.acquire(release, d.hostWait, d.fastQueue, d.stopping) {
		if d.isStopping() {
			// Shutting down: an attempt not started is not started now.
			// The message is handed back, for another instance or the
			// next start, and shutdown waits only for attempts in flight.
			d.nak(j.msg, handBackDelay)
			return
		}
		d.park(ctx, j, ParkedOverCap)
		return
	}
	// Slow hosts share half of delivery.max_in_flight: however many are
	// slow at once, they never hold every attempt slot, and a healthy
	// host's attempts do not wait behind theirs (SPEC §3). Slow by its
	// average: an atomic load, no lock on every attempt.
	slow := hs.slowOnAverage()
	if slow {
		select {
		case d.slowInFlight <- struct{}{}:
		default:
			hs.release()
			d.park(ctx, j, ParkedOverCap)
			return
		}
	}
	if !d.acquireInFlight(j) {
		// Shutting down while every attempt slot was taken: as above.
		hs.release()
		if slow {
			<-d.slowInFlight
		}
		d.nak(j.msg, handBackDelay)
		return
	}
	// Queued for the host's slot, or for an attempt slot, long enough that
	// the attempt could end after the ack wait, the message would be
	// handed out again meanwhile and the event could be delivered twice.
	d.keepAlive(j, attemptHold(d.ackWait, d.o.DeliveryTimeout))
	release() // the attempt holds no worker

	d.o.Observer.InFlight(1)
	start := time.Now()
	var stopKeeping func()
	if d.keepDuring {
		stopKeeping = d.keepAliveDuring(j)
	}
	res, ok := d.deliver(ctx, j)
	if stopKeeping != nil {
		stopKeeping()
	}
	res = checkResult(res, j.dest.URL)
	if ok {
		// The host's pace is that of the attempts it answered (or let
		// time out): not a skip, a refusal before the request, or a
		// transport that found the host busy. Wall time, so that a
		// transport that reports no duration is still measured.
		hs.observe(time.Since(start))
	}
	// Counted out before the slot is given back, so that the gauge never
	// shows the next attempt and this one at once.
	d.o.Observer.InFlight(-1)
	// The host has answered: its slot goes to the next attempt now, not
	// after the ack and the log record (at the default cap of 8 per host,
	// that wait was a share of every slot's cycle).
	hs.release()
	<-d.inFlight
	if slow {
		<-d.slowInFlight
	}
	if !ok {
		return
	}
	d.o.Observer.Attempt(j.key.Type, string(res.Outcome), res.Duration)
	st := settlement{
		res: res, notification: j.notification, dest: j.dest,
		rec: deliverylog.Record{
			URL: u.safe, Attempt: j.attempt, StatusCode: res.StatusCode,
			Error: res.Error, DurationMs: res.Duration.Milliseconds(), ResponseExcerpt: res.ResponseExcerpt,
			StartedAt: start.UTC(),
		},
	}
	if res.Outcome == plugins.OutcomeRetryable && j.attempt < d.o.MaxAttempts {
		st.retryAt = time.Now().Add(d.retryWait(j.attempt, res.RetryAfter))
	}
	d.settle(ctx, j, st)
}

// settlement is what an attempt's end asks for once the endpoint has
// answered: the result, and when the next attempt is due (zero when there
// is none). Kept, by message, while the retry or the dead letter it needs
// cannot be published, so that the message's next delivery settles it
// without making the attempt again (settlements).
type settlement struct {
	res          plugins.Result
	rec          deliverylog.Record
	notification plugins.Notification
	dest         plugins.Destination
	retryAt      time.Time
	// notified: the failure's notifications were queued (failed).
	notified bool
}

// settle ends an attempt as st says: acked when delivered, a retry
// scheduled, or failed for good (failure plugin, dead letter). When what it
// publishes is not acknowledged the message is handed back, and st kept
// for its next delivery.
func (d *Dispatcher) settle(ctx context.Context, j *job, st settlement) {
	res, rec := st.res, st.rec
	// Built only for the lines that are logged: a success is a debug line
	// (the delivery log has every attempt), so the hot path skips it.
	attrs := func() []any {
		return d.attrs(j,
			slog.String("url", rec.URL),
			slog.Int("attempt", j.attempt),
			slog.Int("status", res.StatusCode),
			slog.Duration("duration", res.Duration))
	}

	switch {
	case res.Outcome == plugins.OutcomeDelivered:
		rec.Outcome = deliverylog.OutcomeDelivered
		if d.log.Enabled(ctx, slog.LevelDebug) {
			d.log.Debug("delivered", attrs()...)
		}
		d.outcome(j, rec)
		d.ack(j)
		return
	case !st.retryAt.IsZero():
		wait := time.Until(st.retryAt)
		// The attempt may have taken most of the ack wait: the publish
		// must not end after it, or the message is handed out again and
		// the endpoint gets the attempt twice.
		d.keepAlive(j, d.ackWait/2)
		if !d.scheduleRetry(ctx, j, wait) {
			d.settlements.put(messageRef(j), st)
			return
		}
		rec.Outcome = deliverylog.OutcomeRetrying
		// One line per failed attempt would flood the log under an
		// endpoint that is down (the delivery log has every attempt): the
		// event's end is what is logged above debug.
		if d.log.Enabled(ctx, slog.LevelDebug) {
			d.log.Debug("attempt failed; retry scheduled", append(attrs(), slog.String("err", clipText(res.Error)), slog.Duration("retry_in", max(wait, 0)))...)
		}
		d.outcome(j, rec)
		d.ack(j)
	default:
		reason := ReasonDeliveryFailed
		rec.Outcome = deliverylog.OutcomeFailed
		if res.Outcome == plugins.OutcomeNotAllowed {
			reason, rec.Outcome = ReasonDestinationNotAllowed, deliverylog.OutcomeDestinationNotAllowed
		}
		// Logged and counted once it has ended: when its dead letter
		// cannot be written it is handed back and ends later.
		settled, notified := d.failed(ctx, j, reason, res, st.notified)
		if !settled {
			// The callback-failed notices, once queued, are not made
			// again: after the de-duplication window they would reach
			// the SSO client once more per hand-back.
			st.notified = notified
			d.settlements.put(messageRef(j), st)
			return
		}
		d.log.Warn("delivery failed for good", append(attrs(), slog.String("outcome", rec.Outcome), slog.String("err", clipText(res.Error)))...)
		d.outcome(j, rec)
	}
	if !d.settlements.empty() {
		d.settlements.remove(messageRef(j))
	}
}

// resume settles a message whose attempt was made on an earlier delivery
// (settle). It reports false when there is no such settlement for j.
func (d *Dispatcher) resume(ctx context.Context, j *job) bool {
	if d.settlements.empty() {
		return false // the usual case: no key made, no lock taken
	}
	st, ok := d.settlements.get(messageRef(j))
	if !ok {
		return false
	}
	j.notification, j.dest = st.notification, st.dest
	d.log.Debug("attempt already made; settling it", d.attrs(j, slog.Int("attempt", j.attempt))...)
	d.settle(ctx, j, st)
	return true
}

// settlements keeps, by message (messageRef), the settlement of an attempt
// whose retry or dead letter could not be published (NATS away, storage
// full): the message is handed back, and its next delivery to this
// process publishes what was asked instead of posting to the endpoint
// again — a hand-back is no attempt (SPEC §3), and an endpoint that
// answered must not get the event once more per hand-back. What another
// instance handed back is not known here: there the attempt is made again.
// At most maxSettlements are kept, the oldest forgotten first (its message
// is then attempted again, as without the table).
type settlements struct {
	mu    sync.Mutex
	m     map[string]settlement
	order []string // keys, oldest first; may hold keys already removed
	// n is len(m), read without the lock: every delivery asks, and the
	// table is almost always empty.
	n atomic.Int64
}

// empty reports whether no settlement is kept: then no message's key
// needs making.
func (s *settlements) empty() bool { return s.n.Load() == 0 }

const maxSettlements = 16384

func (s *settlements) put(ref string, st settlement) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[string]settlement)
	}
	if _, ok := s.m[ref]; !ok {
		s.order = append(s.order, ref)
	}
	s.m[ref] = st
	for len(s.m) > maxSettlements && len(s.order) > 0 {
		delete(s.m, s.order[0])
		s.order = s.order[1:]
	}
	s.n.Store(int64(len(s.m)))
	if len(s.order) > 2*maxSettlements {
		// Compact the keys removed meanwhile.
		live := make([]string, 0, len(s.m))
		for _, k := range s.order {
			if _, ok := s.m[k]; ok {
				live = append(live, k)
			}
		}
		s.order = live
	}
}

func (s *settlements) get(ref string) (settlement, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.m[ref]
	return st, ok
}

// remove forgets ref.
func (s *settlements) remove(ref string) {
	s.mu.Lock()
	if len(s.m) > 0 {
		delete(s.m, ref)
		if len(s.m) == 0 {
			s.order = s.order[:0]
		}
		s.n.Store(int64(len(s.m)))
	}
	s.mu.Unlock()
}

// messageRef names one stored message: its stream, its sequence, and when
// it was stored. The time tells a message from another that a stream made
// again gave the same sequence (sourceRef alone does not).
func messageRef(j *job) string {
	return sourceRef(j) + "@" + strconv.FormatInt(j.md.Timestamp.UnixNano(), 10)
}

// deliver makes the attempt: for an event, encode and deliver in one plugin
// crossing (two when the encoder and transport live apart); for a
// notification, deliver. It reports false when the message has been dealt
// with otherwise (invalid, skipped, handed back).
//
// No deadline is added here: transports bound their own calls (the
// http-form transport by delivery.timeout, a plugin's client by its call
// timeout), and a deadline per attempt on top cost a timer and a context
// chain per delivery.
func (d *Dispatcher) deliver(ctx context.Context, j *job) (plugins.Result, bool) {
	if j.pipeline == nil {
		res, err := d.o.Transport.Deliver(ctx, plugins.Delivery{
			DeliveryID: j.deliveryID, Destination: j.dest, Notification: j.notification,
		})
		if err != nil {
			d.deliverError(ctx, j, err)
			return res, false
		}
		return res, true
	}
	out, err := j.pipeline.EncodeDeliver(ctx, d.event(j), &j.dest, d.o.CallTimeout)
	// An error with nothing encoded may be the encoder's or the
	// transport's (one crossing, both steps): "encode+deliver" says so.
	if !d.encoded(ctx, j, "encode+deliver", out.Encoded, encodeErr(out, err)) {
		return out.Result, false
	}
	if err != nil {
		d.deliverError(ctx, j, err)
		return out.Result, false
	}
	if !out.Delivered {
		d.infraError(ctx, j, "deliver", errors.New("encoded but not delivered"))
		return out.Result, false
	}
	return out.Result, true
}

// checkResult keeps a transport's result within the contract (SPEC §5): an
// outcome it does not know, or "delivered" with a status that is no
// success, is a final failure whose error names the transport's mistake; a
// status or duration out of range is dropped; URLs in the error, the
// destination's first, lose their userinfo and query (a third-party
// transport's error may be net/http's, which quotes the URL whole).
func checkResult(r plugins.Result, destURL string) plugins.Result {
	r.Error = plugins.RedactDestination(r.Error, destURL)
	if r.StatusCode < 0 || r.StatusCode > 999 {
		r.StatusCode = 0
	}
	switch r.Outcome {
	case plugins.OutcomeDelivered:
		if r.StatusCode != 0 && (r.StatusCode < 200 || r.StatusCode > 204) { // SPEC §3: success is exactly 200–204
			msg := fmt.Sprintf("the transport reported delivered with HTTP status %d, which is no success", r.StatusCode)
			if r.Error != "" {
				msg += ": " + r.Error
			}
			r.Outcome, r.Error = plugins.OutcomeFinal, msg
		}
	case plugins.OutcomeRetryable, plugins.OutcomeFinal, plugins.OutcomeNotAllowed:
	default:
		msg := "the transport returned an unknown outcome " + strconv.Quote(clipText(string(r.Outcome)))
		if r.Error != "" {
			msg += ": " + r.Error
		}
		r.Outcome, r.Error = plugins.OutcomeFinal, msg
	}
	r.Duration = max(r.Duration, 0)
	return r
}

// attemptSlack is what an attempt may take beyond delivery.timeout: a
// transport's wait for one of its host's slots (the built-in http-form's
// HostSlotWait, 2 s) and the round trips around it.
const attemptSlack = 5 * time.Second

// acquireInFlight takes one of delivery.max_in_flight's attempt slots. When
// all are taken it waits (the worker with it: over the global cap the
// dispatcher pulls no more), telling the server every half ack wait that
// the message is still being worked on: a wait for slots held by slow
// endpoints can outlast the ack wait, and the message would then be
// handed out again and delivered twice. It returns false, with no slot,
// when the dispatcher is stopping.
func (d *Dispatcher) acquireInFlight(j *job) bool {
	select {
	case d.inFlight <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(max(d.ackWait/2-time.Since(j.started), 0))
	defer t.Stop()
	for {
		select {
		case d.inFlight <- struct{}{}:
			return true
		case <-d.stopping:
			return false
		case <-t.C:
			if err := j.msg.InProgress(); err == nil {
				j.started = time.Now()
			}
			t.Reset(d.ackWait / 2)
		}
	}
}

// keepAliveDuring tells the server every half ack wait that j's message is
// still being worked on, until the returned stop is called (and has
// waited for the last InProgress). Only for consumers whose ack wait is
// shorter than an attempt may take (Dispatcher.keepDuring): a goroutine
// and a ticker per attempt are not for the usual case.
func (d *Dispatcher) keepAliveDuring(j *job) (stop func()) {
	done, exited := make(chan struct{}), make(chan struct{})
	var last time.Time // the last InProgress the server took; read after exited
	go func() {
		defer close(exited)
		t := time.NewTicker(max(d.ackWait/2, 10*time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if err := j.msg.InProgress(); err == nil {
					last = time.Now()
				}
			}
		}
	}()
	return func() {
		close(done)
		<-exited
		if !last.IsZero() {
			j.started = last
		}
	}
}

// attemptHold is how long a message may have been held before an attempt
// starts and still be sure to end within its ack wait: with the default
// delivery.timeout of 30 s (ack wait 40 s), 5 s of waiting for a host's slot.
func attemptHold(ackWait, deliveryTimeout time.Duration) time.Duration {
	return ackWait - deliveryTimeout - attemptSlack
}

// deliverError hands back an attempt that the transport did not make or
// finish: work the transport found over its host's cap is parked like any
// over-cap work; anything else is an infrastructure error.
func (d *Dispatcher) deliverError(ctx context.Context, j *job, err error) {
	if errors.Is(err, plugins.ErrHostBusy) {
		d.park(ctx, j, ParkedHostBusy)
		return
	}
	d.infraError(ctx, j, "deliver", err)
}

// encodeErr is the encoding's share of an EncodeDeliver error: the error
// itself when nothing was encoded, else nil (a delivery error).
func encodeErr(out plugins.EncodeDelivered, err error) error {
	if err != nil && !out.Delivered && len(out.Encoded.Notification.Fields) == 0 && out.Encoded.SkipReason == "" {
		return err
	}
	return nil
}

// retryWait is the wait before attempt n+1: the backoff entry for n (the
// last one repeating), or the endpoint's Retry-After when longer, capped at
// the largest backoff (SPEC §3).
func (d *Dispatcher) retryWait(n int, retryAfter time.Duration) time.Duration {
	b := d.o.Backoff
	wait := b[min(n-1, len(b)-1)]
	if retryAfter > wait {
		wait = min(retryAfter, maxDuration(b))
	}
	return wait
}

func maxDuration(ds []time.Duration) time.Duration {
	var m time.Duration
	for _, d := range ds {
		m = max(m, d)
	}
	return m
}
