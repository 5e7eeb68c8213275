package plugintest

import (
	"time"

	"github.com/callbackd/callbackd/plugins"
)

// This file holds the cases callbackd runs the suites with against its own
// built-in plugins, in-process and in their own process; they double as
// examples of cases.

const (
	seedAccount = "123123"
	seedProject = "1123123"
)

func seedEvent(typ, payload string) plugins.Event {
	return plugins.Event{Type: typ, AccountID: seedAccount, ProjectID: seedProject, DeliveryID: "1700000000-1", Payload: []byte(payload)}
}

// BuiltinEncoderCases returns the cases of the built-in encoder for the
// event type (crawl_status or report_download_available).
func BuiltinEncoderCases(eventType string) []EncoderCase {
	switch eventType {
	case "crawl_status":
		return []EncoderCase{
			{
				Name:  "seed",
				Event: seedEvent("crawl_status", `{"message":"crawl_status","resource":"crawl","crawl_id":124234,"project_id":1123123,"account_id":123123,"user_id":123123,"partner_account_id":"123123","partner_user_id":"3333312","status":"finished","href":"/accounts/123123/projects/1123123/crawls/124234"}`),
				WantForm: "message=crawl_status&resource=crawl&crawl_id=124234&project_id=1123123&account_id=123123&user_id=123123" +
					"&partner_account_id=123123&partner_user_id=3333312&status=finished&href=%2Faccounts%2F123123%2Fprojects%2F1123123%2Fcrawls%2F124234",
			},
			{
				Name:  "minimal",
				Event: seedEvent("crawl_status", `{"crawl_id": 124234, "user_id": null}`),
				WantForm: "message=crawl_status&resource=crawl&crawl_id=124234&project_id=1123123&account_id=123123&user_id=" +
					"&partner_account_id=&partner_user_id=&status=finished&href=%2Faccounts%2F123123%2Fprojects%2F1123123%2Fcrawls%2F124234",
			},
			{Name: "largest ID", Event: seedEvent("crawl_status", `{"crawl_id": 9223372036854775807}`),
				WantForm: "message=crawl_status&resource=crawl&crawl_id=9223372036854775807&project_id=1123123&account_id=123123&user_id=" +
					"&partner_account_id=&partner_user_id=&status=finished&href=%2Faccounts%2F123123%2Fprojects%2F1123123%2Fcrawls%2F9223372036854775807"},
			{Name: "test suite build skipped", Event: seedEvent("crawl_status", `{"crawl_id": 1, "crawl_type": "test_suite_build"}`), WantSkip: true},
			{Name: "not finished skipped", Event: seedEvent("crawl_status", `{"crawl_id": 1, "status": "running"}`), WantSkip: true},
			{Name: "no crawl_id", Event: seedEvent("crawl_status", `{"user_id": 1}`), WantInvalid: true},
			{Name: "ID over 2^63-1", Event: seedEvent("crawl_status", `{"crawl_id": 9223372036854775808}`), WantInvalid: true},
			{Name: "float ID", Event: seedEvent("crawl_status", `{"crawl_id": 1.5}`), WantInvalid: true},
			{Name: "account mismatch", Event: seedEvent("crawl_status", `{"crawl_id": 1, "account_id": 5}`), WantInvalid: true},
		}
	case "report_download_available":
		return []EncoderCase{
			{
				Name:  "seed",
				Event: seedEvent("report_download_available", `{"message":"report_download_available","resource":"report_download","report_download_id":567890,"report_id":"124234:all_pages:basic","crawl_id":124234,"project_id":1123123,"account_id":123123,"user_id":123123,"partner_account_id":"123123","partner_user_id":"3333312","status":"generated","file_url":"https://...","href":"/accounts/123123/projects/1123123/crawls/124234/reports/124234:all_pages:basic/downloads/567890"}`),
				WantForm: "message=report_download_available&resource=report_download&report_download_id=567890&report_id=124234%3Aall_pages%3Abasic" +
					"&crawl_id=124234&project_id=1123123&account_id=123123&user_id=123123&partner_account_id=123123&partner_user_id=3333312" +
					"&status=generated&file_url=https%3A%2F%2F...&href=%2Faccounts%2F123123%2Fprojects%2F1123123%2Fcrawls%2F124234%2Freports%2F124234%3Aall_pages%3Abasic%2Fdownloads%2F567890",
			},
			{
				Name:  "codes",
				Event: seedEvent("report_download_available", `{"report_download_id":567890,"crawl_id":124234,"report_template_code":"all_pages","report_type_code":"basic","segment_id":17,"user_id":"","partner_account_id":null,"partner_user_id":3333312,"file_url":"https://reports.example/124234.csv.gz?X-Amz-Signature=ab%2Bcd"}`),
				WantForm: "message=report_download_available&resource=report_download&report_download_id=567890&report_id=124234%3Aall_pages%3Abasic%3A17" +
					"&crawl_id=124234&project_id=1123123&account_id=123123&user_id=&partner_account_id=&partner_user_id=3333312&status=generated" +
					"&file_url=https%3A%2F%2Freports.example%2F124234.csv.gz%3FX-Amz-Signature%3Dab%252Bcd" +
					"&href=%2Faccounts%2F123123%2Fprojects%2F1123123%2Fcrawls%2F124234%2Freports%2F124234%3Aall_pages%3Abasic%3A17%2Fdownloads%2F567890",
			},
			{Name: "crawl part mismatch", Event: seedEvent("report_download_available", `{"report_download_id":1,"crawl_id":3,"report_id":"4:all_pages:basic","file_url":"https://x.example/f"}`), WantInvalid: true},
			{Name: "no file_url", Event: seedEvent("report_download_available", `{"report_download_id":1,"crawl_id":3,"report_id":"3:all_pages:basic"}`), WantInvalid: true},
			{Name: "file_url not http", Event: seedEvent("report_download_available", `{"report_download_id":1,"crawl_id":3,"report_id":"3:a:b","file_url":"ftp://x.example/f"}`), WantInvalid: true},
		}
	}
	return nil
}

// BuiltinFailureCases returns the cases of the built-in sso-webhook failure
// handler.
func BuiltinFailureCases() []FailureCase {
	at := time.Date(2024, 3, 4, 5, 6, 7, 0, time.UTC)
	orig := plugins.Notification{Fields: []plugins.Field{
		{Name: "message", Value: plugins.String("crawl_status")},
		{Name: "resource", Value: plugins.String("crawl")},
		{Name: "crawl_id", Value: plugins.Number("124234")},
		{Name: "project_id", Value: plugins.Number(seedProject)},
		{Name: "account_id", Value: plugins.Number(seedAccount)},
		{Name: "user_id", Value: plugins.Number("42")},
		{Name: "partner_account_id", Value: plugins.String("")},
		{Name: "partner_user_id", Value: plugins.String("p7")},
	}}
	hook := plugins.Destination{URL: "https://sso.example/hook", Headers: []plugins.Header{{Key: "X-Sso-Key", Value: "k"}}}
	f := plugins.Failure{
		EventType: "crawl_status", AccountID: seedAccount, ProjectID: seedProject, DeliveryID: "1700000000-1",
		CallbackURL: "https://user:pw@customer.example/cb?token=secret", StatusCode: 500, Error: "HTTP 500", Attempts: 4,
		FailedAt: at, Notification: orig, IDFields: []string{"crawl_id"}, SSOWebhook: &hook,
	}
	noHook := f
	noHook.SSOWebhook = nil
	noResponse := f
	noResponse.StatusCode, noResponse.Error = 0, "connection refused"
	want := func(f plugins.Failure, status plugins.Value) []plugins.Outbound {
		return []plugins.Outbound{{Destination: hook, Notification: plugins.Notification{Fields: []plugins.Field{
			{Name: "message", Value: plugins.String("callback_failed")},
			{Name: "resource", Value: plugins.String("api_callback")},
			{Name: "failed_message", Value: plugins.String("crawl_status")},
			{Name: "callback_url", Value: plugins.String("https://customer.example/cb")},
			{Name: "status_code", Value: status},
			{Name: "error", Value: plugins.String(f.Error)},
			{Name: "attempts", Value: plugins.Int(4)},
			{Name: "delivery_id", Value: plugins.String("1700000000-1")},
			{Name: "account_id", Value: plugins.Number(seedAccount)},
			{Name: "project_id", Value: plugins.Number(seedProject)},
			{Name: "user_id", Value: plugins.Number("42")},
			{Name: "partner_account_id", Value: plugins.String("")},
			{Name: "partner_user_id", Value: plugins.String("p7")},
			{Name: "crawl_id", Value: plugins.Number("124234")},
			{Name: "failed_at", Value: plugins.String("2024-03-04T05:06:07Z")},
		}}}}
	}
	return []FailureCase{
		{Name: "final status", Failure: f, Want: want(f, plugins.Int(500))},
		{Name: "no response", Failure: noResponse, Want: want(noResponse, plugins.String(""))},
		{Name: "no SSO webhook", Failure: noHook},
	}
}
