package plugins

import (
	"errors"
	"fmt"
)

// ErrInvalidEvent is returned (wrapped) by an encoder when an event can never
// be encoded: bad JSON, a missing or mistyped field, mismatched IDs. The
// dispatcher dead-letters such events with reason invalid_event.
var ErrInvalidEvent = errors.New("invalid event")

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
