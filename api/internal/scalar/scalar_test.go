package scalar

import (
	"encoding/json"
	"testing"
)

func TestUnmarshal(t *testing.T) {
	for _, tc := range []struct {
		name string
		fn   func(any) (any, error)
		in   any
		want any    // when err is ""
		err  string // the whole message
	}{
		{"string", str, "a", "a", ""},
		{"string from a number", str, json.Number("5"), nil, "must be a string, got a number"},
		{"string from a secret number", str, int64(31415926535897), nil, "must be a string, got a number"},
		{"string from null", str, nil, nil, "must be a string, got null"},
		{"boolean", boolean, true, true, ""},
		{"boolean from a string", boolean, "true", nil, "must be a boolean, got a string"},
		{"boolean from 1", boolean, json.Number("1"), nil, "must be a boolean, got a number"},
		{"int", integer, json.Number("7"), 7, ""},
		{"int literal", integer, int64(-7), -7, ""},
		{"int 2.0", integer, json.Number("2.0"), 2, ""},
		{"int float64", integer, float64(3), 3, ""},
		{"int 2.5", integer, json.Number("2.5"), nil, "must be an integer, got a number with a fraction"},
		{"int over 32 bits", integer, json.Number("2147483648"), nil, "must be an integer from -2147483648 to 2147483647, got a number outside it"},
		{"int under 32 bits", integer, int64(-2147483649), nil, "must be an integer from -2147483648 to 2147483647, got a number outside it"},
		{"int from a string", integer, "2", nil, "must be an integer, got a string"},
		{"id", id, "TjAwNlByb2plY3QxMjM", "TjAwNlByb2plY3QxMjM", ""},
		{"id from an integer", id, json.Number("123"), "123", ""},
		{"id from int64", id, int64(9223372036854775807), "9223372036854775807", ""},
		{"id from 1.5", id, json.Number("1.5"), nil, "must be a string or an integer up to 9223372036854775807, got another number"},
		{"id from true", id, true, nil, "must be a string or an integer, got a boolean"},
		{"id from a list", id, []any{"1"}, nil, "must be a string or an integer, got a list"},
	} {
		got, err := tc.fn(tc.in)
		switch {
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("%s: %v, %v; want %v", tc.name, got, err, tc.want)
		case tc.err != "" && (err == nil || err.Error() != tc.err):
			t.Errorf("%s: %v, %v; want error %q", tc.name, got, err, tc.err)
		}
	}
}

func str(v any) (any, error)     { return UnmarshalString(v) }
func boolean(v any) (any, error) { return UnmarshalBoolean(v) }
func integer(v any) (any, error) { return UnmarshalInt(v) }
func id(v any) (any, error)      { return UnmarshalID(v) }
