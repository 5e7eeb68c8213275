package dispatcher

import (
	"context"
	"log/slog"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/callbackd/callbackd/plugins"
	"github.com/callbackd/callbackd/subjects"
)

// failed ends a delivery that failed for good: the failure plugin's
// notifications are queued on callbacks.notify.…, the event is dead-lettered,
// and only then is the message acked. A callback-failed notification that
// fails is dead-lettered as callback_failed_undeliverable and never reported
// (no loops). It reports whether the message was settled; when it was not,
// it has been handed back.
func (d *Dispatcher) failed(ctx context.Context, j *job, reason string, res plugins.Result) bool {
	if j.notify {
		return d.deadLetterAndAck(ctx, j, ReasonCallbackFailedUndeliverable, res.StatusCode, j.attempt, res.Error, false)
	}
	if d.o.Failure != nil {
		d.keepAlive(j, d.ackWait/2)
		f := plugins.Failure{
			EventType: j.key.Type, AccountID: j.key.AccountID, ProjectID: j.key.ProjectID,
			DeliveryID: j.deliveryID, CallbackURL: j.dest.URL, StatusCode: res.StatusCode,
			Error: res.Error, Attempts: j.attempt, FailedAt: time.Now().UTC(),
			Notification: j.notification, IDFields: d.idFieldsFor(ctx, j.key.Type),
			SSOWebhook: d.view.SSOWebhook(j.key.AccountID),
		}
		fctx, cancel := context.WithTimeout(ctx, d.o.CallTimeout)
		out, err := d.o.Failure.OnFailure(fctx, f)
		cancel()
		if err != nil {
			d.infraError(ctx, j, "failure plugin", err)
			return false
		}
		for i, ob := range out {
			if !d.queueNotify(ctx, j, i, ob) {
				return false
			}
		}
		if len(out) == 0 {
			d.log.Info("no callback-failed notification sent: the account has no SSO client webhook", d.attrs(j)...)
		}
	}
	d.keepAlive(j, d.ackWait/2)
	return d.deadLetterAndAck(ctx, j, reason, res.StatusCode, j.attempt, res.Error, false)
}

// queueNotify publishes one callback-failed notification to
// callbacks.notify.<account>.<project>, with a Nats-Msg-Id derived from the
// failed message, so a crash before the ack gives a de-duplicated copy.
func (d *Dispatcher) queueNotify(ctx context.Context, j *job, i int, ob plugins.Outbound) bool {
	data, err := encodeNotify(notifyMsg{Destination: ob.Destination, Notification: ob.Notification})
	if err != nil {
		d.infraError(ctx, j, "encode notification", err)
		return false
	}
	m := nats.NewMsg(subjects.Notify(j.key.AccountID, j.key.ProjectID))
	m.Data = data
	m.Header.Set(subjects.HeaderMsgID, "notify:"+sourceRef(j)+":"+strconv.Itoa(i))
	m.Header.Set(subjects.HeaderDeliveryID, j.deliveryID)
	pctx, cancel := context.WithTimeout(ctx, d.o.CallTimeout)
	defer cancel()
	if _, err := d.js.PublishMsg(pctx, m); err != nil {
		d.infraError(ctx, j, "queue notification", err)
		return false
	}
	d.log.Info("callback-failed notification queued", d.attrs(j, slog.String("to", plugins.SafeURL(ob.Destination.URL)))...)
	return true
}

// idFieldsFor returns the encoder's resource ID fields, asked once per type.
func (d *Dispatcher) idFieldsFor(ctx context.Context, eventType string) []string {
	d.idFieldsMu.Lock()
	ids, ok := d.idFields[eventType]
	d.idFieldsMu.Unlock()
	if ok {
		return ids
	}
	enc, ok := d.o.Encoders[eventType]
	if !ok {
		return nil
	}
	ictx, cancel := context.WithTimeout(ctx, d.o.CallTimeout)
	info, err := enc.Info(ictx)
	cancel()
	if err != nil {
		d.log.Warn("encoder info unavailable; callback-failed notice without resource IDs", "event_type", eventType, "err", err)
		return nil
	}
	d.idFieldsMu.Lock()
	d.idFields[eventType] = info.IDFields
	d.idFieldsMu.Unlock()
	return info.IDFields
}
