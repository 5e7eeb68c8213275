package subjects

import (
	"fmt"
	"strings"
)

// EventTypeCallbackFailed is the event type of callback-failed notifications
// (their "message"), used for their dead letters, logs and metrics.
const EventTypeCallbackFailed = "callback_failed"

// Retry returns the CALLBACKS_RETRY subject of an original subject:
// callbacks.retry.<rest of the original subject>, for example
// callbacks.event.crawl_status.1.2 → callbacks.retry.event.crawl_status.1.2.
func Retry(original string) (string, error) {
	rest, ok := strings.CutPrefix(original, "callbacks.")
	if !ok || !(strings.HasPrefix(rest, "event.") || strings.HasPrefix(rest, "notify.")) {
		return "", fmt.Errorf("%w: %q is not an event or notification subject", ErrBadSubject, clip(original))
	}
	return retryPrefix + rest, nil
}

// OriginalFromRetry returns the original subject of a CALLBACKS_RETRY subject.
func OriginalFromRetry(retry string) (string, error) {
	rest, ok := strings.CutPrefix(retry, retryPrefix)
	if !ok || !(strings.HasPrefix(rest, "event.") || strings.HasPrefix(rest, "notify.")) {
		return "", fmt.Errorf("%w: %q is not callbacks.retry.event.… or callbacks.retry.notify.…", ErrBadSubject, clip(retry))
	}
	return "callbacks." + rest, nil
}

// IsNotify reports whether subject is a callback-failed notification's.
func IsNotify(subject string) bool { return strings.HasPrefix(subject, notifyPrefix) }

// ParseNotify parses callbacks.notify.<account>.<project>.
func ParseNotify(subject string) (accountID, projectID string, err error) {
	rest, ok := strings.CutPrefix(subject, notifyPrefix)
	acct, proj, ok2 := strings.Cut(rest, ".")
	if !ok || !ok2 || strings.Contains(proj, ".") {
		return "", "", fmt.Errorf("%w: %q is not callbacks.notify.<account_id>.<project_id>", ErrBadSubject, clip(subject))
	}
	if err := ValidateID(acct); err != nil {
		return "", "", fmt.Errorf("account: %w", err)
	}
	if err := ValidateID(proj); err != nil {
		return "", "", fmt.Errorf("project: %w", err)
	}
	return acct, proj, nil
}
