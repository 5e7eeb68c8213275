package expiry

import (
	"testing"
	"time"
)

func TestAdvance(t *testing.T) {
	created := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	at := func(first, delivered, deliveries uint64) sample {
		return sample{StreamCreated: created, ConsumerCreated: created, FirstSeq: first, Delivered: delivered, Deliveries: deliveries}
	}
	pos := func(delivered, deliveries, frontier uint64) *position {
		return &position{StreamCreated: created, ConsumerCreated: created, Delivered: delivered, Deliveries: deliveries, Frontier: frontier}
	}
	tests := []struct {
		name         string
		prev         *position
		s            sample
		want         uint64
		wantFrontier uint64
	}{
		{"first sample, empty stream", nil, at(0, 0, 0), 0, 0},
		{"first sample, all caught up", nil, at(11, 10, 10), 0, 10},
		{"first sample, 5 expired while nothing consumed", nil, at(6, 0, 0), 5, 5},
		{"first sample, backlog stored", nil, at(3, 2, 2), 0, 2},
		{"head gap grows", pos(0, 0, 5), at(9, 0, 0), 3, 8},
		{"head gap already counted", pos(0, 0, 5), at(6, 0, 0), 0, 5},
		{"counted gap passed, nothing new", pos(0, 0, 5), at(9, 8, 3), 0, 8},
		{"gap passed within one period", pos(0, 0, 0), at(9, 8, 3), 5, 8},
		{"counted gap passed and a new one above", pos(0, 0, 5), at(13, 8, 3), 4, 12},
		{"acked, no gap", pos(10, 10, 10), at(21, 20, 20), 0, 20},
		{"delivered, pending, stored", pos(10, 10, 10), at(11, 20, 20), 0, 20},
		{"redeliveries hide a passed gap (low, never high)", pos(10, 10, 10), at(21, 20, 25), 0, 20},
		{"redeliveries, head gap still seen", pos(10, 10, 10), at(31, 20, 25), 10, 30},
		{"delivered pointer reported lower (leader change)", pos(10, 10, 15), at(16, 9, 9), 0, 15},
		{"stream created anew", &position{StreamCreated: created.Add(-time.Hour), ConsumerCreated: created, Frontier: 50}, at(4, 0, 0), 3, 3},
		{"consumer created anew", &position{StreamCreated: created, ConsumerCreated: created.Add(-time.Hour), Frontier: 50}, at(4, 0, 0), 3, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			next, got := advance(tc.prev, tc.s)
			if got != tc.want || next.Frontier != tc.wantFrontier {
				t.Fatalf("advance = %d, frontier %d; want %d, frontier %d", got, next.Frontier, tc.want, tc.wantFrontier)
			}
			if next.Delivered != tc.s.Delivered || next.Deliveries != tc.s.Deliveries {
				t.Fatalf("position %+v does not keep the sample's pointers", next)
			}
		})
	}
}

func TestLimitsReason(t *testing.T) {
	for reason, want := range map[string]bool{
		"Unacknowledged message was deleted": true,
		"Message deleted by stream limits":   true,
		"":                                   false, // callbackd's own Term
		"max deliveries":                     false,
	} {
		if got := limitsReason(reason); got != want {
			t.Errorf("limitsReason(%q) = %v", reason, got)
		}
	}
}
