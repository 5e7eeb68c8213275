package plugintest

import (
	"fmt"
	"reflect"
	"sync"
	"testing"

	"github.com/callbackd/callbackd/plugins"
)

// FailureCase is one failed delivery and what a failure handler must ask
// callbackd to send about it. Give Failure a fixed FailedAt so that the
// result is comparable.
type FailureCase struct {
	Name    string
	Failure plugins.Failure
	Want    []plugins.Outbound
}

// TestFailure runs the failure handler suite against the handlers
// newHandler makes: every case gives exactly its outbound notifications,
// every outbound has a destination URL and fields with names, results are
// deterministic, and concurrent callers get the same results.
func TestFailure(t *testing.T, newHandler func(t *testing.T) plugins.FailureHandler, cases []FailureCase) {
	t.Helper()
	check := func(t *testing.T, c FailureCase, out []plugins.Outbound, err error) {
		t.Helper()
		if err != nil {
			t.Errorf("%s: %v", c.Name, err)
			return
		}
		for i, o := range out {
			if o.Destination.URL == "" {
				t.Errorf("%s: outbound %d has no destination URL", c.Name, i)
			}
			for _, f := range o.Notification.Fields {
				if f.Name == "" {
					t.Errorf("%s: outbound %d has a field without a name", c.Name, i)
				}
			}
		}
		if len(out) == 0 && len(c.Want) == 0 {
			return
		}
		if !reflect.DeepEqual(out, c.Want) {
			t.Errorf("%s:\n got %+v\nwant %+v", c.Name, out, c.Want)
		}
	}
	t.Run("cases", func(t *testing.T) {
		h := newHandler(t)
		for _, c := range cases {
			t.Run(c.Name, func(t *testing.T) {
				out, err := h.OnFailure(ctx(t), c.Failure)
				check(t, c, out, err)
			})
		}
	})
	t.Run("deterministic", func(t *testing.T) {
		h := newHandler(t)
		for _, c := range cases {
			a, errA := h.OnFailure(ctx(t), c.Failure)
			b, errB := h.OnFailure(ctx(t), c.Failure)
			if !reflect.DeepEqual(a, b) || fmt.Sprint(errA) != fmt.Sprint(errB) {
				t.Errorf("%s: two calls differ", c.Name)
			}
		}
	})
	t.Run("concurrent callers", func(t *testing.T) {
		h := newHandler(t)
		var wg sync.WaitGroup
		for i := 0; i < 8; i++ {
			wg.Go(func() {
				for r := 0; r < 10; r++ {
					for _, c := range cases {
						out, err := h.OnFailure(ctx(t), c.Failure)
						check(t, c, out, err)
					}
				}
			})
		}
		wg.Wait()
	})
}
