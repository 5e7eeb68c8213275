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

// Gaps of messages younger than the max age are no expiries (a kill -9's
// recovery shows acked messages as gone): counted only up to the oldest
// mark within the max age; the frontier still moves past them.
func TestAdvance_counts_only_messages_old_enough(t *testing.T) {
	created := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	now := created.Add(3 * time.Hour)
	prev := &position{
		StreamCreated: created, ConsumerCreated: created, Delivered: 10, Deliveries: 10, Frontier: 10,
		// 1-50 stored before now-1h, 51-80 between, 81- after now-30m.
		Marks: []mark{{At: now.Add(-2 * time.Hour), Seq: 40}, {At: now.Add(-time.Hour), Seq: 50}, {At: now.Add(-30 * time.Minute), Seq: 80}},
	}
	s := sample{StreamCreated: created, ConsumerCreated: created, FirstSeq: 91, Delivered: 10, Deliveries: 10, MaxAge: time.Hour, LastSeq: 120, At: now}
	next, n := advance(prev, s)
	if n != 40 { // 11-50: 51-90 are younger than an hour
		t.Errorf("counted %d, want 40", n)
	}
	if next.Frontier != 90 {
		t.Errorf("frontier %d, want 90 (past what was not counted too)", next.Frontier)
	}
	if len(next.Marks) != 3 || next.Marks[0].Seq != 50 || next.Marks[2].Seq != 120 {
		t.Errorf("marks %+v, want the 2h-old one dropped and now's added", next.Marks)
	}
}

func TestNextMarks_one_per_max_age_share(t *testing.T) {
	at := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	var marks []mark
	for i := range 1000 { // a sample a second for 1000 s, max age 320 s
		marks = nextMarks(marks, sample{MaxAge: 320 * time.Second, LastSeq: uint64(i), At: at.Add(time.Duration(i) * time.Second)})
	}
	if len(marks) > marksPerAge+1 || len(marks) < marksPerAge-1 {
		t.Errorf("%d marks, want about %d", len(marks), marksPerAge)
	}
	if oldest := marks[0].At; at.Add(999*time.Second).Sub(oldest) > 320*time.Second {
		t.Errorf("oldest mark %v is older than the max age", oldest)
	}
}
