package dispatcher

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"

	"github.com/callbackd/callbackd/subjects"
)

// maxErrorHeader caps Callbackd-Error.
const maxErrorHeader = 512

// deadLetter publishes the event to CALLBACKS_DEAD with the headers of SPEC
// §2 and waits for the stream's ack. Its Nats-Msg-Id is derived from the
// source message, so a crash between publish and ack gives a de-duplicated
// copy, never a loss. It reports whether the publish was acknowledged; when
// it was not, the event is handed back to try again.
func (d *Dispatcher) deadLetter(ctx context.Context, j *job, reason string, status, attempts int, errText string) bool {
	subj := subjects.DeadInvalid
	if j.parsed {
		subj = subjects.DeadFor(j.key)
	}
	m := nats.NewMsg(subj)
	m.Data = j.msg.Data()
	// One letter per chain and attempt, whichever branch writes it.
	m.Header.Set(subjects.HeaderMsgID, "dead:"+j.originRef()+":"+strconv.Itoa(j.attempt))
	m.Header.Set(subjects.HeaderReason, reason)
	if status > 0 {
		m.Header.Set(subjects.HeaderStatus, strconv.Itoa(status))
	} else {
		m.Header.Set(subjects.HeaderStatus, "")
	}
	m.Header.Set(subjects.HeaderAttempts, strconv.Itoa(attempts))
	m.Header.Set(subjects.HeaderError, headerSafe(errText))
	m.Header.Set(subjects.HeaderSubject, j.subject)
	m.Header.Set(subjects.HeaderDeliveryID, j.deliveryID)

	pctx, cancel := context.WithTimeout(ctx, d.o.CallTimeout)
	defer cancel()
	if _, err := d.js.PublishMsg(pctx, m); err != nil {
		d.noteWriteErr(err)
		delay := infraDelay(j.md.NumDelivered)
		// Nothing is lost, and a NATS leader moving fails hundreds at
		// once: bounded like the other hand-backs.
		d.deadLetterLog.log(ctx, d.log, slog.LevelWarn, "dead-letter publish failed; event handed back", d.attrs(j, slog.String("reason", reason), slog.String("err", err.Error()), slog.Duration("retry_in", delay))...)
		d.nak(j.msg, delay)
		return false
	}
	d.o.Observer.DeadLettered(reason)
	// The line that says why (invalid event, failed for good, giving up)
	// is logged at warn by the caller.
	d.log.Debug("dead-lettered", d.attrs(j, slog.String("reason", reason), slog.String("err", clipText(errText)))...)
	return true
}

// deadLetterAndAck dead-letters j and then acks it (or terms it, for the
// max_deliveries cap). It reports whether j was settled.
func (d *Dispatcher) deadLetterAndAck(ctx context.Context, j *job, reason string, status, attempts int, errText string, term bool) bool {
	if !d.deadLetter(ctx, j, reason, status, attempts, errText) {
		return false
	}
	if term {
		if err := j.msg.Term(); err != nil {
			d.log.Warn("term failed", d.attrs(j, slog.String("err", err.Error()))...)
		}
		return true
	}
	d.ack(j)
	return true
}

// headerSafe makes text fit a header value: one line, no control
// characters, at most maxErrorHeader bytes.
func headerSafe(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if len(s) > maxErrorHeader {
		s = strings.ToValidUTF8(s[:maxErrorHeader], "")
	}
	return s
}

// reasons remembers, by message (sourceRef), why the dispatcher gave up on
// it while its dead letter could not be written, so that the letter says
// so when it can be (the hand-back carries no text). At most maxReasons
// are kept: beyond that a letter says what its last delivery saw.
type reasons struct {
	mu sync.Mutex
	m  map[string]string
}

const maxReasons = 4096

func (r *reasons) get(ref string) (string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	why, ok := r.m[ref]
	return why, ok
}

func (r *reasons) put(ref, why string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[string]string{}
	}
	if _, ok := r.m[ref]; ok || len(r.m) < maxReasons {
		r.m[ref] = why
	}
}

func (r *reasons) remove(ref string) {
	r.mu.Lock()
	delete(r.m, ref)
	r.mu.Unlock()
}
