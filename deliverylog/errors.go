package deliverylog

import "errors"

var (
	// ErrBadFilter is returned (wrapped) when a Filter names an account,
	// project or outcome that no record can carry.
	ErrBadFilter = errors.New("bad delivery-log filter")
	// ErrBadCursor is returned (wrapped) when a cursor (Filter.After) is not
	// one the Reader gave out.
	ErrBadCursor = errors.New("bad delivery-log cursor")
)
