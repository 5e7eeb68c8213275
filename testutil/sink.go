package testutil

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// Request is one request a Sink received.
type Request struct {
	Method string
	Path   string
	Header http.Header
	Body   string
	At     time.Time
}

// Sink is an HTTP server that records every request and answers with the
// status its Respond function picks (200 by default).
type Sink struct {
	*httptest.Server

	mu       sync.Mutex
	requests []Request
	respond  func(r Request) (int, http.Header)
	arrived  chan struct{}
}

// NewSink starts a recording HTTP server on loopback, closed at cleanup.
func NewSink(t testing.TB) *Sink {
	t.Helper()
	s := &Sink{arrived: make(chan struct{}, 1<<16)}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

// Respond sets the function that picks each answer's status code.
func (s *Sink) Respond(fn func(r Request) int) {
	s.RespondWithHeaders(func(r Request) (int, http.Header) { return fn(r), nil })
}

// RespondWithHeaders sets the function that picks each answer's status code
// and response headers.
func (s *Sink) RespondWithHeaders(fn func(r Request) (int, http.Header)) {
	s.mu.Lock()
	s.respond = fn
	s.mu.Unlock()
}

func (s *Sink) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	req := Request{Method: r.Method, Path: r.URL.Path, Header: r.Header.Clone(), Body: string(body), At: time.Now()}
	s.mu.Lock()
	s.requests = append(s.requests, req)
	respond := s.respond
	s.mu.Unlock()
	select {
	case s.arrived <- struct{}{}:
	default:
	}
	code := http.StatusOK
	if respond != nil {
		var h http.Header
		code, h = respond(req)
		for k, v := range h {
			w.Header()[k] = v
		}
	}
	w.WriteHeader(code)
}

// Requests returns a copy of what the sink received so far.
func (s *Sink) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// WaitFor waits until the sink has received at least n requests and returns
// them; it fails the test after total.
func (s *Sink) WaitFor(t testing.TB, n int, total time.Duration) []Request {
	t.Helper()
	timeout := time.After(total)
	for {
		if got := s.Requests(); len(got) >= n {
			return got
		}
		select {
		case <-s.arrived:
		case <-timeout:
			t.Fatalf("sink: %s", fmt.Sprintf("%d of %d requests after %s", len(s.Requests()), n, total))
		}
	}
}
