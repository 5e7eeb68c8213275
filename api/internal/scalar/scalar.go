// Package scalar holds the admin API's GraphQL scalars where gqlgen's own
// are looser than the GraphQL specification.
package scalar

import (
	"fmt"
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
		return "", fmt.Errorf("must be a string, got %s", describe(v))
	}
	return s, nil
}

func describe(v any) string {
	switch v := v.(type) {
	case nil:
		return "null"
	case bool:
		return strconv.FormatBool(v)
	case int, int64, float64:
		return fmt.Sprint(v)
	case interface{ String() string }: // json.Number
		return v.String()
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}
