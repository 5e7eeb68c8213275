// Command callbackd delivers API callback notifications: it consumes events
// from NATS JetStream and POSTs them to the callback URL configured for each
// project or account. See the README for the quick start.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	// `callbackd plugin builtin` is a plugin process that a callbackd host
	// started: it reads no config and touches no NATS.
	if len(os.Args) > 1 && os.Args[1] == "plugin" {
		os.Exit(runPluginCommand(os.Args[2:], os.Stderr))
	}
	ctx, stop := stopOnSignals(os.Stderr)
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "callbackd:", errorLine(err))
		var ue usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// stopOnSignals returns a context that SIGINT, SIGTERM or SIGHUP (a closed
// terminal) cancels, which makes serve drain and the other commands stop. A
// second signal during the drain exits at once with 128+signal, as an
// operator pressing Ctrl-C twice expects: nothing unfinished has been acked,
// so what was in flight is redelivered after its ack wait, as after a crash.
// stop releases the signals.
func stopOnSignals(w io.Writer) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		select {
		case <-sigs:
			cancel()
		case <-done:
			return
		}
		select {
		case sig := <-sigs:
			fmt.Fprintf(w, "callbackd: %v again: exiting now, without waiting for the drain (unfinished work is redelivered after its ack wait)\n", sig)
			n := 1
			if s, ok := sig.(syscall.Signal); ok {
				n = 128 + int(s)
			}
			os.Exit(n)
		case <-done:
		}
	}()
	return ctx, func() {
		signal.Stop(sigs)
		close(done)
		cancel()
	}
}

// errorLine is err as one line: several problems at once (errors.Join, as
// config reports each wrong key) are separated by "; ".
func errorLine(err error) string {
	lines := strings.Split(strings.TrimSpace(err.Error()), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimSpace(l)
	}
	return strings.Join(slices.DeleteFunc(lines, func(l string) bool { return l == "" }), "; ")
}

// usageError is an error in how callbackd was called (exit status 2).
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }
