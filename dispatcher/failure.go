package dispatcher

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
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
// it has been handed back, and notified says whether the notifications
// were queued (or none was to be) — a later call for the same message
// then passes notified, and they are not made and queued again.
func (d *Dispatcher) failed(ctx context.Context, j *job, reason string, res plugins.Result, notified bool) (settled, nowNotified bool) {
	if j.notify {
		return d.deadLetterAndAck(ctx, j, ReasonCallbackFailedUndeliverable, res.StatusCode, j.attempt, res.Error, false), true
	}
	if d.o.Failure != nil && !notified {
		d.keepAlive(j, d.ackWait/2)
		f := plugins.Failure{
			EventType: j.key.Type, AccountID: j.key.AccountID, ProjectID: j.key.ProjectID,
			DeliveryID: j.deliveryID, CallbackURL: j.dest.URL, StatusCode: res.StatusCode,
			Error: res.Error, Attempts: j.attempt, FailedAt: time.Now().UTC(),
			Notification: j.notification, IDFields: d.idFieldsFor(ctx, j.key.Type),
			SSOWebhook: d.view.SSOWebhook(j.key.AccountID),
		}
		out, err := d.onFailure(ctx, j, f)
		switch {
		case err != nil && d.isStopping():
			// Shutting down while the plugin failed: handed back, for
			// another instance or the next start, rather than ended
			// without its notice.
			d.nak(j.msg, handBackDelay)
			return false, false
		case err != nil:
			// Handing the message back would make the attempt again: the
			// endpoint would get the event once more per hand-back. The
			// event ends as it would have, without the notice.
			// At most 10 lines a second, then a count: a broken
			// failure plugin fails every event that ends badly.
			d.failureLog.log(ctx, d.log, slog.LevelError, "callback-failed notification not made: the failure plugin kept failing; the event is dead-lettered without it",
				d.attrs(j, slog.String("err", clipText(err.Error())))...)
		default:
			for i, ob := range out {
				if err := checkOutbound(ob); err != nil {
					// The plugin's bug: this notification could never
					// be delivered, so it is not queued.
					d.badNoticeLog.log(ctx, d.log, slog.LevelError, "failure plugin returned a notification that cannot be sent; not queued",
						d.attrs(j, slog.Int("index", i), slog.String("err", clipText(err.Error())))...)
					continue
				}
				if !d.queueNotify(ctx, j, i, ob, sameDestination(ob.Destination, f.SSOWebhook)) {
					return false, false
				}
			}
			if len(out) == 0 {
				d.log.Debug("no callback-failed notification sent: the failure plugin returned none (the built-in sso-webhook: the account has no SSO client webhook)", d.attrs(j)...)
			}
		}
	}
	d.keepAlive(j, d.ackWait/2)
	return d.deadLetterAndAck(ctx, j, reason, res.StatusCode, j.attempt, res.Error, false), true
}

// checkOutbound checks a failure plugin's notification by the rules its
// settings would have to follow (SPEC §3, §4): an absolute http(s) URI,
// header rules, a notification fit to send.
func checkOutbound(ob plugins.Outbound) error {
	if _, err := plugins.ParseHTTPURL(ob.Destination.URL); err != nil {
		return fmt.Errorf("destination: %w", err)
	}
	if err := plugins.CheckHeaders(ob.Destination.Headers); err != nil {
		return fmt.Errorf("destination headers: %w", err)
	}
	if err := ob.Notification.Check(); err != nil {
		return fmt.Errorf("notification: %w", err)
	}
	return nil
}

// failureTries is how many times the failure plugin is asked about one
// failed delivery, failureWait apart (doubling), before the event is
// dead-lettered without a notice.
const (
	failureTries = 3
	failureWait  = time.Second
)

// onFailure asks the failure plugin, again in place when it fails (it may
// be restarting), keeping the message alive meanwhile. It stops asking
// when the dispatcher is stopping (a handler's ctx never ends: see Run).
func (d *Dispatcher) onFailure(ctx context.Context, j *job, f plugins.Failure) ([]plugins.Outbound, error) {
	wait := failureWait
	for try := 1; ; try++ {
		fctx, cancel := context.WithTimeout(ctx, d.o.CallTimeout)
		out, err := d.o.Failure.OnFailure(fctx, f)
		cancel()
		if err == nil || try == failureTries {
			return out, err
		}
		d.log.Debug("failure plugin failed; asking again", d.attrs(j, slog.String("err", clipText(err.Error())), slog.Duration("retry_in", wait))...)
		t := time.NewTimer(wait)
		select {
		case <-d.stopping:
			t.Stop()
			return nil, fmt.Errorf("failure plugin: %w (dispatcher stopping)", err)
		case <-t.C:
		}
		wait *= 2
		d.keepAlive(j, d.ackWait/2)
	}
}

// maxLogText caps a plugin's text (an error, a reason) in callbackd's own
// log lines, as the delivery log caps it in records.
const maxLogText = 1024

// clipText cuts s after maxLogText bytes on a character boundary
// (plugins.Clip), its URLs without userinfo and query (plugins.RedactURLs).
func clipText(s string) string { return plugins.Clip(plugins.RedactURLs(s), maxLogText) }

// queueNotify publishes one callback-failed notification to
// callbacks.notify.<account>.<project>, with a Nats-Msg-Id derived from the
// failed message, so a crash before the ack gives a de-duplicated copy.
func (d *Dispatcher) queueNotify(ctx context.Context, j *job, i int, ob plugins.Outbound, toSSOWebhook bool) bool {
	data, err := encodeNotify(notifyMsg{Destination: ob.Destination, Notification: ob.Notification, SSOWebhook: toSSOWebhook})
	if err != nil {
		d.infraError(ctx, j, "encode notification", err)
		return false
	}
	m := nats.NewMsg(subjects.Notify(j.key.AccountID, j.key.ProjectID))
	m.Data = data
	m.Header.Set(subjects.HeaderMsgID, "notify:"+j.originRef()+":"+strconv.Itoa(j.attempt)+":"+strconv.Itoa(i))
	m.Header.Set(subjects.HeaderDeliveryID, j.deliveryID)
	pctx, cancel := context.WithTimeout(ctx, d.o.CallTimeout)
	defer cancel()
	if _, err := d.js.PublishMsg(pctx, m); err != nil {
		d.noteWriteErr(err)
		d.infraError(ctx, j, "queue notification", err)
		return false
	}
	// The event's own line (warn) says it failed; the notice has its own
	// delivery-log records.
	d.log.Debug("callback-failed notification queued", d.attrs(j, slog.String("to", plugins.SafeURL(ob.Destination.URL)))...)
	return true
}

// sameDestination reports whether a failure plugin addressed a notification
// to the account's SSO client webhook as it was given (sso, nil when the
// account has none): then every attempt looks the webhook up again. A
// destination of the plugin's own making is kept as it is.
func sameDestination(d plugins.Destination, sso *plugins.Destination) bool {
	return sso != nil && d.URL == sso.URL && slices.Equal(d.Headers, sso.Headers)
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
