package embedded

import (
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
)

// slogAdapter sends nats-server's logs to slog, and keeps the last
// critical write error in writeErr (Server.WriteErr).
type slogAdapter struct {
	l        *slog.Logger
	writeErr *atomic.Pointer[string]
}

// writeErrs are the starts of nats-server's (v2.15.2) error lines for a
// write its store could not make: filestore.go's "Critical write error"
// (which disables writes to that store until the server restarts) and
// stream.go's failed store of a message for an I/O error.
var writeErrs = []string{"Critical write error", "JetStream failed to store a msg"}

// Notices (the start-up banner among them) are debug noise for callbackd.
func (a slogAdapter) Noticef(f string, v ...any) { a.l.Debug(fmt.Sprintf(f, v...)) }
func (a slogAdapter) Fatalf(f string, v ...any)  { a.l.Error(fmt.Sprintf(f, v...)) }
func (a slogAdapter) Debugf(f string, v ...any)  { a.l.Debug(fmt.Sprintf(f, v...)) }
func (a slogAdapter) Tracef(f string, v ...any)  { a.l.Debug(fmt.Sprintf(f, v...)) }

func (a slogAdapter) Warnf(f string, v ...any) {
	// callbackd needs the plaintext itself, to connect in-process and to
	// dial routes: a bcrypt hash in the server's options would protect
	// nothing the config file does not already hold.
	if strings.HasPrefix(f, "Plaintext passwords detected") {
		a.l.Debug(fmt.Sprintf(f, v...))
		return
	}
	a.l.Warn(fmt.Sprintf(f, v...))
}

func (a slogAdapter) Errorf(f string, v ...any) {
	// Peers that are not up yet are routine while a cluster starts; the
	// server reports the first failed attempt, then one an hour.
	if strings.HasPrefix(f, "Error trying to connect to route") {
		a.l.Warn(fmt.Sprintf(f, v...))
		return
	}
	msg := fmt.Sprintf(f, v...)
	if a.writeErr != nil {
		for _, w := range writeErrs {
			if strings.Contains(msg, w) {
				a.writeErr.Store(&msg)
				break
			}
		}
	}
	a.l.Error(msg)
}
