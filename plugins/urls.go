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
