package dispatcher_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/callbackd/callbackd/subjects"
	"github.com/callbackd/callbackd/testutil"
)

// A consumer or stream deleted from outside (nats consumer rm, nats stream
// rm) is made again as at start, and delivery goes on. Before, every pull
// was refused for good while the process looked healthy. When CALLBACKS
// itself is made again, the delivery ids of events without Nats-Msg-Id
// follow the new stream's creation time, or they would repeat the old
// stream's ids (its sequences start again at 1) and receivers that
// de-duplicate would drop the new events.
func TestDispatcher_a_deleted_consumer_or_stream_is_made_again(t *testing.T) {
	tests := []struct {
		name            string
		stream, durable string // what is deleted, and then looked for
		deleteStream    bool
	}{
		{"dispatcher consumer", subjects.Stream, subjects.DispatcherConsumer, false},
		{"retrier consumer", subjects.RetryStream, subjects.RetrierConsumer, false},
		{"events stream", subjects.Stream, subjects.DispatcherConsumer, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel() // each waits out the restore's grace
			sink := testutil.NewSink(t)
			h := newHarness(t, harnessOptions{})
			h.setProject("1", sink.URL)
			h.waitDestination("1", "1", sink.URL)
			subject := eventSubject("crawl_status", "1", "1")
			first := h.publish(subject, crawl(1), "")
			firstID := h.seqID(first.Sequence)
			waitRequestWithID(t, sink, firstID)
			h.waitEventsEmpty()

			ctx, cancel := context.WithTimeout(h.ctx, waitLong)
			defer cancel()
			if tt.deleteStream {
				// A stream made again within the same second would have the
				// old ids anyway: let the second turn first.
				created := h.streamCreated(subjects.Stream)
				testutil.CheckFor(t, 3*time.Second, 20*time.Millisecond, func() error {
					if time.Now().Unix() <= created.Unix() {
						return errors.New("still the second CALLBACKS was created in")
					}
					return nil
				})
				if err := h.js.DeleteStream(ctx, tt.stream); err != nil {
					t.Fatal(err)
				}
			} else if err := h.js.DeleteConsumer(ctx, tt.stream, tt.durable); err != nil {
				t.Fatal(err)
			}

			testutil.CheckFor(t, waitLong, 20*time.Millisecond, func() error {
				_, err := h.js.Consumer(ctx, tt.stream, tt.durable)
				return err
			})
			second := h.publish(subject, crawl(2), "")
			secondID := h.seqID(second.Sequence)
			if tt.deleteStream && secondID == firstID {
				t.Fatalf("the new stream's first event has the old one's id %s", firstID)
			}
			waitRequestWithID(t, sink, secondID)
			h.waitEventsEmpty()
			if got := len(sink.Requests()); got != 2 {
				t.Errorf("sink got %d requests, want 2", got)
			}
		})
	}
}

// CALLBACKS_DEAD and CALLBACKS_LOG deleted from outside are made again:
// nothing pulls from them, so only the dispatcher's check notices. Before,
// log records vanished for good and dead letters could not be written.
func TestDispatcher_a_deleted_dead_letter_or_log_stream_is_made_again(t *testing.T) {
	sink := testutil.NewSink(t)
	sink.Respond(func(testutil.Request) int { return 404 })
	h := newHarness(t, harnessOptions{Log: true, StreamCheck: 100 * time.Millisecond})
	h.setProject("1", sink.URL)
	h.waitDestination("1", "1", sink.URL)

	ctx, cancel := context.WithTimeout(h.ctx, waitLong)
	defer cancel()
	for _, name := range []string{subjects.DeadStream, subjects.LogStream} {
		if err := h.js.DeleteStream(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	testutil.CheckFor(t, waitLong, 20*time.Millisecond, func() error {
		for _, name := range []string{subjects.DeadStream, subjects.LogStream} {
			if _, err := h.js.Stream(ctx, name); err != nil {
				return fmt.Errorf("stream %s: %w", name, err)
			}
		}
		return nil
	})
	// A final failure: its dead letter and its log record land in the new
	// streams.
	h.publish(eventSubject("crawl_status", "1", "1"), crawl(1), "after-rm")
	h.waitDeadFor(eventSubject("crawl_status", "1", "1"), crawl(1))
	testutil.WaitStreamMsgs(t, h.js, subjects.LogStream, 1, waitLong, nil)
	h.waitEventsEmpty()
}

// streamCreated is when the server says stream was created.
func (h *harness) streamCreated(stream string) time.Time {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(h.ctx, waitLong)
	defer cancel()
	s, err := h.js.Stream(ctx, stream)
	if err != nil {
		h.t.Fatal(fmt.Errorf("stream %s: %w", stream, err))
	}
	return s.CachedInfo().Created
}
