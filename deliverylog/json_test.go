package deliverylog

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestAppendJSONMatchesEncodingJSON(t *testing.T) {
	at := time.Date(2026, 11, 29, 13, 40, 1, 123456789, time.UTC)
	tests := []struct {
		name string
		r    Record
	}{
		{"delivered", Record{
			DeliveryID: "0123456789abcdef", EventType: "crawl_status", AccountID: "1", ProjectID: "2",
			URL: "https://example.com/hook", Attempt: 1, StatusCode: 200, Outcome: OutcomeDelivered,
			DurationMs: 12, ResponseExcerpt: "ok", StartedAt: at, At: at.Add(time.Millisecond),
		}},
		{"empty optional fields", Record{DeliveryID: "x", Outcome: OutcomeNoDestination, At: at}},
		{"zero record", Record{}},
		{"escapes", Record{
			Error:           "quote \" backslash \\ <tag> & \x00\x01\x1f \b\f\n\r\t \u2028\u2029 é 😀",
			ResponseExcerpt: "bad utf-8: \xff\xfe end",
			At:              at.In(time.FixedZone("x", 3600)),
		}},
		{"negative and large numbers", Record{Attempt: -1, StatusCode: 599, DurationMs: 1 << 40, At: at}},
		{"whole second", Record{At: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}},
		{"attempt within the millisecond", Record{
			DeliveryID: "x", Attempt: 1, StatusCode: 200, Outcome: OutcomeDelivered, StartedAt: at, At: at,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want, err := json.Marshal(reference(tt.r))
			if err != nil {
				t.Fatal(err)
			}
			got := appendJSON(nil, &tt.r)
			if diff := cmp.Diff(string(want), string(got)); diff != "" {
				t.Errorf("appendJSON differs from json.Marshal (-want +got):\n%s", diff)
			}
		})
	}
}

// reference is what appendJSON must write for r, in the shape encoding/json
// writes: Record's fields and tags, but duration_ms present for every
// attempt (StartedAt set), 0 included.
func reference(r Record) any {
	var dur *int64
	if r.DurationMs != 0 || !r.StartedAt.IsZero() {
		dur = &r.DurationMs
	}
	return struct {
		DeliveryID      string    `json:"delivery_id"`
		EventType       string    `json:"event_type"`
		AccountID       string    `json:"account_id"`
		ProjectID       string    `json:"project_id"`
		URL             string    `json:"url,omitempty"`
		Attempt         int       `json:"attempt"`
		StatusCode      int       `json:"status_code,omitempty"`
		Outcome         string    `json:"outcome"`
		Error           string    `json:"error,omitempty"`
		DurationMs      *int64    `json:"duration_ms,omitempty"`
		ResponseExcerpt string    `json:"response_excerpt,omitempty"`
		StartedAt       time.Time `json:"started_at,omitzero"`
		At              time.Time `json:"at"`
	}{
		r.DeliveryID, r.EventType, r.AccountID, r.ProjectID, r.URL, r.Attempt, r.StatusCode,
		r.Outcome, r.Error, dur, r.ResponseExcerpt, r.StartedAt, r.At,
	}
}

func FuzzAppendJSON(f *testing.F) {
	f.Add("0123456789abcdef", "https://example.com/hook?x=1", "HTTP 500", "<html>\u2028", int64(12), 503, int64(1764420000))
	f.Add("", "", "\xff\x00\"\\", "\n\t", int64(0), 0, int64(0))
	f.Fuzz(func(t *testing.T, id, url, errText, excerpt string, durMs int64, status int, unix int64) {
		r := Record{
			DeliveryID: id, EventType: "crawl_status", AccountID: "1", ProjectID: "2", URL: url,
			Attempt: 1, StatusCode: status, Outcome: OutcomeFailed, Error: errText, DurationMs: durMs,
			ResponseExcerpt: excerpt, StartedAt: time.Unix(unix%(1<<34), 0).UTC(), At: time.Unix(unix%(1<<34), 5).UTC(),
		}
		want, err := json.Marshal(reference(r))
		if err != nil {
			t.Skip("encoding/json refuses it:", err)
		}
		if got := appendJSON(nil, &r); string(got) != string(want) {
			t.Errorf("appendJSON = %s\njson.Marshal = %s", got, want)
		}
	})
}

func BenchmarkAppendJSON(b *testing.B) {
	at := time.Now().UTC()
	r := Record{
		DeliveryID: "0123456789abcdef", EventType: "crawl_status", AccountID: "1", ProjectID: "2",
		URL: "https://example.com/hook", Attempt: 1, StatusCode: 200, Outcome: OutcomeDelivered,
		DurationMs: 12, StartedAt: at, At: at,
	}
	b.Run("appendJSON", func(b *testing.B) {
		b.ReportAllocs()
		var buf []byte
		for b.Loop() {
			buf = appendJSON(buf[:0], &r)
		}
	})
	b.Run("json.Marshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := json.Marshal(r); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// An entry in JSON (callbackd deliveries --json) is the stored record with
// its sequence: an attempt's duration_ms is there when it is 0.
func TestEntryMarshalJSON(t *testing.T) {
	at := time.Date(2026, 11, 29, 22, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		e    Entry
		want string
	}{
		{"an attempt within the millisecond", Entry{Seq: 7, Record: Record{
			DeliveryID: "d", EventType: "crawl_status", AccountID: "1", ProjectID: "2", Attempt: 1,
			Outcome: OutcomeFailed, Error: "connection refused", StartedAt: at, At: at,
		}}, `{"delivery_id":"d","event_type":"crawl_status","account_id":"1","project_id":"2","attempt":1,"outcome":"failed","error":"connection refused","duration_ms":0,"started_at":"2026-11-29T22:00:00Z","at":"2026-11-29T22:00:00Z","seq":7}`},
		{"an outcome without an attempt", Entry{Seq: 8, Record: Record{
			DeliveryID: "d", EventType: "crawl_status", AccountID: "1", ProjectID: "2",
			Outcome: OutcomeNoDestination, At: at,
		}}, `{"delivery_id":"d","event_type":"crawl_status","account_id":"1","project_id":"2","attempt":0,"outcome":"no_destination","at":"2026-11-29T22:00:00Z","seq":8}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := json.Marshal(tt.e)
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tt.want {
				t.Errorf("got  %s\nwant %s", b, tt.want)
			}
		})
	}
}
