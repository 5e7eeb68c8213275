package main

import (
	"context"
	"testing"

	"github.com/callbackd/callbackd/plugins"
	"github.com/callbackd/callbackd/plugins/plugintest"
)

func event(payload string) plugins.Event {
	return plugins.Event{Type: "crawl_failed", AccountID: "123123", ProjectID: "1123123", DeliveryID: "1700000000-7", Payload: []byte(payload)}
}

// cases are the encoder's conformance cases; plugin_test.go runs them
// through the built plugin too.
var cases = []plugintest.EncoderCase{
	{
		Name:  "full",
		Event: event(`{"crawl_id": 124234, "user_id": 42, "error_code": "robots_txt_blocked", "error_message": "robots.txt disallows /"}`),
		Want: &plugins.Notification{Fields: []plugins.Field{
			{Name: "message", Value: plugins.String("crawl_failed")},
			{Name: "resource", Value: plugins.String("crawl")},
			{Name: "crawl_id", Value: plugins.Number("124234")},
			{Name: "project_id", Value: plugins.Number("1123123")},
			{Name: "account_id", Value: plugins.Number("123123")},
			{Name: "user_id", Value: plugins.Int(42)},
			{Name: "error_code", Value: plugins.String("robots_txt_blocked")},
			{Name: "error_message", Value: plugins.String("robots.txt disallows /")},
			{Name: "href", Value: plugins.String("/accounts/123123/projects/1123123/crawls/124234")},
		}},
	},
	{
		Name:  "minimal",
		Event: event(`{"crawl_id": 9223372036854775807, "error_code": "timeout"}`),
		WantForm: "message=crawl_failed&resource=crawl&crawl_id=9223372036854775807&project_id=1123123&account_id=123123" +
			"&user_id=&error_code=timeout&error_message=&href=%2Faccounts%2F123123%2Fprojects%2F1123123%2Fcrawls%2F9223372036854775807",
	},
	{Name: "will retry", Event: event(`{"crawl_id": 1, "error_code": "timeout", "will_retry": true}`), WantSkip: true},
	{Name: "no crawl_id", Event: event(`{"error_code": "timeout"}`), WantInvalid: true},
	{Name: "crawl_id too large", Event: event(`{"crawl_id": 9223372036854775808, "error_code": "timeout"}`), WantInvalid: true},
	{Name: "crawl_id float", Event: event(`{"crawl_id": 1.5, "error_code": "timeout"}`), WantInvalid: true},
	{Name: "bad error_code", Event: event(`{"crawl_id": 1, "error_code": "a b"}`), WantInvalid: true},
	{Name: "bad user_id", Event: event(`{"crawl_id": 1, "error_code": "x", "user_id": true}`), WantInvalid: true},
}

func TestCrawlFailed_conformance(t *testing.T) {
	info, err := CrawlFailed{}.Info(context.Background())
	if err != nil || info.EventType != "crawl_failed" {
		t.Fatalf("Info() = %+v, %v; want event type crawl_failed", info, err)
	}
	plugintest.TestEncoder(t, func(*testing.T) plugins.Encoder { return CrawlFailed{} }, cases)
}
