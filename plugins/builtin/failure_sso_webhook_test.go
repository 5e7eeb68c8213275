package builtin

import (
	"context"
	"testing"
	"time"

	"github.com/callbackd/callbackd/plugins"
)

func TestSSOWebhook_callback_failed_fields_in_order(t *testing.T) {
	ev := plugins.Event{Type: "report_download_available", AccountID: "123123", ProjectID: "1123123", Payload: []byte(`{
		"report_download_id": 567890, "crawl_id": 124234, "report_id": "124234:all_pages:basic",
		"user_id": 123123, "partner_account_id": "123123", "partner_user_id": "3333312",
		"file_url": "https://s3.example.com/r?sig=secret"}`)}
	enc, err := NewReportDownloadAvailable().Encode(context.Background(), ev)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := NewReportDownloadAvailable().Info(context.Background())
	f := plugins.Failure{
		EventType: ev.Type, AccountID: ev.AccountID, ProjectID: ev.ProjectID, DeliveryID: "1700000000-42",
		CallbackURL: "https://user:pw@www.example.com/webhook?token=abc", StatusCode: 500, Error: "HTTP 500",
		Attempts: 4, FailedAt: time.Date(2026, 11, 29, 12, 0, 0, 0, time.FixedZone("x", 3600)),
		Notification: enc.Notification, IDFields: info.IDFields,
		SSOWebhook: &plugins.Destination{URL: "https://sso.example.com/hook", Headers: []plugins.Header{{Key: "Authorization", Value: "Bearer s"}}},
	}
	out, err := NewSSOWebhook().OnFailure(context.Background(), f)
	if err != nil || len(out) != 1 {
		t.Fatalf("OnFailure = %v, %v", out, err)
	}
	if out[0].Destination.URL != "https://sso.example.com/hook" || len(out[0].Destination.Headers) != 1 {
		t.Errorf("destination = %+v", out[0].Destination)
	}
	got := string(out[0].Notification.AppendForm(nil))
	want := "message=callback_failed&resource=api_callback&failed_message=report_download_available" +
		"&callback_url=https%3A%2F%2Fwww.example.com%2Fwebhook&status_code=500&error=HTTP+500&attempts=4" +
		"&delivery_id=1700000000-42&account_id=123123&project_id=1123123&user_id=123123" +
		"&partner_account_id=123123&partner_user_id=3333312&crawl_id=124234&report_download_id=567890" +
		"&failed_at=2026-11-29T11%3A00%3A00Z"
	if got != want {
		t.Errorf("body\n got %s\nwant %s", got, want)
	}
}

func TestSSOWebhook_no_response_and_no_client(t *testing.T) {
	f := plugins.Failure{EventType: "crawl_status", AccountID: "1", ProjectID: "2", IDFields: []string{"crawl_id"}}
	out, err := NewSSOWebhook().OnFailure(context.Background(), f)
	if err != nil || len(out) != 0 {
		t.Fatalf("without an SSO webhook: %v, %v; want nothing", out, err)
	}
	f.SSOWebhook = &plugins.Destination{URL: "https://sso.example.com/"}
	out, _ = NewSSOWebhook().OnFailure(context.Background(), f)
	n := out[0].Notification
	if v, _ := n.Get("status_code"); v.FormText() != "" {
		t.Errorf("status_code without a response = %q, want empty", v.FormText())
	}
	if v, _ := n.Get("crawl_id"); v.FormText() != "" {
		t.Errorf("missing id field = %q, want empty", v.FormText())
	}
	if v, _ := n.Get("failed_message"); v.FormText() != "crawl_status" {
		t.Errorf("failed_message = %q", v.FormText())
	}
}
