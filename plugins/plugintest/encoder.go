// Package plugintest holds the conformance suites of callbackd's plugin
// kinds: TestEncoder, TestTransport and TestFailure. callbackd runs them
// against its built-in plugins, in-process and in their own process; run
// them against yours, in-process in a unit test and through a real plugin
// process with Launch:
//
//	func TestConformance(t *testing.T) {
//		plugintest.TestEncoder(t, func(t *testing.T) plugins.Encoder { return myEncoder{} }, myCases)
//	}
package plugintest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/callbackd/callbackd/plugins"
)

// EncoderCase is one event and what an encoder must make of it. Exactly one
// of Want, WantForm, WantSkip and WantInvalid is set.
type EncoderCase struct {
	Name  string
	Event plugins.Event
	// Want is the exact notification: names, kinds and texts, in order.
	Want *plugins.Notification
	// WantForm is the notification form-encoded (Notification.AppendForm),
	// for cases written as the body a receiver gets.
	WantForm string
	// WantSkip: the event is skipped by rule (Encoded.SkipReason set).
	WantSkip bool
	// WantInvalid: the event can never be encoded (ErrInvalidEvent).
	WantInvalid bool
}

var eventTypeRE = regexp.MustCompile(`^[a-z0-9_]{1,64}$`)

// garbage are payloads no encoder may accept, nor choke on.
var garbage = map[string]string{
	"empty":          "",
	"not JSON":       "crawl finished!",
	"array":          `[1, 2, 3]`,
	"string":         `"crawl"`,
	"null":           `null`,
	"truncated":      `{"crawl_id": 1`,
	"invalid UTF-8":  "{\"a\": \"\xff\xfe\"}",
	"deep nesting":   deep(10000),
	"trailing bytes": `{} {}`,
}

func deep(n int) string {
	b := make([]byte, 0, 2*n+2)
	for i := 0; i < n; i++ {
		b = append(b, '[')
	}
	for i := 0; i < n; i++ {
		b = append(b, ']')
	}
	return string(b)
}

// TestEncoder runs the encoder suite against the encoders newEncoder makes
// (a fresh one per subtest; it may return the same one): Info is sane,
// every case gives what it wants, garbage is invalid rather than a crash or
// an infrastructure error, results are deterministic, and concurrent
// callers get the same results as serial ones.
func TestEncoder(t *testing.T, newEncoder func(t *testing.T) plugins.Encoder, cases []EncoderCase) {
	t.Helper()
	t.Run("Info", func(t *testing.T) {
		info, err := newEncoder(t).Info(context.Background())
		if err != nil {
			t.Fatalf("Info: %v", err)
		}
		if !eventTypeRE.MatchString(info.EventType) {
			t.Errorf("Info().EventType = %q, want [a-z0-9_]{1,64}", info.EventType)
		}
		seen := map[string]bool{}
		for _, f := range info.IDFields {
			if f == "" || seen[f] {
				t.Errorf("Info().IDFields = %q: names must be non-empty and unique", info.IDFields)
			}
			seen[f] = true
		}
	})
	t.Run("cases", func(t *testing.T) {
		enc := newEncoder(t)
		for _, c := range cases {
			t.Run(c.Name, func(t *testing.T) {
				out, err := enc.Encode(ctx(t), c.Event)
				checkEncoderCase(t, c, out, err)
			})
		}
	})
	t.Run("garbage is invalid", func(t *testing.T) {
		enc := newEncoder(t)
		info, _ := enc.Info(context.Background())
		for name, payload := range garbage {
			t.Run(name, func(t *testing.T) {
				_, err := enc.Encode(ctx(t), plugins.Event{
					Type: info.EventType, AccountID: "1", ProjectID: "2", DeliveryID: "d", Payload: []byte(payload),
				})
				if !errors.Is(err, plugins.ErrInvalidEvent) {
					t.Errorf("Encode(%.40q) = %v, want an error wrapping ErrInvalidEvent", payload, err)
				}
			})
		}
	})
	t.Run("deterministic", func(t *testing.T) {
		enc := newEncoder(t)
		for _, c := range cases {
			a, errA := enc.Encode(ctx(t), c.Event)
			b, errB := enc.Encode(ctx(t), c.Event)
			if !reflect.DeepEqual(a, b) || fmt.Sprint(errA) != fmt.Sprint(errB) {
				t.Errorf("%s: two calls differ: %+v, %v and %+v, %v", c.Name, a, errA, b, errB)
			}
		}
	})
	t.Run("concurrent callers", func(t *testing.T) {
		enc := newEncoder(t)
		var wg sync.WaitGroup
		for i := 0; i < 8; i++ {
			wg.Go(func() {
				for r := 0; r < 20; r++ {
					for _, c := range cases {
						out, err := enc.Encode(ctx(t), c.Event)
						checkEncoderCase(t, c, out, err)
					}
				}
			})
		}
		wg.Wait()
	})
}

func checkEncoderCase(t *testing.T, c EncoderCase, out plugins.Encoded, err error) {
	t.Helper()
	switch {
	case c.WantInvalid:
		if !errors.Is(err, plugins.ErrInvalidEvent) {
			t.Errorf("%s: got %+v, %v; want ErrInvalidEvent", c.Name, out, err)
		}
		return
	case err != nil:
		t.Errorf("%s: unexpected error %v", c.Name, err)
		return
	case c.WantSkip:
		if out.SkipReason == "" {
			t.Errorf("%s: got %+v, want a skip with its reason", c.Name, out)
		}
		return
	case out.SkipReason != "":
		t.Errorf("%s: skipped (%s), want a notification", c.Name, out.SkipReason)
		return
	}
	for i, f := range out.Notification.Fields {
		if f.Name == "" {
			t.Errorf("%s: field %d has no name", c.Name, i)
		}
		if f.Value.Kind > plugins.KindBool {
			t.Errorf("%s: field %s has kind %v", c.Name, f.Name, f.Value.Kind)
		}
	}
	if c.Want != nil && !reflect.DeepEqual(normalize(*c.Want), normalize(out.Notification)) {
		t.Errorf("%s: notification\n got %+v\nwant %+v", c.Name, out.Notification.Fields, c.Want.Fields)
	}
	if c.WantForm != "" {
		if got := string(out.Notification.AppendForm(nil)); got != c.WantForm {
			t.Errorf("%s: form\n got %s\nwant %s", c.Name, got, c.WantForm)
		}
	}
}

// normalize treats a nil and an empty field list alike.
func normalize(n plugins.Notification) plugins.Notification {
	if len(n.Fields) == 0 {
		return plugins.Notification{}
	}
	return n
}

// ctx is a call's context: a deadline as callbackd gives one.
func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}
