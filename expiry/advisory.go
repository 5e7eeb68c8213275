package expiry

import (
	"encoding/json"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/callbackd/callbackd/subjects"
)

// The reasons nats-server (v2.15.2, consumer.go) gives in a
// terminated-message advisory when stream limits removed a message the
// consumer had delivered and not seen acked: ackTermUnackedLimitsReason
// (decStreamPending, getNextMsg) and ackTermLimitsReason (checkAckFloor).
// callbackd's own Term carries no reason, so it never matches.
const (
	reasonUnackedDeleted = "Unacknowledged message was deleted"
	reasonLimits         = "Message deleted by stream limits"
)

// advisoryPendingBytes bounds the advisories waiting for the handler (about
// 150 000 of them); the message count is not limited separately.
const advisoryPendingBytes = 64 << 20

// advisory is the part of JSConsumerDeliveryTerminatedAdvisory we read.
type advisory struct {
	Reason    string `json:"reason"`
	StreamSeq uint64 `json:"stream_seq"`
}

// streamAge is what the last sample said of a stream's age.
type streamAge struct {
	sample
	marks []mark
}

// advisories counts the limits terminations of one consumer.
type advisories struct {
	w   watch
	sub *nats.Subscription
	// counted since the last log line.
	counted atomic.Int64
	// dropped is the subscription's drop count at the last log line.
	dropped int
	// stream is the stream's creation time, max age and marks from the
	// last sample (nil before it): while the stream is younger than its
	// max age, or the message younger than that (ageCap), a limits
	// termination is no expiry.
	stream atomic.Pointer[streamAge]
}

// subscribe counts, through obs, the advisories of messages that w's stream
// removed by its limits while w's consumer had them pending.
func subscribe(nc *nats.Conn, w watch, obs Observer) (*advisories, error) {
	a := &advisories{w: w}
	sub, err := nc.QueueSubscribe(subjects.AdvisoryTerminated(w.stream, w.consumer), subjects.ExpiryQueue, func(m *nats.Msg) {
		if a.expiry(m.Data, time.Now()) {
			obs.Expired(w.stream, 1)
			a.counted.Add(1)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe to %s advisories: %w", w.stream, err)
	}
	if err := sub.SetPendingLimits(-1, advisoryPendingBytes); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("subscribe to %s advisories: %w", w.stream, err)
	}
	a.sub = sub
	return a, nil
}

func (a *advisories) close() { _ = a.sub.Unsubscribe() }

// expiry reports whether a terminated-message advisory, received at now,
// is an expiry: a limits reason, on a stream old enough for a message to
// have reached its max age.
func (a *advisories) expiry(data []byte, now time.Time) bool {
	var adv advisory
	if json.Unmarshal(data, &adv) != nil || !limitsReason(adv.Reason) {
		return false
	}
	st := a.stream.Load()
	if st == nil {
		return true
	}
	if !st.canHaveExpired(now) {
		return false
	}
	return adv.StreamSeq == 0 || adv.StreamSeq <= ageCap(st.marks, now, st.MaxAge)
}

// limitsReason reports whether a terminated-message advisory's reason says
// the stream's limits removed the message.
func limitsReason(reason string) bool {
	return reason == reasonUnackedDeleted || reason == reasonLimits
}
