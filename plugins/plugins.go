// Package plugins is the contract between callbackd and its plugins: the Go
// interfaces of the three plugin kinds (encoder, transport, failure handler),
// the values that cross them, and the rules every transport applies to custom
// headers. Third parties import it to write their own plugins; the dispatcher
// sees only these interfaces, whether the implementation runs in-process or
// in a plugin process.
//
// Every method takes a context first and is safe for many concurrent
// callers. Nothing here assumes shared memory: every value is plain data that
// can be copied across a process boundary.
package plugins

import (
	"context"
	"time"
)

// Event is one event as published to callbacks.event.<type>.<account>.<project>.
// The subject is authoritative for routing, so AccountID and ProjectID come
// from it (decimal strings, already validated).
type Event struct {
	Type      string
	AccountID string
	ProjectID string
	// DeliveryID is the Callback-Delivery-Id of this event (SPEC §3).
	DeliveryID string
	// Payload is the JSON object the publisher sent.
	Payload []byte
}

// Encoded is what an encoder makes of an event: a notification to deliver,
// or, when SkipReason is set, nothing to deliver by rule (SPEC §2 "skipped").
type Encoded struct {
	Notification Notification
	SkipReason   string
}

// EncoderInfo describes an encoder.
type EncoderInfo struct {
	// EventType is the event type (the notification's "message") it encodes.
	EventType string
	// IDFields are the resource ID fields a callback-failed notice repeats,
	// in order (for crawl_status: crawl_id).
	IDFields []string
}

// Encoder turns one event of its type into a notification.
//
// Encode returns an error wrapping ErrInvalidEvent (use Invalid) for an event
// that can never be encoded; the event is dead-lettered and never retried.
// Any other error is an infrastructure error (plugin down, deadline missed):
// the event is tried again later and it costs no delivery attempt.
type Encoder interface {
	Info(ctx context.Context) (EncoderInfo, error)
	Encode(ctx context.Context, ev Event) (Encoded, error)
}

// Header is one custom HTTP header of a destination.
type Header struct {
	Key   string
	Value string
}

// Destination is where a notification goes: a URL and the headers that
// travel with that URL.
type Destination struct {
	URL     string
	Headers []Header
}

// Delivery is one attempt to deliver a notification.
type Delivery struct {
	DeliveryID   string
	Destination  Destination
	Notification Notification
}

// Outcome classifies a delivery attempt.
type Outcome string

// Outcomes of a delivery attempt (SPEC §5).
const (
	// OutcomeDelivered: the endpoint answered 200-204.
	OutcomeDelivered Outcome = "delivered"
	// OutcomeRetryable: no response, a timeout, 408, 429 or 5xx.
	OutcomeRetryable Outcome = "retryable"
	// OutcomeFinal: any other answer (3xx, 205-299, 4xx but 408/429), or a
	// destination that can never be delivered to (bad URL, bad header).
	OutcomeFinal Outcome = "final"
	// OutcomeNotAllowed: the outbound-safety policy refused the destination.
	OutcomeNotAllowed Outcome = "not_allowed"
)

// Result is the result of one delivery attempt. Its fields are fixed by SPEC §5.
type Result struct {
	// StatusCode is the HTTP status, 0 when there was no response.
	StatusCode int
	Outcome    Outcome
	// RetryAfter is the wait the endpoint asked for (Retry-After on 429/503), 0 when none.
	RetryAfter time.Duration
	// Error is a short human-readable reason, empty on success.
	Error string
	// ResponseExcerpt is at most 1 KiB of the response body, valid UTF-8.
	ResponseExcerpt string
	Duration        time.Duration
}

// Transport delivers a notification to a destination. The returned error is
// for infrastructure failures only (plugin down, deadline missed); whatever
// happened at the endpoint is in the Result. A transport bounds its own
// calls (the http-form transport by its timeout, a plugin process's client
// by its call timeout); a deadline of ctx that comes first ends the call
// with an error.
type Transport interface {
	Deliver(ctx context.Context, d Delivery) (Result, error)
}

// Failure describes a delivery that ended without success.
type Failure struct {
	EventType  string
	AccountID  string
	ProjectID  string
	DeliveryID string
	// CallbackURL is the destination that failed.
	CallbackURL string
	// StatusCode is the last HTTP status, 0 when there was no response.
	StatusCode int
	Error      string
	Attempts   int
	FailedAt   time.Time
	// Notification is the notification that could not be delivered.
	Notification Notification
	// IDFields are the encoder's resource ID fields (EncoderInfo.IDFields).
	IDFields []string
	// SSOWebhook is the account's SSO client webhook, nil when the account has
	// no SSO client or the client has no webhook URL.
	SSOWebhook *Destination
}

// Outbound is a notification a failure handler wants sent, with its destination.
type Outbound struct {
	Destination  Destination
	Notification Notification
}

// FailureHandler decides what to send when a delivery fails for good.
type FailureHandler interface {
	OnFailure(ctx context.Context, f Failure) ([]Outbound, error)
}
