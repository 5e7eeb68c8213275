package builtin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/callbackd/callbackd/plugins"
)

// The -update flag rewrites testdata/*.golden. It is registered in init, after
// every package-level variable of the package's test files, so that another
// test file declaring `var update = flag.Bool("update", ...)` wins instead of
// panicking with "flag redefined".
func init() {
	if flag.Lookup("update") == nil {
		flag.Bool("update", false, "rewrite testdata/*.golden files")
	}
}

func encoderUpdateGolden() bool {
	f := flag.Lookup("update")
	if f == nil {
		return false
	}
	b, _ := strconv.ParseBool(f.Value.String())
	return b
}

// Subject of the seed's examples.
const (
	seedAccount = "123123"
	seedProject = "1123123"
)

// encoderCase is one row of an encoder table: exactly one of want (the form
// body), skip (a substring of the skip reason) or err (a substring of the
// error text) is set.
type encoderCase struct {
	name    string
	account string // default seedAccount
	project string // default seedProject
	payload string
	want    string
	skip    string
	err     string
}

func runEncoderCases(t *testing.T, enc plugins.Encoder, eventType string, names []string, cases []encoderCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ev := plugins.Event{Type: eventType, AccountID: seedAccount, ProjectID: seedProject, Payload: []byte(tc.payload)}
			if tc.account != "" {
				ev.AccountID = tc.account
			}
			if tc.project != "" {
				ev.ProjectID = tc.project
			}
			got, err := enc.Encode(context.Background(), ev)
			checkEncodeResult(t, ev, got, err, names)
			switch {
			case tc.err != "":
				if err == nil {
					t.Fatalf("Encode = %+v, want an error containing %q", got, tc.err)
				}
				if !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %q does not contain %q", err, tc.err)
				}
			case tc.skip != "":
				if err != nil {
					t.Fatalf("Encode error %v, want skip %q", err, tc.skip)
				}
				if !strings.Contains(got.SkipReason, tc.skip) {
					t.Fatalf("SkipReason %q does not contain %q (notification %q)", got.SkipReason, tc.skip, got.Notification.AppendForm(nil))
				}
			default:
				if err != nil {
					t.Fatalf("Encode error %v", err)
				}
				if got.SkipReason != "" {
					t.Fatalf("skipped: %s", got.SkipReason)
				}
				if body := string(got.Notification.AppendForm(nil)); body != tc.want {
					t.Fatalf("body\n got %s\nwant %s", body, tc.want)
				}
			}
		})
	}
}

// checkEncodeResult checks the invariants every Encode result keeps, whatever
// the input: an error wraps plugins.ErrInvalidEvent and stays short; a skip
// has a reason and no notification; a notification has exactly the expected
// field names in order, IDs that are numbers of 1 to 2^63−1, the subject's
// project and account, and an href that agrees with them.
func checkEncodeResult(t *testing.T, ev plugins.Event, got plugins.Encoded, err error, names []string) {
	t.Helper()
	if err != nil {
		if !errors.Is(err, plugins.ErrInvalidEvent) {
			t.Fatalf("error %v (%T) does not wrap ErrInvalidEvent", err, err)
		}
		if len(got.Notification.Fields) != 0 || got.SkipReason != "" {
			t.Fatalf("error %v came with a result %+v", err, got)
		}
		// The messages repeat at most two clipped pieces of input.
		if n := len(err.Error()); n > 400 {
			t.Fatalf("error is %d bytes long: %.200s", n, err)
		}
		return
	}
	if !json.Valid(ev.Payload) {
		t.Fatalf("payload %q is not valid JSON, yet Encode gave %+v", ev.Payload, got)
	}
	if got.SkipReason != "" {
		if len(got.Notification.Fields) != 0 {
			t.Fatalf("skipped (%s) with a notification", got.SkipReason)
		}
		if len(got.SkipReason) > 200 {
			t.Fatalf("skip reason is %d bytes long", len(got.SkipReason))
		}
		return
	}
	fs := got.Notification.Fields
	if len(fs) != len(names) {
		t.Fatalf("%d fields %v, want %v", len(fs), fieldNames(fs), names)
	}
	for i, f := range fs {
		if f.Name != names[i] {
			t.Fatalf("fields %v, want %v", fieldNames(fs), names)
		}
		switch f.Value.Kind {
		case plugins.KindString, plugins.KindNumber:
		default:
			t.Fatalf("field %s has kind %v", f.Name, f.Value.Kind)
		}
		if !utf8.ValidString(f.Value.Text) {
			t.Fatalf("field %s is not valid UTF-8: %q", f.Name, f.Value.Text)
		}
		switch f.Name {
		case "crawl_id", "project_id", "account_id", "report_download_id":
			if f.Value.Kind != plugins.KindNumber || !isIDLiteral(f.Value.Text) {
				t.Fatalf("%s = %+v, want an integer of 1 to 2^63-1", f.Name, f.Value)
			}
		case "user_id", "partner_account_id", "partner_user_id":
			if f.Value.Kind == plugins.KindNumber && !isIntLiteral(f.Value.Text) {
				t.Fatalf("%s = %+v", f.Name, f.Value)
			}
		}
	}
	get := func(name string) string {
		v, _ := got.Notification.Get(name)
		return v.FormText()
	}
	if get("project_id") != ev.ProjectID || get("account_id") != ev.AccountID {
		t.Fatalf("project_id/account_id %s/%s, subject %s/%s", get("project_id"), get("account_id"), ev.ProjectID, ev.AccountID)
	}
	href := "/accounts/" + ev.AccountID + "/projects/" + ev.ProjectID + "/crawls/" + get("crawl_id")
	if get("report_id") != "" {
		rid := get("report_id")
		if !strings.HasPrefix(rid, get("crawl_id")+":") {
			t.Fatalf("report_id %q does not start with crawl_id %s", rid, get("crawl_id"))
		}
		href += "/reports/" + rid + "/downloads/" + get("report_download_id")
	}
	if get("href") != href {
		t.Fatalf("href %q, want %q", get("href"), href)
	}
	if len(got.Notification.AppendForm(nil)) == 0 {
		t.Fatal("empty form body")
	}
}

func fieldNames(fs []plugins.Field) []string {
	out := make([]string, len(fs))
	for i, f := range fs {
		out[i] = f.Name
	}
	return out
}

// checkEncoderGolden encodes testdata/<name>.json under the seed's subject
// and compares the form body with testdata/<name>.golden.
func checkEncoderGolden(t *testing.T, enc plugins.Encoder, eventType, name string) {
	t.Helper()
	payload, err := os.ReadFile(filepath.Join("testdata", name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := enc.Encode(context.Background(), plugins.Event{
		Type: eventType, AccountID: seedAccount, ProjectID: seedProject, Payload: payload,
	})
	if err != nil {
		t.Fatalf("Encode: %v", err)
	}
	if got.SkipReason != "" {
		t.Fatalf("skipped: %s", got.SkipReason)
	}
	body := got.Notification.AppendForm(nil)
	golden := filepath.Join("testdata", name+".golden")
	if encoderUpdateGolden() {
		if err := os.WriteFile(golden, append(body, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(body, bytes.TrimSuffix(want, []byte("\n"))) {
		t.Fatalf("%s:\n got %s\nwant %s", golden, body, want)
	}
}

func TestEncoderFields_integer_literals(t *testing.T) {
	for _, tc := range []struct {
		in            string
		uint, id, int bool
	}{
		{"0", true, false, true},
		{"1", true, true, true},
		{"124234", true, true, true},
		{"9223372036854775807", true, true, true},
		{"9223372036854775808", false, false, true},
		{"9999999999999999999", false, false, true},
		{"10000000000000000000", false, false, true},
		{"01", false, false, false},
		{"00", false, false, false},
		{"-1", false, false, true},
		{"-0", false, false, true},
		{"-01", false, false, false},
		{"-", false, false, false},
		{"--1", false, false, false},
		{"+1", false, false, false},
		{"1.0", false, false, false},
		{"1e3", false, false, false},
		{"1E3", false, false, false},
		{" 1", false, false, false},
		{"", false, false, false},
		{"1a", false, false, false},
	} {
		if got := isUintLiteral(tc.in); got != tc.uint {
			t.Errorf("isUintLiteral(%q) = %v, want %v", tc.in, got, tc.uint)
		}
		if got := isIDLiteral(tc.in); got != tc.id {
			t.Errorf("isIDLiteral(%q) = %v, want %v", tc.in, got, tc.id)
		}
		if got := isIntLiteral(tc.in); got != tc.int {
			t.Errorf("isIntLiteral(%q) = %v, want %v", tc.in, got, tc.int)
		}
	}
}

func TestEncoderFields_isCode(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want bool
	}{
		{"all_pages", true},
		{"basic", true},
		{"A-z_09", true},
		{"-", true},
		{strings.Repeat("a", 64), true},
		{strings.Repeat("a", 65), false},
		{"", false},
		{"all pages", false},
		{"a/b", false},
		{"a:b", false},
		{"a.b", false},
		{"é", false},
	} {
		if got := isCode(tc.in); got != tc.want {
			t.Errorf("isCode(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestEncoderFields_clipInput(t *testing.T) {
	if got := clipInput("short"); got != "short" {
		t.Errorf("clipInput(short) = %q", got)
	}
	long := strings.Repeat("é", 100) // 2 bytes each
	got := clipInput(long)
	if !utf8.ValidString(got) || !strings.HasSuffix(got, "…") || len(got) > maxEcho+len("…") {
		t.Errorf("clipInput(long) = %q", got)
	}
}

// decoders are the two implementations of decodeObject; every table runs on both.
var decoders = []struct {
	name   string
	decode func([]byte, []string, []jsonValue) error
}{
	{"lexer", decodeObject},
	{"reference", referenceDecodeObject},
}

func TestEncoderFields_decodeObject(t *testing.T) {
	names := []string{"a", "b", "c", "d", "e", "f", "g", "h", "i"}
	payload := ` {"a": 12345678901234567890123, "b": "x\u00e9\n\"\\/", "c": null, "d": true,
		"e": {"nested": [1, {"deep": "y}]"}]}, "f": [], "zz": {"a": 1, "a": 2}, "\u0067": -0.5e10,
		"h": "plain", "i": "bad \ufffd utf8", "{": "}", "q\"": [{"\\": ","}]} `
	want := [9]jsonValue{
		{jsonNumber, "12345678901234567890123"},
		{jsonString, "x\u00e9\n\"\\/"},
		{jsonNull, ""},
		{jsonBool, "true"},
		{jsonObject, ""},
		{jsonArray, ""},
		{jsonNumber, "-0.5e10"},
		{jsonString, "plain"},
		{jsonString, "bad \ufffd utf8"},
	}
	for _, d := range decoders {
		var vals [9]jsonValue
		if err := d.decode([]byte(payload), names, vals[:]); err != nil {
			t.Fatalf("%s: %v", d.name, err)
		}
		if vals != want {
			t.Fatalf("%s:\n got  %+v\nwant %+v", d.name, vals, want)
		}
	}
}

func TestEncoderFields_decodeObject_rejects(t *testing.T) {
	names := []string{"a"}
	for _, tc := range []struct{ payload, err string }{
		{``, "payload: empty"},
		{` `, "payload: empty"},
		{`{`, "unexpected end of input"},
		{`{"a"`, "unexpected end of input"},
		{`{"a":}`, "malformed JSON"},
		{`{"a":1,}`, "malformed JSON"},
		{`{,}`, "malformed JSON"},
		{`{a:1}`, "malformed JSON"},
		{`{'a':1}`, "malformed JSON"},
		{`{"a":1]`, "malformed JSON"},
		{`{"a":[1,2}`, "malformed JSON"},
		{`{"z":[1,2}`, "malformed JSON"},
		{`{"z":tru}`, "invalid character '}' in literal true (expecting 'e')"},
		{`{"z":"abc"x}`, "invalid character 'x' after object key:value pair"},
		{`{"a":01}`, "malformed JSON"},
		{`{"a":NaN}`, "malformed JSON"},
		{`{"a":"\x"}`, "malformed JSON"},
		{"{\"a\":\"\x01\"}", "malformed JSON"},
		{`[]`, "must be a JSON object"},
		{`[1,{"a":1}]`, "must be a JSON object"},
		{`"a"`, `must be a JSON object`},
		{`12`, "must be a JSON object"},
		{`null`, "must be a JSON object"},
		{`true`, "must be a JSON object"},
		{`[] 1`, "must be a JSON object"},
		{`{}{}`, "unexpected data after the JSON object"},
		{`{} 1`, "unexpected data after the JSON object"},
		{`{}]`, "unexpected data after the JSON object"},
		{`{}}`, "unexpected data after the JSON object"},
		{`{} x`, "unexpected data after the JSON object"},
		{"{\"a\":\"bad \xff utf8\"}", "not valid UTF-8"},
		{"{\"z\xfe\":1}", "not valid UTF-8"},
		{"{\"a\":\"\xed\xa0\x80\"}", "not valid UTF-8"}, // a surrogate, encoded
		{`{"a":"\ud800"}`, `\ud800 is half a UTF-16 surrogate pair`},
		{`{"a":"x\uDBFFy"}`, `\uDBFF is half`},
		{`{"a":"\ud800\u0041"}`, `\ud800 is half`},
		{`{"a":"\udc00\ud800"}`, `\udc00 is half`},
		{`{"z":["\ude00"]}`, `\ude00 is half`},
		{`{"\ud800":1}`, `\ud800 is half`},
		{`{"a":1,"a":1}`, `duplicate key "a"`},
		{`{"a":1,"\u0061":2}`, `duplicate key "a"`},
		{`{"z":1,"y":{},"z":{}}`, `duplicate key "z"`},
		{`{"z\u00e9":1,"zé":2}`, `duplicate key "zé"`},
		{`{"a":null,"a":null}`, `duplicate key "a"`},
		{`{"z":` + strings.Repeat("[", 20000) + strings.Repeat("]", 20000) + `}`, "malformed JSON"},
	} {
		for _, d := range decoders {
			var vals [1]jsonValue
			err := d.decode([]byte(tc.payload), names, vals[:])
			if err == nil || !errors.Is(err, plugins.ErrInvalidEvent) || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s(%.40q) = %v, want an invalid-event error containing %q", d.name, tc.payload, err, tc.err)
			}
		}
	}
}

func TestEncoderFields_loneSurrogate(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`"plain"`, ""},
		{`"\ud83d\ude00"`, ""}, // a pair: 😀
		{`"\\ud800"`, ""},      // a backslash, then text
		{`"\\\ud800"`, `\ud800`},
		{`"\u00e9\n\ud800"`, `\ud800`},
		{`"\ud83d\ude00\ude00"`, `\ude00`},
		{`"\ud800\\udc00"`, `\ud800`},
		{`"\ud800`, `\ud800`}, // cut short
		{`"\u12`, ""},
		{`"\ufffd"`, ""},
	} {
		if got := loneSurrogate([]byte(tc.in)); got != tc.want {
			t.Errorf("loneSurrogate(%s) = %q, want %q", tc.in, got, tc.want)
		}
	}
	var vals [1]jsonValue
	if err := decodeObject([]byte(`{"a":"\ud83d\ude00"}`), []string{"a"}, vals[:]); err != nil || vals[0].text != "😀" {
		t.Errorf("decodeObject(a surrogate pair) = %+v, %v", vals[0], err)
	}
}

// decodeObject has encoding/json's nesting limit (10000) everywhere.
func TestEncoderFields_decodeObject_depth(t *testing.T) {
	for _, tc := range []struct {
		depth int
		ok    bool
	}{{9000, true}, {20000, false}} {
		payload := `{"a":` + strings.Repeat("[", tc.depth) + strings.Repeat("]", tc.depth) + `}`
		var vals [1]jsonValue
		err := decodeObject([]byte(payload), []string{"a"}, vals[:])
		if (err == nil) != tc.ok {
			t.Errorf("depth %d: %v", tc.depth, err)
		}
		if tc.ok && vals[0].kind != jsonArray {
			t.Errorf("depth %d: got %+v", tc.depth, vals[0])
		}
	}
}

// referenceDecodeObject is a second, independent implementation of
// decodeObject: a json.Decoder token walk, simpler to trust but about ten
// times the allocations. The fuzz tests check that both read every payload
// alike (checkDecodersAgree). Unlike decodeObject it has no nesting limit for
// values of known keys; fuzz inputs never get near encoding/json's 10000.
func referenceDecodeObject(payload []byte, names []string, vals []jsonValue) error {
	if json.Valid(payload) && !utf8.Valid(payload) {
		return plugins.Invalid("payload: not valid UTF-8 (JSON text must be UTF-8)")
	}
	if esc := loneSurrogate(payload); json.Valid(payload) && esc != "" {
		return plugins.Invalid("payload: %s is half a UTF-16 surrogate pair, not a character", esc)
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()

	tok, err := dec.Token()
	if err != nil {
		if err == io.EOF {
			return plugins.Invalid("payload: empty, want a JSON object")
		}
		return malformedJSON(err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		v, err := referenceTokenValue(dec, tok)
		if err != nil {
			return err
		}
		return plugins.Invalid("payload: must be a JSON object, got %s", v.describe())
	}

	var others map[string]struct{} // keys we do not read, for the duplicate check
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return malformedJSON(err)
		}
		key, ok := tok.(string)
		if !ok { // the decoder only returns strings in key position
			return plugins.Invalid("payload: malformed JSON: object key is not a string")
		}
		i := keyIndex(names, key)
		if i < 0 {
			if _, dup := others[key]; dup {
				return plugins.Invalid("payload: duplicate key %s", quoteInput(key))
			}
			if others == nil {
				others = make(map[string]struct{}, 4)
			}
			others[key] = struct{}{}
			if err := dec.Decode(&skipJSONValue{}); err != nil {
				return malformedJSON(err)
			}
			continue
		}
		if vals[i].kind != jsonAbsent {
			return plugins.Invalid("payload: duplicate key %s", quoteInput(key))
		}
		tok, err = dec.Token()
		if err != nil {
			return malformedJSON(err)
		}
		if vals[i], err = referenceTokenValue(dec, tok); err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return malformedJSON(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return plugins.Invalid("payload: unexpected data after the JSON object")
	}
	return nil
}

// referenceTokenValue turns the token that starts a value into a jsonValue; an object
// or array is consumed to its end.
func referenceTokenValue(dec *json.Decoder, tok json.Token) (jsonValue, error) {
	switch t := tok.(type) {
	case nil:
		return jsonValue{kind: jsonNull}, nil
	case bool:
		return jsonValue{kind: jsonBool, text: strconv.FormatBool(t)}, nil
	case json.Number:
		return jsonValue{kind: jsonNumber, text: string(t)}, nil
	case string:
		return jsonValue{kind: jsonString, text: t}, nil
	case json.Delim:
		kind := jsonObject
		if t == '[' {
			kind = jsonArray
		}
		// Walk to the matching close; Token keeps its own stack, so depth
		// costs memory, not recursion.
		for depth := 1; depth > 0; {
			tok, err := dec.Token()
			if err != nil {
				return jsonValue{}, malformedJSON(err)
			}
			if d, ok := tok.(json.Delim); ok {
				if d == '{' || d == '[' {
					depth++
				} else {
					depth--
				}
			}
		}
		return jsonValue{kind: kind}, nil
	}
	return jsonValue{}, plugins.Invalid("payload: malformed JSON: unexpected token")
}

// checkDecodersAgree decodes payload with decodeObject and
// referenceDecodeObject and fails if they disagree on validity or values.
func checkDecodersAgree(t *testing.T, payload []byte, names []string) {
	t.Helper()
	got := make([]jsonValue, len(names))
	want := make([]jsonValue, len(names))
	gotErr := decodeObject(payload, names, got)
	wantErr := referenceDecodeObject(payload, names, want)
	if (gotErr == nil) != (wantErr == nil) {
		t.Fatalf("decodeObject(%q): %v; reference: %v", payload, gotErr, wantErr)
	}
	if gotErr != nil {
		if !errors.Is(gotErr, plugins.ErrInvalidEvent) {
			t.Fatalf("decodeObject(%q): %v does not wrap ErrInvalidEvent", payload, gotErr)
		}
		return
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("decodeObject(%q): %s = %+v; reference: %+v", payload, names[i], got[i], want[i])
		}
	}
}
