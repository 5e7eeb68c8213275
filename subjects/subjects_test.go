package subjects

import (
	"errors"
	"testing"
)

func TestParseEvent(t *testing.T) {
	tests := []struct {
		subject string
		want    EventKey
		wantErr bool
	}{
		{"callbacks.event.crawl_status.123123.1123123", EventKey{"crawl_status", "123123", "1123123"}, false},
		{"callbacks.event.x.1.9223372036854775807", EventKey{"x", "1", "9223372036854775807"}, false},
		{"callbacks.event.x.1.9999999999999999999", EventKey{"x", "1", "9999999999999999999"}, false},
		{"callbacks.event.x.1.10000000000000000000", EventKey{}, true}, // 20 digits
		{"callbacks.event.crawl_status.0123.1", EventKey{}, true},
		{"callbacks.event.crawl_status.0.1", EventKey{}, true},
		{"callbacks.event.Crawl.1.1", EventKey{}, true},
		{"callbacks.event.crawl-status.1.1", EventKey{}, true},
		{"callbacks.event.crawl_status.1", EventKey{}, true},
		{"callbacks.event.crawl_status.1.2.3", EventKey{}, true},
		{"callbacks.event..1.2", EventKey{}, true},
		{"callbacks.event.a.-1.2", EventKey{}, true},
		{"callbacks.event.a.1.2x", EventKey{}, true},
		{"callbacks.notify.1.2", EventKey{}, true},
		{"callbacks.event." + string(make([]byte, 65)) + ".1.2", EventKey{}, true},
		{"", EventKey{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.subject, func(t *testing.T) {
			got, err := ParseEvent(tt.subject)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParseEvent(%q) error = %v, wantErr %v", tt.subject, err, tt.wantErr)
			}
			if err != nil && !errors.Is(err, ErrBadSubject) {
				t.Errorf("error %v does not wrap ErrBadSubject", err)
			}
			if got != tt.want {
				t.Errorf("ParseEvent(%q) = %+v, want %+v", tt.subject, got, tt.want)
			}
		})
	}
}

func TestEventRoundTrip(t *testing.T) {
	k := EventKey{Type: "report_download_available", AccountID: "123123", ProjectID: "1123123"}
	s, err := Event(k)
	if err != nil {
		t.Fatal(err)
	}
	if s != "callbacks.event.report_download_available.123123.1123123" {
		t.Fatalf("Event = %q", s)
	}
	if got := DeadFor(k); got != "callbacks.dead.report_download_available.123123.1123123" {
		t.Errorf("DeadFor = %q", got)
	}
	back, err := ParseEvent(s)
	if err != nil || back != k {
		t.Fatalf("ParseEvent(Event(k)) = %+v, %v", back, err)
	}
	if _, err := Event(EventKey{Type: "BAD", AccountID: "1", ProjectID: "1"}); err == nil {
		t.Error("Event accepted an invalid type")
	}
}

func FuzzParseEvent(f *testing.F) {
	for _, s := range []string{
		"callbacks.event.crawl_status.123123.1123123",
		"callbacks.event.a.1.2.3",
		"callbacks.event..1.2",
		"callbacks.event.x.01.2",
		"callbacks.notify.1.2",
		"callbacks.event.x.1.99999999999999999999",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParseEvent(s)
		if err != nil {
			if !errors.Is(err, ErrBadSubject) {
				t.Fatalf("error %v does not wrap ErrBadSubject", err)
			}
			return
		}
		back, err := Event(k)
		if err != nil {
			t.Fatalf("parsed %q into %+v which does not build: %v", s, k, err)
		}
		if back != s {
			t.Fatalf("round trip %q -> %q", s, back)
		}
	})
}

func TestAdvisoryTerminated(t *testing.T) {
	if got, want := AdvisoryTerminated(Stream, DispatcherConsumer), "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.CALLBACKS.dispatcher"; got != want {
		t.Fatalf("AdvisoryTerminated = %q, want %q", got, want)
	}
}
