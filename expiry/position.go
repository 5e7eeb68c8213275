package expiry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callbackd/callbackd/subjects"
)

// How undelivered expiries are found.
//
// In a work-queue stream read by one consumer, a sequence above the
// consumer's delivered pointer has never been delivered, so nothing but max
// age, a purge or an operator's delete can have removed it. Max age removes
// the oldest messages first, so such a gap starts just above the delivered
// pointer and ends below the stream's first stored sequence. When the
// consumer is next asked for messages the server skips the gap and moves the
// delivered pointer past it; the pointer then counts the gap, the
// consumer's delivery count does not.
//
// So each sample finds, above the frontier (every sequence at or below it
// is already accounted for):
//
//   - passed gaps, between the frontier and the delivered pointer: the
//     sequences there minus the deliveries since the last sample. A
//     redelivery also counts as a delivery, so with redeliveries in the
//     period this is low (never high).
//   - head gaps, between the delivered pointer (or the frontier) and the
//     stream's first stored sequence.
//
// Both ends only move up, and the stream is read before the consumer, so a
// publish or an ack between the two reads can hide a gap until the next
// sample but never show one that is not there: measured under load, first
// sequence − 1 − delivered pointer never exceeded 0 on one node or three.
// (LastSeq − delivered − NumPending, from two requests, was off by ±60 to
// +236 under the same load, so its increases cannot be counted.)

// sample is what one sample reads.
type sample struct {
	StreamCreated   time.Time
	ConsumerCreated time.Time
	// FirstSeq is the stream's first stored sequence (LastSeq+1 when empty,
	// 0 before the first message).
	FirstSeq uint64
	// Delivered is the consumer's delivered stream sequence.
	Delivered uint64
	// Deliveries is the consumer's delivered consumer sequence: one per
	// delivery, redeliveries included.
	Deliveries uint64
	// MaxAge is the stream's max age (0: none).
	MaxAge time.Duration
	// LastSeq is the stream's last sequence, and At when it was read:
	// together a mark (ageCap).
	LastSeq uint64
	At      time.Time
}

// canHaveExpired reports whether any message of the stream can be as old as
// its max age at now: not while the stream is younger than that. It keeps
// what only looks like an expiry out of the count: after a kill -9 the
// server recovers a consumer's state from before its last acks, finds
// messages it thinks pending already gone from the work queue, and
// terminates them with a limits reason, or shows them as a gap below the
// first stored sequence.
func (s sample) canHaveExpired(now time.Time) bool {
	return s.MaxAge > 0 && !s.StreamCreated.IsZero() && now.Sub(s.StreamCreated) >= s.MaxAge
}

// position is the last sample, shared by the instances in the state bucket.
type position struct {
	StreamCreated   time.Time `json:"stream_created"`
	ConsumerCreated time.Time `json:"consumer_created"`
	Delivered       uint64    `json:"delivered"`
	Deliveries      uint64    `json:"deliveries"`
	// Frontier is the highest stream sequence accounted for: delivered, or
	// counted as expired.
	Frontier uint64 `json:"frontier"`
	// Marks are the stream's last sequence at past samples, within its
	// max age, oldest first (ageCap).
	Marks []mark `json:"marks,omitempty"`
}

// mark is a stream's last sequence at a time: every message above Seq was
// stored after At.
type mark struct {
	At  time.Time `json:"at"`
	Seq uint64    `json:"seq"`
}

// marksPerAge is how many marks a max age holds at most: one per
// max age / marksPerAge.
const marksPerAge = 32

// nextMarks adds s's mark to marks, one per max age / marksPerAge, and
// drops those older than the max age (ageCap needs none of them).
func nextMarks(marks []mark, s sample) []mark {
	if s.MaxAge <= 0 || s.At.IsZero() {
		return nil
	}
	horizon := s.At.Add(-s.MaxAge)
	out := make([]mark, 0, len(marks)+1)
	for _, m := range marks {
		if !m.At.Before(horizon) && !m.At.After(s.At) {
			out = append(out, m)
		}
	}
	if len(out) == 0 || s.At.Sub(out[len(out)-1].At) >= s.MaxAge/marksPerAge {
		out = append(out, mark{At: s.At, Seq: s.LastSeq})
	}
	return out
}

// ageCap is the highest sequence that can be maxAge old at now: the
// sequence of the oldest mark no older than maxAge, since every message
// above it was stored after that mark. Without such a mark (no sample in
// that long) every sequence can. A message removed above the cap was
// removed by something else than its age: after a kill -9, nats-server
// recovers a consumer's state from before its last acks and shows the
// messages the work queue had already removed as gone (a gap, or a
// termination with a limits reason), which are no expiries.
func ageCap(marks []mark, now time.Time, maxAge time.Duration) uint64 {
	horizon := now.Add(-maxAge)
	for _, m := range marks {
		if !m.At.Before(horizon) {
			return m.Seq
		}
	}
	return math.MaxUint64
}

// advance returns the position after sample s and how many sequences it
// finds removed before delivery since prev (nil: no earlier sample). A
// stream or consumer created anew starts over from s.
func advance(prev *position, s sample) (position, uint64) {
	next := position{
		StreamCreated:   s.StreamCreated,
		ConsumerCreated: s.ConsumerCreated,
		Delivered:       s.Delivered,
		Deliveries:      s.Deliveries,
	}
	var below uint64 // highest sequence not stored below the first stored
	if s.FirstSeq > 0 {
		below = s.FirstSeq - 1
	}
	if prev == nil || !prev.StreamCreated.Equal(s.StreamCreated) || !prev.ConsumerCreated.Equal(s.ConsumerCreated) {
		// What was skipped before cannot be told from what was delivered.
		next.Frontier = max(s.Delivered, below)
		next.Marks = nextMarks(nil, s)
		return next, sub0(below, s.Delivered)
	}
	// Only sequences old enough to have reached the max age count.
	capSeq := ageCap(prev.Marks, s.At, s.MaxAge)
	if s.MaxAge <= 0 || s.At.IsZero() {
		capSeq = math.MaxUint64
	}
	var passed uint64
	if s.Delivered > prev.Frontier {
		passed = sub0(s.Delivered-prev.Frontier, sub0(s.Deliveries, prev.Deliveries))
		passed = min(passed, sub0(capSeq, prev.Frontier))
	}
	head := sub0(min(below, capSeq), max(prev.Frontier, s.Delivered))
	next.Frontier = max(prev.Frontier, s.Delivered, below)
	next.Marks = nextMarks(prev.Marks, s)
	return next, passed + head
}

// sub0 is a − b, or 0 when b ≥ a.
func sub0(a, b uint64) uint64 {
	if a <= b {
		return 0
	}
	return a - b
}

// positionKey is the state bucket key of stream's position.
func positionKey(stream string) string { return "expiry." + stream }

// openState opens the state bucket, creating it when absent.
func openState(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, subjects.StateBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      subjects.StateBucket,
			Description: "callbackd bookkeeping shared by its instances",
			History:     1,
			Storage:     jetstream.FileStorage,
			Replicas:    max(replicas, 1),
		})
		if errors.Is(err, jetstream.ErrBucketExists) { // another instance won the race
			kv, err = js.KeyValue(ctx, subjects.StateBucket)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("open state bucket %s: %w", subjects.StateBucket, err)
	}
	return kv, nil
}

// loadPosition returns stream's position and its revision; nil and 0 when
// there is none yet.
func loadPosition(ctx context.Context, kv jetstream.KeyValue, stream string) (*position, uint64, error) {
	e, err := kv.Get(ctx, positionKey(stream))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read expiry position of %s: %w", stream, err)
	}
	var p position
	if err := json.Unmarshal(e.Value(), &p); err != nil {
		// Unreadable: start over as if there were none, at this revision.
		return nil, e.Revision(), nil
	}
	return &p, e.Revision(), nil
}

// storePosition writes p if stream's position is still at revision rev (0:
// absent); false means another instance wrote first.
func storePosition(ctx context.Context, kv jetstream.KeyValue, stream string, p position, rev uint64) (bool, error) {
	b, err := json.Marshal(p)
	if err != nil {
		return false, err
	}
	if rev == 0 {
		_, err = kv.Create(ctx, positionKey(stream), b)
	} else {
		_, err = kv.Update(ctx, positionKey(stream), b, rev)
	}
	switch {
	case errors.Is(err, jetstream.ErrKeyExists), errors.Is(err, jetstream.ErrKeyRevisionMismatch):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("write expiry position of %s: %w", stream, err)
	}
	return true, nil
}
