package dispatcher

import "time"

// Observer is told what the dispatcher does, for metrics. Implementations
// must be cheap and safe for concurrent use: they run on the hot path.
type Observer interface {
	// Outcome counts an event's end or step: delivered, retrying, failed,
	// skipped, no_destination, invalid, destination_not_allowed.
	Outcome(eventType, outcome string)
	// Attempt observes one delivery attempt and how long it took.
	Attempt(eventType, outcome string, d time.Duration)
	// InFlight moves the number of attempts in flight by delta.
	InFlight(delta int)
	// DeadLettered counts a dead letter by reason.
	DeadLettered(reason string)
	// Parked counts work parked in CALLBACKS_RETRY over its host's cap, by
	// reason: ParkedOverCap (the dispatcher's queue for the host was full,
	// or the host stalled) or ParkedHostBusy (the transport found the
	// host's slots full).
	Parked(reason string)
}

// Reasons of Observer.Parked.
const (
	ParkedOverCap  = "over_cap"
	ParkedHostBusy = "host_busy"
)

// nopObserver is the Observer of a Dispatcher given none.
type nopObserver struct{}

func (nopObserver) Outcome(string, string)                {}
func (nopObserver) Attempt(string, string, time.Duration) {}
func (nopObserver) InFlight(int)                          {}
func (nopObserver) DeadLettered(string)                   {}
func (nopObserver) Parked(string)                         {}
