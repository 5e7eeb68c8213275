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

// A dial without a deadline of its own gets the attempt's timeout; one
// with a deadline keeps it.
func TestBoundDial(t *testing.T) {
	blocked := func(ctx context.Context, _, _ string) (net.Conn, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	dial := boundDial(blocked, 100*time.Millisecond)
	start := time.Now()
	if _, err := dial(context.Background(), "tcp", "x:1"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial = %v, want DeadlineExceeded", err)
	}
	if took := time.Since(start); took < 100*time.Millisecond || took > 5*time.Second {
		t.Errorf("dial took %s, want the 100ms bound", took)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	start = time.Now()
	if _, err := dial(ctx, "tcp", "x:1"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial = %v, want DeadlineExceeded", err)
	}
	if took := time.Since(start); took > 90*time.Millisecond {
		t.Errorf("dial took %s, want the caller's 10ms deadline", took)
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
