package config

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestDefault_matches_spec spells SPEC §6 out again, on purpose: a change to
// Default() must be a change to the spec too.
func TestDefault_matches_spec(t *testing.T) {
	want := &Config{
		DataDir: "./data",
		NATS: NATS{
			Embedded:   true,
			Listen:     "127.0.0.1:4222",
			URL:        "",
			Replicas:   1,
			Duplicates: 2 * time.Minute,
		},
		Dispatcher: Dispatcher{
			Workers:            64,
			PerHostConcurrency: 8,
			MaxAckPending:      256,
			MaxRetryPending:    100000,
			MaxDeliveries:      50,
			MaxPayload:         262144,
		},
		Delivery: Delivery{
			Timeout:      30 * time.Second,
			MaxInFlight:  1024,
			MaxAttempts:  4,
			Backoff:      []time.Duration{10 * time.Second, time.Minute, 5 * time.Minute},
			AllowPrivate: false,
		},
		Retention: Retention{
			Events:   168 * time.Hour,
			Dead:     336 * time.Hour,
			Log:      168 * time.Hour,
			LogBytes: 1 << 30,
		},
		Plugins: Plugins{
			Dir:         "./plugins",
			Builtins:    "process",
			CallTimeout: 5 * time.Second,
			Encoders: map[string]PluginEntry{
				"crawl_status":              {Builtin: "crawl_status"},
				"report_download_available": {Builtin: "report_download_available"},
			},
			Transport: PluginEntry{Builtin: "http-form"},
			Failure:   PluginEntry{Builtin: "sso-webhook"},
		},
		API: API{Listen: "127.0.0.1:8080"},
		Log: Log{Level: "info", Format: "text"},
	}
	if diff := cmp.Diff(want, Default()); diff != "" {
		t.Errorf("Default() mismatch (-spec +got):\n%s", diff)
	}
	if err := Default().Validate(); err != nil {
		t.Errorf("Default().Validate() = %v", err)
	}
}

func TestDefault_returns_a_fresh_value(t *testing.T) {
	a := Default()
	a.Plugins.Encoders["x"] = PluginEntry{Builtin: "x"}
	a.Delivery.Backoff[0] = 0
	b := Default()
	if _, ok := b.Plugins.Encoders["x"]; ok || b.Delivery.Backoff[0] == 0 {
		t.Fatal("Default() shares maps or slices between calls")
	}
}

func TestConfig_AckWait(t *testing.T) {
	c := Default()
	c.Delivery.Timeout = 45 * time.Second
	if got, want := c.AckWait(), 55*time.Second; got != want {
		t.Errorf("AckWait() = %s, want %s", got, want)
	}
}

func TestConfig_AllowCIDRs(t *testing.T) {
	c := Default()
	if got := c.AllowCIDRs(); len(got) != 0 {
		t.Errorf("AllowCIDRs() of the default = %v, want none", got)
	}
	c.Delivery.AllowCIDRs = []string{"10.0.0.0/8", "fd00::/8"}
	want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}
	if diff := cmp.Diff(want, c.AllowCIDRs(), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("AllowCIDRs() (-want +got):\n%s", diff)
	}
}

func TestKeyError_messages(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{&KeyError{Key: "delivery.timeout", Err: errors.New(`invalid duration "abc"`)}, `config: delivery.timeout: invalid duration "abc"`},
		{&KeyError{Key: "dispatcher.wokers", Err: ErrUnknownKey}, `config: unknown key "dispatcher.wokers"`},
		{&KeyError{Err: errors.New("boom")}, "config: boom"},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
	}
}

// keysOf returns the Key of every *KeyError in a joined error, in order.
func keysOf(err error) []string {
	var keys []string
	var walk func(error)
	walk = func(err error) {
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		var ke *KeyError
		if errors.As(err, &ke) {
			keys = append(keys, ke.Key)
		}
	}
	if err != nil {
		walk(err)
	}
	return keys
}
