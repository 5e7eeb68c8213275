package dispatcher

import (
	"testing"
	"time"
)

// The per-host limiter's rules, one host at a time. The dispatcher-level
// tests (failures_test.go) show them with real endpoints.

func TestHostSlots_immediate_slots(t *testing.T) {
	tests := []struct {
		name          string
		limit, window int
		slow          bool
		want          int
	}{
		{"no window", 2, 2, false, 2},
		{"fast host gets the window", 2, 4, false, 4},
		{"slow host gets the cap", 2, 4, true, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hs := newHostLimiter(tc.limit, tc.window).get("h:80")
			if tc.slow {
				hs.avgNs.Store(int64(slowHost))
			}
			got := 0
			for hs.acquire(func() {}, 0, 0, nil) { // no queue: false once full
				got++
				if got > tc.window {
					break
				}
			}
			if got != tc.want {
				t.Fatalf("%d slots at once, want %d", got, tc.want)
			}
		})
	}
}

func TestHostSlots_queue_is_first_come_first_served(t *testing.T) {
	hs := newHostLimiter(1, 1).get("h:80")
	if !hs.acquire(func() {}, 0, 8, nil) {
		t.Fatal("first acquire failed")
	}
	order := make(chan int, 3)
	for i := range 3 {
		released := make(chan struct{})
		go func() {
			if hs.acquire(func() { close(released) }, time.Minute, 8, nil) {
				order <- i
			}
		}()
		<-released // queued before the next one
	}
	for want := range 3 {
		hs.release()
		if got := <-order; got != want {
			t.Fatalf("slot went to waiter %d, want %d", got, want)
		}
	}
}

func TestHostSlots_queue_limits_and_wait(t *testing.T) {
	t.Run("fast host queues up to fastQueue", func(t *testing.T) {
		hs := newHostLimiter(1, 1).get("h:80")
		hs.acquire(func() {}, 0, 0, nil)
		released := make(chan struct{})
		got := make(chan bool, 1)
		go func() { got <- hs.acquire(func() { close(released) }, time.Minute, 1, nil) }()
		<-released
		if hs.acquire(func() {}, time.Minute, 1, nil) {
			t.Fatal("a second waiter was queued past fastQueue 1")
		}
		hs.release()
		if !<-got {
			t.Fatal("the waiter did not get the released slot")
		}
	})
	t.Run("slow host queues up to its cap", func(t *testing.T) {
		hs := newHostLimiter(1, 4).get("h:80")
		hs.avgNs.Store(int64(slowHost))
		hs.acquire(func() {}, 0, 0, nil)
		released := make(chan struct{})
		go func() { hs.acquire(func() { close(released) }, time.Minute, 100, nil) }()
		<-released
		if hs.acquire(func() {}, time.Minute, 100, nil) {
			t.Fatal("a slow host queued more than its cap")
		}
		hs.release()
	})
	t.Run("stop ends the wait and leaves the queue", func(t *testing.T) {
		hs := newHostLimiter(1, 1).get("h:80")
		hs.acquire(func() {}, 0, 0, nil)
		stop := make(chan struct{})
		released := make(chan struct{})
		got := make(chan bool, 1)
		go func() { got <- hs.acquire(func() { close(released) }, time.Minute, 8, stop) }()
		<-released // queued
		close(stop)
		if <-got {
			t.Fatal("acquire took a slot after stop, with the slot held")
		}
		if n := queued(hs); n != 0 {
			t.Fatalf("%d waiters left after stop", n)
		}
	})
	t.Run("the wait ends and leaves the queue", func(t *testing.T) {
		hs := newHostLimiter(1, 1).get("h:80")
		hs.acquire(func() {}, 0, 0, nil)
		if hs.acquire(func() {}, 20*time.Millisecond, 8, nil) {
			t.Fatal("acquire succeeded with the slot held")
		}
		if n := queued(hs); n != 0 {
			t.Fatalf("%d waiters left in the queue", n)
		}
		hs.release()
		if !hs.acquire(func() {}, 0, 0, nil) {
			t.Fatal("the released slot was lost")
		}
	})
	t.Run("a fast host's waiter is parked when the host turns slow", func(t *testing.T) {
		hs := newHostLimiter(1, 1).get("h:80")
		hs.acquire(func() {}, 0, 0, nil)
		start := time.Now()
		// Queued as a fast host's (fastQueue 8 > cap); then the host turns
		// slow: the next check parks it, long before its minute's wait.
		released := make(chan struct{})
		got := make(chan bool, 1)
		go func() { got <- hs.acquire(func() { close(released) }, time.Minute, 8, nil) }()
		<-released
		hs.avgNs.Store(int64(slowHost))
		if <-got {
			t.Fatal("the waiter got a slot")
		}
		if d := time.Since(start); d > 30*time.Second {
			t.Fatalf("parked after %s; the check runs every %s", d, slowHost/2)
		}
	})
}

func TestHostSlots_a_burst_after_a_quiet_spell_is_not_a_stall(t *testing.T) {
	const limit, queued = 2, 3 // more queued than a slow host's queue (its cap)
	hs := newHostLimiter(limit, limit).get("h:80")
	// The last attempt ended long ago; nothing is in flight.
	hs.lastDoneNs.Store(time.Now().Add(-time.Hour).UnixNano())
	for range limit {
		hs.acquire(func() {}, 0, 0, nil)
	}
	// The slots are full at once: a fast host's burst queues rather than
	// parks.
	got := make(chan bool, queued)
	for i := range queued {
		released := make(chan struct{})
		go func() { got <- hs.acquire(func() { close(released) }, time.Minute, 8, nil) }()
		select {
		case <-released:
		case ok := <-got:
			t.Fatalf("attempt %d of the burst was not queued (acquired %v): the idle host counted as stalled", limit+i+1, ok)
		}
	}
	for range queued {
		hs.release()
		if !<-got {
			t.Fatal("a queued attempt did not get a released slot")
		}
	}
}

func TestAttemptHold(t *testing.T) {
	tests := []struct {
		timeout, ackWait, want time.Duration
	}{
		// As EnsureStreams sets the ack wait: delivery.timeout + 10 s.
		{30 * time.Second, 40 * time.Second, 5 * time.Second},
		{5 * time.Second, 15 * time.Second, 5 * time.Second},
	}
	for _, tc := range tests {
		got := attemptHold(tc.ackWait, tc.timeout)
		if got != tc.want {
			t.Errorf("timeout %s, ack wait %s: %s, want %s", tc.timeout, tc.ackWait, got, tc.want)
		}
		// A fast host's attempt queues for up to a quarter of the ack
		// wait; at the default that is past the hold, so it is kept alive.
		if tc.timeout == 30*time.Second && tc.ackWait/4 <= got {
			t.Errorf("a quarter of the ack wait (%s) stays within %s: the default's overrun would go unnoticed", tc.ackWait/4, got)
		}
	}
}

// queued is how many attempts wait in hs's queue.
func queued(hs *hostSlots) int {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	return len(hs.waiters)
}

// One slow answer makes a new host slow: from an average of 0, a host
// answering in 2 s took three answers to count as slow, holding attempt
// slots meanwhile.
func TestHostSlots_first_answer_sets_the_average(t *testing.T) {
	l := newHostLimiter(4, 4)
	h := l.get("slow.example:443")
	h.observe(2 * time.Second)
	if h.fast() {
		t.Error("fast after a 2 s answer")
	}
	f := l.get("fast.example:443")
	f.observe(time.Millisecond)
	if !f.fast() {
		t.Error("slow after a 1 ms answer")
	}
	// Then the moving average: a slow first answer is outweighed.
	for range 20 {
		h.observe(time.Millisecond)
	}
	if !h.fast() {
		t.Error("still slow after 20 fast answers")
	}
}
