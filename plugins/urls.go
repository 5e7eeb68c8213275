package plugins

import (
	"net"
	"net/url"
	"strings"
)

// SafeURL returns raw without userinfo, query or fragment, for logs and
// printed output: a callback URL may carry credentials and a file_url is a
// signed URL. Text that does not parse is replaced by a placeholder.
func SafeURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "[unparseable URL]"
	}
	u.User = nil
	u.RawQuery = ""
	u.ForceQuery = false
	u.Fragment = ""
	u.RawFragment = ""
	return u.String()
}

// HostKey is the destination a URL counts against for per-host
// concurrency (SPEC §3, dispatcher.per_host_concurrency): host:port,
// lower-cased, with the scheme's default port when none is given. The
// dispatcher and the built-in http-form transport key their caps by it.
func HostKey(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = "80"
		if strings.EqualFold(u.Scheme, "https") {
			port = "443"
		}
	}
	return net.JoinHostPort(strings.ToLower(u.Hostname()), port)
}

// NotURIChar finds what may not appear as such in a URI (RFC 3986): the
// index of the first space, control, non-ASCII byte or one of "<>\^`{|},
// or -1. net/http escapes those in a path but sends a query as it is,
// where a space would split the request line; callback URLs with them are
// refused (settings) and not requested (the http-form transport).
func NotURIChar(raw string) int {
	for i := 0; i < len(raw); i++ {
		if c := raw[i]; c <= ' ' || c >= 0x7f || notInURI[c] {
			return i
		}
	}
	return -1
}

// notInURI marks the printable ASCII bytes that a URI may not hold as such.
var notInURI = [128]bool{'"': true, '<': true, '>': true, '\\': true, '^': true, '`': true, '{': true, '|': true, '}': true}
