package dispatcher

// Per-host fairness (SPEC §3): the destination's host key, and the slots
// and queue of each host.

import (
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/callbackd/callbackd/plugins"
)

// hostKey is the fairness key of a URL (plugins.HostKey); text that does
// not parse is its own key.
func hostKey(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return raw
	}
	return plugins.HostKey(u)
}

// urlInfo is what the dispatcher derives from a destination URL.
type urlInfo struct {
	host string // fairness key: host:port, lower-cased
	safe string // for logs: no userinfo or query
}

// urlCache keeps the urlInfo of each destination URL, so that the hot path
// parses none. Destinations are the configured callback URLs: few.
type urlCache struct{ m sync.Map }

func (c *urlCache) get(raw string) urlInfo {
	if v, ok := c.m.Load(raw); ok {
		return v.(urlInfo)
	}
	u := urlInfo{host: hostKey(raw), safe: plugins.SafeURL(raw)}
	c.m.Store(raw, u)
	return u
}

// hostLimiter caps attempts in flight per destination. Attempts waiting
// for a host's slot hold no worker: a fast host's wait in a local queue
// (they will have a slot in moments), a slow host's queue is as long as its
// cap and its backlog beyond that is parked in CALLBACKS_RETRY, so it keeps
// its slots busy without holding the main consumer's pending limit.
type hostLimiter struct {
	limit  int // per_host_concurrency
	window int // attempts handed to the transport while the host is fast
	mu     sync.Mutex
	hosts  map[string]*hostSlots
}

// hostSlots is one host's attempts in flight and the attempts queued for
// them, first come first served.
type hostSlots struct {
	limit  int // a slow host's attempts in flight, and its queue
	window int // a fast host's attempts in flight (≥ limit)

	mu      sync.Mutex
	busy    int
	waiters []*hostWaiter

	// avgNs is a moving average of the host's attempt durations.
	avgNs atomic.Int64
	// lastDoneNs is when an attempt to the host last ended, or when it
	// last got busy after being idle (unix ns).
	lastDoneNs atomic.Int64
}

// hostWaiter is an attempt queued for a slot; ready gets a value when the
// slot is handed to it.
type hostWaiter struct{ ready chan struct{} }

// slowHost is the average attempt duration from which a host's backlog is
// parked in JetStream rather than queued in memory.
const slowHost = 500 * time.Millisecond

// fastLocked reports whether the host answers quickly: quick on average,
// and not stalled — at least its cap in flight with no attempt ended for
// slowHost. A dead endpoint stalls within slowHost, so its burst is parked
// rather than held in memory against the main consumer's pending limit.
func (h *hostSlots) fastLocked() bool {
	if h.slowOnAverage() {
		return false
	}
	stalled := h.busy >= h.limit &&
		time.Duration(time.Now().UnixNano()-h.lastDoneNs.Load()) >= slowHost
	return !stalled
}

// slowOnAverage reports whether the host's attempts average slowHost or
// more (a dead host's first attempt, timed out, makes it so).
func (h *hostSlots) slowOnAverage() bool {
	return time.Duration(h.avgNs.Load()) >= slowHost
}

func (h *hostSlots) fast() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.fastLocked()
}

// maxBusyLocked is how many attempts the host may have in flight now.
func (h *hostSlots) maxBusyLocked() int {
	if h.window > h.limit && h.fastLocked() {
		return h.window
	}
	return h.limit
}

// observe adds one attempt's duration to the moving average (weight 1/8;
// a lost update under contention is harmless). The host's first attempt
// sets it: from 0, a host answering in 2 s would take three answers to
// count as slow, its attempts holding attempt slots meanwhile.
func (h *hostSlots) observe(d time.Duration) {
	if old := h.avgNs.Load(); old == 0 {
		h.avgNs.Store(max(int64(d), 1))
	} else {
		h.avgNs.Store(old + (int64(d)-old)/8)
	}
	h.lastDoneNs.Store(time.Now().UnixNano())
}

func newHostLimiter(limit, window int) *hostLimiter {
	return &hostLimiter{limit: limit, window: max(window, limit), hosts: map[string]*hostSlots{}}
}

// get returns the slots of host. Hosts are few (customers' callback hosts),
// so entries are kept.
func (l *hostLimiter) get(host string) *hostSlots {
	l.mu.Lock()
	defer l.mu.Unlock()
	hs, ok := l.hosts[host]
	if !ok {
		hs = &hostSlots{limit: l.limit, window: l.window}
		// A new host gets slowHost of grace before it can count as stalled.
		hs.lastDoneNs.Store(time.Now().UnixNano())
		l.hosts[host] = hs
	}
	return hs
}

// acquire takes a slot at once, or queues — up to fastQueue attempts for a
// fast host, up to its cap for a slow one — with the worker released
// (release) while it waits. It reports false when the work should be
// parked: the queue is full, the wait passed wait, or the host stopped
// being fast while it waited in a fast host's queue; and when stop is
// closed (shutdown) before it has a slot.
func (h *hostSlots) acquire(release func(), wait time.Duration, fastQueue int, stop <-chan struct{}) bool {
	select {
	case <-stop:
		return false // shutting down: no attempt starts now
	default:
	}
	h.mu.Lock()
	if h.busy == 0 {
		// An idle host's first attempt starts its stall clock afresh: a
		// burst after a quiet spell gets slowHost of grace, like a new
		// host, instead of counting as stalled at once (the last attempt
		// ended long ago) and being parked.
		h.lastDoneNs.Store(time.Now().UnixNano())
	}
	if len(h.waiters) == 0 && h.busy < h.maxBusyLocked() {
		h.busy++
		h.mu.Unlock()
		return true
	}
	queue := h.limit // a slow host's backlog waits in JetStream
	fast := h.fastLocked()
	if fast {
		queue = fastQueue // a fast host's slots free up soon: wait here
	}
	if len(h.waiters) >= queue {
		h.mu.Unlock()
		return false
	}
	w := &hostWaiter{ready: make(chan struct{}, 1)}
	h.waiters = append(h.waiters, w)
	h.mu.Unlock()
	release()

	// One timer: it fires every slowHost/2 to see whether a fast host has
	// stalled, and ends the wait once wait has passed.
	deadline := time.Now().Add(wait)
	t := time.NewTimer(min(wait, slowHost/2))
	defer t.Stop()
	for {
		select {
		case <-w.ready:
			select {
			case <-stop: // both ready: stopping wins, the slot goes back
				h.release()
				return false
			default:
				return true
			}
		case <-stop:
			if !h.leave(w) { // handed the slot meanwhile: give it back
				h.release()
			}
			return false
		case now := <-t.C:
			if !now.Before(deadline) || (fast && queue > h.limit && !h.fast()) {
				// Leave the queue, unless the slot was handed over
				// meanwhile: then it is ours.
				return !h.leave(w)
			}
			t.Reset(min(deadline.Sub(now), slowHost/2))
		}
	}
}

// leave takes w out of the queue; false when it was no longer queued (a
// slot was handed to it).
func (h *hostSlots) leave(w *hostWaiter) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, x := range h.waiters {
		if x == w {
			h.waiters = append(h.waiters[:i], h.waiters[i+1:]...)
			return true
		}
	}
	return false
}

// release gives a slot back, handing it to the first queued attempt when
// the host may have one more in flight.
func (h *hostSlots) release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.busy--
	for len(h.waiters) > 0 && h.busy < h.maxBusyLocked() {
		w := h.waiters[0]
		h.waiters[0] = nil
		h.waiters = h.waiters[1:]
		h.busy++
		w.ready <- struct{}{}
	}
}
