package subjects

import "strings"

// LogUnparsed stands in for the account or project token of a delivery-log
// subject when the record has no valid ID for it: an invalid event whose own
// subject did not parse, or an outcome name outside the scheme. The log
// subject keeps its three tokens, so filters by position still work, and
// `LogFilter(LogUnparsed, "", "")` finds such records.
const LogUnparsed = "_"

// DeadInvalidType is the token after callbacks.dead. of dead letters whose
// subject did not parse (DeadInvalid); a dead-letter filter by event type
// accepts it.
const DeadInvalidType = "_invalid"

// any is the single-token wildcard.
const anyToken = "*"

// LogFilter returns the subject filter callbacks.log.<account>.<project>.<outcome>
// with "*" for each empty argument. The arguments must be valid tokens
// (IDs, LogUnparsed, outcome names); callers check them.
func LogFilter(accountID, projectID, outcome string) string {
	return logPrefix + orAny(accountID) + "." + orAny(projectID) + "." + orAny(outcome)
}

// DeadFilter returns the subject filter of dead letters of the given event
// type, account and project, "*" standing for each empty one. With all three
// empty it is Dead, which includes DeadInvalid; with eventType
// DeadInvalidType and no IDs it is DeadInvalid. Dead letters under
// DeadInvalid have no account or project token, so a filter naming an ID
// never matches them.
func DeadFilter(eventType, accountID, projectID string) string {
	switch {
	case eventType == "" && accountID == "" && projectID == "":
		return Dead
	case eventType == DeadInvalidType && accountID == "" && projectID == "":
		return DeadInvalid
	}
	return deadPrefix + orAny(eventType) + "." + orAny(accountID) + "." + orAny(projectID)
}

// Replayable reports whether subject is one the Stream takes in (an event or
// a queued notification) and can be published to: the Callbackd-Subject a
// dead letter may be sent back to.
func Replayable(subject string) bool {
	if !strings.HasPrefix(subject, eventPrefix) && !strings.HasPrefix(subject, notifyPrefix) {
		return false
	}
	for _, tok := range strings.Split(subject, ".") {
		if tok == "" || tok == "*" || tok == ">" || strings.ContainsAny(tok, " \t\r\n") {
			return false
		}
	}
	return true
}

func orAny(tok string) string {
	if tok == "" {
		return anyToken
	}
	return tok
}
