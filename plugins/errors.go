package plugins

import (
	"errors"
	"fmt"
)

// ErrInvalidEvent is returned (wrapped) by an encoder when an event can never
// be encoded: bad JSON, a missing or mistyped field, mismatched IDs. The
// dispatcher dead-letters such events with reason invalid_event.
var ErrInvalidEvent = errors.New("invalid event")

// ErrDestinationNotAllowed is returned (wrapped) when the outbound-safety
// policy refuses an address: the IP a destination resolved to, or the literal
// IP of a URL, is in a range callbackd does not deliver to (loopback,
// private, link-local and the like; SPEC §3 "Outbound safety"). The error
// text names the IP and the range. A delivery refused so ends with reason
// destination_not_allowed.
var ErrDestinationNotAllowed = errors.New("destination not allowed")

// ErrInvalidHeader is returned (wrapped) when a custom header breaks the rules
// of SPEC §3.
var ErrInvalidHeader = errors.New("invalid header")

// Invalid returns an error wrapping ErrInvalidEvent with a message that says
// what is wrong.
func Invalid(format string, args ...any) error {
	return &invalidError{msg: fmt.Sprintf(format, args...)}
}

type invalidError struct{ msg string }

func (e *invalidError) Error() string { return e.msg }
func (e *invalidError) Unwrap() error { return ErrInvalidEvent }

// ErrHostBusy is returned (wrapped) by a transport that caps its own
// requests per host (the built-in http-form, at
// dispatcher.per_host_concurrency) when no slot of the destination's host
// came free in time: the attempt was not made. The dispatcher parks the
// work in CALLBACKS_RETRY, as it parks any work over a host's cap; it costs
// no attempt.
var ErrHostBusy = errors.New("host busy: per-host concurrency cap reached")

// ErrPluginUnavailable is returned (wrapped) by the host side of a plugin
// when the call could not be made or answered: the plugin process is down,
// restarting or refused, or its connection broke with the call in flight.
// It is an infrastructure error: the event is tried again later and it costs
// no delivery attempt. A call past its deadline returns an error wrapping
// context.DeadlineExceeded instead.
var ErrPluginUnavailable = errors.New("plugin unavailable")

// ErrNotReached is returned (wrapped, beside ErrPluginUnavailable) when a
// call was refused before it reached the plugin: its process is down and
// being restarted. The event played no part in that, so the dispatcher does
// not count such a hand-back against dispatcher.max_deliveries, which caps
// what an event may cost (an event that crashes its plugin every time).
var ErrNotReached = errors.New("the call did not reach it")

// ErrPluginFailed is returned (wrapped) by the host side of a plugin when
// the plugin answered with an error of its own other than an invalid event
// (a panic recovered, a bug, a dependency down). Like ErrPluginUnavailable
// it is an infrastructure error.
var ErrPluginFailed = errors.New("plugin failed")
