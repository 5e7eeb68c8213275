package plugins

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"
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

// RedactURLs returns text with every URL in it (a scheme, "://", and what
// follows up to a space or a quote) passed through SafeURL: an error text
// such as net/http's `Post "https://u:***@host/p?token=…": EOF` keeps the
// URL's scheme, host and path, but not its userinfo or query. callbackd
// applies it to the error texts of plugins, which reach its log, the
// delivery log, dead letters and failure notices.
func RedactURLs(text string) string {
	if !strings.Contains(text, "://") {
		return text
	}
	return urlInText.ReplaceAllStringFunc(text, SafeURL)
}

// RedactDestination is RedactURLs for an error text about a delivery to
// rawURL: first the URL's own secrets — its userinfo, password, query
// and fragment, as given or as Go quotes them — are cut wherever they
// appear, which holds when the URL has a character (a quote, a space)
// that ends a URL in RedactURLs' eyes; then RedactURLs.
func RedactDestination(text, rawURL string) string {
	if text == "" {
		return ""
	}
	if u, err := url.Parse(rawURL); err == nil {
		var secrets []string
		if u.User != nil {
			secrets = append(secrets, u.User.String()+"@", u.User.Username()+":***@")
			if p, ok := u.User.Password(); ok && p != "" {
				secrets = append(secrets, p)
			}
		}
		if u.RawQuery != "" {
			secrets = append(secrets, "?"+u.RawQuery, u.RawQuery)
		}
		if u.Fragment != "" {
			secrets = append(secrets, "#"+u.EscapedFragment(), u.Fragment)
		}
		for _, s := range secrets {
			quoted := strconv.Quote(s)
			text = strings.ReplaceAll(text, s, "")
			text = strings.ReplaceAll(text, quoted[1:len(quoted)-1], "")
		}
	}
	return RedactURLs(text)
}

var urlInText = regexp.MustCompile(`[A-Za-z][A-Za-z0-9+.-]*://[^\s"'<>\x60]+`)

// HostKey is the destination a URL counts against for per-host
// concurrency (SPEC §3, dispatcher.per_host_concurrency): host:port,
// lower-cased, with the scheme's default port when none is given and the
// port as a number (":08080" is ":8080", so leading zeros do not make a
// second host with a cap of its own). The dispatcher and the built-in
// http-form transport key their caps by it.
func HostKey(u *url.URL) string {
	port := u.Port()
	switch {
	case port == "":
		port = "80"
		if strings.EqualFold(u.Scheme, "https") {
			port = "443"
		}
	case port[0] == '0' && len(port) > 1:
		if n, err := strconv.ParseUint(port, 10, 16); err == nil {
			port = strconv.FormatUint(n, 10)
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

// urlParseReason says what url.Parse found wrong, in words that repeat
// nothing of the URL: its escapes may be part of a password.
func urlParseReason(err error) string {
	var ee url.EscapeError
	var he url.InvalidHostError
	msg := err.Error()
	switch {
	case errors.As(err, &ee):
		return "a percent-escape is malformed or not allowed where it is (a host may not be percent-encoded)"
	case errors.As(err, &he):
		return "its host has a character not allowed there"
	case strings.Contains(msg, "invalid port"):
		return "its port is not a number"
	case strings.Contains(msg, "missing ']'"):
		return "its IPv6 host lacks the closing ']'"
	case strings.Contains(msg, "invalid userinfo"):
		return "its user information has a character not allowed there"
	case strings.Contains(msg, "cannot contain colon"):
		return "its first path segment has a colon"
	}
	return "it does not parse"
}

// ParseHTTPURL parses s as an absolute http or https URI with a host and,
// when given, a port from 1 to 65535: the rules of callback and webhook URLs
// (settings) and of a report's file_url. Its errors never repeat s, which
// may carry credentials.
func ParseHTTPURL(s string) (*url.URL, error) {
	if i := NotURIChar(s); i >= 0 {
		r, _ := utf8.DecodeRuneInString(s[i:])
		return nil, fmt.Errorf("must be a URI: %q at byte %d must be percent-encoded", r, i)
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, errors.New("is not a valid URL: " + urlParseReason(err))
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, errors.New("must be an absolute http or https URL")
	}
	if u.Host == "" || u.Hostname() == "" {
		return nil, errors.New("must have a host")
	}
	if strings.HasSuffix(u.Host, ":") {
		return nil, errors.New("must not have an empty port")
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("port %s is not a port (1 to 65535)", p)
		}
	}
	return u, nil
}
