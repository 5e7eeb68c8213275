package embedded

import (
	"fmt"
	"log/slog"
	"strings"
)

// slogAdapter sends nats-server's logs to slog.
type slogAdapter struct{ l *slog.Logger }

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
	a.l.Error(fmt.Sprintf(f, v...))
}
