package builtin

import (
	"context"
	"net"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
	"time"
)

// watchdog keeps the attempts' timeout without a timer or a cancellable
// context per attempt: it closes an attempt's connection once the
// attempt's deadline has passed, checked every tick while attempts are in
// flight. The caller's context still cancels the request as it would.
//
// Per attempt, a context.WithTimeout costs a timer in the runtime's heap,
// and net/http registers a child context on it and removes it again: with
// no timeout at all, in-process mode spent ~6.5 % less CPU per delivery
// than with it (bench/README.md, round 6). Closing the connection ends a
// request being written, a response being waited for and a body being
// read alike, which is what the timeout is for. A connection is the
// attempt's from its dial (dialer), so a TLS handshake is ended the same
// way, and the dial itself is bounded by the attempt's deadline.
type watchdog struct {
	tick time.Duration
	pool sync.Pool // *watched

	mu sync.Mutex
	// active are the attempts in flight, by their trace: net/http dials
	// with the request's context values, so a dial finds its attempt.
	active  map[*httptrace.ClientTrace]*watched
	running bool // the sweep goroutine runs while active is not empty
}

func newWatchdog(timeout time.Duration) *watchdog {
	d := &watchdog{tick: min(max(timeout/20, 5*time.Millisecond), 250*time.Millisecond), active: map[*httptrace.ClientTrace]*watched{}}
	d.pool.New = func() any {
		w := &watched{}
		w.hook = w.gotConn // one method value per watched, not per attempt
		return w
	}
	return d
}

// watched is one attempt under the watchdog.
type watched struct {
	deadline time.Time
	expired  atomic.Bool
	conn     atomic.Pointer[watchedConn]
	hook     func(httptrace.GotConnInfo)
	trace    httptrace.ClientTrace
}

// start registers an attempt that must end by deadline and returns ctx
// with the trace that tells the watchdog the attempt's connection.
func (d *watchdog) start(ctx context.Context, deadline time.Time) (*watched, context.Context) {
	w := d.pool.Get().(*watched)
	w.deadline = deadline
	// Afresh each time: WithClientTrace composes a caller's trace into it.
	w.trace = httptrace.ClientTrace{GotConn: w.hook}
	d.mu.Lock()
	d.active[&w.trace] = w
	if !d.running {
		d.running = true
		go d.sweep()
	}
	d.mu.Unlock()
	return w, httptrace.WithClientTrace(ctx, &w.trace)
}

// end unregisters w; it reports whether the watchdog ended the attempt.
// w must not be used after.
func (d *watchdog) end(w *watched) (expired bool) {
	d.mu.Lock()
	delete(d.active, &w.trace)
	d.mu.Unlock()
	expired = w.expired.Load()
	w.expired.Store(false)
	w.conn.Store(nil)
	d.pool.Put(w)
	return expired
}

// sweep closes the connections of expired attempts every tick, until no
// attempt is in flight.
func (d *watchdog) sweep() {
	t := time.NewTicker(d.tick)
	defer t.Stop()
	var expired []*watched
	for now := range t.C {
		expired = expired[:0]
		d.mu.Lock()
		if len(d.active) == 0 {
			d.running = false
			d.mu.Unlock()
			return
		}
		for _, w := range d.active {
			if !now.Before(w.deadline) && !w.expired.Load() {
				expired = append(expired, w)
			}
		}
		// Expired under the lock: end cannot recycle w meanwhile.
		for _, w := range expired {
			w.expire()
		}
		d.mu.Unlock()
	}
}

// expire marks w expired and closes its connection, if it has one yet;
// gotConn closes one that comes later.
func (w *watched) expire() {
	w.expired.Store(true)
	if c := w.conn.Load(); c != nil {
		c.closeFor(w)
	}
}

// gotConn is the attempt's httptrace hook: the connection its request
// goes on.
func (w *watched) gotConn(info httptrace.GotConnInfo) {
	c := connOf(info.Conn)
	if c == nil {
		return
	}
	c.owner.Store(w)
	w.conn.Store(c)
	if w.expired.Load() {
		c.closeFor(w)
	}
}

// watchedConn is a transport connection that knows the attempt using it,
// so that the watchdog closes it only for that attempt: once the response
// has been read it may already carry the next one.
type watchedConn struct {
	net.Conn
	owner atomic.Pointer[watched]
}

func (c *watchedConn) closeFor(w *watched) {
	if c.owner.Load() == w {
		_ = c.Conn.Close()
	}
}

// connOf finds the watchedConn under a connection net/http reports (a TLS
// connection wraps it).
func connOf(c net.Conn) *watchedConn {
	for c != nil {
		switch v := c.(type) {
		case *watchedConn:
			return v
		case interface{ NetConn() net.Conn }:
			c = v.NetConn()
		default:
			return nil
		}
	}
	return nil
}

// dialFunc is http.Transport.DialContext.
type dialFunc = func(ctx context.Context, network, addr string) (net.Conn, error)

// dialer wraps dial for the watchdog. net/http dials with the request's
// context values but not its cancellation, so a dial finds the attempt it
// is made for: it is bounded by that attempt's deadline, and until net/http
// hands the connection to a request (GotConn) it is that attempt's, so
// that an attempt that expires during the TLS handshake ends then. Before,
// the dial and the handshake were each bounded by the whole timeout, one
// after the other: an HTTPS attempt could take twice its timeout, past the
// consumer's ack wait. A dial for no attempt in flight (or an earlier
// deadline of its own) keeps timeout as its bound.
func (d *watchdog) dialer(dial dialFunc, timeout time.Duration) dialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		trace := httptrace.ContextClientTrace(ctx)
		deadline := time.Now().Add(timeout)
		if dl, ok := d.deadlineOf(trace); ok && dl.Before(deadline) {
			deadline = dl
		}
		if dl, ok := ctx.Deadline(); !ok || deadline.Before(dl) {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, deadline)
			defer cancel()
		}
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		wc := &watchedConn{Conn: c}
		d.claim(trace, wc)
		return wc, nil
	}
}

// deadlineOf is the deadline of the attempt in flight whose trace is trace.
func (d *watchdog) deadlineOf(trace *httptrace.ClientTrace) (time.Time, bool) {
	if trace == nil {
		return time.Time{}, false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	w, ok := d.active[trace]
	if !ok {
		return time.Time{}, false
	}
	return w.deadline, true
}

// claim makes c the connection of the attempt whose trace is trace, while
// that attempt is in flight and has no connection yet (it may have been
// handed an idle one while this dial went on); c is closed at once if the
// attempt has expired meanwhile. Under the lock, so that end cannot
// recycle the attempt's watched in between.
func (d *watchdog) claim(trace *httptrace.ClientTrace, c *watchedConn) {
	if trace == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	w, ok := d.active[trace]
	if !ok || !w.conn.CompareAndSwap(nil, c) {
		return
	}
	c.owner.Store(w)
	if w.expired.Load() {
		c.closeFor(w)
	}
}
