package dispatcher

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/callbackd/callbackd/testutil"
)

func TestLogLimit(t *testing.T) {
	var buf testutil.SyncBuffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	now := time.Unix(1000, 0)
	l := newLogLimit(time.Second, 3)
	l.now = func() time.Time { return now }
	ctx := context.Background()
	for i := range 10 { // one period: 3 logged, 7 left out
		l.log(ctx, log, slog.LevelWarn, "handed back", "n", i)
	}
	if got := strings.Count(buf.String(), `msg="handed back"`); got != 3 {
		t.Errorf("%d lines in the first period, want 3:\n%s", got, buf.String())
	}
	now = now.Add(time.Second)
	l.log(ctx, log, slog.LevelWarn, "handed back", "n", 10)
	out := buf.String()
	if !strings.Contains(out, `msg="handed back: more left out of the log" left_out=7 within=1s`) || !strings.Contains(out, "n=10") {
		t.Errorf("the next period does not say what was left out, or drops its first line:\n%s", out)
	}
	if got := strings.Count(out, "left out"); got != 1 {
		t.Errorf("%d summaries, want 1:\n%s", got, out)
	}
}

// The count of what was left out comes when the period ends, even when no
// line follows.
func TestLogLimit_sums_up_at_the_end_of_the_period(t *testing.T) {
	var buf testutil.SyncBuffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	l := newLogLimit(50*time.Millisecond, 2)
	for i := range 5 {
		l.log(context.Background(), log, slog.LevelInfo, "event skipped", "n", i)
	}
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if !strings.Contains(buf.String(), `msg="event skipped: more left out of the log" left_out=3 within=50ms`) {
			return fmt.Errorf("no summary yet:\n%s", buf.String())
		}
		return nil
	})
	if got := strings.Count(buf.String(), "left out"); got != 1 {
		t.Errorf("%d summaries, want 1:\n%s", got, buf.String())
	}
}
