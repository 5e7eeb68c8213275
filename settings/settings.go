// Package settings holds project, account and SSO-client settings: the
// validated types, the JetStream KV store they live in (the bucket is part of
// the contract, SPEC §4), and a View kept current by a KV watch so the
// per-event lookup touches no network.
package settings

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"reflect"
	"strings"

	"github.com/callbackd/callbackd/plugins"
	"github.com/callbackd/callbackd/subjects"
)

// FieldError names the field of a setting that is wrong.
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// Unwrap makes every FieldError match ErrInvalid.
func (e *FieldError) Unwrap() error { return ErrInvalid }

// MaxURLLen is the longest callback or webhook URL accepted.
const MaxURLLen = 4096

// Header is a custom HTTP header as stored: {"key": …, "value": …}.
type Header struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// UnmarshalJSON reads a stored header: both "key" and "value" are strings
// (encoding/json alone would take a missing or null value for "", which
// the API refuses).
func (h *Header) UnmarshalJSON(data []byte) error {
	var w struct {
		Key   *string `json:"key"`
		Value *string `json:"value"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return err
	}
	switch {
	case w.Key == nil:
		return errors.New(`a header needs a "key" (a string)`)
	case w.Value == nil:
		return fmt.Errorf(`header %q needs a "value" (a string; null is not one)`, *w.Key)
	}
	h.Key, h.Value = *w.Key, *w.Value
	return nil
}

// Project is a project's callback settings. A nil URL means "not set".
type Project struct {
	APICallbackURL     *string  `json:"apiCallbackUrl,omitempty"`
	APICallbackHeaders []Header `json:"apiCallbackHeaders,omitempty"`
}

// Account is an account's callback settings and its SSO client.
type Account struct {
	APICallbackURL     *string  `json:"apiCallbackUrl,omitempty"`
	APICallbackHeaders []Header `json:"apiCallbackHeaders,omitempty"`
	SSOClientID        *string  `json:"ssoClientId,omitempty"`
}

// SSOClient is an SSO client's webhook settings.
type SSOClient struct {
	WebhookURL     *string  `json:"webhookUrl,omitempty"`
	WebhookHeaders []Header `json:"webhookHeaders,omitempty"`
}

// Validate checks p by SPEC §4; the error names the field.
func (p Project) Validate() error {
	return validateTarget(p.APICallbackURL, p.APICallbackHeaders, "apiCallbackUrl", "apiCallbackHeaders")
}

// Validate checks a by SPEC §4; the error names the field.
func (a Account) Validate() error {
	if err := validateTarget(a.APICallbackURL, a.APICallbackHeaders, "apiCallbackUrl", "apiCallbackHeaders"); err != nil {
		return err
	}
	if a.SSOClientID != nil {
		if err := subjects.ValidateID(*a.SSOClientID); err != nil {
			return &FieldError{Field: "ssoClientId", Msg: "must be a decimal integer without leading zeros, 1 to 19 digits"}
		}
	}
	return nil
}

// Validate checks c by SPEC §4; the error names the field.
func (c SSOClient) Validate() error {
	return validateTarget(c.WebhookURL, c.WebhookHeaders, "webhookUrl", "webhookHeaders")
}

func validateTarget(u *string, hs []Header, urlField, headersField string) error {
	if u != nil {
		if err := ValidateURL(*u); err != nil {
			return &FieldError{Field: urlField, Msg: err.Error()}
		}
	}
	if err := plugins.CheckHeaders(toPlugin(hs)); err != nil {
		return &FieldError{Field: headersField, Msg: strings.TrimPrefix(err.Error(), plugins.ErrInvalidHeader.Error()+": ")}
	}
	return nil
}

// ValidateURL checks that s is an absolute http or https URL with a host.
func ValidateURL(s string) error {
	if s == "" {
		return errors.New("must not be empty (use null to clear)")
	}
	if len(s) > MaxURLLen {
		return fmt.Errorf("must be at most %d bytes", MaxURLLen)
	}
	u, err := plugins.ParseHTTPURL(s)
	if err != nil {
		return err
	}
	if u.Fragment != "" || strings.Contains(s, "#") {
		// An empty one ("…/hook#") too: a fragment is never sent, so
		// the URL would not be what the request goes to.
		return errors.New("must not have a fragment")
	}
	return nil
}

// toPlugin converts stored headers to the plugin contract's headers.
func toPlugin(hs []Header) []plugins.Header {
	if len(hs) == 0 {
		return nil
	}
	out := make([]plugins.Header, len(hs))
	for i, h := range hs {
		out[i] = plugins.Header(h)
	}
	return out
}

// fromPlugin converts the plugin contract's headers to stored headers.
func fromPlugin(hs []plugins.Header) []Header {
	if len(hs) == 0 {
		return nil
	}
	out := make([]Header, len(hs))
	for i, h := range hs {
		out[i] = Header(h)
	}
	return out
}

// decodeStrict decodes one JSON object into v, refusing anything else
// (null, an array), unknown fields and trailing data.
func decodeStrict(data []byte, v any) error {
	if t := bytes.TrimLeft(data, " \t\r\n"); len(t) == 0 || t[0] != '{' {
		// json.Decode takes null for a struct and leaves it as it was:
		// a stored null would silently clear the settings.
		return fmt.Errorf("%w: not a JSON object", ErrInvalid)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: trailing data after the JSON object", ErrInvalid)
	}
	if err := exactKeys(data, jsonNames(reflect.TypeOf(v))); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return nil
}

// exactKeys refuses what encoding/json lets through: a key that matches a
// field only when case is ignored ("ApiCallbackUrl"), and a key given twice
// in one object (the last would win). known holds the field names of every
// level; a name at the wrong level is refused by DisallowUnknownFields.
func exactKeys(data []byte, known map[string]bool) error {
	type frame struct{ obj, wantKey bool }
	var stack []frame
	var seen []map[string]bool
	dec := json.NewDecoder(bytes.NewReader(data))
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		var top *frame
		if len(stack) > 0 {
			top = &stack[len(stack)-1]
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			obj := tok == json.Delim('{')
			stack = append(stack, frame{obj: obj, wantKey: obj})
			if obj {
				seen = append(seen, map[string]bool{})
			}
			continue
		case json.Delim('}'), json.Delim(']'):
			if stack[len(stack)-1].obj {
				seen = seen[:len(seen)-1]
			}
			stack = stack[:len(stack)-1]
			if len(stack) > 0 && stack[len(stack)-1].obj {
				stack[len(stack)-1].wantKey = true
			}
			continue
		}
		if top == nil || !top.obj {
			continue
		}
		if !top.wantKey {
			top.wantKey = true
			continue
		}
		top.wantKey = false
		name, _ := tok.(string)
		if !known[name] {
			for k := range known {
				if strings.EqualFold(k, name) {
					return fmt.Errorf("json: unknown field %q (field names are case-sensitive: %q)", name, k)
				}
			}
			return fmt.Errorf("json: unknown field %q", name)
		}
		if seen[len(seen)-1][name] {
			return fmt.Errorf("json: field %q is given twice", name)
		}
		seen[len(seen)-1][name] = true
	}
}

// jsonNames returns the JSON field names of t (a struct or a pointer to one)
// and of the structs it holds, at any depth.
func jsonNames(t reflect.Type) map[string]bool {
	names := map[string]bool{}
	var walk func(reflect.Type)
	walk = func(t reflect.Type) {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct {
			return
		}
		for f := range t.Fields() {
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "" || name == "-" {
				continue
			}
			names[name] = true
			walk(f.Type)
		}
	}
	walk(t)
	return names
}

// RefusedHostMsg is the message of a URL whose host is a literal IP that the
// outbound policy refuses (err is the guard's), in the API's field errors
// and in the warnings about such a stored value.
func RefusedHostMsg(err error) string {
	return "host is refused by the outbound policy (delivery.allow_private, delivery.allow_cidrs): " +
		strings.TrimPrefix(err.Error(), plugins.ErrDestinationNotAllowed.Error()+": ")
}

// RefusedHost returns the error of a URL whose host is a literal IP that g
// refuses, nil otherwise (and for a nil g or URL). The API refuses such a
// URL (SPEC §3); a stored one stays in effect, and its deliveries end as
// destination_not_allowed at dial time, so its events are dead-lettered
// and reported rather than acked as no_destination.
func RefusedHost(g *plugins.Guard, u *string) error {
	if g == nil || u == nil {
		return nil
	}
	pu, err := url.Parse(*u)
	if err != nil {
		return nil // not a URL: Validate says so
	}
	if err := g.CheckURLHost(pu.Host); err != nil {
		return errors.New(RefusedHostMsg(err))
	}
	return nil
}

// ParseProject decodes and validates a stored project value.
func ParseProject(data []byte) (Project, error) {
	var p Project
	if err := decodeStrict(data, &p); err != nil {
		return Project{}, err
	}
	return p, p.Validate()
}

// ParseAccount decodes and validates a stored account value.
func ParseAccount(data []byte) (Account, error) {
	var a Account
	if err := decodeStrict(data, &a); err != nil {
		return Account{}, err
	}
	return a, a.Validate()
}

// ParseSSOClient decodes and validates a stored SSO-client value.
func ParseSSOClient(data []byte) (SSOClient, error) {
	var c SSOClient
	if err := decodeStrict(data, &c); err != nil {
		return SSOClient{}, err
	}
	return c, c.Validate()
}
