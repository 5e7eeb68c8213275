// Package builtin holds the plugins compiled into callbackd: the
// crawl_status and report_download_available encoders, the http-form
// transport and the sso-webhook failure handler. Their names are listed
// here, and the encoders made here by name; nothing registers itself by
// side effect. The transport and the failure handler take options (the
// outbound policy, timeouts) and are made by their constructors.
package builtin

import (
	"sort"

	"github.com/callbackd/callbackd/plugins"
)

// Names of the built-in plugins, as config refers to them (builtin:<name>).
const (
	CrawlStatusName             = "crawl_status"
	ReportDownloadAvailableName = "report_download_available"
	HTTPFormName                = "http-form"
	SSOWebhookName              = "sso-webhook"
)

// Encoders returns a new instance of every built-in encoder by name.
func Encoders() map[string]plugins.Encoder {
	return map[string]plugins.Encoder{
		CrawlStatusName:             NewCrawlStatus(),
		ReportDownloadAvailableName: NewReportDownloadAvailable(),
	}
}

// EncoderNames lists the built-in encoders, sorted.
func EncoderNames() []string {
	var names []string
	for n := range Encoders() {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
