package settings

import "errors"

// ErrInvalid is returned (wrapped in a *FieldError) when a setting breaks the
// rules of SPEC §4.
var ErrInvalid = errors.New("invalid setting")
