package plugins

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// Kind is the JSON type of a notification field's value.
type Kind uint8

// The JSON scalar kinds a notification field may hold.
const (
	KindNull Kind = iota
	KindString
	KindNumber
	KindBool
)

// String returns the kind's JSON name.
func (k Kind) String() string {
	switch k {
	case KindNull:
		return "null"
	case KindString:
		return "string"
	case KindNumber:
		return "number"
	case KindBool:
		return "bool"
	default:
		return "kind(" + strconv.Itoa(int(k)) + ")"
	}
}

// Value is a JSON scalar kept as text, so integers of any size travel exactly
// and a form transport and a JSON transport can both render it faithfully.
// For KindNumber, Text is a JSON number literal; for KindBool, "true" or
// "false"; for KindNull, "".
type Value struct {
	Kind Kind
	Text string
}

// Null is the JSON null.
func Null() Value { return Value{Kind: KindNull} }

// String is a JSON string.
func String(s string) Value { return Value{Kind: KindString, Text: s} }

// Int is a JSON integer.
func Int(i int64) Value { return Value{Kind: KindNumber, Text: strconv.FormatInt(i, 10)} }

// Uint is a JSON integer.
func Uint(u uint64) Value { return Value{Kind: KindNumber, Text: strconv.FormatUint(u, 10)} }

// Number is a JSON number given as its literal text, for example "124234".
func Number(lit string) Value { return Value{Kind: KindNumber, Text: lit} }

// Bool is a JSON boolean.
func Bool(b bool) Value { return Value{Kind: KindBool, Text: strconv.FormatBool(b)} }

// FormText is the value as a form field renders it: strings as they are,
// numbers in decimal, booleans as true/false, null as the empty string.
func (v Value) FormText() string {
	if v.Kind == KindNull {
		return ""
	}
	return v.Text
}

// Field is one named value of a notification.
type Field struct {
	Name  string
	Value Value
}

// Notification is what a callback delivers: an ordered list of fields.
// The order is part of the contract (SPEC §2), so it is a slice, never a map.
type Notification struct {
	Fields []Field
}

// Get returns the value of the first field with the given name.
func (n Notification) Get(name string) (Value, bool) {
	for _, f := range n.Fields {
		if f.Name == name {
			return f.Value, true
		}
	}
	return Value{}, false
}

// MaxNotificationBytes caps a notification's names and values together,
// for a plugin's: a form body is made of them, and one crossing to a
// transport in a plugin process must fit in MaxMessageBytes.
const MaxNotificationBytes = 16 << 20

// Check reports what makes n unfit to send, nil when nothing does: no field
// at all, more than MaxNotificationBytes, a field name that is empty, not valid UTF-8 or given twice, a
// value that is not valid UTF-8, a number that is not a JSON number, a
// bool that is not true or false, or an unknown kind. The host checks what
// an encoder in a plugin process returns.
func (n Notification) Check() error {
	if len(n.Fields) == 0 {
		return errors.New("no fields")
	}
	size := 0
	for _, f := range n.Fields {
		size += len(f.Name) + len(f.Value.Text)
	}
	if size > MaxNotificationBytes {
		return fmt.Errorf("%d bytes of names and values, over %d MiB", size, MaxNotificationBytes>>20)
	}
	for i, f := range n.Fields {
		switch {
		case f.Name == "":
			return fmt.Errorf("field %d has no name", i+1)
		case !utf8.ValidString(f.Name):
			return fmt.Errorf("field %d's name is not valid UTF-8", i+1)
		case !utf8.ValidString(f.Value.Text):
			return fmt.Errorf("field %s: the value is not valid UTF-8", strconv.Quote(clipName(f.Name)))
		}
		for _, g := range n.Fields[:i] {
			if g.Name == f.Name {
				return fmt.Errorf("field %s is given twice", strconv.Quote(clipName(f.Name)))
			}
		}
		switch f.Value.Kind {
		case KindString, KindNull:
		case KindNumber:
			t := f.Value.Text
			if t == "" || !(t[0] == '-' || '0' <= t[0] && t[0] <= '9') || !json.Valid([]byte(t)) || t[len(t)-1] == ' ' {
				return fmt.Errorf("field %s: %s is not a JSON number", strconv.Quote(clipName(f.Name)), strconv.Quote(clipName(t)))
			}
		case KindBool:
			if f.Value.Text != "true" && f.Value.Text != "false" {
				return fmt.Errorf("field %s: a bool is true or false, not %s", strconv.Quote(clipName(f.Name)), strconv.Quote(clipName(f.Value.Text)))
			}
		default:
			return fmt.Errorf("field %s: unknown kind %s", strconv.Quote(clipName(f.Name)), f.Value.Kind)
		}
	}
	return nil
}

// Clip shortens s to its first n bytes or fewer, cut on a rune boundary,
// and marks the cut with "…" (3 bytes more): for a plugin's or a
// publisher's text quoted in an error message or a log line.
func Clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := n
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + "…"
}

// clipName cuts a plugin's text to 64 bytes for an error message.
func clipName(s string) string { return Clip(s, 64) }

// AppendForm appends the notification, form-encoded in field order
// (application/x-www-form-urlencoded), to dst. url.Values.Encode sorts keys,
// so it cannot be used here.
func (n Notification) AppendForm(dst []byte) []byte {
	for i, f := range n.Fields {
		if i > 0 {
			dst = append(dst, '&')
		}
		dst = appendQueryEscape(dst, f.Name)
		dst = append(dst, '=')
		dst = appendQueryEscape(dst, f.Value.FormText())
	}
	return dst
}

// appendQueryEscape escapes s as url.QueryEscape does (space as '+'), without
// allocating an intermediate string.
func appendQueryEscape(dst []byte, s string) []byte {
	const hex = "0123456789ABCDEF"
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			c == '-', c == '_', c == '.', c == '~':
			dst = append(dst, c)
		case c == ' ':
			dst = append(dst, '+')
		default:
			dst = append(dst, '%', hex[c>>4], hex[c&15])
		}
	}
	return dst
}
