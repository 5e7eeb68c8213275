package api

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"
)

// checkTimeout bounds each readiness check.
const checkTimeout = 3 * time.Second

// Check is one named readiness condition: NATS connected, streams present,
// plugins running, settings view loaded and fresh. Fn returns nil when the
// condition holds and an error saying why not otherwise; it must honour
// ctx's deadline.
type Check struct {
	Name string
	Fn   func(ctx context.Context) error
	// Detail, when set, is said after the "ok" line's name ("ok plugins:
	// running builtin, x"), "" for nothing.
	Detail func() string
}

// handleHealthz answers 200 while the process can serve HTTP at all.
func handleHealthz(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		methodNotAllowed(w, "GET, HEAD")
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write([]byte("ok\n"))
}

// handleReadyz runs every check at once and answers 200 when all pass, 503
// otherwise; the body has one line per check, "ok <name>" or
// "fail <name>: <reason>", failures first.
func (s *Server) handleReadyz(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		methodNotAllowed(w, "GET, HEAD")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), checkTimeout)
	defer cancel()
	errs := make([]error, len(s.checks))
	var wg sync.WaitGroup
	for i, c := range s.checks {
		wg.Go(func() { errs[i] = runCheck(ctx, c) })
	}
	wg.Wait()

	var fails, oks []string
	for i, c := range s.checks {
		if errs[i] != nil {
			fails = append(fails, fmt.Sprintf("fail %s: %s", c.Name, oneLine(errs[i].Error())))
		} else if d := detail(c); d != "" {
			oks = append(oks, "ok "+c.Name+": "+oneLine(d))
		} else {
			oks = append(oks, "ok "+c.Name)
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if len(fails) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_, _ = w.Write([]byte(strings.Join(append(fails, oks...), "\n") + "\n"))
}

func detail(c Check) string {
	if c.Detail == nil {
		return ""
	}
	return c.Detail()
}

// runCheck runs c, turning a panic or a missed deadline into a failure.
func runCheck(ctx context.Context, c Check) error {
	done := make(chan error, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				done <- fmt.Errorf("check panicked: %v", p)
			}
		}()
		done <- c.Fn(ctx)
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("no answer within %s", checkTimeout)
	}
}

// oneLine keeps a reason on its line of the /readyz body.
func oneLine(s string) string {
	return strings.NewReplacer("\r", " ", "\n", " ").Replace(s)
}
