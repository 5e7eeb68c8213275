package builtin

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/callbackd/callbackd/plugins"
)

var crawlStatusFieldNames = []string{
	"message", "resource", "crawl_id", "project_id", "account_id",
	"user_id", "partner_account_id", "partner_user_id", "status", "href",
}

// crawlSeed is the seed's crawl_status example as JSON.
const crawlSeed = `{"message":"crawl_status","resource":"crawl","crawl_id":124234,"project_id":1123123,"account_id":123123,` +
	`"user_id":123123,"partner_account_id":"123123","partner_user_id":"3333312","status":"finished",` +
	`"href":"/accounts/123123/projects/1123123/crawls/124234"}`

// crawlSeedBody is the form body the seed's example must give.
const crawlSeedBody = "message=crawl_status&resource=crawl&crawl_id=124234&project_id=1123123&account_id=123123" +
	"&user_id=123123&partner_account_id=123123&partner_user_id=3333312&status=finished" +
	"&href=%2Faccounts%2F123123%2Fprojects%2F1123123%2Fcrawls%2F124234"

// crawlBody is the body of a finished standard crawl 7 under the seed's
// subject with the given user and partner fields (already form-encoded).
func crawlBody(user, partnerAccount, partnerUser string) string {
	return "message=crawl_status&resource=crawl&crawl_id=7&project_id=1123123&account_id=123123" +
		"&user_id=" + user + "&partner_account_id=" + partnerAccount + "&partner_user_id=" + partnerUser +
		"&status=finished&href=%2Faccounts%2F123123%2Fprojects%2F1123123%2Fcrawls%2F7"
}

func TestCrawlStatus_Info(t *testing.T) {
	info, err := NewCrawlStatus().Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := plugins.EncoderInfo{EventType: "crawl_status", IDFields: []string{"crawl_id"}}
	if !reflect.DeepEqual(info, want) {
		t.Fatalf("Info = %+v, want %+v", info, want)
	}
}

func TestCrawlStatus_golden(t *testing.T) {
	for _, name := range []string{"crawl_status_seed", "crawl_status_minimal"} {
		t.Run(name, func(t *testing.T) {
			checkEncoderGolden(t, NewCrawlStatus(), "crawl_status", name)
		})
	}
}

func TestCrawlStatus_seed_body(t *testing.T) {
	got, err := NewCrawlStatus().Encode(context.Background(), plugins.Event{
		Type: "crawl_status", AccountID: seedAccount, ProjectID: seedProject, Payload: []byte(crawlSeed),
	})
	if err != nil {
		t.Fatal(err)
	}
	if body := string(got.Notification.AppendForm(nil)); body != crawlSeedBody {
		t.Fatalf("body\n got %s\nwant %s", body, crawlSeedBody)
	}
}

// The notification keeps JSON kinds: IDs are numbers, an integer user ID
// stays a number, string IDs stay strings and a missing one is "".
func TestCrawlStatus_field_order_and_kinds(t *testing.T) {
	got, err := NewCrawlStatus().Encode(context.Background(), plugins.Event{
		Type: "crawl_status", AccountID: seedAccount, ProjectID: seedProject,
		Payload: []byte(`{"crawl_id":124234,"user_id":123123,"partner_account_id":"123123"}`),
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []plugins.Field{
		{Name: "message", Value: plugins.String("crawl_status")},
		{Name: "resource", Value: plugins.String("crawl")},
		{Name: "crawl_id", Value: plugins.Number("124234")},
		{Name: "project_id", Value: plugins.Number("1123123")},
		{Name: "account_id", Value: plugins.Number("123123")},
		{Name: "user_id", Value: plugins.Number("123123")},
		{Name: "partner_account_id", Value: plugins.String("123123")},
		{Name: "partner_user_id", Value: plugins.String("")},
		{Name: "status", Value: plugins.String("finished")},
		{Name: "href", Value: plugins.String("/accounts/123123/projects/1123123/crawls/124234")},
	}
	if !reflect.DeepEqual(got.Notification.Fields, want) {
		t.Fatalf("fields\n got %+v\nwant %+v", got.Notification.Fields, want)
	}
}

func TestCrawlStatus_encodes(t *testing.T) {
	minimal := crawlBody("", "", "")
	runEncoderCases(t, NewCrawlStatus(), "crawl_status", crawlStatusFieldNames, []encoderCase{
		{name: "seed example", payload: crawlSeed, want: crawlSeedBody},
		{name: "defaults: status, crawl_type, ids from subject", payload: `{"crawl_id":7}`, want: minimal},
		{name: "whitespace around the object", payload: " \n\t{ \"crawl_id\" : 7 }\r\n ", want: minimal},
		{name: "project and account equal to the subject", payload: `{"crawl_id":7,"project_id":1123123,"account_id":123123}`, want: minimal},
		{name: "explicit defaults", payload: `{"crawl_id":7,"status":"finished","crawl_type":"standard"}`, want: minimal},
		{name: "message and resource given", payload: `{"message":"crawl_status","resource":"crawl","crawl_id":7}`, want: minimal},
		{name: "href given and right", payload: `{"crawl_id":7,"href":"/accounts/123123/projects/1123123/crawls/7"}`, want: minimal},
		{name: "null optionals count as absent", payload: `{"crawl_id":7,"project_id":null,"account_id":null,"status":null,"crawl_type":null,"href":null,"message":null,"resource":null}`, want: minimal},
		{name: "user ids null", payload: `{"crawl_id":7,"user_id":null,"partner_account_id":null,"partner_user_id":null}`, want: minimal},
		{name: "user ids empty strings", payload: `{"crawl_id":7,"user_id":"","partner_account_id":"","partner_user_id":""}`, want: minimal},
		{name: "user ids integers", payload: `{"crawl_id":7,"user_id":42,"partner_account_id":0,"partner_user_id":9223372036854775807}`, want: crawlBody("42", "0", "9223372036854775807")},
		{name: "user ids any integer", payload: `{"crawl_id":7,"user_id":-1,"partner_account_id":9223372036854775808,"partner_user_id":-0}`, want: crawlBody("-1", "9223372036854775808", "-0")},
		{name: "user ids strings as they are", payload: `{"crawl_id":7,"user_id":"u 1/é","partner_account_id":"123123","partner_user_id":"-1.5"}`, want: crawlBody("u+1%2F%C3%A9", "123123", "-1.5")},
		{name: "largest crawl id", payload: `{"crawl_id":9223372036854775807}`,
			want: "message=crawl_status&resource=crawl&crawl_id=9223372036854775807&project_id=1123123&account_id=123123&user_id=&partner_account_id=&partner_user_id=&status=finished&href=%2Faccounts%2F123123%2Fprojects%2F1123123%2Fcrawls%2F9223372036854775807"},
		{name: "largest subject ids", account: "9223372036854775807", project: "1", payload: `{"crawl_id":7,"account_id":9223372036854775807,"project_id":1}`,
			want: "message=crawl_status&resource=crawl&crawl_id=7&project_id=1&account_id=9223372036854775807&user_id=&partner_account_id=&partner_user_id=&status=finished&href=%2Faccounts%2F9223372036854775807%2Fprojects%2F1%2Fcrawls%2F7"},
		{name: "unknown keys ignored", payload: `{"crawl_id":7,"extra":{"a":[1,2,{"b":null}]},"report_id":5,"CRAWL_ID":"x","":1}`, want: minimal},
		{name: "escaped key", payload: `{"crawl\u005fid":7}`, want: minimal},
	})
}

func TestCrawlStatus_skips(t *testing.T) {
	runEncoderCases(t, NewCrawlStatus(), "crawl_status", crawlStatusFieldNames, []encoderCase{
		{name: "test suite build", payload: `{"crawl_id":7,"crawl_type":"test_suite_build"}`, skip: "crawl_type is test_suite_build"},
		{name: "test suite build, finished", payload: `{"crawl_id":7,"crawl_type":"test_suite_build","status":"finished"}`, skip: "crawl_type is test_suite_build"},
		{name: "failed", payload: `{"crawl_id":7,"status":"failed"}`, skip: `status is "failed", not "finished"`},
		{name: "empty status", payload: `{"crawl_id":7,"status":""}`, skip: `status is "", not "finished"`},
		{name: "case matters", payload: `{"crawl_id":7,"status":"Finished"}`, skip: `status is "Finished", not "finished"`},
		{name: "long status clipped", payload: `{"crawl_id":7,"status":"` + strings.Repeat("x", 1000) + `"}`, skip: `…", not "finished"`},
		{name: "seed example, failed", payload: strings.Replace(crawlSeed, `"finished"`, `"failed"`, 1), skip: `status is "failed"`},
	})
}

func TestCrawlStatus_invalid(t *testing.T) {
	const idRule = "must be an integer from 1 to 9223372036854775807, got "
	const refRule = "must be an integer (no fraction or exponent), a string or null, got "
	runEncoderCases(t, NewCrawlStatus(), "crawl_status", crawlStatusFieldNames, []encoderCase{
		// Not one JSON object.
		{name: "empty payload", payload: ``, err: "payload: empty"},
		{name: "malformed", payload: `{"crawl_id":7`, err: "payload: malformed JSON"},
		{name: "malformed value", payload: `{"crawl_id":7x}`, err: "payload: malformed JSON"},
		{name: "trailing comma", payload: `{"crawl_id":7,}`, err: "payload: malformed JSON"},
		{name: "malformed unknown value", payload: `{"crawl_id":7,"extra":{"a":]}}`, err: "payload: malformed JSON"},
		{name: "array", payload: `[{"crawl_id":7}]`, err: "payload: must be a JSON object, got an array"},
		{name: "string", payload: `"crawl_status"`, err: `payload: must be a JSON object, got "crawl_status"`},
		{name: "number", payload: `7`, err: "payload: must be a JSON object, got 7"},
		{name: "null", payload: `null`, err: "payload: must be a JSON object, got null"},
		{name: "trailing object", payload: `{"crawl_id":7}{"crawl_id":8}`, err: "payload: unexpected data after the JSON object"},
		{name: "trailing garbage", payload: `{"crawl_id":7} garbage`, err: "payload: unexpected data after the JSON object"},
		{name: "trailing bracket", payload: `{"crawl_id":7}]`, err: "payload: unexpected data after the JSON object"},
		{name: "duplicate crawl_id", payload: `{"crawl_id":7,"crawl_id":7}`, err: `payload: duplicate key "crawl_id"`},
		{name: "duplicate by escape", payload: `{"crawl_id":7,"crawl\u005fid":8}`, err: `payload: duplicate key "crawl_id"`},
		{name: "duplicate unknown key", payload: `{"crawl_id":7,"x":1,"x":1}`, err: `payload: duplicate key "x"`},
		{name: "duplicate null", payload: `{"crawl_id":7,"user_id":null,"user_id":1}`, err: `payload: duplicate key "user_id"`},

		// crawl_id.
		{name: "crawl_id missing", payload: `{}`, err: "crawl_id: missing (required)"},
		{name: "crawl_id null", payload: `{"crawl_id":null}`, err: "crawl_id: " + idRule + "null"},
		{name: "crawl_id float", payload: `{"crawl_id":1.5}`, err: "crawl_id: " + idRule + "1.5"},
		{name: "crawl_id 1.0", payload: `{"crawl_id":1.0}`, err: "crawl_id: " + idRule + "1.0"},
		{name: "crawl_id exponent", payload: `{"crawl_id":1e3}`, err: "crawl_id: " + idRule + "1e3"},
		{name: "crawl_id Exponent", payload: `{"crawl_id":1E+3}`, err: "crawl_id: " + idRule + "1E+3"},
		{name: "crawl_id negative", payload: `{"crawl_id":-1}`, err: "crawl_id: " + idRule + "-1"},
		{name: "crawl_id minus zero", payload: `{"crawl_id":-0}`, err: "crawl_id: " + idRule + "-0"},
		{name: "crawl_id zero", payload: `{"crawl_id":0}`, err: "crawl_id: " + idRule + "0"},
		{name: "crawl_id 2^63", payload: `{"crawl_id":9223372036854775808}`, err: "crawl_id: " + idRule + "9223372036854775808"},
		{name: "crawl_id 2^64", payload: `{"crawl_id":18446744073709551616}`, err: "crawl_id: " + idRule + "18446744073709551616"},
		{name: "crawl_id huge", payload: `{"crawl_id":` + strings.Repeat("9", 5000) + `}`, err: "crawl_id: " + idRule + strings.Repeat("9", maxEcho) + "…"},
		{name: "crawl_id string", payload: `{"crawl_id":"124234"}`, err: "crawl_id: " + idRule + `"124234"`},
		{name: "crawl_id bool", payload: `{"crawl_id":true}`, err: "crawl_id: " + idRule + "true"},
		{name: "crawl_id object", payload: `{"crawl_id":{"id":7}}`, err: "crawl_id: " + idRule + "an object"},
		{name: "crawl_id array", payload: `{"crawl_id":[7]}`, err: "crawl_id: " + idRule + "an array"},

		// project_id and account_id against the subject.
		{name: "project_id mismatch", payload: `{"crawl_id":7,"project_id":99}`, err: "project_id: 99 does not match the subject's 1123123"},
		{name: "account_id mismatch", payload: `{"crawl_id":7,"account_id":99}`, err: "account_id: 99 does not match the subject's 123123"},
		{name: "project_id string", payload: `{"crawl_id":7,"project_id":"1123123"}`, err: "project_id: " + idRule + `"1123123"`},
		{name: "account_id float", payload: `{"crawl_id":7,"account_id":123123.0}`, err: "account_id: " + idRule + "123123.0"},
		{name: "account_id exponent", payload: `{"crawl_id":7,"account_id":123123e0}`, err: "account_id: " + idRule + "123123e0"},
		{name: "project_id 0", payload: `{"crawl_id":7,"project_id":0}`, err: "project_id: " + idRule + "0"},
		{name: "subject project not an id", project: "abc", payload: `{"crawl_id":7}`, err: `project_id: the subject's value "abc" is not an integer`},
		{name: "subject account not digits", account: "-", payload: `{"crawl_id":7}`, err: `account_id: the subject's value "-" is not an integer`},
		{name: "subject account too big", account: "9999999999999999999", payload: `{"crawl_id":7}`, err: `account_id: the subject's value "9999999999999999999" is not an integer`},

		// user_id, partner_account_id, partner_user_id.
		{name: "user_id bool", payload: `{"crawl_id":7,"user_id":true}`, err: "user_id: " + refRule + "true"},
		{name: "user_id object", payload: `{"crawl_id":7,"user_id":{}}`, err: "user_id: " + refRule + "an object"},
		{name: "user_id array", payload: `{"crawl_id":7,"user_id":[]}`, err: "user_id: " + refRule + "an array"},
		{name: "user_id float", payload: `{"crawl_id":7,"user_id":1.5}`, err: "user_id: " + refRule + "1.5"},
		{name: "user_id exponent", payload: `{"crawl_id":7,"user_id":1e2}`, err: "user_id: " + refRule + "1e2"},
		{name: "user_id negative exponent", payload: `{"crawl_id":7,"user_id":-1E2}`, err: "user_id: " + refRule + "-1E2"},
		{name: "user_id integral float", payload: `{"crawl_id":7,"user_id":2.0}`, err: "user_id: " + refRule + "2.0"},
		{name: "partner_account_id bool", payload: `{"crawl_id":7,"partner_account_id":false}`, err: "partner_account_id: " + refRule + "false"},
		{name: "partner_user_id array", payload: `{"crawl_id":7,"partner_user_id":["1"]}`, err: "partner_user_id: " + refRule + "an array"},

		// status, crawl_type, href, message, resource.
		{name: "status number", payload: `{"crawl_id":7,"status":1}`, err: "status: must be a string, got 1"},
		{name: "status bool", payload: `{"crawl_id":7,"status":true}`, err: "status: must be a string, got true"},
		{name: "crawl_type unknown", payload: `{"crawl_id":7,"crawl_type":"full"}`, err: `crawl_type: must be "standard" or "test_suite_build", got "full"`},
		{name: "crawl_type empty", payload: `{"crawl_id":7,"crawl_type":""}`, err: `crawl_type: must be "standard" or "test_suite_build", got ""`},
		{name: "crawl_type number", payload: `{"crawl_id":7,"crawl_type":1}`, err: "crawl_type: must be a string, got 1"},
		{name: "href wrong crawl", payload: `{"crawl_id":7,"href":"/accounts/123123/projects/1123123/crawls/8"}`, err: `href: must be "/accounts/123123/projects/1123123/crawls/7", got "/accounts/123123/projects/1123123/crawls/8"`},
		{name: "href trailing slash", payload: `{"crawl_id":7,"href":"/accounts/123123/projects/1123123/crawls/7/"}`, err: "href: must be"},
		{name: "href empty", payload: `{"crawl_id":7,"href":""}`, err: `href: must be "/accounts/123123/projects/1123123/crawls/7", got ""`},
		{name: "href number", payload: `{"crawl_id":7,"href":7}`, err: "href: must be"},
		{name: "message mismatch", payload: `{"crawl_id":7,"message":"report_download_available"}`, err: `message: must be "crawl_status", got "report_download_available"`},
		{name: "message number", payload: `{"crawl_id":7,"message":1}`, err: `message: must be "crawl_status", got 1`},
		{name: "resource mismatch", payload: `{"crawl_id":7,"resource":"report_download"}`, err: `resource: must be "crawl", got "report_download"`},
		{name: "resource empty", payload: `{"crawl_id":7,"resource":""}`, err: `resource: must be "crawl", got ""`},

		// Invalid beats skipped.
		{name: "test suite build with a bad href", payload: `{"crawl_id":7,"crawl_type":"test_suite_build","href":"/x"}`, err: "href: must be"},
		{name: "failed crawl without crawl_id", payload: `{"status":"failed"}`, err: "crawl_id: missing"},
	})
}

// Error texts are exact where the brief fixes them.
func TestCrawlStatus_error_text(t *testing.T) {
	_, err := NewCrawlStatus().Encode(context.Background(), plugins.Event{
		Type: "crawl_status", AccountID: seedAccount, ProjectID: seedProject, Payload: []byte(`{"crawl_id":1.5}`),
	})
	const want = "crawl_id: must be an integer from 1 to 9223372036854775807, got 1.5"
	if err == nil || err.Error() != want || !errors.Is(err, plugins.ErrInvalidEvent) {
		t.Fatalf("error %v, want %q wrapping ErrInvalidEvent", err, want)
	}
}

func TestCrawlStatus_concurrent(t *testing.T) {
	enc := NewCrawlStatus()
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 200; j++ {
				got, err := enc.Encode(context.Background(), plugins.Event{
					Type: "crawl_status", AccountID: seedAccount, ProjectID: seedProject, Payload: []byte(crawlSeed),
				})
				if err != nil || string(got.Notification.AppendForm(nil)) != crawlSeedBody {
					t.Errorf("Encode = %v, %v", got, err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func FuzzCrawlStatus(f *testing.F) {
	for _, p := range []string{
		crawlSeed,
		`{"crawl_id":7}`,
		`{"crawl_id":7,"crawl_type":"test_suite_build"}`,
		`{"crawl_id":7,"status":"failed","user_id":null,"partner_account_id":"","partner_user_id":12}`,
		`{"crawl_id":9223372036854775808}`,
		`{"crawl_id":7,"crawl_id":7}`,
		`{"crawl_id":7,"extra":[{"a":1e400}]}`,
		`{"crawl_id":7,"user_id":"\ud800"}`,
		`[1]`,
	} {
		f.Add([]byte(p), seedAccount, seedProject)
	}
	enc := NewCrawlStatus()
	f.Fuzz(func(t *testing.T, payload []byte, accountID, projectID string) {
		ev := plugins.Event{Type: "crawl_status", AccountID: accountID, ProjectID: projectID, Payload: payload}
		checkDecodersAgree(t, payload, crawlStatusKeys[:])
		got, err := enc.Encode(context.Background(), ev)
		checkEncodeResult(t, ev, got, err, crawlStatusFieldNames)
		if err == nil && got.SkipReason == "" {
			if v, _ := got.Notification.Get("status"); v.Text != "finished" {
				t.Fatalf("delivered status %q", v.Text)
			}
		}
	})
}

func BenchmarkCrawlStatus_Encode(b *testing.B) {
	enc := NewCrawlStatus()
	ev := plugins.Event{Type: "crawl_status", AccountID: seedAccount, ProjectID: seedProject, Payload: []byte(crawlSeed)}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := enc.Encode(context.Background(), ev); err != nil {
			b.Fatal(err)
		}
	}
}
