package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"syscall"

	"github.com/callbackd/callbackd/plugins"
)

// maxResponseBytes bounds what Client reads of an answer.
const maxResponseBytes = 16 << 20

// Client calls the admin API's GraphQL endpoint with the bearer token; the
// CLI's settings commands use it.
type Client struct {
	// BaseURL is the API's root, for example "http://127.0.0.1:8080".
	BaseURL string
	// Token is the admin token.
	Token string
	// HTTP makes the requests; nil means http.DefaultClient.
	HTTP *http.Client
}

// GraphQLError is one entry of a GraphQL response's "errors".
type GraphQLError struct {
	Message    string         `json:"message"`
	Path       []any          `json:"path,omitempty"`
	Extensions map[string]any `json:"extensions,omitempty"`
}

// Field is the input field the error names (extensions.field), "" when none.
func (e GraphQLError) Field() string {
	f, _ := e.Extensions["field"].(string)
	return f
}

// GraphQLErrors is the error Client.Do returns when the response had errors.
type GraphQLErrors []GraphQLError

func (es GraphQLErrors) Error() string {
	msgs := make([]string, len(es))
	for i, e := range es {
		msgs[i] = e.Message
	}
	return strings.Join(msgs, "; ")
}

// Do sends one GraphQL operation with its variables and decodes the
// response's data into data (when not nil). A response with errors returns
// GraphQLErrors, after decoding whatever data came with them (a partial
// result: replayDeadLetters reports its counts beside REPLAY_INCOMPLETE);
// a 401 returns an error wrapping ErrUnauthorized.
func (c *Client) Do(ctx context.Context, query string, variables map[string]any, data any) error {
	body, err := json.Marshal(map[string]any{"query": query, "variables": variables})
	if err != nil {
		return fmt.Errorf("encode request: %w", err)
	}
	base, err := url.Parse(c.BaseURL)
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return fmt.Errorf("admin API URL %s: want http(s)://host:port", plugins.SafeURL(c.BaseURL))
	}
	// The printed URL drops userinfo and query (SPEC §7).
	at := plugins.SafeURL(c.BaseURL)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base.JoinPath("graphql").String(), bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("admin API request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Authorization", "Bearer "+c.Token)
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		// *url.Error repeats the request's URL, userinfo and query included.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		hint := ""
		if errors.Is(err, syscall.ECONNREFUSED) {
			hint = " (is callbackd serve running?)"
		}
		return fmt.Errorf("admin API at %s: %w%s", at, err, hint)
	}
	defer func() { _ = resp.Body.Close() }()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return fmt.Errorf("admin API at %s: read response: %w", at, err)
	}
	if resp.StatusCode == http.StatusUnauthorized {
		return fmt.Errorf("admin API at %s: %w", at, ErrUnauthorized)
	}
	var out struct {
		Data   json.RawMessage `json:"data"`
		Errors GraphQLErrors   `json:"errors"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return fmt.Errorf("admin API at %s: HTTP %d: %s", at, resp.StatusCode, excerpt(raw))
	}
	if len(out.Errors) > 0 {
		if data != nil && len(out.Data) > 0 {
			_ = json.Unmarshal(out.Data, data) // best effort: the errors are the answer
		}
		return out.Errors
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("admin API at %s: HTTP %d: %s", at, resp.StatusCode, excerpt(raw))
	}
	if data != nil && len(out.Data) > 0 {
		if err := json.Unmarshal(out.Data, data); err != nil {
			return fmt.Errorf("admin API at %s: decode data: %w", at, err)
		}
	}
	return nil
}

func excerpt(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}
