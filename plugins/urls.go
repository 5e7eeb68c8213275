package plugins

import "net/url"

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
