package api_test

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/callbackd/callbackd/api"
	"github.com/callbackd/callbackd/testutil"
)

// The seed's ConfigureApiCallbackUrl operation, sent verbatim with the
// seed's variables, answers the seed's response verbatim.
func TestSeedOperation_verbatim(t *testing.T) {
	h := newHarness(t, nil)
	for _, fixture := range []string{"testdata/seed_request.json", "testdata/seed_request_multiline.json"} {
		t.Run(fixture, func(t *testing.T) {
			req, err := os.ReadFile(fixture)
			if err != nil {
				t.Fatal(err)
			}
			want, err := os.ReadFile("testdata/seed_response.json")
			if err != nil {
				t.Fatal(err)
			}
			code, got := h.post("/graphql", "application/json", req)
			if code != 200 {
				t.Fatalf("HTTP %d: %s", code, got)
			}
			if !jsonEqual(t, got, want) {
				t.Fatalf("response\n got %s\nwant %s", got, want)
			}
			// The bucket stores plain numbers (SPEC §4).
			v, _ := h.kvValue("project.123")
			if !jsonEqual(t, []byte(v), []byte(`{"apiCallbackUrl":"https://www.example.com/webhook","apiCallbackHeaders":[{"key":"Authorization","value":"Bearer your-token"}]}`)) {
				t.Fatalf("project.123 = %s", v)
			}
		})
	}
}

func TestQuery_unset_ids_give_null_url_and_no_headers(t *testing.T) {
	h := newHarness(t, nil)
	var got struct {
		Project   map[string]any
		Account   map[string]any
		SsoClient map[string]any
	}
	h.ok(`query { project(id: "123") { id apiCallbackUrl apiCallbackHeaders { key value } }
		account(id: "TjAwNkFjY291bnQ0NQ==") { id apiCallbackUrl apiCallbackHeaders { key } ssoClientId }
		ssoClient(id: "77") { id webhookUrl webhookHeaders { key } } }`, nil, &got)
	want := map[string]map[string]any{
		"project":   {"id": "TjAwNlByb2plY3QxMjM", "apiCallbackUrl": nil, "apiCallbackHeaders": []any{}},
		"account":   {"id": api.GlobalID("Account", "45"), "apiCallbackUrl": nil, "apiCallbackHeaders": []any{}, "ssoClientId": nil},
		"ssoClient": {"id": api.GlobalID("SsoClient", "77"), "webhookUrl": nil, "webhookHeaders": []any{}},
	}
	for name, have := range map[string]map[string]any{"project": got.Project, "account": got.Account, "ssoClient": got.SsoClient} {
		for k, w := range want[name] {
			if !jsonEqual(t, mustJSON(have[k]), mustJSON(w)) {
				t.Errorf("%s.%s = %#v, want %#v", name, k, have[k], w)
			}
		}
	}
	if v, _ := h.kvValue("project.123"); v != "" {
		t.Errorf("a query wrote project.123: %s", v)
	}
}

func TestUpdateAccount_sso_client_is_a_global_id_stored_plain(t *testing.T) {
	h := newHarness(t, nil)
	const q = `mutation($in: UpdateAccountInput!) { updateAccount(input: $in) { account { id apiCallbackUrl apiCallbackHeaders { key value } ssoClientId } } }`
	var got struct {
		UpdateAccount struct {
			Account struct {
				ID                 string
				APICallbackURL     *string
				APICallbackHeaders []map[string]string
				SsoClientID        *string
			}
		}
	}
	h.ok(q, map[string]any{"in": map[string]any{
		"accountId":      api.GlobalID("Account", "9"),
		"apiCallbackUrl": "https://hooks.example.com/a",
		"ssoClientId":    api.GlobalID("SsoClient", "77"),
	}}, &got)
	a := got.UpdateAccount.Account
	if a.ID != api.GlobalID("Account", "9") || a.SsoClientID == nil || *a.SsoClientID != "TjAwNlNzb0NsaWVudDc3" {
		t.Fatalf("account = %+v", a)
	}
	v, _ := h.kvValue("account.9")
	if !jsonEqual(t, []byte(v), []byte(`{"apiCallbackUrl":"https://hooks.example.com/a","ssoClientId":"77"}`)) {
		t.Fatalf("account.9 = %s", v)
	}
	// Plain number in, global ID out; then null clears.
	h.ok(q, map[string]any{"in": map[string]any{"accountId": "9", "ssoClientId": "78"}}, &got)
	if s := got.UpdateAccount.Account.SsoClientID; s == nil || *s != api.GlobalID("SsoClient", "78") {
		t.Fatalf("ssoClientId = %v", s)
	}
	h.ok(q, map[string]any{"in": map[string]any{"accountId": "9", "ssoClientId": nil}}, &got)
	if s := got.UpdateAccount.Account.SsoClientID; s != nil {
		t.Fatalf("ssoClientId after null = %v", *s)
	}
	if u := got.UpdateAccount.Account.APICallbackURL; u == nil || *u != "https://hooks.example.com/a" {
		t.Fatalf("the URL changed: %v", u)
	}
}

func TestUpdateSsoClient_sets_and_clears_the_webhook(t *testing.T) {
	h := newHarness(t, nil)
	const q = `mutation($in: UpdateSsoClientInput!) { updateSsoClient(input: $in) { ssoClient { id webhookUrl webhookHeaders { key value } } } }`
	var got struct {
		UpdateSsoClient struct {
			SsoClient struct {
				ID             string
				WebhookURL     *string
				WebhookHeaders []map[string]string
			}
		}
	}
	h.ok(q, map[string]any{"in": map[string]any{
		"ssoClientId":    "TjAwNlNzb0NsaWVudDc3",
		"webhookUrl":     "https://sso.example.com/hook",
		"webhookHeaders": []map[string]string{{"key": "X-Sig", "value": "s3cret"}},
	}}, &got)
	c := got.UpdateSsoClient.SsoClient
	if c.ID != "TjAwNlNzb0NsaWVudDc3" || c.WebhookURL == nil || len(c.WebhookHeaders) != 1 {
		t.Fatalf("ssoClient = %+v", c)
	}
	v, _ := h.kvValue("ssoclient.77")
	if !jsonEqual(t, []byte(v), []byte(`{"webhookUrl":"https://sso.example.com/hook","webhookHeaders":[{"key":"X-Sig","value":"s3cret"}]}`)) {
		t.Fatalf("ssoclient.77 = %s", v)
	}
	h.ok(q, map[string]any{"in": map[string]any{"ssoClientId": "77", "webhookUrl": nil, "webhookHeaders": nil}}, &got)
	c = got.UpdateSsoClient.SsoClient
	if c.WebhookURL != nil || len(c.WebhookHeaders) != 0 {
		t.Fatalf("after null: %+v", c)
	}
	var q2 struct{ SsoClient struct{ WebhookURL *string } }
	h.ok(`{ ssoClient(id: "77") { webhookUrl } }`, nil, &q2)
	if q2.SsoClient.WebhookURL != nil {
		t.Fatalf("query after clear: %v", *q2.SsoClient.WebhookURL)
	}
}

// An input field left out is unchanged; an explicit null clears it.
func TestUpdateProject_omitted_is_unchanged_and_null_clears(t *testing.T) {
	h := newHarness(t, nil)
	const q = `mutation($in: UpdateProjectInput!) { updateProject(input: $in) { project { apiCallbackUrl apiCallbackHeaders { key value } } } }`
	type out struct {
		UpdateProject struct {
			Project struct {
				APICallbackURL     *string
				APICallbackHeaders []map[string]string
			}
		}
	}
	var got out
	h.ok(q, map[string]any{"in": map[string]any{
		"projectId":          "5",
		"apiCallbackUrl":     "https://a.example.com/",
		"apiCallbackHeaders": []map[string]string{{"key": "X-A", "value": "1"}},
	}}, &got)

	// URL only: headers stay.
	h.ok(q, map[string]any{"in": map[string]any{"projectId": "5", "apiCallbackUrl": "https://b.example.com/"}}, &got)
	p := got.UpdateProject.Project
	if p.APICallbackURL == nil || *p.APICallbackURL != "https://b.example.com/" || len(p.APICallbackHeaders) != 1 {
		t.Fatalf("after URL change: %+v", p)
	}
	// Headers null: cleared, URL stays.
	h.ok(q, map[string]any{"in": map[string]any{"projectId": "5", "apiCallbackHeaders": nil}}, &got)
	p = got.UpdateProject.Project
	if p.APICallbackURL == nil || len(p.APICallbackHeaders) != 0 {
		t.Fatalf("after headers null: %+v", p)
	}
	// URL null: cleared.
	h.ok(q, map[string]any{"in": map[string]any{"projectId": "5", "apiCallbackUrl": nil}}, &got)
	if got.UpdateProject.Project.APICallbackURL != nil {
		t.Fatalf("after URL null: %+v", got.UpdateProject.Project)
	}
	v, _ := h.kvValue("project.5")
	if !jsonEqual(t, []byte(v), []byte(`{}`)) {
		t.Fatalf("project.5 = %s", v)
	}
	// Nothing but the ID: nothing written.
	_, rev := h.kvValue("project.5")
	h.ok(q, map[string]any{"in": map[string]any{"projectId": "5"}}, &got)
	if _, rev2 := h.kvValue("project.5"); rev2 != rev {
		t.Fatalf("an empty update wrote: revision %d → %d", rev, rev2)
	}
}

// A change is in the watched View (what the dispatcher reads) within 1 s of
// the mutation's answer.
func TestUpdateProject_visible_in_view_within_a_second(t *testing.T) {
	h := newHarness(t, nil)
	var got map[string]any
	h.ok(`mutation { updateProject(input: {projectId: "321", apiCallbackUrl: "https://v.example.com/x"}) { project { id } } }`, nil, &got)
	answered := time.Now()
	testutil.CheckFor(t, time.Second, 5*time.Millisecond, func() error {
		if d, ok := h.view.Destination("1", "321"); !ok || d.URL != "https://v.example.com/x" {
			return errorf("view has %+v, %v", d, ok)
		}
		return nil
	})
	t.Logf("visible %s after the answer", time.Since(answered))
}

// Every validation rule of SPEC §4 is refused with the field named in
// extensions.field, and nothing is stored.
func TestValidation_rejects_with_the_field_named_and_stores_nothing(t *testing.T) {
	h := newHarness(t, nil)
	// A known starting value, to see that a refused update leaves it.
	h.ok(`mutation { updateProject(input: {projectId: "42", apiCallbackUrl: "https://keep.example.com/"}) { project { id } } }`, nil, nil)
	h.ok(`mutation { updateAccount(input: {accountId: "42", apiCallbackUrl: "https://keep.example.com/"}) { account { id } } }`, nil, nil)
	h.ok(`mutation { updateSsoClient(input: {ssoClientId: "42", webhookUrl: "https://keep.example.com/"}) { ssoClient { id } } }`, nil, nil)

	hdr := func(k, v string) map[string]string { return map[string]string{"key": k, "value": v} }
	many := make([]map[string]string, 33)
	for i := range many {
		many[i] = hdr("X-H"+string(rune('a'+i%26))+strings.Repeat("x", i/26), "v")
	}
	big := []map[string]string{hdr("X-Big", strings.Repeat("v", 8<<10))}

	type tc struct {
		name  string
		op    string // project, account or ssoClient
		input map[string]any
		want  []string
	}
	cases := []tc{
		{"empty URL", "project", map[string]any{"apiCallbackUrl": ""}, []string{"apiCallbackUrl"}},
		{"relative URL", "project", map[string]any{"apiCallbackUrl": "/webhook"}, []string{"apiCallbackUrl"}},
		{"ftp URL", "project", map[string]any{"apiCallbackUrl": "ftp://example.com/x"}, []string{"apiCallbackUrl"}},
		{"no host", "project", map[string]any{"apiCallbackUrl": "https:///x"}, []string{"apiCallbackUrl"}},
		{"fragment", "project", map[string]any{"apiCallbackUrl": "https://example.com/#x"}, []string{"apiCallbackUrl"}},
		{"empty fragment", "project", map[string]any{"apiCallbackUrl": "https://example.com/hook#"}, []string{"apiCallbackUrl"}},
		{"too long", "project", map[string]any{"apiCallbackUrl": "https://example.com/" + strings.Repeat("a", 4096)}, []string{"apiCallbackUrl"}},
		{"not a URL", "project", map[string]any{"apiCallbackUrl": "https://exa mple.com/%zz"}, []string{"apiCallbackUrl"}},
		{"loopback IP", "project", map[string]any{"apiCallbackUrl": "http://127.0.0.1:8080/x"}, []string{"apiCallbackUrl"}},
		{"private IP", "project", map[string]any{"apiCallbackUrl": "https://10.1.2.3/x"}, []string{"apiCallbackUrl"}},
		{"IPv6 loopback", "project", map[string]any{"apiCallbackUrl": "http://[::1]/x"}, []string{"apiCallbackUrl"}},
		{"mapped IPv6", "project", map[string]any{"apiCallbackUrl": "http://[::ffff:192.168.0.1]/x"}, []string{"apiCallbackUrl"}},
		{"numeric IPv4", "project", map[string]any{"apiCallbackUrl": "http://2130706433/x"}, []string{"apiCallbackUrl"}},
		{"metadata IP", "account", map[string]any{"apiCallbackUrl": "http://169.254.169.254/latest"}, []string{"apiCallbackUrl"}},
		{"empty key", "project", map[string]any{"apiCallbackHeaders": []map[string]string{hdr("", "v")}}, []string{"apiCallbackHeaders[0].key"}},
		{"key not a token", "project", map[string]any{"apiCallbackHeaders": []map[string]string{hdr("X-Ok", "1"), hdr("Bad Key", "v")}}, []string{"apiCallbackHeaders[1].key"}},
		{"key with colon", "project", map[string]any{"apiCallbackHeaders": []map[string]string{hdr("X:Y", "v")}}, []string{"apiCallbackHeaders[0].key"}},
		{"Host", "project", map[string]any{"apiCallbackHeaders": []map[string]string{hdr("Host", "evil")}}, []string{"apiCallbackHeaders[0].key"}},
		{"Content-Length", "project", map[string]any{"apiCallbackHeaders": []map[string]string{hdr("content-length", "1")}}, []string{"apiCallbackHeaders[0].key"}},
		{"Content-Type", "project", map[string]any{"apiCallbackHeaders": []map[string]string{hdr("Content-Type", "text/plain")}}, []string{"apiCallbackHeaders[0].key"}},
		{"Transfer-Encoding", "project", map[string]any{"apiCallbackHeaders": []map[string]string{hdr("Transfer-Encoding", "chunked")}}, []string{"apiCallbackHeaders[0].key"}},
		{"Connection", "project", map[string]any{"apiCallbackHeaders": []map[string]string{hdr("Connection", "close")}}, []string{"apiCallbackHeaders[0].key"}},
		{"Keep-Alive", "project", map[string]any{"apiCallbackHeaders": []map[string]string{hdr("Keep-Alive", "1")}}, []string{"apiCallbackHeaders[0].key"}},
		{"TE", "project", map[string]any{"apiCallbackHeaders": []map[string]string{hdr("TE", "trailers")}}, []string{"apiCallbackHeaders[0].key"}},
		{"Trailer", "project", map[string]any{"apiCallbackHeaders": []map[string]string{hdr("Trailer", "x")}}, []string{"apiCallbackHeaders[0].key"}},
		{"Upgrade", "project", map[string]any{"apiCallbackHeaders": []map[string]string{hdr("Upgrade", "h2c")}}, []string{"apiCallbackHeaders[0].key"}},
		{"Expect", "project", map[string]any{"apiCallbackHeaders": []map[string]string{hdr("Expect", "100-continue")}}, []string{"apiCallbackHeaders[0].key"}},
		{"Proxy-*", "project", map[string]any{"apiCallbackHeaders": []map[string]string{hdr("Proxy-Authorization", "x")}}, []string{"apiCallbackHeaders[0].key"}},
		{"User-Agent", "project", map[string]any{"apiCallbackHeaders": []map[string]string{hdr("User-Agent", "x")}}, []string{"apiCallbackHeaders[0].key"}},
		{"Callback-Delivery-Id", "project", map[string]any{"apiCallbackHeaders": []map[string]string{hdr("Callback-Delivery-Id", "x")}}, []string{"apiCallbackHeaders[0].key"}},
		{"CR in value", "project", map[string]any{"apiCallbackHeaders": []map[string]string{hdr("X-A", "a\rb")}}, []string{"apiCallbackHeaders[0].value"}},
		{"LF in value", "project", map[string]any{"apiCallbackHeaders": []map[string]string{hdr("X-A", "a\nX-Injected: 1")}}, []string{"apiCallbackHeaders[0].value"}},
		{"NUL in value", "project", map[string]any{"apiCallbackHeaders": []map[string]string{hdr("X-A", "a\x00b")}}, []string{"apiCallbackHeaders[0].value"}},
		{"DEL in value", "project", map[string]any{"apiCallbackHeaders": []map[string]string{hdr("X-A", "a\x7fb")}}, []string{"apiCallbackHeaders[0].value"}},
		{"C1 control in value", "project", map[string]any{"apiCallbackHeaders": []map[string]string{hdr("X-A", "a\u0085b")}}, []string{"apiCallbackHeaders[0].value"}},
		{"leading space in value", "project", map[string]any{"apiCallbackHeaders": []map[string]string{hdr("X-A", " lead")}}, []string{"apiCallbackHeaders[0].value"}},
		{"trailing tab in value", "project", map[string]any{"apiCallbackHeaders": []map[string]string{hdr("X-A", "trail\t")}}, []string{"apiCallbackHeaders[0].value"}},
		{"port out of range", "project", map[string]any{"apiCallbackUrl": "https://example.com:99999/"}, []string{"apiCallbackUrl"}},
		{"port 0", "project", map[string]any{"apiCallbackUrl": "https://example.com:0/"}, []string{"apiCallbackUrl"}},
		{"empty port", "project", map[string]any{"apiCallbackUrl": "https://example.com:/"}, []string{"apiCallbackUrl"}},
		{"duplicate key", "project", map[string]any{"apiCallbackHeaders": []map[string]string{hdr("X-Token", "1"), hdr("x-token", "2")}}, []string{"apiCallbackHeaders[1].key"}},
		{"33 headers", "project", map[string]any{"apiCallbackHeaders": many}, []string{"apiCallbackHeaders"}},
		{"over 8 KiB", "project", map[string]any{"apiCallbackHeaders": big}, []string{"apiCallbackHeaders"}},
		{"bad project ID", "project", map[string]any{"projectId": "0123"}, []string{"projectId"}},
		{"account ID as project ID", "project", map[string]any{"projectId": api.GlobalID("Account", "42"), "apiCallbackUrl": "https://x.example.com/"}, []string{"projectId"}},
		{"garbage ID", "project", map[string]any{"projectId": "!!!", "apiCallbackUrl": "https://x.example.com/"}, []string{"projectId"}},
		{"bad SSO client ID", "account", map[string]any{"ssoClientId": "sso-7"}, []string{"ssoClientId"}},
		{"project ID as SSO client ID", "account", map[string]any{"ssoClientId": api.GlobalID("Project", "7")}, []string{"ssoClientId"}},
		{"account header", "account", map[string]any{"apiCallbackHeaders": []map[string]string{hdr("Host", "x")}}, []string{"apiCallbackHeaders[0].key"}},
		{"webhook URL empty", "ssoClient", map[string]any{"webhookUrl": ""}, []string{"webhookUrl"}},
		{"webhook URL private", "ssoClient", map[string]any{"webhookUrl": "http://192.168.1.1/"}, []string{"webhookUrl"}},
		{"webhook header", "ssoClient", map[string]any{"webhookHeaders": []map[string]string{hdr("X-A", "1"), hdr("Connection", "x")}}, []string{"webhookHeaders[1].key"}},
		{"every field at once", "account", map[string]any{
			"apiCallbackUrl":     "gopher://x",
			"apiCallbackHeaders": []map[string]string{hdr("X-Ok", "fine"), hdr("Bad Key", "v"), hdr("X-V", "a\nb")},
			"ssoClientId":        "zero",
		}, []string{"apiCallbackUrl", "apiCallbackHeaders[1].key", "apiCallbackHeaders[2].value", "ssoClientId"}},
	}
	keys := []string{"project.42", "account.42", "ssoclient.42"}
	before := map[string]string{}
	for _, k := range keys {
		before[k], _ = h.kvValue(k)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var q, idField string
			switch c.op {
			case "project":
				q, idField = `mutation($in: UpdateProjectInput!) { updateProject(input: $in) { project { id } } }`, "projectId"
			case "account":
				q, idField = `mutation($in: UpdateAccountInput!) { updateAccount(input: $in) { account { id } } }`, "accountId"
			default:
				q, idField = `mutation($in: UpdateSsoClientInput!) { updateSsoClient(input: $in) { ssoClient { id } } }`, "ssoClientId"
			}
			in := map[string]any{idField: "42"}
			for k, v := range c.input {
				in[k] = v
			}
			r := h.gql(q, map[string]any{"in": in})
			got := fieldsOf(r)
			if !slices.Equal(got, c.want) {
				t.Fatalf("fields %q, want %q; errors %+v", got, c.want, r.Errors)
			}
			if string(r.Data) != "null" {
				t.Errorf("data = %s, want null", r.Data)
			}
			for _, e := range r.Errors {
				if e.Extensions["code"] != "BAD_USER_INPUT" {
					t.Errorf("code = %v", e.Extensions["code"])
				}
				for _, secret := range []string{"evil", "a\nX-Injected"} {
					if strings.Contains(e.Message, secret) {
						t.Errorf("message repeats a header value: %q", e.Message)
					}
				}
			}
			for _, k := range keys {
				if v, _ := h.kvValue(k); v != before[k] {
					t.Errorf("%s changed: %s", k, v)
				}
			}
		})
	}
}

// allow_private lifts the literal-IP refusal, as it does at dial time.
func TestValidation_private_IP_allowed_by_policy(t *testing.T) {
	h := newHarness(t, func(o *api.Options) { o.Guard = nil })
	r := h.gql(`mutation { updateProject(input: {projectId: "1", apiCallbackUrl: "http://127.0.0.1/"}) { project { id } } }`, nil)
	if len(r.Errors) != 1 || r.Errors[0].Field() != "apiCallbackUrl" {
		t.Fatalf("default guard: %+v", r.Errors)
	}
	h2 := newHarness(t, func(o *api.Options) { o.Guard = allowPrivateGuard() })
	r = h2.gql(`mutation { updateProject(input: {projectId: "1", apiCallbackUrl: "http://127.0.0.1/"}) { project { apiCallbackUrl } } }`, nil)
	if len(r.Errors) != 0 {
		t.Fatalf("allow_private: %+v", r.Errors)
	}
}

// A URL that does not parse is named by its field, with what is wrong and
// nothing of the URL: an escape may be part of a password.
func TestValidation_unparsable_URL_says_why(t *testing.T) {
	h := newHarness(t, nil)
	const m = `mutation($in: UpdateProjectInput!) { updateProject(input: $in) { project { id } } }`
	for u, want := range map[string]string{
		"http://%31%32%37.0.0.1:18110/a": "apiCallbackUrl: is not a valid URL: a percent-escape is malformed or not allowed where it is",
		"http://u:p%zq@a.example/":       "apiCallbackUrl: is not a valid URL: a percent-escape is malformed",
		"http://a.example:+80/":          "apiCallbackUrl: is not a valid URL: its port is not a number",
		"http://[::1/x":                  "apiCallbackUrl: is not a valid URL: its IPv6 host lacks the closing ']'",
	} {
		r := h.gql(m, map[string]any{"in": map[string]any{"projectId": "45", "apiCallbackUrl": u}})
		if len(r.Errors) != 1 || r.Errors[0].Field() != "apiCallbackUrl" || !strings.HasPrefix(r.Errors[0].Message, want) {
			t.Errorf("%s: errors %+v, want %q", u, r.Errors, want)
			continue
		}
		for _, part := range []string{"%zq", "%31", "+80"} {
			if strings.Contains(r.Errors[0].Message, part) {
				t.Errorf("%s: message %q repeats %q", u, r.Errors[0].Message, part)
			}
		}
	}
}

func TestQuery_bad_id_names_the_argument(t *testing.T) {
	h := newHarness(t, nil)
	r := h.gql(`{ project(id: "abc") { id } }`, nil)
	if got := fieldsOf(r); !slices.Equal(got, []string{"id"}) {
		t.Fatalf("fields %q: %+v", got, r.Errors)
	}
}

// A String input takes strings only (GraphQL's input coercion); gqlgen's
// own turned a number or a boolean in the variables into its text.
func TestVariables_strings_are_strings(t *testing.T) {
	h := newHarness(t, nil)
	const m = `mutation($in: UpdateProjectInput!) { updateProject(input: $in) { project { id } } }`
	for _, in := range []map[string]any{
		{"projectId": "43", "apiCallbackUrl": 5},
		{"projectId": "43", "apiCallbackHeaders": []map[string]any{{"key": "X-A", "value": 5}}},
		{"projectId": "43", "apiCallbackHeaders": []map[string]any{{"key": true, "value": "v"}}},
	} {
		r := h.gql(m, map[string]any{"in": in})
		if len(r.Errors) != 1 || !strings.Contains(strings.ToLower(r.Errors[0].Message), "string") {
			t.Errorf("%v: errors %+v, want one saying a string is needed", in, r.Errors)
		}
	}
	if v, _ := h.kvValue("project.43"); v != "" {
		t.Errorf("stored %s", v)
	}
	h.ok(m, map[string]any{"in": map[string]any{"projectId": "43", "apiCallbackUrl": "https://ok.example.com/"}}, nil)
}

// Int, Boolean and ID inputs as the GraphQL specification coerces them:
// gqlgen's own took "2" as an Int, any string as a Boolean and true as the
// ID "true". The errors name the kind of value, never the value.
func TestVariables_ints_booleans_and_ids_as_the_spec_coerces(t *testing.T) {
	h := newHarness(t, nil)
	const deliveries = `query($f: Int) { deliveries(first: $f) { pageInfo { hasNextPage } } }`
	const project = `query($id: ID!) { project(id: $id) { id } }`
	for _, tc := range []struct {
		query string
		vars  map[string]any
		want  string // "" for no error
	}{
		{deliveries, map[string]any{"f": 2}, "not available"}, // the harness has no delivery log: the argument passed
		{deliveries, map[string]any{"f": 2.0}, "not available"},
		{deliveries, map[string]any{"f": "2"}, "must be an integer, got a string"},
		{deliveries, map[string]any{"f": 2.5}, "must be an integer from -2147483648 to 2147483647"},
		{deliveries, map[string]any{"f": true}, "must be an integer from -2147483648 to 2147483647"},
		{deliveries, map[string]any{"f": 2147483648}, "must be an integer from -2147483648 to 2147483647, got a number outside it"},
		{`{ deliveries(first: 2147483648) { pageInfo { hasNextPage } } }`, nil, "must be an integer from -2147483648 to 2147483647, got a number outside it"},
		{`{ project(id: 9300000000000000000) { id } }`, nil, "ID cannot represent 9300000000000000000: IDs are at most 9223372036854775807"},
		{project, map[string]any{"id": "12"}, ""},
		{project, map[string]any{"id": 12}, ""},
		{project, map[string]any{"id": true}, "must be a string or an integer"},
		{project, map[string]any{"id": 1.5}, "must be a string or an integer"},
		{project, map[string]any{"id": map[string]any{"a": 1}}, "must be a string or an integer"},
		{`mutation($in: ReplayInput!) { replayDeadLetters(input: $in) { matched } }`, map[string]any{"in": map[string]any{"dryRun": 1}}, "must be a boolean (true or false)"},
	} {
		r := h.gql(tc.query, tc.vars)
		switch {
		case tc.want == "" && len(r.Errors) != 0:
			t.Errorf("%.40s %v: errors %+v", tc.query, tc.vars, r.Errors)
		case tc.want != "" && (len(r.Errors) != 1 || !strings.Contains(r.Errors[0].Message, tc.want)):
			t.Errorf("%.40s %v: errors %+v, want %q", tc.query, tc.vars, r.Errors, tc.want)
		}
	}
	// Literals of the wrong type are named by their type, not repeated.
	for _, q := range []string{
		`mutation { updateProject(input: {projectId: "44", apiCallbackHeaders: [{key: "X-Api-Key", value: 31415926535897}]}) { project { id } } }`,
		`mutation { replayDeadLetters(input: {dryRun: "31415926535897"}) { matched } }`,
		`{ deliveries(first: "31415926535897") { pageInfo { hasNextPage } } }`,
		`{ deliveries(status: S31415926535897) { pageInfo { hasNextPage } } }`,
	} {
		r := h.gql(q, nil)
		if len(r.Errors) != 1 || strings.Contains(r.Errors[0].Message, "31415926535897") ||
			!strings.Contains(r.Errors[0].Message, "cannot represent") && !strings.Contains(r.Errors[0].Message, "not a value of the DeliveryStatus enum") {
			t.Errorf("%.50s: errors %+v", q, r.Errors)
		}
	}
	r0 := h.gql(`query($s: DeliveryStatus) { deliveries(status: $s) { pageInfo { hasNextPage } } }`, map[string]any{"s": "Bearer 31415926535897"})
	if len(r0.Errors) != 1 || strings.Contains(r0.Errors[0].Message, "31415926535897") {
		t.Errorf("enum variable: errors %+v", r0.Errors)
	}
	// A header value of the wrong type is named by its path, not repeated.
	r := h.gql(`mutation($in: UpdateProjectInput!) { updateProject(input: $in) { project { id } } }`, map[string]any{"in": map[string]any{
		"projectId": "44", "apiCallbackHeaders": []map[string]any{{"key": "X-Api-Key", "value": 31415926535897}},
	}})
	if len(r.Errors) != 1 || r.Errors[0].Message != "must be a string, got a number" {
		t.Fatalf("errors %+v", r.Errors)
	}
}
