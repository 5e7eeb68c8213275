package builtin

import (
	"context"

	"github.com/callbackd/callbackd/plugins"
)

// Report download values (SPEC §2, report_download_available).
const (
	reportDownloadEvent    = "report_download_available"
	reportDownloadResource = "report_download"
	reportGenerated        = "generated"
)

// Keys of a report_download_available payload that the encoder reads,
// indexed by the rd* constants below. Other keys are ignored.
var reportDownloadKeys = [...]string{
	rdMessage:            "message",
	rdResource:           "resource",
	rdReportDownloadID:   "report_download_id",
	rdReportID:           "report_id",
	rdCrawlID:            "crawl_id",
	rdProjectID:          "project_id",
	rdAccountID:          "account_id",
	rdUserID:             "user_id",
	rdPartnerAccountID:   "partner_account_id",
	rdPartnerUserID:      "partner_user_id",
	rdStatus:             "status",
	rdFileURL:            "file_url",
	rdHref:               "href",
	rdReportTemplateCode: "report_template_code",
	rdReportTypeCode:     "report_type_code",
	rdSegmentID:          "segment_id",
}

const (
	rdMessage = iota
	rdResource
	rdReportDownloadID
	rdReportID
	rdCrawlID
	rdProjectID
	rdAccountID
	rdUserID
	rdPartnerAccountID
	rdPartnerUserID
	rdStatus
	rdFileURL
	rdHref
	rdReportTemplateCode
	rdReportTypeCode
	rdSegmentID
	rdKeys
)

// rdFields is the number of fields a report_download_available
// notification carries.
const rdFields = 13

// ReportDownloadAvailable is the built-in encoder of
// report_download_available events ("Report Download Generated"). It holds
// no state and is safe for concurrent use.
//
// The report is named either by report_id or by report_template_code and
// report_type_code (and optionally segment_id), from which report_id is
// built as crawlId:reportTemplateCode:reportTypeCode[:segmentId]. When any of
// the codes is given, both codes are required, and a report_id given as well
// must equal the built one exactly.
//
// The seed says the event is sent when a report download "finishes
// generating", so, like crawl_status with a status other than finished, an
// event whose status is given and is not "generated" is skipped with a
// reason rather than delivered or rejected.
type ReportDownloadAvailable struct{}

// NewReportDownloadAvailable returns the report_download_available encoder.
func NewReportDownloadAvailable() *ReportDownloadAvailable { return &ReportDownloadAvailable{} }

var _ plugins.Encoder = (*ReportDownloadAvailable)(nil)

// Info reports the event type report_download_available and its ID fields,
// crawl_id and report_download_id.
func (*ReportDownloadAvailable) Info(context.Context) (plugins.EncoderInfo, error) {
	return plugins.EncoderInfo{
		EventType: reportDownloadEvent,
		IDFields:  []string{"crawl_id", "report_download_id"},
	}, nil
}

// Encode turns a report_download_available event into the notification
// message, resource, report_download_id, report_id, crawl_id, project_id,
// account_id, user_id, partner_account_id, partner_user_id, status,
// file_url, href (in that order). An event that breaks the input rules of
// SPEC §2 gets an error wrapping plugins.ErrInvalidEvent; a valid event whose
// status is not "generated" is skipped. Validation comes first.
func (*ReportDownloadAvailable) Encode(_ context.Context, ev plugins.Event) (plugins.Encoded, error) {
	var in [rdKeys]jsonValue
	if err := decodeObject(ev.Payload, reportDownloadKeys[:], in[:]); err != nil {
		return plugins.Encoded{}, err
	}
	if err := expectString("message", in[rdMessage], reportDownloadEvent); err != nil {
		return plugins.Encoded{}, err
	}
	if err := expectString("resource", in[rdResource], reportDownloadResource); err != nil {
		return plugins.Encoded{}, err
	}
	downloadID, err := requiredID("report_download_id", in[rdReportDownloadID])
	if err != nil {
		return plugins.Encoded{}, err
	}
	crawlID, err := requiredID("crawl_id", in[rdCrawlID])
	if err != nil {
		return plugins.Encoded{}, err
	}
	projectID, err := subjectID("project_id", in[rdProjectID], ev.ProjectID)
	if err != nil {
		return plugins.Encoded{}, err
	}
	accountID, err := subjectID("account_id", in[rdAccountID], ev.AccountID)
	if err != nil {
		return plugins.Encoded{}, err
	}
	userID, err := optionalRef("user_id", in[rdUserID])
	if err != nil {
		return plugins.Encoded{}, err
	}
	partnerAccountID, err := optionalRef("partner_account_id", in[rdPartnerAccountID])
	if err != nil {
		return plugins.Encoded{}, err
	}
	partnerUserID, err := optionalRef("partner_user_id", in[rdPartnerUserID])
	if err != nil {
		return plugins.Encoded{}, err
	}
	reportID, err := reportIDOf(&in, crawlID)
	if err != nil {
		return plugins.Encoded{}, err
	}
	fileURL, err := parseFileURL(in[rdFileURL])
	if err != nil {
		return plugins.Encoded{}, err
	}
	status, err := optionalString("status", in[rdStatus], reportGenerated)
	if err != nil {
		return plugins.Encoded{}, err
	}
	href := "/accounts/" + accountID + "/projects/" + projectID + "/crawls/" + crawlID +
		"/reports/" + reportID + "/downloads/" + downloadID
	if err := expectString("href", in[rdHref], href); err != nil {
		return plugins.Encoded{}, err
	}

	if status != reportGenerated {
		return plugins.Encoded{SkipReason: "status is " + quoteInput(status) + `, not "generated"`}, nil
	}

	fields := make([]plugins.Field, 0, rdFields)
	fields = append(fields,
		plugins.Field{Name: "message", Value: plugins.String(reportDownloadEvent)},
		plugins.Field{Name: "resource", Value: plugins.String(reportDownloadResource)},
		plugins.Field{Name: "report_download_id", Value: plugins.Number(downloadID)},
		plugins.Field{Name: "report_id", Value: plugins.String(reportID)},
		plugins.Field{Name: "crawl_id", Value: plugins.Number(crawlID)},
		plugins.Field{Name: "project_id", Value: plugins.Number(projectID)},
		plugins.Field{Name: "account_id", Value: plugins.Number(accountID)},
		plugins.Field{Name: "user_id", Value: userID},
		plugins.Field{Name: "partner_account_id", Value: partnerAccountID},
		plugins.Field{Name: "partner_user_id", Value: partnerUserID},
		plugins.Field{Name: "status", Value: plugins.String(reportGenerated)},
		plugins.Field{Name: "file_url", Value: plugins.String(fileURL)},
		plugins.Field{Name: "href", Value: plugins.String(href)},
	)
	return plugins.Encoded{Notification: plugins.Notification{Fields: fields}}, nil
}

// reportIDOf returns the report_id of the event: the given one, the one
// built from the codes, or both when they agree.
func reportIDOf(in *[rdKeys]jsonValue, crawlID string) (string, error) {
	var built string
	codes := in[rdReportTemplateCode].given() || in[rdReportTypeCode].given() || in[rdSegmentID].given()
	if codes {
		template, err := requiredCode("report_template_code", in[rdReportTemplateCode])
		if err != nil {
			return "", err
		}
		typ, err := requiredCode("report_type_code", in[rdReportTypeCode])
		if err != nil {
			return "", err
		}
		segment, err := segmentID(in[rdSegmentID])
		if err != nil {
			return "", err
		}
		built = crawlID + ":" + template + ":" + typ
		if segment != "" {
			built += ":" + segment
		}
	}
	if !in[rdReportID].given() {
		if !codes {
			return "", plugins.Invalid("report_id: missing (give report_id, or report_template_code and report_type_code)")
		}
		return built, nil
	}
	given, err := checkReportID(in[rdReportID], crawlID)
	if err != nil {
		return "", err
	}
	if codes && given != built {
		return "", plugins.Invalid("report_id: %s does not agree with report_template_code, report_type_code and segment_id (%s)",
			quoteInput(given), quoteInput(built))
	}
	return given, nil
}
