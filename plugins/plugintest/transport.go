package plugintest

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/callbackd/callbackd/plugins"
)

// TransportOptions tune TestTransport.
type TransportOptions struct {
	// Guarded, if not nil, returns a transport with the default outbound
	// policy (private addresses refused); the suite checks that it refuses
	// a loopback receiver with OutcomeNotAllowed. Transports that make
	// their own connections should use plugins.Guard.
	Guarded func(t *testing.T) plugins.Transport
	// AttemptTimeout is the transport's own per-attempt timeout, when it
	// has one shorter than 10s: the suite then expects a hanging receiver
	// to give a retryable result rather than the caller's deadline.
	AttemptTimeout time.Duration
}

// TestTransport runs the transport suite against the transports
// newTransport makes, which must be allowed to reach loopback receivers
// (httptest servers): status codes map to outcomes as SPEC §3 says,
// Retry-After is read on 429 and 503, headers and the delivery ID are
// sent, every field reaches the receiver, the excerpt is bounded valid
// UTF-8, a receiver that is gone is retryable, a hanging one is bounded by
// the caller's deadline, and concurrent deliveries do not mix.
func TestTransport(t *testing.T, newTransport func(t *testing.T) plugins.Transport, o TransportOptions) {
	t.Helper()
	n := plugins.Notification{Fields: []plugins.Field{
		{Name: "message", Value: plugins.String("conformance")},
		{Name: "resource", Value: plugins.String("test")},
		{Name: "count", Value: plugins.Int(42)},
		{Name: "empty", Value: plugins.Null()},
		{Name: "flag", Value: plugins.Bool(true)},
	}}

	t.Run("outcomes", func(t *testing.T) {
		tr := newTransport(t)
		for _, c := range []struct {
			status     int
			retryAfter string
			want       plugins.Outcome
			wantAfter  time.Duration
		}{
			{200, "", plugins.OutcomeDelivered, 0},
			{201, "", plugins.OutcomeDelivered, 0},
			{202, "", plugins.OutcomeDelivered, 0},
			{203, "", plugins.OutcomeDelivered, 0},
			{204, "", plugins.OutcomeDelivered, 0},
			{205, "", plugins.OutcomeFinal, 0},
			{299, "", plugins.OutcomeFinal, 0},
			{301, "", plugins.OutcomeFinal, 0},
			{302, "", plugins.OutcomeFinal, 0},
			{400, "", plugins.OutcomeFinal, 0},
			{404, "", plugins.OutcomeFinal, 0},
			{408, "", plugins.OutcomeRetryable, 0},
			{429, "7", plugins.OutcomeRetryable, 7 * time.Second},
			{500, "", plugins.OutcomeRetryable, 0},
			{503, "120", plugins.OutcomeRetryable, 2 * time.Minute},
		} {
			srv := receiver(t, func(w http.ResponseWriter, _ *http.Request) {
				if c.retryAfter != "" {
					w.Header().Set("Retry-After", c.retryAfter)
				}
				if c.status >= 300 && c.status < 400 {
					w.Header().Set("Location", "/elsewhere")
				}
				w.WriteHeader(c.status)
			})
			res, err := tr.Deliver(ctx(t), plugins.Delivery{DeliveryID: "d1", Destination: plugins.Destination{URL: srv.URL}, Notification: n})
			if err != nil {
				t.Errorf("status %d: error %v, want a result", c.status, err)
				continue
			}
			if res.Outcome != c.want || res.StatusCode != c.status || res.RetryAfter != c.wantAfter {
				t.Errorf("status %d: got %+v, want outcome %s, status %d, retry after %v", c.status, res, c.want, c.status, c.wantAfter)
			}
			if c.want != plugins.OutcomeDelivered && res.Error == "" {
				t.Errorf("status %d: no error text", c.status)
			}
			if res.Duration <= 0 {
				t.Errorf("status %d: duration %v", c.status, res.Duration)
			}
		}
	})

	t.Run("request", func(t *testing.T) {
		var mu sync.Mutex
		var got *http.Request
		var body string
		srv := receiver(t, func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			mu.Lock()
			got, body = r, string(b)
			mu.Unlock()
			w.WriteHeader(http.StatusNoContent)
		})
		res, err := newTransport(t).Deliver(ctx(t), plugins.Delivery{
			DeliveryID:   "1700000000-42",
			Destination:  plugins.Destination{URL: srv.URL + "/hook", Headers: []plugins.Header{{Key: "X-Api-Key", Value: "s3cr3t"}, {Key: "x-lower", Value: "v"}}},
			Notification: n,
		})
		if err != nil || res.Outcome != plugins.OutcomeDelivered {
			t.Fatalf("got %+v, %v", res, err)
		}
		mu.Lock()
		defer mu.Unlock()
		if got.Method != http.MethodPost || got.URL.Path != "/hook" {
			t.Errorf("request %s %s, want POST /hook", got.Method, got.URL.Path)
		}
		if v := got.Header.Get("Callback-Delivery-Id"); v != "1700000000-42" {
			t.Errorf("Callback-Delivery-Id = %q", v)
		}
		if v := got.Header.Get("X-Api-Key"); v != "s3cr3t" {
			t.Errorf("X-Api-Key = %q", v)
		}
		if v := got.Header.Get("X-Lower"); v != "v" {
			t.Errorf("x-lower = %q", v)
		}
		for _, f := range n.Fields {
			if !strings.Contains(body, f.Name) || !strings.Contains(body, f.Value.Text) {
				t.Errorf("body %q lacks field %s=%s", body, f.Name, f.Value.Text)
			}
		}
	})

	t.Run("excerpt is bounded UTF-8", func(t *testing.T) {
		srv := receiver(t, func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(strings.Repeat("é", 3000) + "\xff"))
		})
		res, err := newTransport(t).Deliver(ctx(t), plugins.Delivery{DeliveryID: "d", Destination: plugins.Destination{URL: srv.URL}, Notification: n})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.ResponseExcerpt) > 1024 || !utf8.ValidString(res.ResponseExcerpt) || res.ResponseExcerpt == "" {
			t.Errorf("excerpt of %d bytes, valid UTF-8 %v", len(res.ResponseExcerpt), utf8.ValidString(res.ResponseExcerpt))
		}
	})

	t.Run("receiver gone is retryable", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		_ = ln.Close()
		res, err := newTransport(t).Deliver(ctx(t), plugins.Delivery{DeliveryID: "d", Destination: plugins.Destination{URL: "http://" + addr + "/"}, Notification: n})
		if err != nil || res.Outcome != plugins.OutcomeRetryable || res.StatusCode != 0 || res.Error == "" {
			t.Errorf("got %+v, %v; want retryable, status 0, an error text", res, err)
		}
	})

	t.Run("hanging receiver is bounded", func(t *testing.T) {
		release := make(chan struct{})
		srv := receiver(t, func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		})
		defer close(release)
		wait := 2 * time.Second
		if o.AttemptTimeout > 0 {
			wait = o.AttemptTimeout + 2*time.Second
		}
		c, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		start := time.Now()
		res, err := newTransport(t).Deliver(c, plugins.Delivery{DeliveryID: "d", Destination: plugins.Destination{URL: srv.URL}, Notification: n})
		if took := time.Since(start); took > wait+5*time.Second {
			t.Errorf("Deliver took %v past a %v deadline", took, wait)
		}
		switch {
		case err != nil:
			if o.AttemptTimeout > 0 {
				t.Errorf("err = %v, want a retryable result from the transport's own timeout", err)
			}
			if errors.Is(err, plugins.ErrInvalidEvent) {
				t.Errorf("err = %v", err)
			}
		case res.Outcome != plugins.OutcomeRetryable:
			t.Errorf("got %+v, want retryable", res)
		}
	})

	t.Run("concurrent deliveries", func(t *testing.T) {
		srv := receiver(t, func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			id := r.Header.Get("Callback-Delivery-Id")
			if !strings.Contains(string(b), id) {
				w.WriteHeader(http.StatusBadRequest)
				return
			}
			w.WriteHeader(http.StatusOK)
		})
		tr := newTransport(t)
		var wg sync.WaitGroup
		for i := 0; i < 32; i++ {
			wg.Go(func() {
				id := "delivery-" + string(rune('a'+i%26)) + strings.Repeat("x", i)
				res, err := tr.Deliver(ctx(t), plugins.Delivery{
					DeliveryID:   id,
					Destination:  plugins.Destination{URL: srv.URL},
					Notification: plugins.Notification{Fields: []plugins.Field{{Name: "id", Value: plugins.String(id)}}},
				})
				if err != nil || res.Outcome != plugins.OutcomeDelivered {
					t.Errorf("%s: %+v, %v", id, res, err)
				}
			})
		}
		wg.Wait()
	})

	if o.Guarded != nil {
		t.Run("private addresses refused", func(t *testing.T) {
			srv := receiver(t, func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
			res, err := o.Guarded(t).Deliver(ctx(t), plugins.Delivery{DeliveryID: "d", Destination: plugins.Destination{URL: srv.URL}, Notification: n})
			if err != nil || res.Outcome != plugins.OutcomeNotAllowed || !strings.Contains(res.Error, "127.0.0.1") {
				t.Errorf("got %+v, %v; want not_allowed naming the address", res, err)
			}
		})
	}
}

func receiver(t *testing.T, h http.HandlerFunc) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}
