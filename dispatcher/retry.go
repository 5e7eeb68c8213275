package dispatcher

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/callbackd/callbackd/subjects"
)

// headerParked counts how often a delivery was parked over its host's cap,
// so that parking backs off.
const headerParked = "Callbackd-Parked"

// maxParkDelay caps the wait of parked work, so that a host that recovers
// gets its parked backlog back soon.
const maxParkDelay = time.Second

// scheduleRetry publishes attempt j.attempt+1 to CALLBACKS_RETRY, due after
// wait, and reports whether the stream acknowledged it. The caller acks the
// original only then (publish, then ack). On failure j is handed back.
func (d *Dispatcher) scheduleRetry(ctx context.Context, j *job, wait time.Duration) bool {
	next := j.attempt + 1
	// SPEC §3 names <delivery id>:<n>; the source sequence is added so that
	// the retries of a replayed event are not swallowed by the de-duplication
	// window as repeats of the first run's.
	msgID := j.deliveryID + ":" + strconv.Itoa(next) + ":" + sourceRef(j)
	return d.publishRetry(ctx, j, next, 0, time.Now().Add(wait), msgID, "schedule retry")
}

// park puts j, over its host's cap, into CALLBACKS_RETRY with its attempt
// number unchanged and a short, growing wait, then acks the original: the
// work waits without holding a worker or the main consumer's pending limit.
func (d *Dispatcher) park(ctx context.Context, j *job) {
	// Jittered, so parked work does not come due in lock-step.
	base := min(250*time.Millisecond<<min(j.parked, 5), maxParkDelay)
	delay := base/2 + rand.N(base)
	if d.publishRetry(ctx, j, j.attempt, j.parked+1, time.Now().Add(delay), "park:"+sourceRef(j), "park") {
		d.log.Debug("parked over the host's concurrency cap", d.attrs(j, slog.Int("attempt", j.attempt), slog.Duration("wait", delay))...)
		d.ack(j)
	}
}

func (d *Dispatcher) publishRetry(ctx context.Context, j *job, attempt, parked int, notBefore time.Time, msgID, op string) bool {
	subj, err := subjects.Retry(j.subject)
	if err != nil { // cannot happen for a parsed subject
		d.infraError(j, op, err)
		return false
	}
	m := nats.NewMsg(subj)
	m.Data = j.msg.Data()
	m.Header.Set(subjects.HeaderMsgID, msgID)
	m.Header.Set(subjects.HeaderAttempt, strconv.Itoa(attempt))
	m.Header.Set(subjects.HeaderDeliveryID, j.deliveryID)
	m.Header.Set(subjects.HeaderNotBefore, notBefore.UTC().Format(time.RFC3339Nano))
	m.Header.Set(subjects.HeaderSubject, j.subject)
	if parked > 0 {
		m.Header.Set(headerParked, strconv.Itoa(parked))
	}
	pctx, cancel := context.WithTimeout(ctx, d.o.CallTimeout)
	defer cancel()
	if _, err := d.js.PublishMsg(pctx, m); err != nil {
		d.infraError(j, op, err)
		return false
	}
	return true
}

// sourceRef names the message being handled: its stream and sequence. It is
// the same on every redelivery of that message and different for any other.
func sourceRef(j *job) string {
	return j.md.Stream + "-" + strconv.FormatUint(j.md.Sequence.Stream, 10)
}
