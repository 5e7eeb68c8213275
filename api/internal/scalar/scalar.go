// Package scalar holds the admin API's GraphQL scalars where gqlgen's own
// are looser than the GraphQL specification's input coercion.
//
// Their errors name the kind of value given, never the value: a header
// value sent as a number is still a secret.
package scalar

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"

	"github.com/99designs/gqlgen/graphql"
)

// MarshalString writes a String as gqlgen does.
func MarshalString(s string) graphql.Marshaler { return graphql.MarshalString(s) }

// UnmarshalString reads a String input value. The GraphQL specification's
// input coercion of String accepts strings only; gqlgen's turns a number
// or a boolean in the variables into its text, so {"apiCallbackUrl": 5}
// would be stored as "5".
func UnmarshalString(v any) (string, error) {
	s, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("must be a string, got %s", kind(v))
	}
	return s, nil
}

// MarshalBoolean writes a Boolean as gqlgen does.
func MarshalBoolean(b bool) graphql.Marshaler { return graphql.MarshalBoolean(b) }

// UnmarshalBoolean reads a Boolean input value: true or false only.
// gqlgen's takes any string (true only for "true") and any int, so
// {"dryRun": "yes"} meant a replay that was not dry.
func UnmarshalBoolean(v any) (bool, error) {
	b, ok := v.(bool)
	if !ok {
		return false, fmt.Errorf("must be a boolean, got %s", kind(v))
	}
	return b, nil
}

// MarshalInt writes an Int as gqlgen does.
func MarshalInt(i int) graphql.Marshaler { return graphql.MarshalInt(i) }

// UnmarshalInt reads an Int input value: an integer in GraphQL's 32-bit
// range. A number with a zero fraction (5.0) counts as the integer, as in
// the JSON of most clients; a string of digits does not.
func UnmarshalInt(v any) (int, error) {
	const outOfRange = "must be an integer from -2147483648 to 2147483647"
	switch v := v.(type) {
	case int:
		return checkInt32(int64(v), outOfRange)
	case int32:
		return int(v), nil
	case int64:
		return checkInt32(v, outOfRange)
	case json.Number:
		if i, err := strconv.ParseInt(string(v), 10, 64); err == nil {
			return checkInt32(i, outOfRange)
		}
		f, err := strconv.ParseFloat(string(v), 64)
		if err != nil {
			return 0, fmt.Errorf("%s, got a number that is not", outOfRange)
		}
		return intFromFloat(f, outOfRange)
	case float64:
		return intFromFloat(v, outOfRange)
	}
	return 0, fmt.Errorf("must be an integer, got %s", kind(v))
}

func checkInt32(i int64, outOfRange string) (int, error) {
	if i < math.MinInt32 || i > math.MaxInt32 {
		return 0, fmt.Errorf("%s, got a number outside it", outOfRange)
	}
	return int(i), nil
}

func intFromFloat(f float64, outOfRange string) (int, error) {
	if f != math.Trunc(f) || math.IsInf(f, 0) || math.IsNaN(f) {
		return 0, fmt.Errorf("must be an integer, got a number with a fraction")
	}
	if f < math.MinInt32 || f > math.MaxInt32 {
		return 0, fmt.Errorf("%s, got a number outside it", outOfRange)
	}
	return int(f), nil
}

// MarshalID writes an ID as gqlgen does.
func MarshalID(s string) graphql.Marshaler { return graphql.MarshalID(s) }

// UnmarshalID reads an ID input value: a string, or an integer (taken as
// its decimal text), as the GraphQL specification coerces IDs. gqlgen's
// also takes true as "true", null as "null" and 5.5 as "5.500000".
func UnmarshalID(v any) (string, error) {
	switch v := v.(type) {
	case string:
		return v, nil
	case int:
		return strconv.Itoa(v), nil
	case int64:
		return strconv.FormatInt(v, 10), nil
	case json.Number:
		if _, err := strconv.ParseInt(string(v), 10, 64); err == nil {
			return string(v), nil
		}
		return "", fmt.Errorf("must be a string or an integer up to 9223372036854775807, got another number")
	}
	return "", fmt.Errorf("must be a string or an integer, got %s", kind(v))
}

// kind names the kind of a decoded JSON (or GraphQL literal) value.
func kind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case string:
		return "a string"
	case int, int32, int64, float64, json.Number:
		return "a number"
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("a %T", v)
}
