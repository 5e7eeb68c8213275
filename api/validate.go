package api

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/99designs/gqlgen/graphql"
	"github.com/vektah/gqlparser/v2/gqlerror"

	"github.com/callbackd/callbackd/api/internal/gql"
	"github.com/callbackd/callbackd/plugins"
	"github.com/callbackd/callbackd/settings"
)

// Error codes in a GraphQL error's extensions.code.
const (
	codeBadInput    = "BAD_USER_INPUT"
	codeUnavailable = "UNAVAILABLE"
	// codeReplayIncomplete: replayDeadLetters stopped part-way (time limit,
	// NATS error); its payload holds what it did.
	codeReplayIncomplete = "REPLAY_INCOMPLETE"
)

// fieldError is a GraphQL error naming the input field that is wrong in
// extensions.field ("apiCallbackUrl", "apiCallbackHeaders[2].key").
func fieldError(field, msg string) *gqlerror.Error {
	return &gqlerror.Error{
		Message:    field + ": " + msg,
		Extensions: map[string]any{"code": codeBadInput, "field": field},
	}
}

// fieldErrors collects every field error of one input, so a caller learns
// all that is wrong at once.
type fieldErrors gqlerror.List

func (fe *fieldErrors) add(field, format string, args ...any) {
	*fe = append(*fe, fieldError(field, fmt.Sprintf(format, args...)))
}

// err returns the errors as one error (gqlgen reports each), nil when none.
func (fe fieldErrors) err() error {
	if len(fe) == 0 {
		return nil
	}
	return gqlerror.List(fe)
}

// checkURL checks a URL input field: absolute http(s), not empty (null
// clears), and not a literal IP the outbound policy refuses.
func (s *Server) checkURL(errs *fieldErrors, field string, in graphql.Omittable[*string]) {
	v, set := in.ValueOK()
	if !set || v == nil {
		return
	}
	if err := settings.ValidateURL(*v); err != nil {
		errs.add(field, "%s", err)
		return
	}
	u, _ := url.Parse(*v) // ValidateURL parsed it
	if err := s.guard.CheckURLHost(u.Host); err != nil {
		errs.add(field, "%s", settings.RefusedHostMsg(err))
	}
}

// checkHeaders checks a headers input field by SPEC §3's rules, naming the
// header and its part: "apiCallbackHeaders[1].key". Messages name keys,
// never values.
func checkHeaders(errs *fieldErrors, field string, in graphql.Omittable[[]gql.APICallbackHeaderInput]) {
	hs, set := in.ValueOK()
	if !set || hs == nil {
		return
	}
	if len(hs) > plugins.MaxHeaders {
		errs.add(field, "%d headers, at most %d allowed", len(hs), plugins.MaxHeaders)
		return
	}
	seen := make(map[string]int, len(hs))
	total := 0
	for i, h := range hs {
		total += len(h.Key) + len(h.Value)
		at := fmt.Sprintf("%s[%d]", field, i)
		if err := plugins.CheckHeaders([]plugins.Header{{Key: h.Key}}); err != nil {
			errs.add(at+".key", "%s", headerMsg(err))
			continue
		}
		if i := plugins.ControlByte(h.Value); i >= 0 {
			errs.add(at+".value", "value of %q has a control character at byte %d (CR, LF, NUL and other controls, C1 included, are not allowed)", h.Key, i)
		} else if plugins.HasOuterSpace(h.Value) {
			errs.add(at+".value", "value of %q begins or ends with a space or tab (an RFC 9110 field value may not)", h.Key)
		}
		lk := strings.ToLower(h.Key)
		if j, dup := seen[lk]; dup {
			errs.add(at+".key", "key %q repeats %s[%d] (keys are case-insensitive)", h.Key, field, j)
			continue
		}
		seen[lk] = i
	}
	if total > plugins.MaxHeaderBytes {
		errs.add(field, "headers take %d bytes, at most %d allowed", total, plugins.MaxHeaderBytes)
	}
}

// headerMsg is CheckHeaders' message for a one-header list, without its
// "invalid header: header 0: " prefix.
func headerMsg(err error) string {
	return strings.TrimPrefix(err.Error(), plugins.ErrInvalidHeader.Error()+": header 0: ")
}

// storeError maps an error of the settings store: a *settings.FieldError
// becomes a field error ("id" becomes idField), anything else stays as it is.
func storeError(err error, idField string) error {
	var fe *settings.FieldError
	if errors.As(err, &fe) {
		field := fe.Field
		if field == "id" {
			field = idField
		}
		return fieldError(field, fe.Msg)
	}
	return err
}

// idArg parses a global ID argument or input field, as a field error.
func idArg(typ, field, s string) (string, error) {
	id, err := ParseID(typ, s)
	if err != nil {
		return "", fieldError(field, trimBadID(err))
	}
	return id, nil
}

// trimBadID is ParseID's message without the sentinel's prefix.
func trimBadID(err error) string {
	return strings.TrimPrefix(err.Error(), ErrBadID.Error()+": ")
}

func toSettings(hs []gql.APICallbackHeaderInput) []settings.Header {
	if len(hs) == 0 {
		return nil
	}
	out := make([]settings.Header, len(hs))
	for i, h := range hs {
		out[i] = settings.Header{Key: h.Key, Value: h.Value}
	}
	return out
}

func fromSettings(hs []settings.Header) []gql.APICallbackHeader {
	out := make([]gql.APICallbackHeader, len(hs))
	for i, h := range hs {
		out[i] = gql.APICallbackHeader{Key: h.Key, Value: h.Value}
	}
	return out
}

func toPluginHeaders(hs []settings.Header) []plugins.Header {
	if len(hs) == 0 {
		return nil
	}
	out := make([]plugins.Header, len(hs))
	for i, h := range hs {
		out[i] = plugins.Header{Key: h.Key, Value: h.Value}
	}
	return out
}
