package dispatcher

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// A write the dispatcher must make — a retry or parked work to
// CALLBACKS_RETRY, a dead letter, a callback-failed notice — that
// JetStream refuses for lack of storage hands its event back: nothing is
// lost, but nothing that needs a write can end until there is room again,
// and such events hold the consumer's pending limit meanwhile. StorageErr
// says so for /readyz.

// storageRefusal is a write refused for lack of storage, and when.
type storageRefusal struct {
	at  time.Time
	err string
}

// storageErrFor is how long after the last refusal StorageErr reports it.
const storageErrFor = 30 * time.Second

// noteWriteErr remembers err when it is JetStream refusing a write for
// lack of storage.
func (d *Dispatcher) noteWriteErr(err error) {
	if isStorageFull(err) {
		d.storageFull.Store(&storageRefusal{at: time.Now(), err: clipText(err.Error())})
	}
}

// StorageErr returns an error when JetStream refused one of the
// dispatcher's writes for lack of storage in the last 30 s, nil otherwise.
func (d *Dispatcher) StorageErr() error {
	r := d.storageFull.Load()
	if r == nil || time.Since(r.at) > storageErrFor {
		return nil
	}
	return fmt.Errorf("JetStream refused a write for lack of storage, or by a limit of the stream, %s ago (%s): events that need a retry, a park or a dead letter are handed back until there is room (free disk space, raise the JetStream storage limit, or put the stream's limits back: serve --update-streams)",
		time.Since(r.at).Round(time.Second), r.err)
}

// isStorageFull reports whether err is JetStream out of storage: its
// resource limits (10023, 10047), the disk itself, or a limit of the
// stream that refuses new messages (10077: "maximum messages exceeded"
// with discard new, set by hand — callbackd's own streams discard none of
// what they must keep).
func isStorageFull(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		// nats-server's JSInsufficientResourcesErr and
		// JSStorageResourcesExceededErr, which nats.go does not name.
		switch apiErr.ErrorCode {
		case 10023, 10047, 10077:
			return true
		}
	}
	s := err.Error()
	return strings.Contains(s, "insufficient resources") || strings.Contains(s, "insufficient storage") || strings.Contains(s, "no space left on device")
}
