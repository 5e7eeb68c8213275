package gopool

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestPoolRunsEveryFunction(t *testing.T) {
	done := make(chan struct{})
	defer close(done)
	p := New(time.Minute, done)
	var n atomic.Int64
	var wg sync.WaitGroup
	for range 1000 {
		wg.Add(1)
		p.Go(func() { defer wg.Done(); n.Add(1) })
	}
	wg.Wait()
	if got := n.Load(); got != 1000 {
		t.Fatalf("ran %d functions, want 1000", got)
	}
}

func TestPoolReusesIdleGoroutines(t *testing.T) {
	done := make(chan struct{})
	defer close(done)
	p := New(time.Minute, done)
	ran := make(chan struct{})
	p.Go(func() { ran <- struct{}{} })
	<-ran
	// The first worker is now idle (or about to be): once it waits on the
	// work channel, every later function runs on it, one at a time.
	base := runtime.NumGoroutine()
	for range 100 {
		reused := make(chan struct{})
		deadline := time.Now().Add(10 * time.Second)
		for {
			select {
			case p.work <- func() { close(reused) }:
			default:
				if time.Now().After(deadline) {
					t.Fatal("no idle worker took the work within 10s")
				}
				runtime.Gosched()
				continue
			}
			break
		}
		<-reused
	}
	if now := runtime.NumGoroutine(); now > base {
		t.Fatalf("goroutines grew from %d to %d while work was handed to the idle worker", base, now)
	}
}

func TestPoolWorkersExit(t *testing.T) {
	tests := []struct {
		name  string
		idle  time.Duration
		close bool
	}{
		{"after idle time", 10 * time.Millisecond, false},
		{"when done is closed", time.Hour, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			done := make(chan struct{})
			exited := make(chan struct{})
			p := New(tt.idle, done)
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer close(exited)
				p.worker(func() { wg.Done() })
			}()
			wg.Wait()
			if tt.close {
				close(done)
			}
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				t.Fatal("worker did not exit")
			}
			if !tt.close {
				close(done)
			}
		})
	}
}

// Workers a burst started and no longer needed all go, a few reap periods
// after the burst.
func TestPoolRetiresSpareWorkersAfterABurst(t *testing.T) {
	done := make(chan struct{})
	defer close(done)
	p := New(200*time.Millisecond, done)
	const burst = 50
	hold := make(chan struct{})
	var started sync.WaitGroup
	started.Add(burst)
	for range burst {
		p.Go(func() { started.Done(); <-hold })
	}
	started.Wait()
	close(hold)
	waitIdle := func(want int64, what string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for p.idle.Load() != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d workers idle after 10s, want %d", what, p.idle.Load(), want)
			}
			time.Sleep(time.Millisecond)
		}
	}
	// A reap that comes now finds the burst's workers busy a moment ago
	// and retires none; so they all wait idle first ...
	waitIdle(burst, "after the burst")
	// ... and go within two periods.
	waitIdle(0, "spare workers")
	// The pool still works, on a new worker.
	ran := make(chan struct{})
	p.Go(func() { close(ran) })
	select {
	case <-ran:
	case <-time.After(10 * time.Second):
		t.Fatal("work after the workers retired did not run")
	}
}
