package dispatcher

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// logLimit keeps a line logged per event from flooding the log when many
// events hit the same trouble at once (a plugin restarting hands back every
// event it had): at most burst lines each period, and for the rest one
// line saying how many were left out.
type logLimit struct {
	period time.Duration
	burst  int
	now    func() time.Time

	mu      sync.Mutex
	start   time.Time // of the current period
	logged  int       // lines logged in it
	dropped int       // lines left out in it
}

func newLogLimit(period time.Duration, burst int) *logLimit {
	return &logLimit{period: period, burst: burst, now: time.Now}
}

// log logs msg with args at level, unless burst lines were logged this
// period; the first line of a period says how many the one before left
// out.
func (l *logLimit) log(ctx context.Context, log *slog.Logger, level slog.Level, msg string, args ...any) {
	l.mu.Lock()
	now := l.now()
	var before int
	if now.Sub(l.start) >= l.period {
		before = l.dropped
		l.start, l.logged, l.dropped = now, 0, 0
	}
	ok := l.logged < l.burst
	if ok {
		l.logged++
	} else {
		l.dropped++
	}
	l.mu.Unlock()
	if before > 0 {
		log.LogAttrs(ctx, level, msg+": more left out of the log", slog.Int("left_out", before), slog.Duration("within", l.period))
	}
	if ok {
		log.Log(ctx, level, msg, args...)
	}
}
