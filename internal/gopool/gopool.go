// Package gopool runs short functions on goroutines that outlive them.
//
// A fresh goroutine per item of work starts on a small stack and grows it
// again every time (JSON decoding, an HTTP round trip): in the profiles of
// the dispatcher and of the plugin process that stack growth cost several
// per cent of the CPU. A Pool hands work to an idle goroutine when there is
// one and starts a goroutine otherwise; there is no cap — the callers bound
// their concurrency themselves.
package gopool

import (
	"sync/atomic"
	"time"
)

// Pool runs functions on reused goroutines. The zero value is not usable;
// call New.
type Pool struct {
	work chan func() // nil: the worker that takes it exits
	done <-chan struct{}

	// idle counts the workers waiting for work; lowIdle is the fewest
	// there were since the last reap: that many were not needed then.
	idle    atomic.Int64
	lowIdle atomic.Int64
}

// New returns a Pool whose goroutines exit once the pool has had more than
// it needed for between idle and twice idle, or at once when done is
// closed (a nil done never is; the pool's reaper then runs for good).
func New(idle time.Duration, done <-chan struct{}) *Pool {
	p := &Pool{work: make(chan func()), done: done}
	go p.reap(idle)
	return p
}

// Go runs f on an idle goroutine of the pool, or on a new one. It never
// blocks.
func (p *Pool) Go(f func()) {
	select {
	case p.work <- f:
	default:
		go p.worker(f)
	}
}

// worker runs f, then whatever Go hands it, until it is handed nil (by
// reap) or done is closed.
//
// Its wait has no timer of its own: a timer in the select was added to and
// taken from the runtime's timer heap on every wait, which under load was
// a few per cent of the CPU. The reaper decides instead how many workers
// go.
func (p *Pool) worker(f func()) {
	for f != nil {
		f()
		p.idle.Add(1)
		select {
		case f = <-p.work:
		case <-p.done:
			p.idle.Add(-1)
			return
		}
		// A lost update under contention only makes lowIdle a little
		// high, which the next handoff corrects.
		if n := p.idle.Add(-1); n < p.lowIdle.Load() {
			p.lowIdle.Store(n)
		}
	}
}

// reap retires, every period, as many idle workers as were idle throughout
// the period before: the fewest idle at any time since the last reap.
func (p *Pool) reap(period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-p.done:
			return
		case <-t.C:
		}
	spare:
		for n := p.lowIdle.Load(); n > 0; n-- {
			select {
			case p.work <- nil: // taken only by a worker waiting now
			default:
				break spare
			}
		}
		p.lowIdle.Store(p.idle.Load())
	}
}
