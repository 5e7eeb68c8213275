package api_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

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
	t.Run("Content-Length over 1 MiB", func(t *testing.T) {
		// Refused at once, before the body: a client announcing 5 MB and
		// sending a few bytes used to wait out the read timeout for a 400.
		conn, err := net.Dial("tcp", strings.TrimPrefix(h.srv.URL, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "POST /graphql HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: 5000000\r\n\r\n{\"q", testToken)
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("no answer before the body: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Fatalf("HTTP %d", resp.StatusCode)
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
	t.Run("JSON nested too deeply", func(t *testing.T) {
		n := 20000
		body := `{"query":"{ __typename }","variables":{"a":` + strings.Repeat("[", n) + strings.Repeat("]", n) + `}}`
		code, b := h.post("/graphql", "application/json", []byte(body))
		if code != http.StatusBadRequest || !strings.Contains(string(b), "request body nests JSON too deeply (at byte") {
			t.Fatalf("HTTP %d %.200s", code, b)
		}
	})
	t.Run("several operations, none named", func(t *testing.T) {
		r := h.gql(`query A { __typename } query B { __typename }`, nil)
		if len(r.Errors) != 1 || r.Errors[0].Message != "operationName is required: the document does not hold exactly one operation" ||
			r.Errors[0].Extensions["code"] != "GRAPHQL_VALIDATION_FAILED" {
			t.Fatalf("errors %+v", r.Errors)
		}
		body := []byte(`{"query":"query A { __typename } query B { __typename }","operationName":"C"}`)
		code, b := h.post("/graphql", "application/json", body)
		if code != http.StatusUnprocessableEntity || !strings.Contains(string(b), `the document holds no operation named \"C\"`) {
			t.Fatalf("HTTP %d %s", code, b)
		}
	})
	t.Run("body of the wrong shape", func(t *testing.T) {
		// gqlgen's own error repeats the body, header values included.
		const q = `"mutation { updateProject(input: {projectId: \"1\", apiCallbackHeaders: [{key: \"X-Token\", value: \"s3cret\"}]}) { project { id } } }"`
		for _, tc := range []struct{ body, want string }{
			{`{"query":` + q + `,"variables":[]}`, `request body: "variables" must be a JSON object (or null), got an array`},
			{`{"query":` + q + `,"extensions":"x"}`, `request body: "extensions" must be a JSON object (or null), got a string`},
			{`{"query":` + q + `,"operationName":5}`, `request body: "operationName" must be a string, got a number`},
			{`{"query":5,"x":` + q + `}`, `request body: "query" must be a string, got a number`},
			{`[{"query":` + q + `}]`, `request body must be a JSON object with a "query", got an array`},
			{q, `request body must be a JSON object with a "query", got a string`},
			{`{"variables":{"v":` + q + `}}`, `request body has no "query"`},
			// Bytes that are not UTF-8 would be stored as U+FFFD.
			{`{"query":` + q + `,"variables":{"v":"caf` + "\xe9" + `"}}`, `request body is not valid UTF-8`},
		} {
			code, b := h.post("/graphql", "application/json", []byte(tc.body))
			var r gqlResponse
			if code != http.StatusBadRequest || json.Unmarshal(b, &r) != nil || len(r.Errors) != 1 ||
				r.Errors[0].Message != tc.want || r.Errors[0].Extensions["code"] != "BAD_REQUEST" || strings.Contains(string(b), "s3cret") {
				t.Errorf("%.60s: HTTP %d %s, want 400 %q", tc.body, code, b, tc.want)
			}
		}
		if r := h.gql(`{ __typename }`, nil); len(r.Errors) != 0 {
			t.Errorf("a plain query: %+v", r.Errors)
		}
		if code, b := h.post("/graphql", "application/json", []byte(`{"query":"{ __typename }","variables":null,"operationName":null,"extensions":null}`)); code != http.StatusOK {
			t.Errorf("nulls: HTTP %d %s", code, b)
		}
	})
	t.Run("too many tokens", func(t *testing.T) {
		q := "{" + strings.Repeat(" a: __typename", api.DefaultTokenLimit/3+1) + "}"
		r := h.gql(q, nil)
		if len(r.Errors) != 1 || !strings.Contains(r.Errors[0].Message, fmt.Sprintf("exceeded token limit of %d", api.DefaultTokenLimit)) {
			t.Fatalf("errors %+v", r.Errors)
		}
	})
	t.Run("fragments that expand to millions of fields", func(t *testing.T) {
		// 60 fragments, each spreading the next twice: 2^60 fields
		// expanded, in 2 KB. Without the check the complexity walk
		// would not end.
		var sb strings.Builder
		sb.WriteString("query { ...F0 } ")
		for i := range 60 {
			fmt.Fprintf(&sb, "fragment F%d on Query { ...F%d ...F%d } ", i, i+1, i+1)
		}
		sb.WriteString("fragment F60 on Query { __typename }")
		r := h.gql(sb.String(), nil)
		if len(r.Errors) != 1 || r.Errors[0].Extensions["code"] != "COMPLEXITY_LIMIT_EXCEEDED" ||
			!strings.Contains(r.Errors[0].Message, "once its fragments are expanded") {
			t.Fatalf("errors %+v", r.Errors)
		}
		// Twelve levels (4096 fields) stay within the limit.
		sb.Reset()
		sb.WriteString("query { ...F0 } ")
		for i := range 12 {
			fmt.Fprintf(&sb, "fragment F%d on Query { ...F%d ...F%d } ", i, i+1, i+1)
		}
		sb.WriteString("fragment F12 on Query { __typename }")
		if r := h.gql(sb.String(), nil); len(r.Errors) != 0 {
			t.Fatalf("errors %+v", r.Errors)
		}
	})
	t.Run("too many test callbacks", func(t *testing.T) {
		var sb strings.Builder
		sb.WriteString("mutation { ")
		for i := range api.MaxTestCallbacks - 1 {
			fmt.Fprintf(&sb, `t%d: sendTestCallback(projectId: "1") { status } `, i)
		}
		sb.WriteString(`... on Mutation { a: sendTestCallback(projectId: "1") { status } } ...M } fragment M on Mutation { b: sendTestCallback(projectId: "1") { status } }`)
		r := h.gql(sb.String(), nil)
		want := fmt.Sprintf("operation selects sendTestCallback %d times, at most %d are allowed in one request", api.MaxTestCallbacks+1, api.MaxTestCallbacks)
		if len(r.Errors) != 1 || r.Errors[0].Message != want || r.Errors[0].Extensions["code"] != "FIELD_LIMIT_EXCEEDED" {
			t.Fatalf("errors %+v, want %q", r.Errors, want)
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
