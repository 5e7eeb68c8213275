// Command callbackd delivers API callback notifications: it consumes events
// from NATS JetStream and POSTs them to the callback URL configured for each
// project or account. See the README for the quick start.
package main

import (
	"context"
	"errors"
	"fmt"
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
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
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
