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
// line, at the end of the period, saying how many were left out. One
// logLimit serves one kind of line: the summary repeats its message.
type logLimit struct {
	period time.Duration
	burst  int
	now    func() time.Time

	mu      sync.Mutex
	start   time.Time // of the current period
	logged  int       // lines logged in it
	dropped int       // lines left out in it, not yet summed up
	pending summary   // what the summary line says
	timer   *time.Timer
}

// summary is where and how the line of what was left out is logged.
type summary struct {
	log   *slog.Logger
	level slog.Level
	msg   string
}

func newLogLimit(period time.Duration, burst int) *logLimit {
	return &logLimit{period: period, burst: burst, now: time.Now}
}

// log logs msg with args at level, unless burst lines were logged this
// period; a line left out is counted, and the count logged when the period
// ends (or, at the latest, before the next line).
func (l *logLimit) log(ctx context.Context, log *slog.Logger, level slog.Level, msg string, args ...any) {
	l.mu.Lock()
	now := l.now()
	var before int
	var sum summary
	if now.Sub(l.start) >= l.period {
		before, sum = l.dropped, l.pending
		l.start, l.logged, l.dropped = now, 0, 0
		if l.timer != nil {
			l.timer.Stop()
			l.timer = nil
		}
	}
	ok := l.logged < l.burst
	if ok {
		l.logged++
	} else {
		l.dropped++
		l.pending = summary{log: log, level: level, msg: msg}
		if l.timer == nil {
			l.timer = time.AfterFunc(max(l.period-now.Sub(l.start), 0), l.flush)
		}
	}
	l.mu.Unlock()
	if before > 0 {
		sum.write(ctx, before, l.period)
	}
	if ok {
		log.Log(ctx, level, msg, args...)
	}
}

// flush logs the count of the lines left out so far.
func (l *logLimit) flush() {
	l.mu.Lock()
	n, sum := l.dropped, l.pending
	l.dropped, l.timer = 0, nil
	l.mu.Unlock()
	if n > 0 {
		sum.write(context.Background(), n, l.period)
	}
}

func (s summary) write(ctx context.Context, n int, period time.Duration) {
	s.log.LogAttrs(ctx, s.level, s.msg+": more left out of the log", slog.Int("left_out", n), slog.Duration("within", period))
}
