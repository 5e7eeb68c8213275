package settings

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func ptr(s string) *string { return &s }

func TestValidate(t *testing.T) {
	long := strings.Repeat("x", MaxURLLen)
	tests := []struct {
		name      string
		v         interface{ Validate() error }
		wantField string // "" = valid
	}{
		{"empty project", Project{}, ""},
		{"https", Project{APICallbackURL: ptr("https://www.example.com/webhook")}, ""},
		{"http with port", Project{APICallbackURL: ptr("http://example.com:8080/x?a=b")}, ""},
		{"empty url", Project{APICallbackURL: ptr("")}, "apiCallbackUrl"},
		{"percent-encoded", Project{APICallbackURL: ptr("https://e.com/a%20b/%C3%A9?q=a+b&r=%2F&s=~!$'()*,;=:@/?")}, ""},
		{"space in the query", Project{APICallbackURL: ptr("http://e.com/s?x=a b")}, "apiCallbackUrl"},
		{"request line in the query", Project{APICallbackURL: ptr("http://e.com/s?x=a HTTP/1.0")}, "apiCallbackUrl"},
		{"space in the path", Project{APICallbackURL: ptr("http://e.com/a b")}, "apiCallbackUrl"},
		{"non-ASCII", Project{APICallbackURL: ptr("http://e.com/?q=é")}, "apiCallbackUrl"},
		{"tab", Project{APICallbackURL: ptr("http://e.com/\t")}, "apiCallbackUrl"},
		{"pipe", Project{APICallbackURL: ptr("http://e.com/?a|b")}, "apiCallbackUrl"},
		{"angle bracket", Project{APICallbackURL: ptr("http://e.com/<x>")}, "apiCallbackUrl"},
		{"relative url", Project{APICallbackURL: ptr("/webhook")}, "apiCallbackUrl"},
		{"ftp url", Project{APICallbackURL: ptr("ftp://example.com/")}, "apiCallbackUrl"},
		{"no host", Project{APICallbackURL: ptr("https:///x")}, "apiCallbackUrl"},
		{"too long", Project{APICallbackURL: ptr("https://e.com/" + long)}, "apiCallbackUrl"},
		{"good header", Project{APICallbackHeaders: []Header{{"Authorization", "Bearer your-token"}}}, ""},
		{"reserved header", Project{APICallbackHeaders: []Header{{"Content-Type", "x"}}}, "apiCallbackHeaders"},
		{"proxy header", Project{APICallbackHeaders: []Header{{"Proxy-Authorization", "x"}}}, "apiCallbackHeaders"},
		{"crlf value", Project{APICallbackHeaders: []Header{{"X-A", "a\r\nB: c"}}}, "apiCallbackHeaders"},
		{"dup header", Project{APICallbackHeaders: []Header{{"X-A", "1"}, {"x-a", "2"}}}, "apiCallbackHeaders"},
		{"bad key", Project{APICallbackHeaders: []Header{{"X A", "1"}}}, "apiCallbackHeaders"},
		{"account sso", Account{SSOClientID: ptr("77")}, ""},
		{"account bad sso", Account{SSOClientID: ptr("07")}, "ssoClientId"},
		{"account bad url", Account{APICallbackURL: ptr("nope")}, "apiCallbackUrl"},
		{"sso ok", SSOClient{WebhookURL: ptr("https://sso.example.com/hook")}, ""},
		{"sso bad", SSOClient{WebhookURL: ptr("mailto:x@example.com")}, "webhookUrl"},
		{"sso bad header", SSOClient{WebhookHeaders: []Header{{"Host", "x"}}}, "webhookHeaders"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.v.Validate()
			if tt.wantField == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tt.wantField {
				t.Fatalf("Validate() = %v, want a FieldError on %s", err, tt.wantField)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("%v does not wrap ErrInvalid", err)
			}
			if strings.Contains(err.Error(), "Bearer") || strings.Contains(err.Error(), "a\r\n") {
				t.Errorf("error leaks a header value: %v", err)
			}
		})
	}
}

func TestParseStrict(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"apiCallbackUrl": 5}`, "cannot unmarshal number"},
		{`{"apiCallbackUrl": "https://a.b/"} x`, "trailing data"},
		{`{"callbackUrl": "https://a.b/"}`, `unknown field "callbackUrl"`},
		{`[]`, "not a JSON object"},
		{`nope`, "not a JSON object"},
		{`null`, "not a JSON object"},
		{` null `, "not a JSON object"},
		{`""`, "not a JSON object"},
		{``, "not a JSON object"},
		// encoding/json matches names without case and keeps the last of
		// two: both would let a stored value mean something unintended.
		{`{"ApiCallbackUrl": "https://a.b/"}`, `unknown field "ApiCallbackUrl" (field names are case-sensitive: "apiCallbackUrl")`},
		{`{"apiCallbackHeaders": [{"KEY": "X-A", "value": "1"}]}`, `unknown field "KEY"`},
		{`{"apiCallbackUrl": "https://a.b/", "apiCallbackUrl": "https://c.d/"}`, `field "apiCallbackUrl" is given twice`},
		{`{"apiCallbackHeaders": [{"key": "X-A", "value": "1", "value": "2"}]}`, `field "value" is given twice`},
		{`{"key": "X-A"}`, `unknown field "key"`},
		{`{"apiCallbackHeaders": [{"key": "X-A", "value": null}]}`, `header "X-A" needs a "value" (a string; null is not one)`},
		{`{"apiCallbackHeaders": [{"key": "X-A"}]}`, `header "X-A" needs a "value"`},
		{`{"apiCallbackHeaders": [{"value": "1"}]}`, `a header needs a "key"`},
		{`{"apiCallbackHeaders": [{"key": null, "value": "1"}]}`, `a header needs a "key"`},
		{`{"apiCallbackHeaders": [{"key": "X-A", "value": "1", "x": 1}]}`, `unknown field "x"`},
		{`{"apiCallbackHeaders": [null]}`, `a header needs a "key"`},
	} {
		_, err := ParseProject([]byte(tc.in))
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseProject(%s) = %v, want ErrInvalid naming %q", tc.in, err, tc.want)
		}
	}
	if _, err := ParseAccount([]byte(`{"ssoclientid": "c1"}`)); err == nil || !strings.Contains(err.Error(), `"ssoClientId"`) {
		t.Errorf("ParseAccount(ssoclientid) = %v, want the case-sensitive name", err)
	}
	if _, err := ParseSSOClient([]byte(`{"webhookUrl": "https://a.b/", "webhookHeaders": [{"key": "A", "value": "1"}, {"key": "B", "value": "2"}]}`)); err != nil {
		t.Errorf("ParseSSOClient(valid, two headers) = %v", err)
	}
	p, err := ParseProject([]byte(`{"apiCallbackUrl": null, "apiCallbackHeaders": [{"key": "X-A", "value": "{\"key\": 1}"}]}`))
	if err != nil || p.APICallbackURL != nil || len(p.APICallbackHeaders) != 1 {
		t.Fatalf("ParseProject(null url, one header) = %+v, %v", p, err)
	}
}

// Stored values come from anyone who can write the bucket (SPEC §4): the
// parsers never panic, and what they accept round-trips and keeps the
// rules (a URI URL, valid headers).
func FuzzParseProject(f *testing.F) {
	for _, s := range []string{
		`{"apiCallbackUrl":"https://www.example.com/webhook","apiCallbackHeaders":[{"key":"Authorization","value":"Bearer your-token"}]}`,
		`{"apiCallbackUrl":null}`, `{}`, `null`, `[]`, `{"apiCallbackUrl":"http://e.com/s?x=a b"}`,
		`{"apiCallbackHeaders":[{"key":"Host","value":"x"}]}`, `{"apiCallbackUrl":""}`, `{"x":1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParseProject(data)
		if err != nil {
			return
		}
		if p.APICallbackURL != nil && ValidateURL(*p.APICallbackURL) != nil {
			t.Fatalf("accepted URL %q that ValidateURL refuses", *p.APICallbackURL)
		}
		again, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		if len(p.APICallbackHeaders) == 0 {
			p.APICallbackHeaders = nil // [] and absent are the same setting
		}
		if back, err := ParseProject(again); err != nil || !reflect.DeepEqual(back, p) {
			t.Fatalf("%s: parsed %+v, re-encoded %s, parsed again %+v, %v", data, p, again, back, err)
		}
	})
}
