package deliverylog

import (
	"strconv"
	"time"
	"unicode/utf8"
)

// appendJSON appends r as JSON to dst, byte for byte what encoding/json's
// Marshal makes of it (the tests hold it to that), without reflection or
// an allocation per field: the writer does this once per delivery. One
// difference: a record of an attempt (StartedAt set) has its duration_ms
// even when it is 0, an answer within the millisecond.
func appendJSON(dst []byte, r *Record) []byte {
	dst = append(dst, `{"delivery_id":`...)
	dst = appendString(dst, r.DeliveryID)
	dst = append(dst, `,"event_type":`...)
	dst = appendString(dst, r.EventType)
	dst = append(dst, `,"account_id":`...)
	dst = appendString(dst, r.AccountID)
	dst = append(dst, `,"project_id":`...)
	dst = appendString(dst, r.ProjectID)
	if r.URL != "" {
		dst = append(dst, `,"url":`...)
		dst = appendString(dst, r.URL)
	}
	dst = append(dst, `,"attempt":`...)
	dst = strconv.AppendInt(dst, int64(r.Attempt), 10)
	if r.StatusCode != 0 {
		dst = append(dst, `,"status_code":`...)
		dst = strconv.AppendInt(dst, int64(r.StatusCode), 10)
	}
	dst = append(dst, `,"outcome":`...)
	dst = appendString(dst, r.Outcome)
	if r.Error != "" {
		dst = append(dst, `,"error":`...)
		dst = appendString(dst, r.Error)
	}
	if r.DurationMs != 0 || !r.StartedAt.IsZero() {
		dst = append(dst, `,"duration_ms":`...)
		dst = strconv.AppendInt(dst, r.DurationMs, 10)
	}
	if r.ResponseExcerpt != "" {
		dst = append(dst, `,"response_excerpt":`...)
		dst = appendString(dst, r.ResponseExcerpt)
	}
	if !r.StartedAt.IsZero() {
		dst = append(dst, `,"started_at":`...)
		dst = appendTime(dst, r.StartedAt)
	}
	dst = append(dst, `,"at":`...)
	dst = appendTime(dst, r.At)
	return append(dst, '}')
}

// appendTime appends t as time.Time's MarshalJSON does: RFC 3339 with
// nanoseconds, quoted. A year outside 0-9999, which MarshalJSON refuses,
// cannot come from a clock; it is written as it formats.
func appendTime(dst []byte, t time.Time) []byte {
	dst = append(dst, '"')
	dst = t.AppendFormat(dst, time.RFC3339Nano)
	return append(dst, '"')
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string the way encoding/json does:
// HTML-sensitive characters, U+2028 and U+2029 escaped, invalid UTF-8
// replaced by U+FFFD.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if b := s[i]; b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' && b != '<' && b != '>' && b != '&' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '"', '\\':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xF])
			}
			i++
			start = i
			continue
		}
		c, size := utf8.DecodeRuneInString(s[i:])
		if c == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if c == '\u2028' || c == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[c&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
