package config

import (
	"errors"
	"strconv"
	"strings"
)

// ErrUnknownKey is returned, inside a *KeyError, when the config file holds a
// key callbackd does not know (usually a typo). Unknown CALLBACKD_ variables
// are only warned about.
var ErrUnknownKey = errors.New("unknown key")

// KeyError is returned by Load and Validate when a key is unknown or its value
// is bad. Key is the dotted path as written in the file ("delivery.timeout",
// "plugins.encoders.crawl_status.sha256"), with [i] for a list element
// ("delivery.backoff[1]"). Several problems come back as an errors.Join of
// KeyErrors.
type KeyError struct {
	Key string
	Err error
}

// Error reads "config: <key>: <problem>", or
// `config: unknown key "<key>" in <file>` for ErrUnknownKey.
func (e *KeyError) Error() string {
	msg := e.Err.Error()
	if errors.Is(e.Err, ErrUnknownKey) {
		return "config: unknown key " + strconv.Quote(e.Key) + strings.TrimPrefix(msg, ErrUnknownKey.Error())
	}
	if e.Key == "" {
		return "config: " + msg
	}
	return "config: " + e.Key + ": " + msg
}

// Unwrap returns the problem, so errors.Is(err, ErrUnknownKey) works.
func (e *KeyError) Unwrap() error { return e.Err }
