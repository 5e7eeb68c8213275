package dispatcher

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callbackd/callbackd/plugins"
	"github.com/callbackd/callbackd/subjects"
)

// Reasons written to Callbackd-Reason (SPEC §3).
const (
	ReasonInvalidEvent          = "invalid_event"
	ReasonDeliveryFailed        = "delivery_failed"
	ReasonDestinationNotAllowed = "destination_not_allowed"
)

// Outcomes recorded per event or attempt.
const (
	outcomeDelivered     = "delivered"
	outcomeSkipped       = "skipped"
	outcomeNoDestination = "no_destination"
	outcomeInvalid       = "invalid"
	outcomeFailed        = "failed"
	outcomeNotAllowed    = "destination_not_allowed"
)

const (
	// handBackDelay is the NAK delay of work handed back at shutdown.
	handBackDelay = 100 * time.Millisecond
	// maxInfraDelay caps the growing NAK delay of infrastructure errors.
	maxInfraDelay = 30 * time.Second
)

// job is one message being handled.
type job struct {
	msg        jetstream.Msg
	md         *jetstream.MsgMetadata
	subject    string
	key        subjects.EventKey
	parsed     bool // key is valid
	deliveryID string
}

func (d *Dispatcher) handle(ctx context.Context, m jetstream.Msg) {
	md, err := m.Metadata()
	if err != nil {
		// Not a JetStream message: nothing to ack or redeliver.
		d.log.Error("dispatcher: message without metadata", "subject", m.Subject(), "err", err)
		return
	}
	j := &job{msg: m, md: md, subject: m.Subject()}
	j.deliveryID = d.deliveryID(m, md)

	if md.NumDelivered > uint64(d.o.MaxDeliveries) {
		d.finalFailure(ctx, j, ReasonDeliveryFailed, 0, 0,
			fmt.Sprintf("handed back %d times by infrastructure errors (dispatcher.max_deliveries)", md.NumDelivered-1))
		return
	}

	key, err := subjects.ParseEvent(j.subject)
	if err != nil {
		d.invalid(ctx, j, err)
		return
	}
	j.key, j.parsed = key, true

	if size := len(m.Data()); int64(size) > d.o.MaxPayload {
		d.invalid(ctx, j, fmt.Errorf("payload is %d bytes, over dispatcher.max_payload (%d)", size, d.o.MaxPayload))
		return
	}
	enc, ok := d.o.Encoders[key.Type]
	if !ok {
		d.invalid(ctx, j, fmt.Errorf("unknown event type %q: no encoder configured", key.Type))
		return
	}

	ectx, cancel := context.WithTimeout(ctx, d.o.CallTimeout)
	encoded, err := enc.Encode(ectx, plugins.Event{
		Type: key.Type, AccountID: key.AccountID, ProjectID: key.ProjectID,
		DeliveryID: j.deliveryID, Payload: m.Data(),
	})
	cancel()
	switch {
	case errors.Is(err, plugins.ErrInvalidEvent):
		d.invalid(ctx, j, err)
		return
	case err != nil:
		d.infraError(j, "encode", err)
		return
	case encoded.SkipReason != "":
		d.log.Info("event skipped", d.attrs(j, slog.String("outcome", outcomeSkipped), slog.String("reason", encoded.SkipReason))...)
		d.o.Observer.Outcome(key.Type, outcomeSkipped)
		d.ack(j)
		return
	}

	dest, ok := d.view.Destination(key.AccountID, key.ProjectID)
	if !ok {
		d.log.Info("no callback URL for project or account", d.attrs(j, slog.String("outcome", outcomeNoDestination))...)
		d.o.Observer.Outcome(key.Type, outcomeNoDestination)
		d.ack(j)
		return
	}

	tctx, cancel := context.WithTimeout(ctx, d.o.DeliveryTimeout+5*time.Second)
	d.o.Observer.InFlight(1)
	res, err := d.o.Transport.Deliver(tctx, plugins.Delivery{
		DeliveryID: j.deliveryID, Destination: dest, Notification: encoded.Notification,
	})
	d.o.Observer.InFlight(-1)
	cancel()
	if err != nil {
		d.infraError(j, "deliver", err)
		return
	}
	d.o.Observer.Attempt(key.Type, string(res.Outcome), res.Duration)
	attrs := d.attrs(j,
		slog.String("url", plugins.SafeURL(dest.URL)),
		slog.Int("status", res.StatusCode),
		slog.Duration("duration", res.Duration))
	switch res.Outcome {
	case plugins.OutcomeDelivered:
		d.log.Info("delivered", append(attrs, slog.String("outcome", outcomeDelivered))...)
		d.o.Observer.Outcome(key.Type, outcomeDelivered)
		d.ack(j)
	case plugins.OutcomeNotAllowed:
		d.log.Warn("destination not allowed", append(attrs, slog.String("outcome", outcomeNotAllowed), slog.String("err", res.Error))...)
		d.o.Observer.Outcome(key.Type, outcomeNotAllowed)
		d.finalFailure(ctx, j, ReasonDestinationNotAllowed, res.StatusCode, 1, res.Error)
	default:
		// Until retries exist, every failed delivery is final.
		d.log.Warn("delivery failed", append(attrs, slog.String("outcome", outcomeFailed), slog.String("err", res.Error))...)
		d.o.Observer.Outcome(key.Type, outcomeFailed)
		d.finalFailure(ctx, j, ReasonDeliveryFailed, res.StatusCode, 1, res.Error)
	}
}

// deliveryID is the event's Callback-Delivery-Id (SPEC §3): the one it
// carries, else from the publisher's Nats-Msg-Id, else from CALLBACKS's
// creation time and the stream sequence.
func (d *Dispatcher) deliveryID(m jetstream.Msg, md *jetstream.MsgMetadata) string {
	h := m.Headers()
	if id := h.Get(subjects.HeaderDeliveryID); validDeliveryID(id) {
		return id
	}
	if msgID := h.Get(subjects.HeaderMsgID); msgID != "" {
		sum := sha256.Sum256([]byte(msgID))
		return hex.EncodeToString(sum[:8])
	}
	return strconv.FormatInt(d.top.EventsCreated.Unix(), 10) + "-" + strconv.FormatUint(md.Sequence.Stream, 10)
}

// validDeliveryID accepts the IDs callbackd makes: short, [0-9a-z-].
func validDeliveryID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || c == '-') {
			return false
		}
	}
	return true
}

// invalid dead-letters an event that can never be encoded and acks it.
func (d *Dispatcher) invalid(ctx context.Context, j *job, err error) {
	d.log.Warn("invalid event", d.attrs(j, slog.String("outcome", outcomeInvalid), slog.String("err", err.Error()))...)
	d.o.Observer.Outcome(j.key.Type, outcomeInvalid)
	if d.deadLetter(ctx, j, ReasonInvalidEvent, 0, 0, err.Error()) {
		d.ack(j)
	}
}

// finalFailure dead-letters an event that ended without a successful
// delivery and acks it.
func (d *Dispatcher) finalFailure(ctx context.Context, j *job, reason string, status, attempts int, errText string) {
	if d.deadLetter(ctx, j, reason, status, attempts, errText) {
		d.ack(j)
	}
}

// infraError hands the event back with a growing delay: a plugin that is
// down or missed its deadline is not the endpoint's fault and costs no
// attempt (SPEC §3 "Never a plain Nak()").
func (d *Dispatcher) infraError(j *job, op string, err error) {
	delay := infraDelay(j.md.NumDelivered)
	d.log.Warn("infrastructure error; event handed back", d.attrs(j, slog.String("op", op), slog.String("err", err.Error()), slog.Duration("retry_in", delay))...)
	d.nak(j.msg, delay)
}

// infraDelay is 1 s, doubling with each delivery, capped at maxInfraDelay.
func infraDelay(numDelivered uint64) time.Duration {
	if numDelivered < 1 {
		numDelivered = 1
	}
	if numDelivered > 6 {
		return maxInfraDelay
	}
	return min(time.Second<<(numDelivered-1), maxInfraDelay)
}

func (d *Dispatcher) nak(m jetstream.Msg, delay time.Duration) {
	if err := m.NakWithDelay(delay); err != nil {
		d.log.Warn("nak failed; the event comes back after its ack wait", "subject", m.Subject(), "err", err)
	}
}

func (d *Dispatcher) ack(j *job) {
	if err := j.msg.Ack(); err != nil {
		d.log.Warn("ack failed; the event may be delivered again", d.attrs(j, slog.String("err", err.Error()))...)
	}
}

func (d *Dispatcher) attrs(j *job, extra ...any) []any {
	a := make([]any, 0, 6+len(extra))
	a = append(a, slog.String("delivery_id", j.deliveryID))
	if j.parsed {
		a = append(a, slog.String("event_type", j.key.Type), slog.String("account", j.key.AccountID), slog.String("project", j.key.ProjectID))
	} else {
		a = append(a, slog.String("subject", j.subject))
	}
	return append(a, extra...)
}
