package dispatcher

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/callbackd/callbackd/subjects"
)

// headerParked counts how often a delivery was parked over its host's cap,
// so that parking backs off.
const headerParked = "Callbackd-Parked"

// headerOrigin names the message a chain of retries and parks started from
// (its stream and sequence, sourceRef). The Nats-Msg-Ids of what the chain
// publishes are made from it, so that two branches of one chain — a parked
// copy whose source's ack was lost with a NATS leader, and that source
// redelivered — publish the same retry, park, dead letter and notice, which
// the streams' de-duplication window keeps once.
const headerOrigin = "Callbackd-Origin"

// Parked work waits parkDelay, doubling each time the same work is parked
// again, up to maxParkDelay (jittered ±50 %): a host that was busy for a
// moment gets its work back within a second, while the backlog of one that
// stays stalled comes around every half minute rather than every second.
// Capped at 1 s, 5,000 events for a hanging endpoint were re-parked at
// 5,000 a second for as long as it hung (measured: 40,000 parks in 8 s;
// with the cap at 30 s, 13,500 and falling), and a backlog ten times that
// would have taken the whole machine from the other hosts.
const (
	parkDelay    = 250 * time.Millisecond
	maxParkDelay = 30 * time.Second
)

// scheduleRetry publishes attempt j.attempt+1 to CALLBACKS_RETRY, due after
// wait, and reports whether the stream acknowledged it. The caller acks the
// original only then (publish, then ack). On failure j is handed back.
func (d *Dispatcher) scheduleRetry(ctx context.Context, j *job, wait time.Duration) bool {
	next := j.attempt + 1
	// SPEC §3 names <delivery id>:<n>; the source sequence is added so that
	// the retries of a replayed event are not swallowed by the de-duplication
	// window as repeats of the first run's.
	msgID := j.deliveryID + ":" + strconv.Itoa(next) + ":" + j.originRef()
	return d.publishRetry(ctx, j, next, 0, time.Now().Add(wait), msgID, "schedule retry")
}

// park puts j, over its host's cap, into CALLBACKS_RETRY with its attempt
// number unchanged and a short, growing wait, then acks the original: the
// work waits without holding a worker or the main consumer's pending limit.
func (d *Dispatcher) park(ctx context.Context, j *job, reason string) {
	// Jittered, so parked work does not come due in lock-step.
	base := min(parkDelay<<min(j.parked, 7), maxParkDelay)
	delay := base/2 + rand.N(base)
	parked := j.parked + 1
	msgID := "park:" + j.originRef() + ":" + strconv.Itoa(j.attempt) + ":" + strconv.Itoa(parked)
	if d.publishRetry(ctx, j, j.attempt, parked, time.Now().Add(delay), msgID, "park") {
		d.log.Debug("parked over the host's concurrency cap", d.attrs(j, slog.String("reason", reason), slog.Int("attempt", j.attempt), slog.Duration("wait", delay))...)
		if parked == parkWarnAt || parked > parkWarnAt && parked%parkWarnEvery == 0 {
			d.parkLog.log(ctx, d.log, slog.LevelWarn, "event still waiting for its host: parked again and again without an attempt", d.attrs(j,
				slog.String("reason", reason), slog.Int("parked", parked), slog.Int("attempt", j.attempt))...)
		}
		d.o.Observer.Parked(reason)
		d.ack(j)
	}
}

// Parking costs no attempt (SPEC §3), so work for a host that stays busy
// waits for as long as it stays so, up to retention.events. An event
// parked parkWarnAt times in a row (some minutes at maxParkDelay) is
// warned about, and again every parkWarnEvery parks: a host that never
// frees a slot, or a transport that reports every host busy, is seen in
// the log and not only in callbackd_parked_total.
const (
	parkWarnAt    = 20
	parkWarnEvery = 100
)

func (d *Dispatcher) publishRetry(ctx context.Context, j *job, attempt, parked int, notBefore time.Time, msgID, op string) bool {
	subj, err := subjects.Retry(j.subject)
	if err != nil { // cannot happen for a parsed subject
		d.infraError(ctx, j, op, err)
		return false
	}
	m := nats.NewMsg(subj)
	m.Data = j.msg.Data()
	m.Header.Set(subjects.HeaderMsgID, msgID)
	m.Header.Set(subjects.HeaderAttempt, strconv.Itoa(attempt))
	m.Header.Set(subjects.HeaderDeliveryID, j.deliveryID)
	m.Header.Set(subjects.HeaderNotBefore, notBefore.UTC().Format(time.RFC3339Nano))
	m.Header.Set(subjects.HeaderSubject, j.subject)
	m.Header.Set(headerOrigin, j.originRef())
	if parked > 0 {
		m.Header.Set(headerParked, strconv.Itoa(parked))
	}
	pctx, cancel := context.WithTimeout(ctx, d.o.CallTimeout)
	defer cancel()
	if _, err := d.js.PublishMsg(pctx, m); err != nil {
		d.noteWriteErr(err)
		d.infraError(ctx, j, op, err)
		return false
	}
	return true
}

// sourceRef names the message being handled: its stream and sequence. It is
// the same on every redelivery of that message and different for any other.
func sourceRef(j *job) string {
	return j.md.Stream + "-" + strconv.FormatUint(j.md.Sequence.Stream, 10)
}

// originRef is the chain j belongs to (headerOrigin): the header a retry or
// parked message carries, else j's own message. A header that is not a
// sourceRef (a message of an older callbackd, or not callbackd's) is not
// taken. Made when first asked: a delivery that succeeds never needs it.
func (j *job) originRef() string {
	if j.origin != "" {
		return j.origin
	}
	j.origin = sourceRef(j)
	if j.retry {
		if o := j.msg.Headers().Get(headerOrigin); validOrigin(o) {
			j.origin = o
		}
	}
	return j.origin
}

// validOrigin accepts what sourceRef makes: a stream name, "-", a sequence.
func validOrigin(o string) bool {
	i := strings.LastIndexByte(o, '-')
	if i < 1 || len(o) > 96 || i == len(o)-1 {
		return false
	}
	if _, err := strconv.ParseUint(o[i+1:], 10, 64); err != nil {
		return false
	}
	for _, c := range []byte(o[:i]) {
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
