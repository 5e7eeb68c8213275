// Package builtin holds the plugins compiled into callbackd: the
// crawl_status and report_download_available encoders and the http-form
// transport. They are listed here by name, not registered by side effect.
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
