// Command crawl_failed is an example callbackd encoder plugin for a custom
// event type, crawl_failed: copy this directory to start your own. See
// README.md for how to build, configure and verify it.
package main

import "github.com/callbackd/callbackd/plugins"

func main() {
	plugins.ServeEncoder(CrawlFailed{})
}
