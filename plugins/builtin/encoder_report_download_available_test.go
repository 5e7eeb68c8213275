package builtin

import (
	"context"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/callbackd/callbackd/plugins"
)

var reportDownloadFieldNames = []string{
	"message", "resource", "report_download_id", "report_id", "crawl_id", "project_id", "account_id",
	"user_id", "partner_account_id", "partner_user_id", "status", "file_url", "href",
}

// reportSeed is the seed's report_download_available example as JSON.
const reportSeed = `{"message":"report_download_available","resource":"report_download","report_download_id":567890,` +
	`"report_id":"124234:all_pages:basic","crawl_id":124234,"project_id":1123123,"account_id":123123,` +
	`"user_id":123123,"partner_account_id":"123123","partner_user_id":"3333312","status":"generated",` +
	`"file_url":"https://...","href":"/accounts/123123/projects/1123123/crawls/124234/reports/124234:all_pages:basic/downloads/567890"}`

// reportSeedBody is the form body the seed's example must give.
const reportSeedBody = "message=report_download_available&resource=report_download&report_download_id=567890" +
	"&report_id=124234%3Aall_pages%3Abasic&crawl_id=124234&project_id=1123123&account_id=123123" +
	"&user_id=123123&partner_account_id=123123&partner_user_id=3333312&status=generated&file_url=https%3A%2F%2F..." +
	"&href=%2Faccounts%2F123123%2Fprojects%2F1123123%2Fcrawls%2F124234%2Freports%2F124234%3Aall_pages%3Abasic%2Fdownloads%2F567890"

const testFileURL = "https://s3.example.com/r.csv"

// rdPayload is a report for download 5 of crawl 3 with testFileURL, plus extra
// (which starts with a comma).
func rdPayload(extra string) string {
	return `{"report_download_id":5,"crawl_id":3,"file_url":"` + testFileURL + `"` + extra + `}`
}

// reportBody is the body of download 5 of crawl 3 under the seed's subject.
func reportBody(reportID, fileURL string) string {
	href := "/accounts/123123/projects/1123123/crawls/3/reports/" + reportID + "/downloads/5"
	return "message=report_download_available&resource=report_download&report_download_id=5" +
		"&report_id=" + url.QueryEscape(reportID) + "&crawl_id=3&project_id=1123123&account_id=123123" +
		"&user_id=&partner_account_id=&partner_user_id=&status=generated" +
		"&file_url=" + url.QueryEscape(fileURL) + "&href=" + url.QueryEscape(href)
}

func TestReportDownloadAvailable_Info(t *testing.T) {
	info, err := NewReportDownloadAvailable().Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := plugins.EncoderInfo{EventType: "report_download_available", IDFields: []string{"crawl_id", "report_download_id"}}
	if !reflect.DeepEqual(info, want) {
		t.Fatalf("Info = %+v, want %+v", info, want)
	}
}

func TestReportDownloadAvailable_golden(t *testing.T) {
	for _, name := range []string{"report_download_available_seed", "report_download_available_codes"} {
		t.Run(name, func(t *testing.T) {
			checkEncoderGolden(t, NewReportDownloadAvailable(), "report_download_available", name)
		})
	}
}

func TestReportDownloadAvailable_seed_body(t *testing.T) {
	got, err := NewReportDownloadAvailable().Encode(context.Background(), plugins.Event{
		Type: "report_download_available", AccountID: seedAccount, ProjectID: seedProject, Payload: []byte(reportSeed),
	})
	if err != nil {
		t.Fatal(err)
	}
	if body := string(got.Notification.AppendForm(nil)); body != reportSeedBody {
		t.Fatalf("body\n got %s\nwant %s", body, reportSeedBody)
	}
}

func TestReportDownloadAvailable_field_order_and_kinds(t *testing.T) {
	got, err := NewReportDownloadAvailable().Encode(context.Background(), plugins.Event{
		Type: "report_download_available", AccountID: seedAccount, ProjectID: seedProject,
		Payload: []byte(rdPayload(`,"report_template_code":"all_pages","report_type_code":"basic","segment_id":42,"user_id":"u1","partner_user_id":8`)),
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []plugins.Field{
		{Name: "message", Value: plugins.String("report_download_available")},
		{Name: "resource", Value: plugins.String("report_download")},
		{Name: "report_download_id", Value: plugins.Number("5")},
		{Name: "report_id", Value: plugins.String("3:all_pages:basic:42")},
		{Name: "crawl_id", Value: plugins.Number("3")},
		{Name: "project_id", Value: plugins.Number("1123123")},
		{Name: "account_id", Value: plugins.Number("123123")},
		{Name: "user_id", Value: plugins.String("u1")},
		{Name: "partner_account_id", Value: plugins.String("")},
		{Name: "partner_user_id", Value: plugins.Number("8")},
		{Name: "status", Value: plugins.String("generated")},
		{Name: "file_url", Value: plugins.String(testFileURL)},
		{Name: "href", Value: plugins.String("/accounts/123123/projects/1123123/crawls/3/reports/3:all_pages:basic:42/downloads/5")},
	}
	if !reflect.DeepEqual(got.Notification.Fields, want) {
		t.Fatalf("fields\n got %+v\nwant %+v", got.Notification.Fields, want)
	}
}

func TestReportDownloadAvailable_encodes(t *testing.T) {
	basic := reportBody("3:all_pages:basic", testFileURL)
	const signed = "https://bucket.s3.amazonaws.com/r%201.csv.gz?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=ab+cd/ef=="
	runEncoderCases(t, NewReportDownloadAvailable(), "report_download_available", reportDownloadFieldNames, []encoderCase{
		{name: "seed example", payload: reportSeed, want: reportSeedBody},
		{name: "report_id given", payload: rdPayload(`,"report_id":"3:all_pages:basic"`), want: basic},
		{name: "report_id with segment", payload: rdPayload(`,"report_id":"3:all_pages:basic:seg-1"`), want: reportBody("3:all_pages:basic:seg-1", testFileURL)},
		{name: "codes", payload: rdPayload(`,"report_template_code":"all_pages","report_type_code":"basic"`), want: basic},
		{name: "codes, null segment", payload: rdPayload(`,"report_template_code":"all_pages","report_type_code":"basic","segment_id":null`), want: basic},
		{name: "codes with string segment", payload: rdPayload(`,"report_template_code":"all_pages","report_type_code":"basic","segment_id":"Seg_9"`), want: reportBody("3:all_pages:basic:Seg_9", testFileURL)},
		{name: "codes with integer segment", payload: rdPayload(`,"report_template_code":"all_pages","report_type_code":"basic","segment_id":42`), want: reportBody("3:all_pages:basic:42", testFileURL)},
		// Rendered as given: "-5" matches [A-Za-z0-9_-]{1,64}, as the string "-5" does.
		{name: "codes with negative integer segment", payload: rdPayload(`,"report_template_code":"all_pages","report_type_code":"basic","segment_id":-5`), want: reportBody("3:all_pages:basic:-5", testFileURL)},
		{name: "codes with segment 0", payload: rdPayload(`,"report_template_code":"all_pages","report_type_code":"basic","segment_id":0`), want: reportBody("3:all_pages:basic:0", testFileURL)},
		{name: "report_id and codes agree", payload: rdPayload(`,"report_id":"3:all_pages:basic:7","report_template_code":"all_pages","report_type_code":"basic","segment_id":"7"`), want: reportBody("3:all_pages:basic:7", testFileURL)},
		{name: "report_id and codes with integer segment agree", payload: rdPayload(`,"report_id":"3:all_pages:basic:7","report_template_code":"all_pages","report_type_code":"basic","segment_id":7`), want: reportBody("3:all_pages:basic:7", testFileURL)},
		{name: "report_id, null codes", payload: rdPayload(`,"report_id":"3:all_pages:basic","report_template_code":null,"report_type_code":null,"segment_id":null`), want: basic},
		{name: "codes, null report_id", payload: rdPayload(`,"report_id":null,"report_template_code":"all_pages","report_type_code":"basic"`), want: basic},
		{name: "status generated", payload: rdPayload(`,"report_id":"3:all_pages:basic","status":"generated"`), want: basic},
		{name: "href right", payload: rdPayload(`,"report_id":"3:all_pages:basic","href":"/accounts/123123/projects/1123123/crawls/3/reports/3:all_pages:basic/downloads/5"`), want: basic},
		{name: "ids equal to subject", payload: rdPayload(`,"report_id":"3:all_pages:basic","project_id":1123123,"account_id":123123`), want: basic},
		{name: "message and resource", payload: rdPayload(`,"report_id":"3:all_pages:basic","message":"report_download_available","resource":"report_download"`), want: basic},
		{name: "http file_url", payload: `{"report_download_id":5,"crawl_id":3,"report_id":"3:all_pages:basic","file_url":"http://files.example.com:8080/x"}`, want: reportBody("3:all_pages:basic", "http://files.example.com:8080/x")},
		{name: "signed file_url kept as given", payload: `{"report_download_id":5,"crawl_id":3,"report_id":"3:all_pages:basic","file_url":"` + signed + `"}`, want: reportBody("3:all_pages:basic", signed)},
		{name: "upper-case scheme kept as given", payload: `{"report_download_id":5,"crawl_id":3,"report_id":"3:all_pages:basic","file_url":"HTTPS://EXAMPLE.COM/R"}`, want: reportBody("3:all_pages:basic", "HTTPS://EXAMPLE.COM/R")},
		{name: "unknown keys ignored", payload: rdPayload(`,"report_id":"3:all_pages:basic","crawl_type":"whatever","extra":[{}]`), want: basic},
		{name: "largest ids", payload: `{"report_download_id":9223372036854775807,"crawl_id":9223372036854775807,"report_id":"9223372036854775807:a:b","file_url":"https://x"}`,
			want: "message=report_download_available&resource=report_download&report_download_id=9223372036854775807&report_id=9223372036854775807%3Aa%3Ab&crawl_id=9223372036854775807&project_id=1123123&account_id=123123&user_id=&partner_account_id=&partner_user_id=&status=generated&file_url=https%3A%2F%2Fx&href=%2Faccounts%2F123123%2Fprojects%2F1123123%2Fcrawls%2F9223372036854775807%2Freports%2F9223372036854775807%3Aa%3Ab%2Fdownloads%2F9223372036854775807"},
	})
}

func TestReportDownloadAvailable_skips(t *testing.T) {
	runEncoderCases(t, NewReportDownloadAvailable(), "report_download_available", reportDownloadFieldNames, []encoderCase{
		{name: "failed", payload: rdPayload(`,"report_id":"3:all_pages:basic","status":"failed"`), skip: `status is "failed", not "generated"`},
		{name: "empty status", payload: rdPayload(`,"report_id":"3:all_pages:basic","status":""`), skip: `status is "", not "generated"`},
		{name: "seed example, pending", payload: strings.Replace(reportSeed, `"generated"`, `"pending"`, 1), skip: `status is "pending"`},
	})
}

func TestReportDownloadAvailable_invalid(t *testing.T) {
	const idRule = "must be an integer from 1 to 9223372036854775807, got "
	const rid = `,"report_id":"3:all_pages:basic"`
	const codesRule = "must be a string of 1 to 64 of [A-Za-z0-9_-], got "
	const urlRule = "file_url: must be an absolute http or https URL, got "
	long := strings.Repeat("a", 65)
	runEncoderCases(t, NewReportDownloadAvailable(), "report_download_available", reportDownloadFieldNames, []encoderCase{
		// Not one JSON object.
		{name: "empty payload", payload: ``, err: "payload: empty"},
		{name: "malformed", payload: `{"report_download_id":5,`, err: "payload: malformed JSON"},
		{name: "array", payload: `[]`, err: "payload: must be a JSON object, got an array"},
		{name: "trailing data", payload: rdPayload(rid) + ` 1`, err: "payload: unexpected data after the JSON object"},
		{name: "duplicate report_id", payload: rdPayload(rid + rid), err: `payload: duplicate key "report_id"`},
		{name: "duplicate file_url", payload: rdPayload(rid + `,"file_url":"https://other"`), err: `payload: duplicate key "file_url"`},

		// Required fields.
		{name: "report_download_id missing", payload: `{"crawl_id":3,"file_url":"https://x"` + rid + `}`, err: "report_download_id: missing (required)"},
		{name: "crawl_id missing", payload: `{"report_download_id":5,"file_url":"https://x"` + rid + `}`, err: "crawl_id: missing (required)"},
		{name: "file_url missing", payload: `{"report_download_id":5,"crawl_id":3` + rid + `}`, err: "file_url: missing (required)"},
		{name: "report_id and codes missing", payload: rdPayload(``), err: "report_id: missing (give report_id, or report_template_code and report_type_code)"},
		{name: "report_id null, no codes", payload: rdPayload(`,"report_id":null`), err: "report_id: missing"},

		// IDs.
		{name: "report_download_id zero", payload: `{"report_download_id":0,"crawl_id":3,"file_url":"https://x"` + rid + `}`, err: "report_download_id: " + idRule + "0"},
		{name: "report_download_id string", payload: `{"report_download_id":"5","crawl_id":3,"file_url":"https://x"` + rid + `}`, err: "report_download_id: " + idRule + `"5"`},
		{name: "report_download_id float", payload: `{"report_download_id":5.0,"crawl_id":3,"file_url":"https://x"` + rid + `}`, err: "report_download_id: " + idRule + "5.0"},
		{name: "report_download_id exponent", payload: `{"report_download_id":5e0,"crawl_id":3,"file_url":"https://x"` + rid + `}`, err: "report_download_id: " + idRule + "5e0"},
		{name: "report_download_id negative", payload: `{"report_download_id":-5,"crawl_id":3,"file_url":"https://x"` + rid + `}`, err: "report_download_id: " + idRule + "-5"},
		{name: "report_download_id huge", payload: `{"report_download_id":92233720368547758070,"crawl_id":3,"file_url":"https://x"` + rid + `}`, err: "report_download_id: " + idRule + "92233720368547758070"},
		{name: "crawl_id null", payload: `{"report_download_id":5,"crawl_id":null,"file_url":"https://x"` + rid + `}`, err: "crawl_id: " + idRule + "null"},
		{name: "project_id mismatch", payload: rdPayload(rid + `,"project_id":1`), err: "project_id: 1 does not match the subject's 1123123"},
		{name: "account_id mismatch", payload: rdPayload(rid + `,"account_id":1123123`), err: "account_id: 1123123 does not match the subject's 123123"},
		{name: "user_id bool", payload: rdPayload(rid + `,"user_id":false`), err: "user_id: must be an integer (no fraction or exponent), a string or null, got false"},
		{name: "partner_user_id object", payload: rdPayload(rid + `,"partner_user_id":{"id":1}`), err: "partner_user_id: must be an integer (no fraction or exponent), a string or null, got an object"},

		// report_id.
		{name: "report_id crawl part differs (seed @example)", payload: rdPayload(`,"report_id":"4:all_pages:basic"`), err: `report_id: crawl part "4" does not match crawl_id 3`},
		{name: "report_id crawl part with leading zero", payload: rdPayload(`,"report_id":"03:all_pages:basic"`), err: `report_id: crawl part "03" does not match crawl_id 3`},
		{name: "report_id crawl part empty", payload: rdPayload(`,"report_id":":all_pages:basic"`), err: `report_id: crawl part "" does not match crawl_id 3`},
		{name: "report_id two parts", payload: rdPayload(`,"report_id":"3:all_pages"`), err: `report_id: must be "crawlId:reportTemplateCode:reportTypeCode[:segmentId]", got "3:all_pages"`},
		{name: "report_id one part", payload: rdPayload(`,"report_id":"3"`), err: `report_id: must be "crawlId:`},
		{name: "report_id five parts", payload: rdPayload(`,"report_id":"3:a:b:c:d"`), err: `report_id: must be "crawlId:reportTemplateCode:reportTypeCode[:segmentId]" with codes`},
		{name: "report_id empty code", payload: rdPayload(`,"report_id":"3::basic"`), err: "report_id: must be"},
		{name: "report_id trailing colon", payload: rdPayload(`,"report_id":"3:all_pages:basic:"`), err: "report_id: must be"},
		{name: "report_id space", payload: rdPayload(`,"report_id":"3:all pages:basic"`), err: "report_id: must be"},
		{name: "report_id slash", payload: rdPayload(`,"report_id":"3:all_pages:../../x"`), err: "report_id: must be"},
		{name: "report_id long code", payload: rdPayload(`,"report_id":"3:` + long + `:basic"`), err: "report_id: must be"},
		{name: "report_id empty", payload: rdPayload(`,"report_id":""`), err: "report_id: must be"},
		{name: "report_id number", payload: rdPayload(`,"report_id":3`), err: "report_id: must be a string"},

		// Codes.
		{name: "template without type", payload: rdPayload(`,"report_template_code":"all_pages"`), err: "report_type_code: missing"},
		{name: "type without template", payload: rdPayload(`,"report_type_code":"basic"`), err: "report_template_code: missing"},
		{name: "segment alone", payload: rdPayload(`,"segment_id":"s1"`), err: "report_template_code: missing"},
		{name: "segment with report_id only", payload: rdPayload(rid + `,"segment_id":"s1"`), err: "report_template_code: missing"},
		{name: "template with slash", payload: rdPayload(`,"report_template_code":"all/pages","report_type_code":"basic"`), err: "report_template_code: " + codesRule + `"all/pages"`},
		{name: "template empty", payload: rdPayload(`,"report_template_code":"","report_type_code":"basic"`), err: "report_template_code: " + codesRule + `""`},
		{name: "template too long", payload: rdPayload(`,"report_template_code":"` + long + `","report_type_code":"basic"`), err: "report_template_code: " + codesRule},
		{name: "type number", payload: rdPayload(`,"report_template_code":"all_pages","report_type_code":5`), err: "report_type_code: " + codesRule + "5"},
		{name: "type with colon", payload: rdPayload(`,"report_template_code":"all_pages","report_type_code":"a:b"`), err: "report_type_code: " + codesRule + `"a:b"`},
		{name: "segment with space", payload: rdPayload(`,"report_template_code":"all_pages","report_type_code":"basic","segment_id":"a b"`), err: `segment_id: must be a string of 1 to 64 of [A-Za-z0-9_-] or an integer of at most 64 characters, got "a b"`},
		{name: "segment empty", payload: rdPayload(`,"report_template_code":"all_pages","report_type_code":"basic","segment_id":""`), err: `segment_id: must be`},
		{name: "segment float", payload: rdPayload(`,"report_template_code":"all_pages","report_type_code":"basic","segment_id":1.5`), err: "segment_id: must be a string of 1 to 64 of [A-Za-z0-9_-] or an integer of at most 64 characters, got 1.5"},
		{name: "segment exponent", payload: rdPayload(`,"report_template_code":"all_pages","report_type_code":"basic","segment_id":1e2`), err: "segment_id: must be"},
		{name: "segment bool", payload: rdPayload(`,"report_template_code":"all_pages","report_type_code":"basic","segment_id":true`), err: "segment_id: must be"},
		{name: "segment 65 digits", payload: rdPayload(`,"report_template_code":"all_pages","report_type_code":"basic","segment_id":1` + strings.Repeat("0", 64)), err: "segment_id: must be"},
		{name: "report_id and codes disagree", payload: rdPayload(`,"report_id":"3:all_pages:basic","report_template_code":"all_pages","report_type_code":"full"`), err: `report_id: "3:all_pages:basic" does not agree with report_template_code, report_type_code and segment_id ("3:all_pages:full")`},
		{name: "report_id has a segment, codes not", payload: rdPayload(`,"report_id":"3:all_pages:basic:1","report_template_code":"all_pages","report_type_code":"basic"`), err: "does not agree"},
		{name: "codes have a segment, report_id not", payload: rdPayload(`,"report_id":"3:all_pages:basic","report_template_code":"all_pages","report_type_code":"basic","segment_id":1`), err: "does not agree"},

		// file_url.
		{name: "file_url ftp", payload: `{"report_download_id":5,"crawl_id":3,"file_url":"ftp://x/y"` + rid + `}`, err: urlRule + `"ftp://x/y"`},
		{name: "file_url relative", payload: `{"report_download_id":5,"crawl_id":3,"file_url":"/reports/1.csv"` + rid + `}`, err: urlRule + `"/reports/1.csv"`},
		{name: "file_url scheme relative", payload: `{"report_download_id":5,"crawl_id":3,"file_url":"//x/y"` + rid + `}`, err: urlRule},
		{name: "file_url no host", payload: `{"report_download_id":5,"crawl_id":3,"file_url":"https://"` + rid + `}`, err: `file_url: must have a host, got "https://"`},
		{name: "file_url port only", payload: `{"report_download_id":5,"crawl_id":3,"file_url":"http://:80/x"` + rid + `}`, err: `file_url: must have a host`},
		{name: "file_url opaque", payload: `{"report_download_id":5,"crawl_id":3,"file_url":"https:x"` + rid + `}`, err: `file_url: must have a host`},
		{name: "file_url javascript", payload: `{"report_download_id":5,"crawl_id":3,"file_url":"javascript:alert(1)"` + rid + `}`, err: urlRule},
		{name: "file_url empty", payload: `{"report_download_id":5,"crawl_id":3,"file_url":""` + rid + `}`, err: urlRule + `""`},
		{name: "file_url control character", payload: `{"report_download_id":5,"crawl_id":3,"file_url":"https://x/\u0000"` + rid + `}`, err: `file_url: must be a URI: '\x00' at byte 10 must be percent-encoded`},
		{name: "file_url raw space in the path", payload: `{"report_download_id":5,"crawl_id":3,"file_url":"https://s3.example/x y?sig=secret"` + rid + `}`, err: `file_url: must be a URI: ' ' at byte 20 must be percent-encoded, got "https://s3.example/x%20y"`},
		{name: "file_url raw angle bracket", payload: `{"report_download_id":5,"crawl_id":3,"file_url":"https://a.example/<script>"` + rid + `}`, err: `file_url: must be a URI: '<' at byte 18 must be percent-encoded`},
		{name: "file_url port out of range", payload: `{"report_download_id":5,"crawl_id":3,"file_url":"https://a.example:99999/x"` + rid + `}`, err: `file_url: port 99999 is not a port (1 to 65535), got "https://a.example:99999/x"`},
		{name: "file_url empty port", payload: `{"report_download_id":5,"crawl_id":3,"file_url":"https://a.example:/x"` + rid + `}`, err: `file_url: must not have an empty port`},
		{name: "file_url signed, not http", payload: `{"report_download_id":5,"crawl_id":3,"file_url":"ftp://user:pw@s3/x?sig=abc#f"` + rid + `}`, err: urlRule + `"ftp://s3/x"`},
		{name: "file_url signed, relative", payload: `{"report_download_id":5,"crawl_id":3,"file_url":"reports/x?sig=abc"` + rid + `}`, err: urlRule + `"reports/x"`},
		{name: "file_url bad host", payload: `{"report_download_id":5,"crawl_id":3,"file_url":"https://a b/"` + rid + `}`, err: `file_url: must be a URI: ' ' at byte 9 must be percent-encoded`},
		{name: "file_url number", payload: `{"report_download_id":5,"crawl_id":3,"file_url":5` + rid + `}`, err: urlRule + "5"},
		{name: "file_url null", payload: `{"report_download_id":5,"crawl_id":3,"file_url":null` + rid + `}`, err: urlRule + "null"},
		{name: "file_url long is clipped", payload: `{"report_download_id":5,"crawl_id":3,"file_url":"ftp://` + strings.Repeat("x", 5000) + `"` + rid + `}`, err: "…\""},

		// status, href, message, resource.
		{name: "status number", payload: rdPayload(rid + `,"status":1`), err: "status: must be a string, got 1"},
		{name: "href of the seed's @example", payload: rdPayload(rid + `,"href":"/accounts/1/projects/2/crawls/3/reports/4:all_pages:basic/downloads/5"`), err: `href: must be "/accounts/123123/projects/1123123/crawls/3/reports/3:all_pages:basic/downloads/5", got "/accounts/1/projects/2/crawls/3/reports/4:all_pa…"`},
		{name: "href wrong download", payload: rdPayload(rid + `,"href":"/accounts/123123/projects/1123123/crawls/3/reports/3:all_pages:basic/downloads/6"`), err: "href: must be"},
		{name: "message mismatch", payload: rdPayload(rid + `,"message":"crawl_status"`), err: `message: must be "report_download_available", got "crawl_status"`},
		{name: "resource mismatch", payload: rdPayload(rid + `,"resource":"crawl"`), err: `resource: must be "report_download", got "crawl"`},

		// Invalid beats skipped.
		{name: "failed report with a bad file_url", payload: `{"report_download_id":5,"crawl_id":3,"file_url":"ftp://x","status":"failed"` + rid + `}`, err: urlRule},
	})
}

func FuzzReportDownloadAvailable(f *testing.F) {
	for _, p := range []string{
		reportSeed,
		rdPayload(`,"report_id":"3:all_pages:basic"`),
		rdPayload(`,"report_template_code":"all_pages","report_type_code":"basic","segment_id":42`),
		rdPayload(`,"report_id":"3:all_pages:basic:s","report_template_code":"all_pages","report_type_code":"basic","segment_id":"s"`),
		rdPayload(`,"report_id":"4:all_pages:basic"`),
		rdPayload(`,"report_id":"3:all_pages:basic","status":"failed","user_id":null`),
		`{"report_download_id":5,"crawl_id":3,"file_url":"http://[::1]:80/x?y#z","report_id":"3:a:b"}`,
	} {
		f.Add([]byte(p), seedAccount, seedProject)
	}
	enc := NewReportDownloadAvailable()
	f.Fuzz(func(t *testing.T, payload []byte, accountID, projectID string) {
		ev := plugins.Event{Type: "report_download_available", AccountID: accountID, ProjectID: projectID, Payload: payload}
		checkDecodersAgree(t, payload, reportDownloadKeys[:])
		got, err := enc.Encode(context.Background(), ev)
		checkEncodeResult(t, ev, got, err, reportDownloadFieldNames)
		if err != nil || got.SkipReason != "" {
			return
		}
		if v, _ := got.Notification.Get("status"); v.Text != "generated" {
			t.Fatalf("delivered status %q", v.Text)
		}
		v, _ := got.Notification.Get("file_url")
		u, perr := url.Parse(v.Text)
		if perr != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
			t.Fatalf("delivered file_url %q", v.Text)
		}
		rid, _ := got.Notification.Get("report_id")
		parts := strings.Split(rid.Text, ":")
		if len(parts) < 3 || len(parts) > 4 {
			t.Fatalf("delivered report_id %q", rid.Text)
		}
		for _, p := range parts[1:] {
			if !isCode(p) {
				t.Fatalf("delivered report_id %q", rid.Text)
			}
		}
	})
}

func BenchmarkReportDownloadAvailable_Encode(b *testing.B) {
	enc := NewReportDownloadAvailable()
	ev := plugins.Event{Type: "report_download_available", AccountID: seedAccount, ProjectID: seedProject, Payload: []byte(reportSeed)}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := enc.Encode(context.Background(), ev); err != nil {
			b.Fatal(err)
		}
	}
}

// A rejected file_url's error (logged, in the delivery log and in the dead
// letter's Callbackd-Error) never holds its userinfo or query: a file_url is
// a signed URL (SPEC §7).
func TestReportDownloadAvailable_file_url_error_keeps_no_secret(t *testing.T) {
	enc := NewReportDownloadAvailable()
	for _, u := range []string{
		"ftp://user:SECRET@s3/x?sig=SECRET", "relative/x?sig=SECRET", "https://user:SECRET@/x?sig=SECRET",
		"https://a b/x?sig=SECRET", "https://x/%zz?sig=SECRET", "//user:SECRET@/x?sig=SECRET",
	} {
		ev := plugins.Event{Type: "report_download_available", AccountID: "123123", ProjectID: "1123123",
			Payload: []byte(`{"report_download_id":5,"crawl_id":3,"report_id":"3:a:b","file_url":` + strconv.Quote(u) + `}`)}
		_, err := enc.Encode(context.Background(), ev)
		if err == nil || strings.Contains(err.Error(), "SECRET") {
			t.Errorf("file_url %q: error %v, want one without the secret", u, err)
		}
	}
}
