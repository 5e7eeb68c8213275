package main

import (
	"bytes"
	"context"
	"encoding/json"
	"regexp"
	"strconv"

	"github.com/callbackd/callbackd/plugins"
)

// CrawlFailed encodes crawl_failed events, published on
// callbacks.event.crawl_failed.<account_id>.<project_id> as
//
//	{"crawl_id": 124234, "error_code": "robots_txt_blocked",
//	 "error_message": "robots.txt disallows /", "user_id": 42}
//
// into the notification
//
//	message=crawl_failed&resource=crawl&crawl_id=124234&project_id=…&account_id=…
//	&user_id=42&error_code=robots_txt_blocked&error_message=…&href=/accounts/…/projects/…/crawls/124234
//
// A crawl that will be retried ("will_retry": true) is skipped: its
// customer hears about the retry's outcome instead. It is stateless and
// safe for concurrent use, as every encoder must be.
type CrawlFailed struct{}

// Info tells callbackd the event type and the resource ID fields a
// callback-failed notice repeats.
func (CrawlFailed) Info(context.Context) (plugins.EncoderInfo, error) {
	return plugins.EncoderInfo{EventType: "crawl_failed", IDFields: []string{"crawl_id"}}, nil
}

var codeRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// maxMessage bounds error_message, which ends up in the customer's body.
const maxMessage = 1000

// Encode returns the notification, a skip, or an error made with
// plugins.Invalid for an event that can never be encoded (it is then
// dead-lettered, never retried). Any other error would make callbackd try
// the event again later.
func (CrawlFailed) Encode(_ context.Context, ev plugins.Event) (plugins.Encoded, error) {
	var in struct {
		CrawlID      json.Number     `json:"crawl_id"`
		UserID       json.RawMessage `json:"user_id"`
		ErrorCode    string          `json:"error_code"`
		ErrorMessage string          `json:"error_message"`
		WillRetry    bool            `json:"will_retry"`
	}
	dec := json.NewDecoder(bytes.NewReader(ev.Payload))
	dec.UseNumber() // IDs are exact integers, never float64
	if err := dec.Decode(&in); err != nil {
		return plugins.Encoded{}, plugins.Invalid("crawl_failed: payload is not a JSON object: %v", err)
	}
	if dec.More() {
		return plugins.Encoded{}, plugins.Invalid("crawl_failed: payload has data after the JSON object")
	}
	crawlID, err := strconv.ParseInt(in.CrawlID.String(), 10, 64)
	if err != nil || crawlID < 1 {
		return plugins.Encoded{}, plugins.Invalid("crawl_failed: crawl_id: want an integer from 1 to 2^63-1, got %q", in.CrawlID)
	}
	if !codeRE.MatchString(in.ErrorCode) {
		return plugins.Encoded{}, plugins.Invalid("crawl_failed: error_code: want [A-Za-z0-9_-]{1,64}, got %q", in.ErrorCode)
	}
	if len(in.ErrorMessage) > maxMessage {
		return plugins.Encoded{}, plugins.Invalid("crawl_failed: error_message: longer than %d bytes", maxMessage)
	}
	user, err := userID(in.UserID)
	if err != nil {
		return plugins.Encoded{}, err
	}
	if in.WillRetry {
		return plugins.Encoded{SkipReason: "crawl will be retried"}, nil
	}
	crawl := strconv.FormatInt(crawlID, 10)
	return plugins.Encoded{Notification: plugins.Notification{Fields: []plugins.Field{
		{Name: "message", Value: plugins.String("crawl_failed")},
		{Name: "resource", Value: plugins.String("crawl")},
		{Name: "crawl_id", Value: plugins.Number(crawl)},
		// The subject is authoritative for the account and the project.
		{Name: "project_id", Value: plugins.Number(ev.ProjectID)},
		{Name: "account_id", Value: plugins.Number(ev.AccountID)},
		{Name: "user_id", Value: user},
		{Name: "error_code", Value: plugins.String(in.ErrorCode)},
		{Name: "error_message", Value: plugins.String(in.ErrorMessage)},
		{Name: "href", Value: plugins.String("/accounts/" + ev.AccountID + "/projects/" + ev.ProjectID + "/crawls/" + crawl)},
	}}}, nil
}

// userID takes an integer, a string, "" or null (→ ""), like the built-in
// encoders.
func userID(raw json.RawMessage) (plugins.Value, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return plugins.String(""), nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return plugins.String(s), nil
	}
	if n, err := strconv.ParseInt(string(raw), 10, 64); err == nil {
		return plugins.Int(n), nil
	}
	return plugins.Value{}, plugins.Invalid("crawl_failed: user_id: want an integer, a string or null, got %s", raw)
}
