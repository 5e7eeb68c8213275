package plugins

import (
	"fmt"
	"strings"
)

// Limits on a destination's custom headers (SPEC §4).
const (
	MaxHeaders     = 32
	MaxHeaderBytes = 8 << 10 // keys and values, all added up
)

// reservedHeaders may not be set by a destination: callbackd owns them, or
// they are hop-by-hop (SPEC §3). Keys are lower case; Proxy-* is checked apart.
var reservedHeaders = map[string]bool{
	"host": true, "content-length": true, "content-type": true,
	"transfer-encoding": true, "connection": true, "keep-alive": true,
	"te": true, "trailer": true, "upgrade": true, "expect": true,
	"user-agent": true, "callback-delivery-id": true,
}

// CheckHeaders reports the first custom header that breaks SPEC §3's rules:
// keys are HTTP tokens, unique case-insensitively, not reserved or
// hop-by-hop; values are RFC 9110 field values (no CR, LF, NUL or other
// control characters); at most MaxHeaders headers and MaxHeaderBytes in all.
// The error wraps ErrInvalidHeader and names the header by index and key,
// never by value, since values are secrets.
func CheckHeaders(hs []Header) error {
	if len(hs) > MaxHeaders {
		return fmt.Errorf("%w: %d headers, at most %d allowed", ErrInvalidHeader, len(hs), MaxHeaders)
	}
	total := 0
	seen := make(map[string]int, len(hs))
	for i, h := range hs {
		total += len(h.Key) + len(h.Value)
		if err := checkHeader(h); err != nil {
			return fmt.Errorf("%w: header %d: %s", ErrInvalidHeader, i, err)
		}
		lk := strings.ToLower(h.Key)
		if j, dup := seen[lk]; dup {
			return fmt.Errorf("%w: header %d: key %q repeats header %d (keys are case-insensitive)", ErrInvalidHeader, i, h.Key, j)
		}
		seen[lk] = i
	}
	if total > MaxHeaderBytes {
		return fmt.Errorf("%w: headers take %d bytes, at most %d allowed", ErrInvalidHeader, total, MaxHeaderBytes)
	}
	return nil
}

func checkHeader(h Header) error {
	if h.Key == "" {
		return fmt.Errorf("empty key")
	}
	for i := 0; i < len(h.Key); i++ {
		if !isTokenChar(h.Key[i]) {
			return fmt.Errorf("key %q is not an HTTP token (byte %d)", h.Key, i)
		}
	}
	lk := strings.ToLower(h.Key)
	if reservedHeaders[lk] || strings.HasPrefix(lk, "proxy-") {
		return fmt.Errorf("key %q is reserved and may not be set", h.Key)
	}
	if i := ControlByte(h.Value); i >= 0 {
		return fmt.Errorf("value of %q has a control character at byte %d", h.Key, i)
	}
	if HasOuterSpace(h.Value) {
		return fmt.Errorf("value of %q begins or ends with a space or tab (an RFC 9110 field value may not; it would not be sent as given)", h.Key)
	}
	return nil
}

// ControlByte returns the index of the first control character in a header
// value, -1 when there is none: a C0 control but HTAB, DEL, or a C1 control
// (U+0080–U+009F) encoded in UTF-8. RFC 9110 field values hold none of them.
func ControlByte(v string) int {
	for i := 0; i < len(v); i++ {
		c := v[i]
		if (c < 0x20 && c != '\t') || c == 0x7f || (c == 0xc2 && i+1 < len(v) && v[i+1] >= 0x80 && v[i+1] <= 0x9f) {
			return i
		}
	}
	return -1
}

// HasOuterSpace reports whether a header value begins or ends with SP or
// HTAB, which an RFC 9110 field value may not (HTTP/1.1 senders and
// receivers trim them) and CheckHeaders refuses.
func HasOuterSpace(v string) bool {
	return v != "" && (v[0] == ' ' || v[0] == '\t' || v[len(v)-1] == ' ' || v[len(v)-1] == '\t')
}

// isTokenChar reports whether c is an RFC 9110 tchar.
func isTokenChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// Redacted returns a copy of hs with every value replaced, for logs.
func Redacted(hs []Header) []Header {
	out := make([]Header, len(hs))
	for i, h := range hs {
		out[i] = Header{Key: h.Key, Value: "[REDACTED]"}
	}
	return out
}
