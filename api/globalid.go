package api

import (
	"encoding/base64"
	"fmt"
	"strings"

	"github.com/callbackd/callbackd/subjects"
)

// Types a global ID can name.
const (
	TypeProject   = "Project"
	TypeAccount   = "Account"
	TypeSSOClient = "SsoClient"
	TypeDelivery  = "Delivery"
)

// globalIDPrefix starts every decoded global ID (SPEC §4).
const globalIDPrefix = "N006"

// GlobalID returns the global ID of object id of type typ: standard base64
// without padding of "N006<typ><id>". GlobalID("Project", "123") is
// "TjAwNlByb2plY3QxMjM".
func GlobalID(typ, id string) string {
	return base64.RawStdEncoding.EncodeToString([]byte(globalIDPrefix + typ + id))
}

// ParseID returns the plain number that s names as an object of type typ.
// s is a global ID (base64 with or without padding) or the plain number
// itself. The error wraps ErrBadID and never repeats more than a few bytes
// of s.
func ParseID(typ, s string) (string, error) {
	if subjects.ValidateID(s) == nil {
		return s, nil
	}
	// Strict: one encoding per ID, so trailing bits must be zero.
	enc := base64.RawStdEncoding.Strict()
	if strings.HasSuffix(s, "=") {
		enc = base64.StdEncoding.Strict() // padded: the padding must be right
	}
	raw, err := enc.DecodeString(s)
	// The decoder skips CR and LF: one spelling per ID refuses them.
	if err != nil || strings.ContainsAny(s, "\r\n") || !strings.HasPrefix(string(raw), globalIDPrefix) {
		return "", fmt.Errorf("%w: %s is neither a global ID nor a plain number", ErrBadID, quoteShort(s))
	}
	rest := string(raw[len(globalIDPrefix):])
	num, ok := strings.CutPrefix(rest, typ)
	if !ok || subjects.ValidateID(num) != nil {
		if t := typeOf(rest); t != "" && t != typ {
			return "", fmt.Errorf("%w: %s is a global ID of type %s, expected %s", ErrBadID, quoteShort(s), t, typ)
		}
		return "", fmt.Errorf("%w: %s is not a global ID of type %s", ErrBadID, quoteShort(s), typ)
	}
	return num, nil
}

// typeOf returns the type named by the decoded rest of a global ID, "" when
// it is none of the known ones.
func typeOf(rest string) string {
	for _, t := range []string{TypeProject, TypeAccount, TypeSSOClient, TypeDelivery} {
		if strings.HasPrefix(rest, t) {
			return t
		}
	}
	return ""
}

// quoteShort quotes untrusted text for an error message, cut to 40 bytes.
func quoteShort(s string) string {
	if len(s) > 40 {
		return fmt.Sprintf("%q…", s[:40])
	}
	return fmt.Sprintf("%q", s)
}
