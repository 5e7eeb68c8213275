package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callbackd/callbackd/subjects"
)

// StreamOptions are the settings of callbackd's streams and consumers
// (SPEC §2, §3); config supplies them, and its defaults are SPEC's. The
// zero value of each field is noted beside it.
type StreamOptions struct {
	Replicas   int           // nats.replicas (0 → 1)
	Duplicates time.Duration // de-duplication window of the streams (0 → 2m)
	// Maximum ages of CALLBACKS and CALLBACKS_RETRY, CALLBACKS_DEAD and
	// CALLBACKS_LOG (retention.*; 0 → no age limit).
	RetentionEvents time.Duration
	RetentionDead   time.Duration
	RetentionLog    time.Duration
	LogBytes        int64 // retention.log_bytes (0 → no size limit)
	// AckWait of the consumers: delivery.timeout + 10 s (0 → the
	// server's default, 30 s).
	AckWait       time.Duration
	MaxAckPending int // the dispatcher consumer's (0 → the server's default)
	// MaxRetryPending is the retrier consumer's pending limit (0 → 1:
	// callbackd's config always sets it).
	MaxRetryPending int
	// Update applies callbackd's config to existing streams and consumers
	// whose config differs (serve --update-streams); otherwise they are left
	// as they are with a warning.
	Update bool
}

// Topology is what EnsureStreams found or made.
type Topology struct {
	Events     jetstream.Stream
	Dispatcher jetstream.Consumer
	// Retrier is the consumer of CALLBACKS_RETRY.
	Retrier jetstream.Consumer
	// EventsCreated is when CALLBACKS was created; it is part of the
	// Callback-Delivery-Id of events published without Nats-Msg-Id.
	EventsCreated time.Time

	// again runs EnsureStreams again, as at start: the dispatcher's way
	// back when a consumer or stream has been deleted from outside.
	again func(context.Context) (Topology, error)
}

func (o StreamOptions) streamConfigs() []jetstream.StreamConfig {
	replicas := max(o.Replicas, 1)
	dup := o.Duplicates
	if dup <= 0 {
		dup = 2 * time.Minute
	}
	return []jetstream.StreamConfig{
		{
			Name:        subjects.Stream,
			Description: "callbackd: events and callback-failed notifications waiting for delivery",
			Subjects:    []string{subjects.Events, subjects.Notifies},
			Retention:   jetstream.WorkQueuePolicy,
			Storage:     jetstream.FileStorage,
			MaxAge:      o.RetentionEvents,
			Duplicates:  dup,
			Replicas:    replicas,
		},
		{
			Name:        subjects.RetryStream,
			Description: "callbackd: deliveries waiting for a later attempt",
			Subjects:    []string{subjects.Retries},
			Retention:   jetstream.WorkQueuePolicy,
			Storage:     jetstream.FileStorage,
			MaxAge:      o.RetentionEvents,
			Duplicates:  dup,
			Replicas:    replicas,
		},
		{
			Name:        subjects.DeadStream,
			Description: "callbackd: events that ended without a successful delivery",
			Subjects:    []string{subjects.Dead},
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			MaxAge:      o.RetentionDead,
			Duplicates:  dup,
			Replicas:    replicas,
		},
		{
			Name:        subjects.LogStream,
			Description: "callbackd: delivery log, one record per attempt or outcome",
			Subjects:    []string{subjects.Logs},
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			MaxAge:      o.RetentionLog,
			MaxBytes:    o.LogBytes,
			Discard:     jetstream.DiscardOld,
			Replicas:    replicas,
			PersistMode: logPersistMode(replicas),
		},
	}
}

// logPersistMode is how CALLBACKS_LOG is written: on a single node,
// asynchronously (the server flushes its writes in batches instead of one
// write(2) per record, and a crash can lose the records not yet flushed —
// the log is best effort, SPEC §2); replicated streams are flushed in
// batches already, and the server refuses async mode for them.
func logPersistMode(replicas int) jetstream.PersistModeType {
	if replicas > 1 {
		return jetstream.DefaultPersistMode
	}
	return jetstream.AsyncPersistMode
}

func (o StreamOptions) retrierConsumer() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:     subjects.RetrierConsumer,
		Description: "callbackd retrier: deliveries waiting for a later attempt",
		AckPolicy:   jetstream.AckExplicitPolicy,
		AckWait:     o.AckWait,
		MaxDeliver:  -1,
		// Waiting retries sit in this consumer's pending set (delayed NAKs),
		// so its limit is large and apart from the dispatcher's.
		MaxAckPending: max(o.MaxRetryPending, 1),
	}
}

func (o StreamOptions) dispatcherConsumer() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       subjects.DispatcherConsumer,
		Description:   "callbackd dispatcher: fresh events and notifications",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       o.AckWait,
		MaxDeliver:    -1, // capped by dispatcher.max_deliveries in code (SPEC §3)
		MaxAckPending: o.MaxAckPending,
		// No BackOff: the server would use its first entry as AckWait.
	}
}

// EnsureStreams creates callbackd's streams and its two consumers
// (dispatcher, retrier) when absent. One that exists with a different config is left as it is with a
// warning, unless o.Update is set.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, o StreamOptions, log *slog.Logger) (Topology, error) {
	var top Topology
	var retry jetstream.Stream
	for _, want := range o.streamConfigs() {
		s, err := ensureStream(ctx, js, want, o.Update, log)
		if err != nil {
			return top, err
		}
		switch want.Name {
		case subjects.Stream:
			top.Events = s
			top.EventsCreated = s.CachedInfo().Created
		case subjects.RetryStream:
			retry = s
		}
	}
	r, err := ensureConsumer(ctx, retry, o.retrierConsumer(), o.Update, log)
	if err != nil {
		return top, err
	}
	top.Retrier = r
	c, err := ensureConsumer(ctx, top.Events, o.dispatcherConsumer(), o.Update, log)
	if err != nil {
		return top, err
	}
	top.Dispatcher = c
	top.again = func(ctx context.Context) (Topology, error) {
		o := o
		o.Update = false // what start did is done; drift is warned of again
		return EnsureStreams(ctx, js, o, log)
	}
	return top, nil
}

func ensureStream(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig, update bool, log *slog.Logger) (jetstream.Stream, error) {
	s, err := js.Stream(ctx, want.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		s, err = js.CreateStream(ctx, want)
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) { // another instance won the race
			s, err = js.Stream(ctx, want.Name)
		} else if err == nil {
			log.Info("created stream", "stream", want.Name)
		}
	}
	if err != nil {
		if isStorageFull(err) && want.MaxBytes > 0 {
			// JetStream reserves a stream's MaxBytes on its disk when it
			// is made: the delivery log's retention.log_bytes (1 GiB by
			// default) must fit beside the rest.
			return nil, fmt.Errorf("ensure stream %s: JetStream cannot reserve its %d bytes (retention.log_bytes) on data_dir's disk: free space or lower retention.log_bytes: %w", want.Name, want.MaxBytes, err)
		}
		return nil, fmt.Errorf("ensure stream %s: %w", want.Name, err)
	}
	have := s.CachedInfo().Config
	if diff := streamDrift(have, want); diff != "" {
		if !update {
			log.Warn("stream config differs from callbackd's; left as is (serve --update-streams applies it)", "stream", want.Name, "differs", diff)
			return s, nil
		}
		// The persist mode is fixed when a stream is created.
		want.PersistMode = have.PersistMode
		if want.Replicas > 1 && have.PersistMode == jetstream.AsyncPersistMode {
			return nil, fmt.Errorf("update stream %s to %d replicas: it was created on a single node with asynchronous persistence, which a replicated stream cannot have; delete it (nats stream rm %s; the delivery log is best effort) and start again", want.Name, want.Replicas, want.Name)
		}
		if s, err = js.UpdateStream(ctx, want); err != nil {
			return nil, fmt.Errorf("update stream %s (%s): %w (a setting the server cannot change on an existing stream, such as storage or deny delete, needs the stream made again: stop callbackd, remove it with nats stream rm %s — what it holds goes with it, so let events drain and replay dead letters first — and start callbackd again)", want.Name, diff, err, want.Name)
		}
		log.Info("updated stream", "stream", want.Name, "changed", diff)
	}
	return s, nil
}

func ensureConsumer(ctx context.Context, s jetstream.Stream, want jetstream.ConsumerConfig, update bool, log *slog.Logger) (jetstream.Consumer, error) {
	c, err := s.Consumer(ctx, want.Durable)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		c, err = s.CreateConsumer(ctx, want)
		if errors.Is(err, jetstream.ErrConsumerExists) {
			c, err = s.Consumer(ctx, want.Durable)
		} else if err == nil {
			log.Info("created consumer", "consumer", want.Durable)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("ensure consumer %s: %w", want.Durable, err)
	}
	diff := consumerDrift(c.CachedInfo().Config, want)
	// Paused by hand (nats consumer pause): nothing is handed out until
	// the pause ends.
	paused := c.CachedInfo().Paused
	if paused {
		diff = strings.TrimPrefix(diff+", paused", ", ")
	}
	if diff != "" {
		if !update {
			log.Warn("consumer config differs from callbackd's; left as is (serve --update-streams applies it)", "consumer", want.Durable, "differs", diff)
			return c, nil
		}
		if c, err = s.UpdateConsumer(ctx, want); err != nil {
			return nil, fmt.Errorf("update consumer %s (%s): %w", want.Durable, diff, err)
		}
		if paused {
			if _, err := s.ResumeConsumer(ctx, want.Durable); err != nil {
				return nil, fmt.Errorf("resume consumer %s: %w", want.Durable, err)
			}
		}
		// Read back: the update's answer can carry the config from
		// before it (seen for a consumer the server recovered from disk
		// at its start), and the dispatcher sizes its waits by it.
		if fresh, err := s.Consumer(ctx, want.Durable); err == nil {
			c = fresh
		}
		log.Info("updated consumer", "consumer", want.Durable, "changed", diff)
	}
	return c, nil
}

// streamDrift names the settings that differ from callbackd's: those it
// sets, and those it leaves at the server's defaults whose other values
// would lose or hold back work (a message limit on CALLBACKS_RETRY drops
// retries, one on CALLBACKS_DEAD drops dead letters, "discard new" refuses
// events, a subject transform moves them). Unset limits read as the
// server's "unlimited".
func streamDrift(have, want jetstream.StreamConfig) string {
	var d []string
	diff := func(differs bool, name string) {
		if differs {
			d = append(d, name)
		}
	}
	diff(!slices.Equal(have.Subjects, want.Subjects), "subjects")
	diff(have.Retention != want.Retention, "retention")
	diff(have.Storage != want.Storage, "storage")
	diff(have.MaxAge != want.MaxAge, "max_age")
	diff(unlimited(have.MaxBytes) != unlimited(want.MaxBytes), "max_bytes")
	diff(unlimited(have.MaxMsgs) != unlimited(want.MaxMsgs), "max_msgs")
	diff(unlimited(have.MaxMsgsPerSubject) != unlimited(want.MaxMsgsPerSubject), "max_msgs_per_subject")
	diff(unlimited(int64(have.MaxMsgSize)) != unlimited(int64(want.MaxMsgSize)), "max_msg_size")
	diff(have.Discard != want.Discard, "discard")
	diff(have.DiscardNewPerSubject != want.DiscardNewPerSubject, "discard_new_per_subject")
	diff(want.Duplicates != 0 && have.Duplicates != want.Duplicates, "duplicates")
	diff(have.Replicas != want.Replicas, "replicas")
	diff(have.NoAck != want.NoAck, "no_ack")
	diff(have.Sealed != want.Sealed, "sealed")
	diff(have.DenyDelete != want.DenyDelete, "deny_delete")
	diff(have.DenyPurge != want.DenyPurge, "deny_purge")
	diff(have.SubjectTransform != nil, "subject_transform")
	diff(have.RePublish != nil, "republish")
	diff(have.Mirror != nil || len(have.Sources) > 0, "mirror/sources")
	return strings.Join(d, ", ")
}

// unlimited reads a stream limit: zero and negative values are both "no
// limit" (the server stores -1 for what a config left unset).
func unlimited(v int64) int64 {
	if v <= 0 {
		return -1
	}
	return v
}

// consumerDrift names the settings of a consumer that differ from
// callbackd's, as streamDrift does: a filter would leave events or notices
// unconsumed, a pull batch or expiry limit refuses the dispatcher's pulls,
// headers only would hand it no payloads, an inactivity threshold would
// let the server delete it.
func consumerDrift(have, want jetstream.ConsumerConfig) string {
	var d []string
	diff := func(differs bool, name string) {
		if differs {
			d = append(d, name)
		}
	}
	diff(have.AckPolicy != want.AckPolicy, "ack_policy")
	diff(have.AckWait != want.AckWait, "ack_wait")
	diff(have.MaxAckPending != want.MaxAckPending, "max_ack_pending")
	diff(have.MaxDeliver != want.MaxDeliver, "max_deliver")
	diff(len(have.BackOff) != 0, "backoff")
	diff(have.FilterSubject != want.FilterSubject || !slices.Equal(have.FilterSubjects, want.FilterSubjects), "filter_subjects")
	diff(have.MaxRequestBatch != want.MaxRequestBatch, "max_batch")
	diff(have.MaxRequestExpires != want.MaxRequestExpires, "max_expires")
	diff(have.MaxRequestMaxBytes != want.MaxRequestMaxBytes, "max_bytes")
	diff(have.HeadersOnly != want.HeadersOnly, "headers_only")
	diff(have.InactiveThreshold != want.InactiveThreshold, "inactive_threshold")
	diff(have.DeliverSubject != "", "deliver_subject (a push consumer)")
	return strings.Join(d, ", ")
}
