package builtin

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/callbackd/callbackd/plugins"
)

// The attempt's timeout holds whether the caller can cancel or not (the
// dispatcher in-process cannot; a plugin process's item can), in every
// phase of a request.
func TestHTTPForm_timeout_in_every_phase_with_and_without_a_cancellable_caller(t *testing.T) {
	const timeout = 300 * time.Millisecond
	callers := []struct {
		name string
		ctx  func(t *testing.T) context.Context
	}{
		{"caller cannot cancel", func(*testing.T) context.Context { return context.Background() }},
		{"caller can cancel", func(t *testing.T) context.Context {
			ctx, cancel := context.WithCancel(context.Background())
			t.Cleanup(cancel)
			return ctx
		}},
	}
	phases := []struct {
		name    string
		handler func(release <-chan struct{}) http.HandlerFunc
		want    func(t *testing.T, res plugins.Result)
	}{
		{"no answer", func(release <-chan struct{}) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				select {
				case <-release:
				case <-r.Context().Done():
				}
			}
		}, func(t *testing.T, res plugins.Result) {
			if res.Outcome != plugins.OutcomeRetryable || res.StatusCode != 0 || res.Error != "timeout after 300ms" {
				t.Errorf("result = %+v, want a retryable timeout with no status", res)
			}
		}},
		{"body stalls after the status", func(release <-chan struct{}) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", "100")
				w.WriteHeader(http.StatusOK)
				_, _ = w.Write([]byte("partial"))
				w.(http.Flusher).Flush()
				select {
				case <-release:
				case <-r.Context().Done():
				}
			}
		}, func(t *testing.T, res plugins.Result) {
			// The endpoint answered: its answer stands, with what came
			// of the body.
			if res.Outcome != plugins.OutcomeDelivered || res.StatusCode != 200 || res.ResponseExcerpt != "partial" {
				t.Errorf("result = %+v, want delivered with the partial body", res)
			}
		}},
	}
	for _, c := range callers {
		for _, p := range phases {
			t.Run(c.name+"/"+p.name, func(t *testing.T) {
				release := make(chan struct{})
				var once sync.Once
				unblock := func() { once.Do(func() { close(release) }) }
				sink := newHTTPFormSink(t, p.handler(release))
				t.Cleanup(unblock) // runs before the sink closes
				tr := newTestHTTPForm(t, timeout)
				start := time.Now()
				res, err := tr.Deliver(c.ctx(t), httpFormDelivery(sink.URL))
				took := time.Since(start)
				if err != nil {
					t.Fatalf("Deliver: %v", err)
				}
				p.want(t, res)
				if took < timeout || took > timeout+5*time.Second {
					t.Errorf("the attempt ended after %s, want its timeout %s", took, timeout)
				}
				// The connection the attempt timed out on is not reused:
				// the next attempt gets a fresh one and its answer.
				unblock()
				if res := deliverOK(t, tr, httpFormDelivery(sink.URL)); res.StatusCode != 200 {
					t.Errorf("next attempt: %+v", res)
				}
			})
		}
	}
}

// Only the attempt that owns a connection can have the watchdog close it:
// once a response has been read, the connection may already carry the
// next attempt.
func TestWatchdog_closes_a_connection_only_for_its_current_attempt(t *testing.T) {
	a, b := net.Pipe()
	t.Cleanup(func() { _ = b.Close() })
	c := &watchedConn{Conn: a}
	d := newWatchdog(time.Hour)
	first, _ := d.start(context.Background(), time.Now().Add(time.Hour))
	first.gotConn(httptrace.GotConnInfo{Conn: c})
	second, _ := d.start(context.Background(), time.Now().Add(time.Hour))
	second.gotConn(httptrace.GotConnInfo{Conn: c}) // reused by the next attempt

	first.expire()
	if err := writeOne(c); err != nil {
		t.Fatalf("the first attempt's expiry closed the second's connection: %v", err)
	}
	second.expire()
	if err := writeOne(c); !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("after the owner's expiry, write = %v, want the connection closed", err)
	}
	if !d.end(first) || !d.end(second) {
		t.Error("end did not report the expiries")
	}
}

// writeOne writes a byte to one end of a pipe that nobody reads: nil when
// the pipe is open (the write times out), the error when it is closed.
func writeOne(c net.Conn) error {
	_ = c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := c.Write([]byte{1})
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return nil // open, nobody reading: not closed
	}
	return err
}

// An attempt whose deadline passes before it has a connection gets its
// connection closed when it comes.
func TestWatchdog_a_connection_after_the_expiry_is_closed(t *testing.T) {
	a, b := net.Pipe()
	t.Cleanup(func() { _ = b.Close() })
	c := &watchedConn{Conn: a}
	d := newWatchdog(time.Hour)
	w, _ := d.start(context.Background(), time.Now())
	w.expire()
	w.gotConn(httptrace.GotConnInfo{Conn: c})
	if err := writeOne(c); err == nil {
		t.Fatal("the connection of an expired attempt is open")
	}
	d.end(w)
}

// The sweep runs only while attempts are in flight.
func TestWatchdog_sweep_stops_when_idle(t *testing.T) {
	d := newWatchdog(100 * time.Millisecond)
	w, _ := d.start(context.Background(), time.Now().Add(time.Hour))
	d.mu.Lock()
	running := d.running
	d.mu.Unlock()
	if !running {
		t.Fatal("no sweep with an attempt in flight")
	}
	d.end(w)
	deadline := time.Now().Add(5 * time.Second)
	for {
		d.mu.Lock()
		running = d.running
		d.mu.Unlock()
		if !running {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the sweep still runs with no attempt in flight")
		}
		time.Sleep(d.tick)
	}
}

// The watchdog's dialer bounds a dial by the deadline of the attempt it is
// made for (found by the trace in its context), else by the timeout; a
// caller's earlier deadline is kept. The connection it makes is the
// attempt's, unless the attempt already has one.
func TestWatchdog_dialer(t *testing.T) {
	blocked := func(ctx context.Context, _, _ string) (net.Conn, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	d := newWatchdog(time.Hour)
	short := func(ms int) context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(ms)*time.Millisecond)
		t.Cleanup(cancel)
		return ctx
	}
	w, attemptCtx := d.start(context.Background(), time.Now().Add(100*time.Millisecond))
	t.Cleanup(func() { d.end(w) })
	tests := []struct {
		name        string
		timeout     time.Duration
		ctx         context.Context
		least, most time.Duration
	}{
		{"the attempt's deadline", time.Hour, context.WithoutCancel(attemptCtx), 90 * time.Millisecond, 5 * time.Second},
		{"no attempt: the timeout", 100 * time.Millisecond, context.Background(), 100 * time.Millisecond, 5 * time.Second},
		{"the caller's earlier deadline", time.Hour, short(10), 0, 90 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			if _, err := d.dialer(blocked, tt.timeout)(tt.ctx, "tcp", "x:1"); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("dial = %v, want DeadlineExceeded", err)
			}
			if took := time.Since(start); took < tt.least || took > tt.most {
				t.Errorf("dial took %s, want %s to %s", took, tt.least, tt.most)
			}
		})
	}

	t.Run("the connection is the attempt's", func(t *testing.T) {
		pipe := func(context.Context, string, string) (net.Conn, error) {
			a, b := net.Pipe()
			t.Cleanup(func() { _ = a.Close(); _ = b.Close() })
			return a, nil
		}
		w, ctx := d.start(context.Background(), time.Now().Add(time.Hour))
		defer d.end(w)
		c, err := d.dialer(pipe, time.Hour)(context.WithoutCancel(ctx), "tcp", "x:1")
		if err != nil {
			t.Fatal(err)
		}
		wc := c.(*watchedConn)
		if w.conn.Load() != wc || wc.owner.Load() != w {
			t.Fatal("the dialled connection is not the attempt's")
		}
		// A second dial for the same attempt (it got the first) is not
		// claimed: the attempt keeps the connection it has.
		c2, err := d.dialer(pipe, time.Hour)(context.WithoutCancel(ctx), "tcp", "x:1")
		if err != nil {
			t.Fatal(err)
		}
		if w.conn.Load() != wc || c2.(*watchedConn).owner.Load() != nil {
			t.Error("a second dial took the attempt's connection over")
		}
	})
}

// An HTTPS attempt ends at its timeout even when the connection took most
// of it to come up and the TLS handshake then stalls: before, the dial and
// the handshake were each bounded by the whole timeout, one after the
// other (an attempt could last twice its timeout, past the consumer's ack
// wait). The error is the timeout's, whichever bound ended it.
func TestHTTPForm_a_slow_connect_and_a_stalled_TLS_handshake_end_at_the_timeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// Connections are accepted and never get a byte of the handshake back.
	var held []net.Conn
	accepted := make(chan struct{})
	go func() {
		defer close(accepted)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-accepted
		for _, c := range held {
			_ = c.Close()
		}
	})
	const timeout = time.Second
	tr := newTestHTTPForm(t, timeout)
	// A connect that takes 90 % of the timeout (a far or loaded network).
	slow := func(ctx context.Context, network, addr string) (net.Conn, error) {
		select {
		case <-time.After(900 * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return httpFormLoopback().DialContext(ctx, network, addr)
	}
	tr.transport.DialContext = tr.dog.dialer(slow, timeout)
	start := time.Now()
	res, err := tr.Deliver(context.Background(), httpFormDelivery("https://"+ln.Addr().String()+"/hook"))
	took := time.Since(start)
	if err != nil {
		t.Fatalf("Deliver: %v", err)
	}
	if res.Outcome != plugins.OutcomeRetryable || res.Error != "timeout after 1s" {
		t.Errorf("result = %+v, want a retryable \"timeout after 1s\"", res)
	}
	// Ended by the watchdog within a few ticks of the deadline; the old
	// bounds ended it at 1.9 s.
	if took < timeout || took > 1600*time.Millisecond {
		t.Errorf("the attempt took %s, want its timeout %s", took, timeout)
	}
}

// A caller's own trace still sees its attempts, once each: the watchdog's
// pooled trace does not keep what an earlier caller composed into it.
func TestHTTPForm_callers_trace_is_kept_and_not_accumulated(t *testing.T) {
	sink := newHTTPFormSink(t, nil)
	tr := newTestHTTPForm(t, 5*time.Second)
	var calls atomic.Int64
	traced := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		GotConn: func(httptrace.GotConnInfo) { calls.Add(1) },
	})
	for i := range 3 {
		if _, err := tr.Deliver(traced, httpFormDelivery(sink.URL)); err != nil {
			t.Fatal(err)
		}
		if got := calls.Load(); got != int64(i+1) {
			t.Fatalf("after %d attempts the caller's GotConn ran %d times", i+1, got)
		}
	}
	// Without the caller's trace, nothing of it is left.
	deliverOK(t, tr, httpFormDelivery(sink.URL))
	if got := calls.Load(); got != 3 {
		t.Errorf("an untraced attempt ran the caller's GotConn (%d calls)", got)
	}
}
