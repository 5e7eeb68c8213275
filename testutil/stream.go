package testutil

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// StreamMsgs returns every message stored in the stream, oldest first, read
// by sequence with direct gets (no consumer is created, so reading changes
// nothing, not even in a work-queue stream).
func StreamMsgs(t testing.TB, js jetstream.JetStream, stream string) []*jetstream.RawStreamMsg {
	t.Helper()
	msgs, err := streamMsgs(js, stream)
	if err != nil {
		t.Fatalf("read stream %s: %v", stream, err)
	}
	return msgs
}

func streamMsgs(js jetstream.JetStream, stream string) ([]*jetstream.RawStreamMsg, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, err
	}
	var out []*jetstream.RawStreamMsg
	if info.State.Msgs == 0 {
		return out, nil
	}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue // deleted or acked out of a work queue
		}
		if err != nil {
			return nil, fmt.Errorf("get seq %d: %w", seq, err)
		}
		out = append(out, m)
	}
	return out, nil
}

// StreamLen returns how many messages the stream holds now.
func StreamLen(t testing.TB, js jetstream.JetStream, stream string) uint64 {
	t.Helper()
	n, err := streamLen(js, stream)
	if err != nil {
		t.Fatalf("stream %s: %v", stream, err)
	}
	return n
}

func streamLen(js jetstream.JetStream, stream string) (uint64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return 0, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.Msgs, nil
}

// WaitStreamMsgs polls until the messages of the stream for which match
// returns true (every message when match is nil) number at least n, and
// returns those messages. It fails the test after total.
func WaitStreamMsgs(t testing.TB, js jetstream.JetStream, stream string, n int, total time.Duration, match func(*jetstream.RawStreamMsg) bool) []*jetstream.RawStreamMsg {
	t.Helper()
	var got []*jetstream.RawStreamMsg
	CheckFor(t, total, 25*time.Millisecond, func() error {
		all, err := streamMsgs(js, stream)
		if err != nil {
			return err
		}
		got = got[:0]
		for _, m := range all {
			if match == nil || match(m) {
				got = append(got, m)
			}
		}
		if len(got) < n {
			return fmt.Errorf("stream %s: %d of %d matching messages", stream, len(got), n)
		}
		return nil
	})
	return got
}

// WaitStreamEmpty polls until the stream holds no message, as a work-queue
// stream does once every message has been acked. It fails the test after
// total.
func WaitStreamEmpty(t testing.TB, js jetstream.JetStream, stream string, total time.Duration) {
	t.Helper()
	CheckFor(t, total, 25*time.Millisecond, func() error {
		n, err := streamLen(js, stream)
		if err != nil {
			return err
		}
		if n != 0 {
			return fmt.Errorf("stream %s still holds %d messages", stream, n)
		}
		return nil
	})
}

// LostAfter is a JetStream whose connection goes away (NC is closed) just
// before publish number After+1: NATS gone in the middle of a run of
// publishes (a replay, say), at a point the test chooses. It is not safe
// for concurrent use.
type LostAfter struct {
	jetstream.JetStream
	NC    *nats.Conn
	After int
	n     int
}

// PublishMsg closes NC before publish number After+1, then publishes.
func (l *LostAfter) PublishMsg(ctx context.Context, m *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	if l.n == l.After {
		l.NC.Close()
	}
	l.n++
	return l.JetStream.PublishMsg(ctx, m, opts...)
}
