// Package deliverylog is the delivery log: one JSON record per attempt or
// outcome in the CALLBACKS_LOG stream (SPEC §2), written asynchronously by
// the dispatcher and read by the admin API and `callbackd deliveries`.
package deliverylog

import "time"

// Outcomes a record may carry. They match the GraphQL DeliveryStatus enum
// (upper-cased) of SPEC §4.
const (
	OutcomeDelivered             = "delivered"
	OutcomeRetrying              = "retrying"
	OutcomeFailed                = "failed"
	OutcomeSkipped               = "skipped"
	OutcomeNoDestination         = "no_destination"
	OutcomeInvalid               = "invalid"
	OutcomeDestinationNotAllowed = "destination_not_allowed"
)

// Record is one attempt or outcome. Header values are never part of it, and
// URL has no userinfo or query.
type Record struct {
	DeliveryID string `json:"delivery_id"`
	EventType  string `json:"event_type"`
	AccountID  string `json:"account_id"`
	ProjectID  string `json:"project_id"`
	URL        string `json:"url,omitempty"`
	Attempt    int    `json:"attempt"`
	StatusCode int    `json:"status_code,omitempty"`
	Outcome    string `json:"outcome"`
	Error      string `json:"error,omitempty"`
	// DurationMs is how long the attempt took; in the log whenever the
	// record is of an attempt (StartedAt set), 0 included.
	DurationMs      int64  `json:"duration_ms,omitempty"`
	ResponseExcerpt string `json:"response_excerpt,omitempty"`
	// StartedAt is when the attempt started (zero for outcomes without one).
	StartedAt time.Time `json:"started_at,omitzero"`
	// At is when the record was made.
	At time.Time `json:"at"`
}
