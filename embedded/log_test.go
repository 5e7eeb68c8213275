package embedded

import (
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
)

// A critical write error in the server's log (a full disk) is kept for
// Server.WriteErr: the server refuses writes to that stream from then on
// and answers the publishes with nothing, so its log is where it shows.
func TestSlogAdapter_keeps_the_last_write_error(t *testing.T) {
	tests := []struct {
		name    string
		format  string
		args    []any
		wantErr string // "" when nothing is kept
	}{
		{"filestore", "Filestore [%s] Critical write error: %v", []any{"CALLBACKS", "write data/msgs/1.blk: no space left on device"}, "no space left on device"},
		{"stream", "%s", []any{"JetStream failed to store a msg on stream '$G > CALLBACKS': write data/msgs/1.blk: no space left on device"}, "failed to store a msg"},
		{"a route not up yet", "Error trying to connect to route (attempt %v): %v", []any{1, "connection refused"}, ""},
		{"another error", "Error listening: %v", []any{"address in use"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := new(atomic.Pointer[string])
			a := slogAdapter{l: slog.New(slog.DiscardHandler), writeErr: w}
			a.Errorf(tt.format, tt.args...)
			s := &Server{writeErr: w}
			err := s.WriteErr()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("WriteErr() = %v, want nil", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("WriteErr() = %v, want it to say %q", err, tt.wantErr)
			}
		})
	}
}
