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
// idle, or at once when done is closed (a nil done never is).
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

func (p *Pool) worker(f func()) {
	f()
	t := time.NewTimer(p.idle)
	defer t.Stop()
	for {
		select {
		case f = <-p.work:
			f()
			t.Reset(p.idle)
		case <-t.C:
			return
		case <-p.done:
			return
		}
	}
}
