package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/callbackd/callbackd/settings"
)

// target is what a settings command reads and writes, whatever its kind.
type target struct {
	URL         *string           `json:"url"`
	Headers     []settings.Header `json:"headers"`
	SSOClientID *string           `json:"ssoClientId,omitempty"`
}

// newSettingsCmd builds `callbackd <kind> get|set` for project, account or
// sso-client. For now they write the KV bucket directly.
func newSettingsCmd(kind string) *cobra.Command {
	urlName := "apiCallbackUrl"
	if kind == "sso-client" {
		urlName = "webhookUrl"
	}
	cmd := &cobra.Command{
		Use:   kind + " get|set <id>",
		Short: "Read or change a " + kind + "'s callback settings",
	}
	var asJSON, showSecrets bool
	get := &cobra.Command{
		Use:   "get <id>",
		Short: "Print a " + kind + "'s settings (header values redacted unless --show-secrets)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withStore(cmd, func(s *settings.Store) error {
				t, err := readTarget(cmd, s, kind, args[0])
				if err != nil {
					return err
				}
				return printTarget(cmd.OutOrStdout(), kind, args[0], urlName, t, asJSON, showSecrets)
			})
		},
	}
	get.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	get.Flags().BoolVar(&showSecrets, "show-secrets", false, "print header values")

	var (
		setURL, setSSO                  string
		headers                         []string
		clearURL, clearHeaders, clearSS bool
	)
	set := &cobra.Command{
		Use:   "set <id> [--url URL] [--header 'Key: Value']... [--clear-url] [--clear-headers]",
		Short: "Change a " + kind + "'s settings; what is not given is unchanged",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f := cmd.Flags()
			var hs []settings.Header
			for _, h := range headers {
				k, v, ok := strings.Cut(h, ":")
				if !ok {
					return usageError{fmt.Errorf("--header %q: want 'Key: Value'", k)}
				}
				hs = append(hs, settings.Header{Key: strings.TrimSpace(k), Value: strings.TrimSpace(v)})
			}
			change := func(t *target) {
				if f.Changed("url") {
					t.URL = &setURL
				}
				if clearURL {
					t.URL = nil
				}
				if f.Changed("header") {
					t.Headers = hs
				}
				if clearHeaders {
					t.Headers = nil
				}
				if f.Changed("sso-client") {
					t.SSOClientID = &setSSO
				}
				if clearSS {
					t.SSOClientID = nil
				}
			}
			return withStore(cmd, func(s *settings.Store) error {
				t, err := writeTarget(cmd, s, kind, args[0], change)
				if err != nil {
					return err
				}
				return printTarget(cmd.OutOrStdout(), kind, args[0], urlName, t, asJSON, showSecrets)
			})
		},
	}
	sf := set.Flags()
	sf.StringVar(&setURL, "url", "", "the "+urlName)
	sf.StringArrayVar(&headers, "header", nil, "a custom header 'Key: Value' (repeat; replaces all headers)")
	sf.BoolVar(&clearURL, "clear-url", false, "clear the URL")
	sf.BoolVar(&clearHeaders, "clear-headers", false, "remove every header")
	sf.BoolVar(&asJSON, "json", false, "print JSON")
	sf.BoolVar(&showSecrets, "show-secrets", false, "print header values")
	if kind == "account" {
		sf.StringVar(&setSSO, "sso-client", "", "the account's SSO client ID")
		sf.BoolVar(&clearSS, "clear-sso-client", false, "remove the account's SSO client")
	}
	cmd.AddCommand(get, set)
	return cmd
}

func withStore(cmd *cobra.Command, fn func(*settings.Store) error) error {
	cfg, log, err := loadConfig(cmd)
	if err != nil {
		return err
	}
	nc, err := dialNATS(cfg, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	s, err := settings.OpenStore(cmd.Context(), js, settings.StoreOptions{Replicas: cfg.NATS.Replicas})
	if err != nil {
		return err
	}
	return fn(s)
}

func readTarget(cmd *cobra.Command, s *settings.Store, kind, id string) (target, error) {
	ctx := cmd.Context()
	switch kind {
	case "project":
		p, err := s.Project(ctx, id)
		return target{URL: p.APICallbackURL, Headers: p.APICallbackHeaders}, err
	case "account":
		a, err := s.Account(ctx, id)
		return target{URL: a.APICallbackURL, Headers: a.APICallbackHeaders, SSOClientID: a.SSOClientID}, err
	default:
		c, err := s.SSOClient(ctx, id)
		return target{URL: c.WebhookURL, Headers: c.WebhookHeaders}, err
	}
}

func writeTarget(cmd *cobra.Command, s *settings.Store, kind, id string, change func(*target)) (target, error) {
	ctx := cmd.Context()
	var t target
	var err error
	switch kind {
	case "project":
		_, err = s.UpdateProject(ctx, id, func(p *settings.Project) error {
			t = target{URL: p.APICallbackURL, Headers: p.APICallbackHeaders}
			change(&t)
			p.APICallbackURL, p.APICallbackHeaders = t.URL, t.Headers
			return nil
		})
	case "account":
		_, err = s.UpdateAccount(ctx, id, func(a *settings.Account) error {
			t = target{URL: a.APICallbackURL, Headers: a.APICallbackHeaders, SSOClientID: a.SSOClientID}
			change(&t)
			a.APICallbackURL, a.APICallbackHeaders, a.SSOClientID = t.URL, t.Headers, t.SSOClientID
			return nil
		})
	default:
		_, err = s.UpdateSSOClient(ctx, id, func(c *settings.SSOClient) error {
			t = target{URL: c.WebhookURL, Headers: c.WebhookHeaders}
			change(&t)
			c.WebhookURL, c.WebhookHeaders = t.URL, t.Headers
			return nil
		})
	}
	var fe *settings.FieldError
	if errors.As(err, &fe) {
		return t, usageError{fmt.Errorf("%s %s: %w", kind, id, err)}
	}
	return t, err
}

func printTarget(w io.Writer, kind, id, urlName string, t target, asJSON, showSecrets bool) error {
	hs := t.Headers
	if !showSecrets {
		hs = make([]settings.Header, len(t.Headers))
		for i, h := range t.Headers {
			hs[i] = settings.Header{Key: h.Key, Value: "[REDACTED]"}
		}
	}
	if hs == nil {
		hs = []settings.Header{}
	}
	if asJSON {
		out := map[string]any{"id": id, urlName: t.URL, strings.Replace(urlName, "Url", "Headers", 1): hs}
		if kind == "account" {
			out["ssoClientId"] = t.SSOClientID
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	u := "(not set)"
	if t.URL != nil {
		u = *t.URL
	}
	fmt.Fprintf(w, "%s %s\n  %s: %s\n", kind, id, urlName, u)
	if len(hs) == 0 {
		fmt.Fprintf(w, "  headers: (none)\n")
	}
	for _, h := range hs {
		fmt.Fprintf(w, "  header: %s: %s\n", h.Key, h.Value)
	}
	if kind == "account" {
		sso := "(not set)"
		if t.SSOClientID != nil {
			sso = *t.SSOClientID
		}
		fmt.Fprintf(w, "  ssoClientId: %s\n", sso)
	}
	return nil
}
