// Package gopool runs short functions on goroutines that outlive them.
//
// A fresh goroutine per item of work starts on a small stack and grows it
// again every time (JSON decoding, an HTTP round trip): in the profiles of
// the dispatcher and of the plugin process that stack growth cost several
// per cent of the CPU. A Pool hands work to an idle goroutine when there is
// one and starts a goroutine otherwise; there is no cap — the callers bound
// their concurrency themselves.
package gopool

import "time"

// Pool runs functions on reused goroutines. The zero value is not usable;
// call New.
type Pool struct {
	work chan func()
	done <-chan struct{}
	idle time.Duration
}

// New returns a Pool whose goroutines exit once they have been idle for
// between idle and twice idle, or at once when done is closed (a nil done
// never is).
func New(idle time.Duration, done <-chan struct{}) *Pool {
	return &Pool{work: make(chan func()), done: done, idle: idle}
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

// worker runs f, then whatever Go hands it, until it has had nothing to do
// for a whole idle period (so it exits between idle and twice idle after
// its last function) or done is closed. The timer is not reset per
// function: under load that was a timer update per message.
func (p *Pool) worker(f func()) {
	f()
	t := time.NewTimer(p.idle)
	defer t.Stop()
	ran := false
	for {
		select {
		case f = <-p.work:
			f()
			ran = true
		case <-t.C:
			if !ran {
				return
			}
			ran = false
			t.Reset(p.idle)
		case <-p.done:
			return
		}
	}
}
