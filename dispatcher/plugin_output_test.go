package dispatcher

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/callbackd/callbackd/plugins"
)

// A transport's result is kept within the contract: an unknown outcome is
// a final failure that names the mistake; out-of-range numbers are dropped.
func TestCheckResult(t *testing.T) {
	for _, tc := range []struct{ in, want plugins.Result }{
		{plugins.Result{Outcome: plugins.OutcomeDelivered, StatusCode: 200, Duration: time.Second}, plugins.Result{Outcome: plugins.OutcomeDelivered, StatusCode: 200, Duration: time.Second}},
		{plugins.Result{Outcome: plugins.OutcomeNotAllowed}, plugins.Result{Outcome: plugins.OutcomeNotAllowed}},
		{plugins.Result{Outcome: "weird", StatusCode: 200}, plugins.Result{Outcome: plugins.OutcomeFinal, StatusCode: 200, Error: `the transport returned an unknown outcome "weird"`}},
		{plugins.Result{Outcome: "", Error: "boom"}, plugins.Result{Outcome: plugins.OutcomeFinal, Error: `the transport returned an unknown outcome "": boom`}},
		{plugins.Result{Outcome: plugins.OutcomeRetryable, StatusCode: -5, Duration: -time.Hour}, plugins.Result{Outcome: plugins.OutcomeRetryable}},
		{plugins.Result{Outcome: plugins.OutcomeFinal, StatusCode: 1000}, plugins.Result{Outcome: plugins.OutcomeFinal}},
		// "delivered" with a status that is no success contradicts itself.
		{plugins.Result{Outcome: plugins.OutcomeDelivered, StatusCode: 500}, plugins.Result{Outcome: plugins.OutcomeFinal, StatusCode: 500, Error: "the transport reported delivered with HTTP status 500, which is no success"}},
		{plugins.Result{Outcome: plugins.OutcomeDelivered, StatusCode: 302, Error: "x"}, plugins.Result{Outcome: plugins.OutcomeFinal, StatusCode: 302, Error: "the transport reported delivered with HTTP status 302, which is no success: x"}},
		{plugins.Result{Outcome: plugins.OutcomeDelivered, StatusCode: 202}, plugins.Result{Outcome: plugins.OutcomeDelivered, StatusCode: 202}},
		{plugins.Result{Outcome: plugins.OutcomeDelivered, StatusCode: 205}, plugins.Result{Outcome: plugins.OutcomeFinal, StatusCode: 205, Error: "the transport reported delivered with HTTP status 205, which is no success"}},
		{plugins.Result{Outcome: plugins.OutcomeDelivered}, plugins.Result{Outcome: plugins.OutcomeDelivered}}, // no HTTP: status 0
		// A third-party transport's error quoting the URL (net/http's own).
		{plugins.Result{Outcome: plugins.OutcomeRetryable, Error: `Post "http://user:***@127.0.0.1:9/ok?token=SECRET123": EOF`},
			plugins.Result{Outcome: plugins.OutcomeRetryable, Error: `Post "http://127.0.0.1:9/ok": EOF`}},
	} {
		if diff := cmp.Diff(tc.want, checkResult(tc.in, "http://user:pw@127.0.0.1:9/ok?token=SECRET123")); diff != "" {
			t.Errorf("checkResult(%+v) (-want +got):\n%s", tc.in, diff)
		}
	}
}

// A failure plugin's notification is checked by the rules settings follow
// before it is queued.
func TestCheckOutbound(t *testing.T) {
	n := plugins.Notification{Fields: []plugins.Field{{Name: "message", Value: plugins.String("callback_failed")}}}
	for _, tc := range []struct {
		name string
		ob   plugins.Outbound
		err  string
	}{
		{"fine", plugins.Outbound{Destination: plugins.Destination{URL: "https://sso.example.com/hook", Headers: []plugins.Header{{Key: "X-Token", Value: "t"}}}, Notification: n}, ""},
		{"relative URL", plugins.Outbound{Destination: plugins.Destination{URL: "/hook"}, Notification: n}, "destination: must be an absolute http or https URL"},
		{"raw space", plugins.Outbound{Destination: plugins.Destination{URL: "https://e.com/?a b"}, Notification: n}, "destination: must be a URI"},
		{"reserved header", plugins.Outbound{Destination: plugins.Destination{URL: "https://e.com/", Headers: []plugins.Header{{Key: "Host", Value: "x"}}}, Notification: n}, "destination headers"},
		{"CRLF in a header", plugins.Outbound{Destination: plugins.Destination{URL: "https://e.com/", Headers: []plugins.Header{{Key: "X-A", Value: "x\r\ny"}}}, Notification: n}, "destination headers"},
		{"empty notification", plugins.Outbound{Destination: plugins.Destination{URL: "https://e.com/"}}, "notification: no fields"},
	} {
		err := checkOutbound(tc.ob)
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%s: checkOutbound = %v, want %q", tc.name, err, tc.err)
		}
	}
}
