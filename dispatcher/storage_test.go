package dispatcher

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

func TestIsStorageFull(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&jetstream.APIError{Code: 503, ErrorCode: 10023, Description: "insufficient resources"}, true},
		{fmt.Errorf("publish: %w", &jetstream.APIError{Code: 500, ErrorCode: 10047, Description: "insufficient storage resources available"}), true},
		{errors.New("write /data/jetstream/x/msgs/1.blk: no space left on device"), true},
		{&jetstream.APIError{Code: 503, ErrorCode: 10077, Description: "maximum messages exceeded"}, true},
		{&jetstream.APIError{Code: 404, ErrorCode: 10059, Description: "stream not found"}, false},
		{errors.New("nats: timeout"), false},
	} {
		if got := isStorageFull(tc.err); got != tc.want {
			t.Errorf("isStorageFull(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// /readyz's storage check: failing for 30 s after a write JetStream
// refused for lack of storage, and only for such a write.
func TestDispatcher_StorageErr(t *testing.T) {
	d := &Dispatcher{}
	d.noteWriteErr(errors.New("nats: timeout"))
	if err := d.StorageErr(); err != nil {
		t.Fatalf("after a timeout: %v", err)
	}
	d.noteWriteErr(&jetstream.APIError{Code: 503, ErrorCode: 10023, Description: "insufficient resources"})
	if err := d.StorageErr(); err == nil || !strings.Contains(err.Error(), "lack of storage") || !strings.Contains(err.Error(), "insufficient resources") {
		t.Fatalf("after a refused write: %v", err)
	}
	d.storageFull.Load().at = time.Now().Add(-storageErrFor - time.Second)
	if err := d.StorageErr(); err != nil {
		t.Fatalf("31 s later: %v", err)
	}
}
