package builtin

import (
	"context"

	"github.com/callbackd/callbackd/plugins"
)

// Crawl status values (SPEC §2, crawl_status).
const (
	crawlStatusEvent    = "crawl_status"
	crawlStatusResource = "crawl"
	crawlFinished       = "finished"
	crawlStandard       = "standard"
	crawlTestSuiteBuild = "test_suite_build"
)

// Keys of a crawl_status payload that the encoder reads, indexed by the
// cs* constants below. Other keys are ignored.
var crawlStatusKeys = [...]string{
	csMessage:          "message",
	csResource:         "resource",
	csCrawlID:          "crawl_id",
	csProjectID:        "project_id",
	csAccountID:        "account_id",
	csUserID:           "user_id",
	csPartnerAccountID: "partner_account_id",
	csPartnerUserID:    "partner_user_id",
	csStatus:           "status",
	csCrawlType:        "crawl_type",
	csHref:             "href",
}

const (
	csMessage = iota
	csResource
	csCrawlID
	csProjectID
	csAccountID
	csUserID
	csPartnerAccountID
	csPartnerUserID
	csStatus
	csCrawlType
	csHref
	csKeys
)

// CrawlStatus is the built-in encoder of crawl_status events ("Crawl
// Finished"). It delivers only standard crawls that finished; a
// test_suite_build crawl or any other status is skipped with a reason.
// It holds no state and is safe for concurrent use.
type CrawlStatus struct{}

// NewCrawlStatus returns the crawl_status encoder.
func NewCrawlStatus() *CrawlStatus { return &CrawlStatus{} }

var _ plugins.Encoder = (*CrawlStatus)(nil)

// Info reports the event type crawl_status and its ID field, crawl_id.
func (*CrawlStatus) Info(context.Context) (plugins.EncoderInfo, error) {
	return plugins.EncoderInfo{EventType: crawlStatusEvent, IDFields: []string{"crawl_id"}}, nil
}

// Encode turns a crawl_status event into the notification message,
// resource, crawl_id, project_id, account_id, user_id, partner_account_id,
// partner_user_id, status, href (in that order). An event that breaks the
// input rules of SPEC §2 gets an error wrapping plugins.ErrInvalidEvent; a
// valid event that is not a finished standard crawl is skipped. Validation
// comes first, so an invalid event is reported as invalid even when it
// would have been skipped.
func (*CrawlStatus) Encode(_ context.Context, ev plugins.Event) (plugins.Encoded, error) {
	var in [csKeys]jsonValue
	if err := decodeObject(ev.Payload, crawlStatusKeys[:], in[:]); err != nil {
		return plugins.Encoded{}, err
	}
	if err := expectString("message", in[csMessage], crawlStatusEvent); err != nil {
		return plugins.Encoded{}, err
	}
	if err := expectString("resource", in[csResource], crawlStatusResource); err != nil {
		return plugins.Encoded{}, err
	}
	crawlID, err := requiredID("crawl_id", in[csCrawlID])
	if err != nil {
		return plugins.Encoded{}, err
	}
	projectID, err := subjectID("project_id", in[csProjectID], ev.ProjectID)
	if err != nil {
		return plugins.Encoded{}, err
	}
	accountID, err := subjectID("account_id", in[csAccountID], ev.AccountID)
	if err != nil {
		return plugins.Encoded{}, err
	}
	userID, err := optionalRef("user_id", in[csUserID])
	if err != nil {
		return plugins.Encoded{}, err
	}
	partnerAccountID, err := optionalRef("partner_account_id", in[csPartnerAccountID])
	if err != nil {
		return plugins.Encoded{}, err
	}
	partnerUserID, err := optionalRef("partner_user_id", in[csPartnerUserID])
	if err != nil {
		return plugins.Encoded{}, err
	}
	status, err := optionalString("status", in[csStatus], crawlFinished)
	if err != nil {
		return plugins.Encoded{}, err
	}
	crawlType, err := optionalString("crawl_type", in[csCrawlType], crawlStandard)
	if err != nil {
		return plugins.Encoded{}, err
	}
	if crawlType != crawlStandard && crawlType != crawlTestSuiteBuild {
		return plugins.Encoded{}, plugins.Invalid("crawl_type: must be %q or %q, got %s", crawlStandard, crawlTestSuiteBuild, quoteInput(crawlType))
	}
	href := "/accounts/" + accountID + "/projects/" + projectID + "/crawls/" + crawlID
	if err := expectString("href", in[csHref], href); err != nil {
		return plugins.Encoded{}, err
	}

	// The seed: "Only fires for standard crawls, not test suite builds";
	// status "Should be finished".
	if crawlType == crawlTestSuiteBuild {
		return plugins.Encoded{SkipReason: "crawl_type is " + crawlTestSuiteBuild}, nil
	}
	if status != crawlFinished {
		return plugins.Encoded{SkipReason: "status is " + quoteInput(status) + `, not "finished"`}, nil
	}

	fields := make([]plugins.Field, 0, csKeys-1)
	fields = append(fields,
		plugins.Field{Name: "message", Value: plugins.String(crawlStatusEvent)},
		plugins.Field{Name: "resource", Value: plugins.String(crawlStatusResource)},
		plugins.Field{Name: "crawl_id", Value: plugins.Number(crawlID)},
		plugins.Field{Name: "project_id", Value: plugins.Number(projectID)},
		plugins.Field{Name: "account_id", Value: plugins.Number(accountID)},
		plugins.Field{Name: "user_id", Value: userID},
		plugins.Field{Name: "partner_account_id", Value: partnerAccountID},
		plugins.Field{Name: "partner_user_id", Value: partnerUserID},
		plugins.Field{Name: "status", Value: plugins.String(crawlFinished)},
		plugins.Field{Name: "href", Value: plugins.String(href)},
	)
	return plugins.Encoded{Notification: plugins.Notification{Fields: fields}}, nil
}
