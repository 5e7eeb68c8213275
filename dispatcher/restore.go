package dispatcher

// Streams and consumers deleted from outside are made again, as at start;
// the retrier's pending limit is watched.

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callbackd/callbackd/subjects"
)

// restoreAfter is how long pulls must have been refused before a loop asks
// whether its consumer is gone.
const restoreAfter = 3 * time.Second

// restoreGrace is how long after a consumer or stream is found gone it is
// made again (restoreIfGone).
const restoreGrace = 2 * time.Second

// restoreIfGone makes c again, with any of callbackd's streams and
// consumers that are missing, when the server no longer has it: deleted
// from outside (nats consumer rm, nats stream rm), it would otherwise
// refuse every pull for good while the process looked healthy. It does
// what a restart would (EnsureStreams); the puller goes on with the new
// consumer, whose pull subject is the old one's.
//
// It reports whether c was gone and has been made again.
func (d *Dispatcher) restoreIfGone(ctx context.Context, c jetstream.Consumer, name string) bool {
	if d.top.again == nil {
		return false
	}
	// One loop asks; the others go on with their backoff rather than
	// wait behind a question the server may not answer for a while.
	if !d.restoreMu.TryLock() {
		return false
	}
	defer d.restoreMu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	info := c.CachedInfo()
	_, err := d.js.Consumer(ctx, info.Stream, info.Name)
	if !errors.Is(err, jetstream.ErrConsumerNotFound) && !errors.Is(err, jetstream.ErrStreamNotFound) {
		// There (refused for another reason, or another loop made it
		// again), or the server cannot say: the loop's backoff applies.
		return false
	}
	// Not at once: the pull is refused while the server is still deleting,
	// and it moves the deleted store's files away only after it has
	// forgotten the stream. A stream made again in between opened those
	// files and lost them (seen in a black-box run: every store after
	// failed with "error opening msg block file"). The grace also keeps
	// a stream made again in another second than the one it replaces,
	// which the delivery ids of events without Nats-Msg-Id rely on
	// (<creation time, unix seconds>-<sequence>, SPEC §3).
	select {
	case <-time.After(restoreGrace):
	case <-ctx.Done():
		return false
	}
	if err := d.remake(ctx); err != nil {
		d.log.Error("consumer is gone and could not be made again", "consumer", name, "stream", info.Stream, "err", err)
		return false
	}
	d.log.Warn("consumer was gone (deleted from outside?); made it again, with any missing stream, as at start",
		"consumer", name, "stream", info.Stream)
	return true
}

// remake runs EnsureStreams again. Call it with restoreMu held.
func (d *Dispatcher) remake(ctx context.Context) error {
	top, err := d.top.again(ctx)
	if err != nil {
		return err
	}
	d.eventsCreated.Store(top.EventsCreated.Unix())
	return nil
}

// keepStreams makes callbackd's streams again, as at start, when one has
// been deleted from outside, checking every StreamCheck (and says, as it
// goes, when the retries waiting reach their limit: checkRetryPending). The pull loops
// find a missing CALLBACKS or CALLBACKS_RETRY themselves, but nothing
// reads CALLBACKS_DEAD or CALLBACKS_LOG: dead letters could not be
// published (their events handed back until dispatcher.max_deliveries)
// and log records, published without an ack, would vanish for good.
func (d *Dispatcher) keepStreams(ctx context.Context) {
	if d.top.again == nil {
		return
	}
	t := time.NewTicker(d.o.StreamCheck)
	defer t.Stop()
	retryFull := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		retryFull = d.checkRetryPending(ctx, retryFull)
		if len(d.missingStreams(ctx)) == 0 {
			continue
		}
		d.restoreMu.Lock()
		// The grace of restoreIfGone, for the same reasons.
		select {
		case <-time.After(restoreGrace):
		case <-ctx.Done():
			d.restoreMu.Unlock()
			return
		}
		if missing := d.missingStreams(ctx); len(missing) > 0 {
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			if err := d.remake(rctx); err != nil {
				d.log.Error("stream is gone and could not be made again", "streams", missing, "err", err)
			} else {
				d.log.Warn("stream was gone (deleted from outside?); made it again, as at start", "streams", missing)
			}
			cancel()
		}
		d.restoreMu.Unlock()
	}
}

// checkRetryPending says when the retrier consumer reaches its pending
// limit (dispatcher.max_retry_pending) and when it is below it again. At
// the limit the server hands out nothing more from CALLBACKS_RETRY until a
// pending retry is settled, and the pending ones are mostly retries waiting
// for their time: retries that are due wait behind them, late by up to the
// longest backoff. It returns whether the limit is reached; full is what
// the last check returned.
func (d *Dispatcher) checkRetryPending(ctx context.Context, full bool) bool {
	ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
	info, err := d.top.Retrier.Info(ictx)
	cancel()
	if err != nil {
		return full
	}
	limit := info.Config.MaxAckPending
	now := limit > 0 && info.NumAckPending >= limit
	switch {
	case now && !full:
		d.log.Warn("retries waiting reached dispatcher.max_retry_pending: retries that are due wait behind those that are not, late by up to the longest backoff; raise the limit",
			"pending", info.NumAckPending, "max_retry_pending", limit, "waiting_in_stream", info.NumPending)
	case full && !now:
		d.log.Info("retries waiting are below dispatcher.max_retry_pending again", "pending", info.NumAckPending, "max_retry_pending", limit)
	}
	return now
}

// missingStreams returns callbackd's streams that the server says do not
// exist (not those it could not answer for).
func (d *Dispatcher) missingStreams(ctx context.Context) []string {
	var missing []string
	for _, name := range []string{subjects.Stream, subjects.RetryStream, subjects.DeadStream, subjects.LogStream} {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := d.js.Stream(sctx, name)
		cancel()
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			missing = append(missing, name)
		}
	}
	return missing
}
