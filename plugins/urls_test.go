package plugins_test

import (
	"net/url"
	"strings"
	"testing"

	"github.com/callbackd/callbackd/plugins"
)

func TestRedactURLs(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"connection refused", "connection refused"},
		{`Post "http://user:***@127.0.0.1:9/ok?token=SECRET": EOF`, `Post "http://127.0.0.1:9/ok": EOF`},
		{"dial https://a.example.com/x?sig=1#frag failed, then http://b.example.com/?k=v too",
			"dial https://a.example.com/x failed, then http://b.example.com/ too"},
		{"see <https://u:p@h.example/p?q>", "see <https://h.example/p>"},
		{"'HTTP://U:P@H.EXAMPLE/?Q=1'", "'http://H.EXAMPLE/'"},
		{"https://h.example/%zz?secret", "[unparseable URL]"},
		{"no scheme: ://x?y", "no scheme: ://x?y"},
	} {
		if got := plugins.RedactURLs(tc.in); got != tc.want {
			t.Errorf("RedactURLs(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// A URL's query and userinfo never survive, whatever surrounds it, and
// redacting twice changes nothing more.
func FuzzRedactURLs(f *testing.F) {
	for _, s := range []string{"", "x", `Post "http://u:p@h/p?q=1": EOF`, "a https://h/?k=v b", "x://y", "http://[::1]:80/?a"} {
		f.Add(s, "SECRETQ")
	}
	f.Fuzz(func(t *testing.T, text, secret string) {
		once := plugins.RedactURLs(text)
		if twice := plugins.RedactURLs(once); twice != once {
			t.Fatalf("RedactURLs(%q) = %q, then %q", text, once, twice)
		}
		if len(secret) < 3 || strings.Trim(secret, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") != "" ||
			strings.Contains(text, secret) || strings.Contains("https://user:@h.example/p?token= [unparseable URL]", secret) {
			return
		}
		in := text + " https://user:" + secret + "@h.example/p?token=" + secret + " "
		if out := plugins.RedactURLs(in); strings.Contains(out, secret) {
			t.Fatalf("RedactURLs(%q) = %q keeps the secret", in, out)
		}
	})
}

// The destination's own secrets go even where its URL holds a character
// that ends a URL for RedactURLs (a quote, a space).
func TestRedactDestination(t *testing.T) {
	const dest = "http://bob:pw'TAILPW@127.0.0.1:9/hook?note=it's&sig=LEAKSIG#frag"
	for _, in := range []string{
		"Post https://bob:pw'TAILPW@ex.com/hook?note=it's&sig=LEAKSIG: connection refused",
		`Post "http://bob:***@127.0.0.1:9/hook?note=it's&sig=LEAKSIG": EOF`,
		`Post "http://bob:pw'TAILPW@127.0.0.1:9/hook?note=it's&sig=LEAKSIG#frag": EOF`,
	} {
		out := plugins.RedactDestination(in, dest)
		for _, secret := range []string{"TAILPW", "LEAKSIG", "pw'", "frag", "bob"} {
			if strings.Contains(out, secret) {
				t.Errorf("RedactDestination(%q) = %q keeps %q", in, out, secret)
			}
		}
	}
	if got := plugins.RedactDestination(`Post "https://h.example/p": EOF`, "https://h.example/p"); got != `Post "https://h.example/p": EOF` {
		t.Errorf("a URL without secrets changed: %q", got)
	}
	if got := plugins.RedactDestination("", dest); got != "" {
		t.Errorf("empty text: %q", got)
	}
}

// Every spelling of one endpoint counts against one cap.
func TestHostKey(t *testing.T) {
	for _, tt := range []struct{ url, want string }{
		{"http://Example.COM/x", "example.com:80"},
		{"https://example.com/x", "example.com:443"},
		{"HTTPS://example.com/x", "example.com:443"},
		{"http://example.com:8080/x", "example.com:8080"},
		{"http://example.com:08080/x", "example.com:8080"},
		{"http://example.com:0008080/x", "example.com:8080"},
		{"http://192.0.2.2:018125/", "192.0.2.2:18125"},
		{"http://[2001:DB8::1]:0443/", "[2001:db8::1]:443"},
		{"http://user:pw@example.com:80/", "example.com:80"},
	} {
		u, err := url.Parse(tt.url)
		if err != nil {
			t.Fatal(err)
		}
		if got := plugins.HostKey(u); got != tt.want {
			t.Errorf("HostKey(%s) = %q, want %q", tt.url, got, tt.want)
		}
	}
}
