package api_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/callbackd/callbackd/api"
)

func TestGraphQL_request_limits(t *testing.T) {
	h := newHarness(t, nil)

	t.Run("body over 1 MiB", func(t *testing.T) {
		body := []byte(`{"query":"{ project(id: \"1\") { id } }","variables":{"pad":"` + strings.Repeat("x", 1<<20) + `"}}`)
		if code, b := h.post("/graphql", "application/json", body); code != http.StatusRequestEntityTooLarge {
			t.Fatalf("HTTP %d: %.200s", code, b)
		}
	})
	t.Run("GET", func(t *testing.T) {
		if code, _ := h.get(`/graphql?query={project(id:"1"){id}}`, testToken); code != http.StatusMethodNotAllowed {
			t.Fatalf("HTTP %d", code)
		}
	})
	t.Run("not JSON", func(t *testing.T) {
		if code, _ := h.post("/graphql", "application/x-www-form-urlencoded", []byte(`query={project(id:"1"){id}}`)); code != http.StatusUnsupportedMediaType {
			t.Fatalf("HTTP %d", code)
		}
	})
	t.Run("too complex", func(t *testing.T) {
		var sb strings.Builder
		sb.WriteString("{")
		for i := range 10 {
			fmt.Fprintf(&sb, ` d%d: deliveries(first: 500) { edges { cursor node { id deliveryId status at } } }`, i)
		}
		sb.WriteString("}")
		r := h.gql(sb.String(), nil)
		if len(r.Errors) != 1 || r.Errors[0].Extensions["code"] != "COMPLEXITY_LIMIT_EXCEEDED" {
			t.Fatalf("errors %+v", r.Errors)
		}
	})
	t.Run("malformed JSON", func(t *testing.T) {
		// The error says where the body breaks, never repeats it: it may
		// hold header values.
		code, b := h.post("/graphql", "application/json", []byte(`{"query":"mutation { updateProject(input: {projectId: \"1\", apiCallbackHeaders: [{key: \"X-Token\", value: \"s3cret\"}]}) { project { id } } }",`))
		var r gqlResponse
		if code != http.StatusBadRequest || json.Unmarshal(b, &r) != nil || len(r.Errors) != 1 ||
			!strings.Contains(r.Errors[0].Message, "not valid JSON (at byte") || strings.Contains(string(b), "s3cret") {
			t.Fatalf("HTTP %d %s", code, b)
		}
	})
	t.Run("syntax error", func(t *testing.T) {
		if r := h.gql(`{ project(id: "1") { id `, nil); len(r.Errors) == 0 {
			t.Fatal("no error")
		}
	})
}

// The schema is shallow (4 levels at most), so the depth check is shown
// with a limit of 2.
func TestGraphQL_depth_limit(t *testing.T) {
	h := newHarness(t, func(o *api.Options) { o.MaxDepth = 2 })
	for name, q := range map[string]string{
		"fields":           `{ project(id: "1") { apiCallbackHeaders { key } } }`,
		"fragment spread":  `query { ...Q } fragment Q on Query { project(id: "1") { apiCallbackHeaders { key } } }`,
		"inline fragments": `{ ... on Query { project(id: "1") { ... on Project { apiCallbackHeaders { key } } } } }`,
	} {
		r := h.gql(q, nil)
		if len(r.Errors) != 1 || r.Errors[0].Extensions["code"] != "DEPTH_LIMIT_EXCEEDED" {
			t.Errorf("%s: errors %+v", name, r.Errors)
		}
	}
	// Introspection is bounded by the schema and not counted.
	r := h.gql(`{ project(id: "1") { id apiCallbackUrl } __schema { types { fields { type { ofType { name } } } } } }`, nil)
	if len(r.Errors) != 0 {
		t.Fatalf("introspection counted: %+v", r.Errors)
	}
}
