package api

import "errors"

// ErrBadID is returned (wrapped) when a global ID does not decode, or names
// another type than the one expected.
var ErrBadID = errors.New("bad ID")

// ErrUnavailable is returned (wrapped) by a resolver whose backing service
// (the delivery log, the replayer, the transport) was not given to the
// server.
var ErrUnavailable = errors.New("not available on this server")

// ErrUnauthorized is returned (wrapped) by Client when the server refused the
// bearer token.
var ErrUnauthorized = errors.New("unauthorized: missing or wrong admin token")

// ErrBadCursor is what a DeliveryLog returns (wrapped) for an after cursor
// it does not understand; the deliveries query then names the "after"
// argument.
var ErrBadCursor = errors.New("bad cursor")
