// Package subjects owns every NATS subject, stream, consumer and bucket name
// callbackd uses, with the builders and parsers for them. No other package
// spells one.
package subjects

import (
	"errors"
	"fmt"
	"strings"
)

// Stream, consumer and bucket names (SPEC §2).
const (
	// Stream holds fresh events and queued callback-failed notifications.
	Stream = "CALLBACKS"
	// RetryStream holds deliveries waiting for a later attempt.
	RetryStream = "CALLBACKS_RETRY"
	// DeadStream holds events that ended without a successful delivery.
	DeadStream = "CALLBACKS_DEAD"
	// LogStream holds one record per attempt or outcome.
	LogStream = "CALLBACKS_LOG"

	// DispatcherConsumer is the durable pull consumer on Stream.
	DispatcherConsumer = "dispatcher"
	// RetrierConsumer is the durable pull consumer on RetryStream.
	RetrierConsumer = "retrier"

	// SettingsBucket is the KV bucket of project, account and SSO-client settings.
	SettingsBucket = "callbackd_settings"
	// StateBucket is the KV bucket of callbackd's own bookkeeping shared by
	// its instances (how far the expiry counter has looked).
	StateBucket = "callbackd_state"
)

// Subject prefixes and wildcards.
const (
	eventPrefix  = "callbacks.event."
	notifyPrefix = "callbacks.notify."
	retryPrefix  = "callbacks.retry."
	deadPrefix   = "callbacks.dead."
	logPrefix    = "callbacks.log."

	// Events matches every event subject.
	Events = "callbacks.event.>"
	// Notifies matches every queued callback-failed notification.
	Notifies = "callbacks.notify.>"
	// Retries matches every waiting retry.
	Retries = "callbacks.retry.>"
	// Dead matches every dead letter.
	Dead = "callbacks.dead.>"
	// Logs matches every delivery-log record.
	Logs = "callbacks.log.>"
	// DeadInvalid is the dead-letter subject of an event whose subject did not parse.
	DeadInvalid = "callbacks.dead._invalid"
)

// Headers callbackd reads and writes (SPEC §2, §3).
const (
	HeaderMsgID      = "Nats-Msg-Id"
	HeaderReason     = "Callbackd-Reason"
	HeaderStatus     = "Callbackd-Status"
	HeaderAttempts   = "Callbackd-Attempts"
	HeaderError      = "Callbackd-Error"
	HeaderSubject    = "Callbackd-Subject"
	HeaderDeliveryID = "Callbackd-Delivery-Id"
	HeaderAttempt    = "Callbackd-Attempt"
	HeaderNotBefore  = "Callbackd-Not-Before"
)

// ReplayMsgIDPrefix starts the Nats-Msg-Id of a replayed dead letter
// (replay:<dead-letter sequence>, SPEC §3); such an event keeps its
// Callbackd-Delivery-Id.
const ReplayMsgIDPrefix = "replay:"

// ErrBadSubject is returned (wrapped) when a subject or one of its tokens does
// not follow the subject scheme.
var ErrBadSubject = errors.New("bad subject")

// MaxEventTypeLen is the longest event type allowed.
const MaxEventTypeLen = 64

// EventKey identifies where an event goes: its type, account and project.
// AccountID and ProjectID are decimal strings [1-9][0-9]{0,18}.
type EventKey struct {
	Type      string
	AccountID string
	ProjectID string
}

// Event returns callbacks.event.<type>.<account>.<project>, checking each token.
func Event(k EventKey) (string, error) {
	if err := k.Validate(); err != nil {
		return "", err
	}
	return eventPrefix + k.Type + "." + k.AccountID + "." + k.ProjectID, nil
}

// DeadFor returns the dead-letter subject for an event of key k.
func DeadFor(k EventKey) string {
	return deadPrefix + k.Type + "." + k.AccountID + "." + k.ProjectID
}

// Notify returns callbacks.notify.<account>.<project>.
func Notify(accountID, projectID string) string {
	return notifyPrefix + accountID + "." + projectID
}

// Log returns callbacks.log.<account>.<project>.<outcome>.
func Log(accountID, projectID, outcome string) string {
	return logPrefix + accountID + "." + projectID + "." + outcome
}

// Validate checks every token of k.
func (k EventKey) Validate() error {
	if err := ValidateEventType(k.Type); err != nil {
		return err
	}
	if err := ValidateID(k.AccountID); err != nil {
		return fmt.Errorf("account: %w", err)
	}
	if err := ValidateID(k.ProjectID); err != nil {
		return fmt.Errorf("project: %w", err)
	}
	return nil
}

// ParseEvent parses callbacks.event.<type>.<account>.<project>.
func ParseEvent(subject string) (EventKey, error) {
	rest, ok := strings.CutPrefix(subject, eventPrefix)
	if !ok {
		return EventKey{}, fmt.Errorf("%w: %q does not start with %q", ErrBadSubject, clip(subject), eventPrefix)
	}
	typ, rest, ok1 := strings.Cut(rest, ".")
	acct, proj, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || strings.Contains(proj, ".") {
		return EventKey{}, fmt.Errorf("%w: %q is not callbacks.event.<event_type>.<account_id>.<project_id>", ErrBadSubject, clip(subject))
	}
	k := EventKey{Type: typ, AccountID: acct, ProjectID: proj}
	if err := k.Validate(); err != nil {
		return EventKey{}, fmt.Errorf("subject %q: %w", clip(subject), err)
	}
	return k, nil
}

// ValidateEventType checks an event type against [a-z0-9_]{1,64}.
func ValidateEventType(t string) error {
	if t == "" || len(t) > MaxEventTypeLen {
		return fmt.Errorf("%w: event type %q must be 1 to %d characters of [a-z0-9_]", ErrBadSubject, clip(t), MaxEventTypeLen)
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '_') {
			return fmt.Errorf("%w: event type %q must be 1 to %d characters of [a-z0-9_]", ErrBadSubject, clip(t), MaxEventTypeLen)
		}
	}
	return nil
}

// ValidateID checks an account or project ID against [1-9][0-9]{0,18}.
func ValidateID(id string) error {
	if id == "" || len(id) > 19 || id[0] == '0' {
		return fmt.Errorf("%w: id %q must be a decimal integer without leading zeros, 1 to 19 digits", ErrBadSubject, clip(id))
	}
	for i := 0; i < len(id); i++ {
		if id[i] < '0' || id[i] > '9' {
			return fmt.Errorf("%w: id %q must be a decimal integer without leading zeros, 1 to 19 digits", ErrBadSubject, clip(id))
		}
	}
	return nil
}

// clip shortens untrusted text for error messages.
func clip(s string) string {
	const max = 200
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}
