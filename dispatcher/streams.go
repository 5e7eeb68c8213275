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
			return nil, fmt.Errorf("update stream %s (%s): %w", want.Name, diff, err)
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
	if diff := consumerDrift(c.CachedInfo().Config, want); diff != "" {
		if !update {
			log.Warn("consumer config differs from callbackd's; left as is (serve --update-streams applies it)", "consumer", want.Durable, "differs", diff)
			return c, nil
		}
		if c, err = s.UpdateConsumer(ctx, want); err != nil {
			return nil, fmt.Errorf("update consumer %s (%s): %w", want.Durable, diff, err)
		}
		log.Info("updated consumer", "consumer", want.Durable, "changed", diff)
	}
	return c, nil
}

// streamDrift names the settings callbackd manages that differ.
func streamDrift(have, want jetstream.StreamConfig) string {
	var d []string
	if !slices.Equal(have.Subjects, want.Subjects) {
		d = append(d, "subjects")
	}
	if have.Retention != want.Retention {
		d = append(d, "retention")
	}
	if have.Storage != want.Storage {
		d = append(d, "storage")
	}
	if have.MaxAge != want.MaxAge {
		d = append(d, "max_age")
	}
	if want.MaxBytes != 0 && have.MaxBytes != want.MaxBytes {
		d = append(d, "max_bytes")
	}
	if want.Duplicates != 0 && have.Duplicates != want.Duplicates {
		d = append(d, "duplicates")
	}
	if have.Replicas != want.Replicas {
		d = append(d, "replicas")
	}
	return strings.Join(d, ", ")
}

func consumerDrift(have, want jetstream.ConsumerConfig) string {
	var d []string
	if have.AckWait != want.AckWait {
		d = append(d, "ack_wait")
	}
	if have.MaxAckPending != want.MaxAckPending {
		d = append(d, "max_ack_pending")
	}
	if have.MaxDeliver != want.MaxDeliver {
		d = append(d, "max_deliver")
	}
	if len(have.BackOff) != 0 {
		d = append(d, "backoff")
	}
	return strings.Join(d, ", ")
}
