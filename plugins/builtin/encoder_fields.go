package builtin

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/callbackd/callbackd/plugins"
)

// This file holds the payload decoding shared by the built-in encoders
// (SPEC §2, "Built-in event types"). Decisions, applied to both encoders:
//
//   - The payload is exactly one JSON object; anything after it but
//     whitespace is invalid.
//   - A key that appears twice at the top level of the object (known or not,
//     compared after unescaping) makes the event invalid: which of the two
//     values a publisher meant is ambiguous, and encoding/json would silently
//     keep the last one.
//   - Numbers are never converted through float64: the decoder hands out each
//     number's literal text, which is checked digit by digit.
//   - IDs (crawl_id, project_id, account_id, report_download_id) are integer
//     literals from 1 to 2^63−1: no sign, fraction, exponent or string form.
//   - user_id, partner_account_id and partner_user_id take any JSON integer
//     (no fraction or exponent; negative and beyond 2^63−1 included, as SPEC
//     §2 sets no range; kept as a number and rendered as given), any string
//     (kept as is, "" included), or null (→ ""). An absent one is "".
//   - null in any other optional field counts as absent (publishers often
//     serialise an unset optional value as null); null in a required field
//     is a wrong type.
//   - The payload must be valid UTF-8, as JSON text is (RFC 8259 §8.1):
//     encoding/json would replace invalid bytes by U+FFFD, delivering a
//     value the publisher did not send.
//   - Strings are read as encoding/json reads them (escapes decoded) and
//     otherwise kept as given: no length cap beyond the dispatcher's
//     payload limit.
//   - Errors are plugins.Invalid and name the field; they quote at most
//     maxEcho bytes of any one piece of input (a computed href, made of
//     validated IDs and codes, up to maxComputedEcho).

// jsonKind is the JSON type of one top-level value of the payload.
type jsonKind uint8

const (
	jsonAbsent jsonKind = iota
	jsonNull
	jsonBool
	jsonNumber
	jsonString
	jsonObject
	jsonArray
)

// jsonValue is one top-level value of the payload. text is the unescaped
// string, the number's literal text, or "true"/"false"; objects and arrays
// keep no text (no built-in field takes one).
type jsonValue struct {
	kind jsonKind
	text string
}

// given reports whether the field carries a value; null counts as not given.
func (v jsonValue) given() bool { return v.kind != jsonAbsent && v.kind != jsonNull }

// describe renders v for an error message, clipped.
func (v jsonValue) describe() string {
	switch v.kind {
	case jsonAbsent:
		return "nothing"
	case jsonNull:
		return "null"
	case jsonBool:
		return v.text
	case jsonNumber:
		return clipInput(v.text)
	case jsonString:
		return quoteInput(v.text)
	case jsonObject:
		return "an object"
	case jsonArray:
		return "an array"
	}
	return "an unknown value"
}

// maxEcho is the most bytes of one piece of input an error message repeats.
const maxEcho = 48

// maxComputedEcho is the most bytes of a computed value (an href) an error
// message repeats. Computed values are made of already validated IDs and
// codes, and the whole of one is what a publisher needs to see.
const maxComputedEcho = 100

// clipInput shortens s to maxEcho bytes, on a rune boundary, marking the cut.
func clipInput(s string) string { return clipTo(s, maxEcho) }

func clipTo(s string, n int) string { return plugins.Clip(s, n) }

// quoteInput is clipInput as a quoted Go string.
func quoteInput(s string) string { return strconv.Quote(clipInput(s)) }

// skipJSONValue consumes one JSON value without keeping it: the decoder still
// checks its syntax, but no copy is made.
type skipJSONValue struct{}

func (*skipJSONValue) UnmarshalJSON([]byte) error { return nil }

// decodeObject decodes payload, which must be exactly one JSON object, and
// stores the value of the key names[i] into vals[i]. Values of other keys are
// checked for syntax and dropped. len(vals) must be len(names).
//
// This is the hot path of every event, so it does not build a generic tree:
// json.Valid checks the whole payload (without allocating), then a small
// lexer that only ever sees valid JSON walks the top-level object. Strings
// with escapes or invalid UTF-8 are unquoted by encoding/json, so they read
// exactly as encoding/json reads them.
func decodeObject(payload []byte, names []string, vals []jsonValue) error {
	if !json.Valid(payload) {
		return syntaxError(payload)
	}
	if !utf8.Valid(payload) {
		return plugins.Invalid("payload: not valid UTF-8 (JSON text must be UTF-8)")
	}
	if esc := loneSurrogate(payload); esc != "" {
		return plugins.Invalid("payload: %s is half a UTF-16 surrogate pair, not a character", esc)
	}
	l := lexer{b: payload}
	l.space()
	if l.peek() != '{' {
		v, err := l.value()
		if err != nil {
			return err
		}
		return plugins.Invalid("payload: must be a JSON object, got %s", v.describe())
	}
	l.i++
	var others map[string]struct{} // keys we do not read, for the duplicate check
	for {
		l.space()
		switch l.peek() {
		case '}':
			return nil // json.Valid: only whitespace follows
		case ',':
			l.i++
			l.space()
		}
		raw, simple, ok := l.str()
		if !ok {
			return errLexer
		}
		l.space()
		if l.peek() != ':' {
			return errLexer
		}
		l.i++
		l.space()

		i := -1
		var key string // set only for keys with escapes or invalid UTF-8
		if simple {
			inner := raw[1 : len(raw)-1]
			for j, n := range names {
				if string(inner) == n {
					i = j
					break
				}
			}
		} else {
			if key, ok = unquote(raw); !ok {
				return errLexer
			}
			i = keyIndex(names, key)
		}
		if i >= 0 {
			if vals[i].kind != jsonAbsent {
				return plugins.Invalid("payload: duplicate key %s", quoteInput(names[i]))
			}
			v, err := l.value()
			if err != nil {
				return err
			}
			vals[i] = v
			continue
		}
		if simple {
			key = string(raw[1 : len(raw)-1])
		}
		if _, dup := others[key]; dup {
			return plugins.Invalid("payload: duplicate key %s", quoteInput(key))
		}
		if others == nil {
			others = make(map[string]struct{}, 4)
		}
		others[key] = struct{}{}
		if !l.skip() {
			return errLexer
		}
	}
}

// errLexer is returned if the lexer meets something json.Valid let through
// that it does not understand. It cannot happen; it exists so that a bug
// here is an invalid event, never a panic or a loop.
var errLexer = plugins.Invalid("payload: malformed JSON")

// syntaxError explains why payload is not one JSON value, or not only one.
func syntaxError(payload []byte) error {
	dec := json.NewDecoder(bytes.NewReader(payload))
	if err := dec.Decode(&skipJSONValue{}); err != nil {
		if err == io.EOF {
			return plugins.Invalid("payload: empty, want a JSON object")
		}
		return malformedJSON(err)
	}
	// One whole value, then something that is not whitespace.
	if first := bytes.TrimLeft(payload, " \t\r\n"); len(first) > 0 && first[0] != '{' {
		return plugins.Invalid("payload: must be a JSON object")
	}
	return plugins.Invalid("payload: unexpected data after the JSON object")
}

// malformedJSON wraps a decoder error. encoding/json's syntax errors quote at
// most one input character, so they are safe to repeat, and whole: the
// longest, "invalid character 'x' after object key:value pair", is 55
// bytes (maxDecoderText bounds what a future one could add).
func malformedJSON(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return plugins.Invalid("payload: malformed JSON: unexpected end of input")
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return plugins.Invalid("payload: malformed JSON at byte %d: %s", se.Offset, clipTo(se.Error(), maxDecoderText))
	}
	return plugins.Invalid("payload: malformed JSON: %s", clipTo(err.Error(), maxDecoderText))
}

const maxDecoderText = 160

// lexer walks JSON that json.Valid has accepted. Every step still checks its
// bounds, so a mistake shows as errLexer rather than a panic.
type lexer struct {
	b []byte
	i int
}

// peek returns the byte at the cursor, 0 at the end.
func (l *lexer) peek() byte {
	if l.i < len(l.b) {
		return l.b[l.i]
	}
	return 0
}

func (l *lexer) space() {
	for l.i < len(l.b) {
		switch l.b[l.i] {
		case ' ', '\t', '\r', '\n':
			l.i++
		default:
			return
		}
	}
}

// str reads a string literal, quotes included. simple means it has no
// escapes and is valid UTF-8, so its bytes between the quotes are its value.
func (l *lexer) str() (raw []byte, simple, ok bool) {
	if l.peek() != '"' {
		return nil, false, false
	}
	simple = true
	for j := l.i + 1; j < len(l.b); j++ {
		switch c := l.b[j]; {
		case c == '\\':
			simple = false
			j++
		case c == '"':
			raw = l.b[l.i : j+1]
			l.i = j + 1
			return raw, simple && utf8.Valid(raw), true
		}
	}
	return nil, false, false
}

// value reads one value at the cursor.
func (l *lexer) value() (jsonValue, error) {
	switch c := l.peek(); c {
	case '{', '[':
		if !l.skip() {
			return jsonValue{}, errLexer
		}
		if c == '{' {
			return jsonValue{kind: jsonObject}, nil
		}
		return jsonValue{kind: jsonArray}, nil
	case '"':
		raw, simple, ok := l.str()
		if !ok {
			return jsonValue{}, errLexer
		}
		if simple {
			return jsonValue{kind: jsonString, text: string(raw[1 : len(raw)-1])}, nil
		}
		s, ok := unquote(raw)
		if !ok {
			return jsonValue{}, errLexer
		}
		return jsonValue{kind: jsonString, text: s}, nil
	case 't':
		return l.literal("true", jsonValue{kind: jsonBool, text: "true"})
	case 'f':
		return l.literal("false", jsonValue{kind: jsonBool, text: "false"})
	case 'n':
		return l.literal("null", jsonValue{kind: jsonNull})
	}
	start := l.i
	for l.i < len(l.b) && isNumberByte(l.b[l.i]) {
		l.i++
	}
	if l.i == start {
		return jsonValue{}, errLexer
	}
	return jsonValue{kind: jsonNumber, text: string(l.b[start:l.i])}, nil
}

func (l *lexer) literal(word string, v jsonValue) (jsonValue, error) {
	if len(l.b)-l.i < len(word) || string(l.b[l.i:l.i+len(word)]) != word {
		return jsonValue{}, errLexer
	}
	l.i += len(word)
	return v, nil
}

func isNumberByte(c byte) bool {
	return '0' <= c && c <= '9' || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E'
}

// skip steps over one value, nested or not.
func (l *lexer) skip() bool {
	switch l.peek() {
	case '{', '[':
	default:
		_, err := l.value()
		return err == nil
	}
	depth := 0
	for l.i < len(l.b) {
		switch l.b[l.i] {
		case '"':
			if _, _, ok := l.str(); !ok {
				return false
			}
			continue
		case '{', '[':
			depth++
		case '}', ']':
			depth--
			if depth == 0 {
				l.i++
				return true
			}
		}
		l.i++
	}
	return false
}

// unquote decodes a string literal with escapes or invalid UTF-8 the way
// encoding/json does.
func unquote(raw []byte) (string, bool) {
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", false
	}
	return s, true
}

// loneSurrogate returns the first \uD800–\uDBFF escape in the JSON text b
// that is not followed by a \uDC00–\uDFFF one, or the first of the latter
// on its own; "" when there is none. encoding/json reads such an escape as
// U+FFFD.
func loneSurrogate(b []byte) string {
	escape := func(i int) (rune, bool) { // the \uXXXX escape at b[i:]
		if i+6 > len(b) || b[i] != '\\' || b[i+1] != 'u' {
			return 0, false
		}
		n, err := strconv.ParseUint(string(b[i+2:i+6]), 16, 16)
		return rune(n), err == nil
	}
	for i := 0; i < len(b); i++ {
		k := bytes.IndexByte(b[i:], '\\')
		if k < 0 {
			return ""
		}
		i += k
		r, ok := escape(i)
		if !ok {
			i++ // another escape: skip its second byte (it may be a backslash)
			continue
		}
		switch {
		case 0xD800 <= r && r < 0xDC00:
			if lo, ok := escape(i + 6); !ok || lo < 0xDC00 || lo > 0xDFFF {
				return string(b[i : i+6])
			}
			i += 11
		case 0xDC00 <= r && r <= 0xDFFF:
			return string(b[i : i+6])
		default:
			i += 5
		}
	}
	return ""
}

func keyIndex(names []string, key string) int {
	for i, n := range names {
		if n == key {
			return i
		}
	}
	return -1
}

// maxIDText is 2^63−1, the largest ID, as text.
const maxIDText = "9223372036854775807"

// isUintLiteral reports whether s is a decimal integer from 0 to 2^63−1
// written without sign or leading zeros.
func isUintLiteral(s string) bool {
	if s == "" || len(s) > len(maxIDText) || (s[0] == '0' && len(s) > 1) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	// Equal-length digit strings compare like the numbers they spell.
	return len(s) < len(maxIDText) || s <= maxIDText
}

// isIntLiteral reports whether s is a JSON integer: an optional minus, then
// 0 or digits without a leading zero; no fraction or exponent.
func isIntLiteral(s string) bool {
	s = strings.TrimPrefix(s, "-")
	if s == "" || (s[0] == '0' && len(s) > 1) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// isIDLiteral reports whether s is a decimal integer from 1 to 2^63−1
// written without sign or leading zeros.
func isIDLiteral(s string) bool { return isUintLiteral(s) && s != "0" }

// requiredID decodes a required ID field and returns its decimal text.
func requiredID(field string, v jsonValue) (string, error) {
	if v.kind == jsonAbsent {
		return "", plugins.Invalid("%s: missing (required)", field)
	}
	return idField(field, v)
}

func idField(field string, v jsonValue) (string, error) {
	if v.kind != jsonNumber || !isIDLiteral(v.text) {
		return "", plugins.Invalid("%s: must be an integer from 1 to %s, got %s", field, maxIDText, v.describe())
	}
	return v.text, nil
}

// subjectID decodes project_id or account_id: taken from the event's subject
// when absent, and equal to it (as decimal text) when present.
func subjectID(field string, v jsonValue, subject string) (string, error) {
	if !isIDLiteral(subject) {
		return "", plugins.Invalid("%s: the subject's value %s is not an integer from 1 to %s", field, quoteInput(subject), maxIDText)
	}
	if !v.given() {
		return subject, nil
	}
	lit, err := idField(field, v)
	if err != nil {
		return "", err
	}
	if lit != subject {
		return "", plugins.Invalid("%s: %s does not match the subject's %s", field, lit, subject)
	}
	return lit, nil
}

// optionalRef decodes user_id, partner_account_id or partner_user_id: an
// integer stays a number, a string stays a string, null or absent is "".
func optionalRef(field string, v jsonValue) (plugins.Value, error) {
	switch v.kind {
	case jsonAbsent, jsonNull:
		return plugins.String(""), nil
	case jsonString:
		return plugins.String(v.text), nil
	case jsonNumber:
		if isIntLiteral(v.text) {
			return plugins.Number(v.text), nil
		}
	}
	return plugins.Value{}, plugins.Invalid("%s: must be an integer (no fraction or exponent), a string or null, got %s", field, v.describe())
}

// optionalString decodes an optional string field, def when not given.
func optionalString(field string, v jsonValue, def string) (string, error) {
	switch v.kind {
	case jsonAbsent, jsonNull:
		return def, nil
	case jsonString:
		return v.text, nil
	}
	return "", plugins.Invalid("%s: must be a string, got %s", field, v.describe())
}

// expectString checks that an optional field, when given, is the string
// want: a constant (message, resource) or a computed href.
func expectString(field string, v jsonValue, want string) error {
	if !v.given() || (v.kind == jsonString && v.text == want) {
		return nil
	}
	return plugins.Invalid("%s: must be %s, got %s", field, strconv.Quote(clipTo(want, maxComputedEcho)), v.describe())
}

// maxCodeLen is the longest report code or segment ID.
const maxCodeLen = 64

// isCode reports whether s matches [A-Za-z0-9_-]{1,64}: report template and
// type codes and segment IDs end up in href, so they are kept to URL-safe
// characters.
func isCode(s string) bool {
	if s == "" || len(s) > maxCodeLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// requiredCode decodes report_template_code or report_type_code.
func requiredCode(field string, v jsonValue) (string, error) {
	if !v.given() {
		return "", plugins.Invalid("%s: missing (required with report_template_code, report_type_code or segment_id)", field)
	}
	if v.kind != jsonString || !isCode(v.text) {
		return "", plugins.Invalid("%s: must be a string of 1 to 64 of [A-Za-z0-9_-], got %s", field, v.describe())
	}
	return v.text, nil
}

// segmentID decodes the optional segment_id: a string of [A-Za-z0-9_-]{1,64},
// or an integer literal without sign, fraction or exponent (at most 64
// digits), kept as written. "" when not given.
func segmentID(v jsonValue) (string, error) {
	switch v.kind {
	case jsonAbsent, jsonNull:
		return "", nil
	case jsonString:
		if isCode(v.text) {
			return v.text, nil
		}
	case jsonNumber:
		// An integer, rendered as given: its text matches the string
		// form's [A-Za-z0-9_-]{1,64} ("-5" as a string is accepted too).
		if allDigits(strings.TrimPrefix(v.text, "-")) && len(v.text) <= maxCodeLen {
			return v.text, nil
		}
	}
	return "", plugins.Invalid("segment_id: must be a string of 1 to 64 of [A-Za-z0-9_-] or an integer of at most 64 characters, got %s", v.describe())
}

func allDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// reportIDShape is the form a report_id takes, for error messages.
const reportIDShape = `"crawlId:reportTemplateCode:reportTypeCode[:segmentId]"`

// checkReportID checks a given report_id: 3 or 4 colon-separated parts, the
// first equal to crawlID, the others report codes.
func checkReportID(v jsonValue, crawlID string) (string, error) {
	if v.kind != jsonString {
		return "", plugins.Invalid("report_id: must be a string %s, got %s", reportIDShape, v.describe())
	}
	s := v.text
	crawlPart, rest, ok := cutByte(s, ':')
	if !ok {
		return "", plugins.Invalid("report_id: must be %s, got %s", reportIDShape, quoteInput(s))
	}
	parts := 1
	for ok {
		var part string
		part, rest, ok = cutByte(rest, ':')
		parts++
		if parts > 4 || !isCode(part) {
			return "", plugins.Invalid("report_id: must be %s with codes of 1 to 64 of [A-Za-z0-9_-], got %s", reportIDShape, quoteInput(s))
		}
	}
	if parts < 3 {
		return "", plugins.Invalid("report_id: must be %s, got %s", reportIDShape, quoteInput(s))
	}
	if crawlPart != crawlID {
		return "", plugins.Invalid("report_id: crawl part %s does not match crawl_id %s", quoteInput(crawlPart), crawlID)
	}
	return s, nil
}

// cutByte is strings.Cut for one byte.
func cutByte(s string, sep byte) (before, after string, found bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == sep {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

// parseFileURL checks file_url: an absolute http or https URL with a host. It is
// delivered exactly as given (a signed URL must not be re-serialised).
func parseFileURL(v jsonValue) (string, error) {
	if v.kind == jsonAbsent {
		return "", plugins.Invalid("file_url: missing (required)")
	}
	if v.kind != jsonString {
		return "", plugins.Invalid("file_url: must be an absolute http or https URL, got %s", v.describe())
	}
	if _, err := plugins.ParseHTTPURL(v.text); err != nil {
		if _, perr := url.Parse(v.text); perr != nil {
			return "", plugins.Invalid("file_url: %v", err) // nothing to show of it
		}
		return "", plugins.Invalid("file_url: %v, got %s", err, quoteURL(v.text))
	}
	return v.text, nil
}

// quoteURL quotes a rejected file_url for its error without userinfo, query
// or fragment: a file_url is a signed URL (SPEC §7), and the error goes to
// logs, the delivery log and the dead letter's Callbackd-Error.
func quoteURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "an unparseable URL"
	}
	if u.User == nil && u.RawQuery == "" && !u.ForceQuery && u.Fragment == "" {
		return quoteInput(s) // nothing to hide: as given
	}
	return quoteInput(plugins.SafeURL(s))
}
