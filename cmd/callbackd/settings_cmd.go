package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/callbackd/callbackd/api"
	"github.com/callbackd/callbackd/config"
	"github.com/callbackd/callbackd/plugins"
)

// tokenEnv is the environment variable the CLI reads the admin token from.
const tokenEnv = "CALLBACKD_TOKEN"

// settingsKind describes one kind of settings for `callbackd <kind> get|set`.
type settingsKind struct {
	name      string // command name: project, account, sso-client
	label     string // in messages: project, account, SSO client
	article   string // "a" or "an", before label
	typ       string // global ID type
	field     string // GraphQL query field and payload field
	mutation  string // GraphQL mutation
	input     string // GraphQL input type
	idField   string // input's ID field
	urlField  string
	hdrField  string
	selection string
}

var settingsKinds = map[string]settingsKind{
	"project": {
		name: "project", label: "project", article: "a", typ: api.TypeProject, field: "project",
		mutation: "updateProject", input: "UpdateProjectInput", idField: "projectId",
		urlField: "apiCallbackUrl", hdrField: "apiCallbackHeaders",
		selection: "id apiCallbackUrl apiCallbackHeaders { key value }",
	},
	"account": {
		name: "account", label: "account", article: "an", typ: api.TypeAccount, field: "account",
		mutation: "updateAccount", input: "UpdateAccountInput", idField: "accountId",
		urlField: "apiCallbackUrl", hdrField: "apiCallbackHeaders",
		selection: "id apiCallbackUrl apiCallbackHeaders { key value } ssoClientId",
	},
	"sso-client": {
		name: "sso-client", label: "SSO client", article: "an", typ: api.TypeSSOClient, field: "ssoClient",
		mutation: "updateSsoClient", input: "UpdateSsoClientInput", idField: "ssoClientId",
		urlField: "webhookUrl", hdrField: "webhookHeaders",
		selection: "id webhookUrl webhookHeaders { key value }",
	},
}

// apiFlags locate the admin API and its token.
type apiFlags struct {
	token  string
	apiURL string
}

// newSettingsCmd builds `callbackd <kind> get|set` for project, account or
// sso-client. They go through the admin API of a running `callbackd serve`.
func newSettingsCmd(name string) *cobra.Command {
	k := settingsKinds[name]
	var af apiFlags
	cmd := &cobra.Command{
		Use:   name + " get|set <id>",
		Short: "Read or change " + k.article + " " + k.label + "'s callback settings through the admin API",
		Long: "Read or change " + k.article + " " + k.label + "'s callback settings through the admin API of a running callbackd serve.\n" +
			"<id> is the plain number or the global ID. The admin token comes from --token, " + tokenEnv + ",\n" +
			"api.token, or <data_dir>/" + api.TokenFile + ", in that order.",
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&af.token, "token", "", "admin API token (default: $"+tokenEnv+", api.token, or <data_dir>/"+api.TokenFile+")")
	pf.StringVar(&af.apiURL, "api-url", "", "admin API base URL (default: from api.listen and api.tls)")

	var asJSON, showSecrets bool
	get := &cobra.Command{
		Use:   "get <id>",
		Short: "Print " + k.article + " " + k.label + "'s settings (header values redacted unless --show-secrets)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newAPIClient(cmd, af)
			if err != nil {
				return err
			}
			var data map[string]json.RawMessage
			q := fmt.Sprintf(`query($id: ID!) { %s(id: $id) { %s } }`, k.field, k.selection)
			if err := c.Do(cmd.Context(), q, map[string]any{"id": args[0]}, &data); err != nil {
				return settingsError(k, args[0], err)
			}
			return printSettings(cmd.OutOrStdout(), k, data[k.field], asJSON, showSecrets)
		},
	}
	get.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	get.Flags().BoolVar(&showSecrets, "show-secrets", false, "print header values")

	var (
		setURL, setSSO         string
		headers                []string
		clearURL, clearHeaders bool
		clearSSO               bool
	)
	use := "set <id> [--url URL | --clear-url] [--header 'Key: Value']... [--clear-headers]"
	if name == "account" {
		use += " [--sso-client ID | --clear-sso-client]"
	}
	set := &cobra.Command{
		Use:   use,
		Short: "Change " + k.article + " " + k.label + "'s settings; what is not given is unchanged",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f := cmd.Flags()
			in := map[string]any{k.idField: args[0]}
			switch {
			case f.Changed("url") && clearURL:
				return usageError{errors.New("--url and --clear-url exclude each other")}
			case f.Changed("url"):
				if !utf8.ValidString(setURL) {
					return usageError{errors.New("--url: not valid UTF-8")}
				}
				if setURL == "" {
					// The API says "use null to clear", which is no
					// advice for a command line.
					return usageError{errors.New("--url: must not be empty (--clear-url clears it)")}
				}
				in[k.urlField] = setURL
			case clearURL:
				in[k.urlField] = nil
			}
			switch {
			case f.Changed("header") && clearHeaders:
				return usageError{errors.New("--header and --clear-headers exclude each other")}
			case f.Changed("header"):
				hs := make([]map[string]string, 0, len(headers))
				for _, h := range headers {
					key, val, err := parseHeaderFlag(h)
					if err != nil {
						return usageError{err}
					}
					hs = append(hs, map[string]string{"key": key, "value": val})
				}
				in[k.hdrField] = hs
			case clearHeaders:
				in[k.hdrField] = nil
			}
			if name == "account" {
				switch {
				case f.Changed("sso-client") && clearSSO:
					return usageError{errors.New("--sso-client and --clear-sso-client exclude each other")}
				case f.Changed("sso-client"):
					in["ssoClientId"] = setSSO
				case clearSSO:
					in["ssoClientId"] = nil
				}
			}
			if len(in) == 1 {
				return usageError{errors.New("nothing to change: give --url, --header, --clear-url or --clear-headers")}
			}
			c, err := newAPIClient(cmd, af)
			if err != nil {
				return err
			}
			var data map[string]map[string]json.RawMessage
			q := fmt.Sprintf(`mutation($in: %s!) { %s(input: $in) { %s { %s } } }`, k.input, k.mutation, k.field, k.selection)
			if err := c.Do(cmd.Context(), q, map[string]any{"in": in}, &data); err != nil {
				return settingsError(k, args[0], err)
			}
			return printSettings(cmd.OutOrStdout(), k, data[k.mutation][k.field], asJSON, showSecrets)
		},
	}
	sf := set.Flags()
	sf.StringVar(&setURL, "url", "", "the "+k.urlField)
	sf.StringArrayVar(&headers, "header", nil, "a custom header 'Key: Value', spaces around both dropped (repeat; replaces all headers)")
	sf.BoolVar(&clearURL, "clear-url", false, "clear the URL")
	sf.BoolVar(&clearHeaders, "clear-headers", false, "remove every header")
	sf.BoolVar(&asJSON, "json", false, "print JSON")
	sf.BoolVar(&showSecrets, "show-secrets", false, "print header values")
	if name == "account" {
		sf.StringVar(&setSSO, "sso-client", "", "the account's SSO client ID")
		sf.BoolVar(&clearSSO, "clear-sso-client", false, "remove the account's SSO client")
	}
	cmd.AddCommand(get, set)
	return cmd
}

// settingsError turns an API error into one clear line; a field error is a
// usage error (exit status 2).
func settingsError(k settingsKind, id string, err error) error {
	var gerrs api.GraphQLErrors
	if errors.As(err, &gerrs) {
		msgs := make([]string, len(gerrs))
		field := false
		for i, e := range gerrs {
			msgs[i] = e.Message
			field = field || e.Field() != ""
		}
		err = fmt.Errorf("%s %s: %s", k.label, id, strings.Join(msgs, "; "))
		if field {
			return usageError{err}
		}
		return err
	}
	return err
}

type headerOut struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// printSettings prints one settings object: readable, or as JSON with the
// API's field names. Header values are redacted unless showSecrets.
func printSettings(w io.Writer, k settingsKind, raw json.RawMessage, asJSON, showSecrets bool) error {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil || obj == nil {
		return fmt.Errorf("admin API: unexpected answer: %s", raw)
	}
	var id string
	var u, sso *string
	var hs []headerOut
	_ = json.Unmarshal(obj["id"], &id)
	_ = json.Unmarshal(obj[k.urlField], &u)
	_ = json.Unmarshal(obj[k.hdrField], &hs)
	if hs == nil {
		hs = []headerOut{}
	}
	if !showSecrets {
		for i := range hs {
			hs[i].Value = "[REDACTED]"
		}
	}
	if k.name == "account" {
		_ = json.Unmarshal(obj["ssoClientId"], &sso)
	}
	if u != nil && !showSecrets {
		// Printed URLs drop userinfo and query (SPEC §7): they may carry
		// credentials or a signature, as header values do.
		safe := plugins.SafeURL(*u)
		u = &safe
	}
	if asJSON {
		out := map[string]any{"id": id, k.urlField: u, k.hdrField: hs}
		if k.name == "account" {
			out["ssoClientId"] = sso
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	num, _ := api.ParseID(k.typ, id)
	fmt.Fprintf(w, "%s %s (%s)\n", k.label, num, id)
	shown := "(not set)"
	if u != nil {
		shown = *u
	}
	fmt.Fprintf(w, "  %s: %s\n", k.urlField, shown)
	if len(hs) == 0 {
		fmt.Fprintf(w, "  %s: (none)\n", k.hdrField)
	} else {
		fmt.Fprintf(w, "  %s:\n", k.hdrField)
		for _, h := range hs {
			fmt.Fprintf(w, "    %s: %s\n", h.Key, h.Value)
		}
	}
	if k.name == "account" {
		s := "(not set)"
		if sso != nil {
			n, _ := api.ParseID(api.TypeSSOClient, *sso)
			s = n + " (" + *sso + ")"
		}
		fmt.Fprintf(w, "  ssoClientId: %s\n", s)
	}
	return nil
}

// newAPIClient loads the config (without warning about CALLBACKD_TOKEN,
// which is the CLI's own variable) and returns a client for the admin API
// with the token from --token, CALLBACKD_TOKEN, api.token or
// <data_dir>/admin.token.
func newAPIClient(cmd *cobra.Command, af apiFlags) (*api.Client, error) {
	var environ []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, tokenEnv+"=") {
			environ = append(environ, kv)
		}
	}
	cfg, warnings, err := config.Load(flagSet(cmd), environ)
	if err != nil {
		return nil, err
	}
	log := newLogger(cfg.Log, os.Stderr)
	for _, w := range warnings {
		log.Warn(w)
	}
	token, err := cliToken(af.token, os.Getenv(tokenEnv), cfg)
	if err != nil {
		return nil, err
	}
	base := af.apiURL
	if base == "" {
		base = apiBaseURL(cfg)
	}
	hc, err := apiHTTPClient(cfg, log)
	if err != nil {
		return nil, err
	}
	return &api.Client{BaseURL: base, Token: token, HTTP: hc}, nil
}

// cliToken picks the admin token: the flag, the environment, api.token,
// then the file serve wrote.
func cliToken(flag, env string, cfg *config.Config) (string, error) {
	for _, t := range []string{flag, env, cfg.API.Token} {
		if t = strings.TrimSpace(t); t != "" {
			return t, nil
		}
	}
	t, err := api.ReadToken(cfg.DataDir)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("no admin token: pass --token, set %s or api.token, or run where callbackd serve keeps its data (%s not found; data_dir is %s)",
			tokenEnv, api.TokenPath(cfg.DataDir), cfg.DataDir)
	}
	return t, err
}

// apiBaseURL is the admin API's URL from api.listen: a wildcard host is
// reached on 127.0.0.1, and https is used when api.tls is set; --api-url
// overrides it.
func apiBaseURL(cfg *config.Config) string {
	host, port, err := net.SplitHostPort(cfg.API.Listen)
	if err != nil {
		host, port = "127.0.0.1", "8080"
	}
	switch host {
	case "", "0.0.0.0", "::":
		// A wildcard listener (dual-stack for "::") answers on loopback.
		host = "127.0.0.1"
	}
	scheme := "http"
	if cfg.API.TLS.Cert != "" {
		scheme = "https"
	}
	return scheme + "://" + net.JoinHostPort(host, port)
}

// apiHTTPClient is the CLI's HTTP client. With api.tls set, the server's own
// certificate is trusted besides the system roots, so a self-signed
// certificate works on the host that serves it.
func apiHTTPClient(cfg *config.Config, log *slog.Logger) (*http.Client, error) {
	tr := &http.Transport{Proxy: nil, TLSHandshakeTimeout: 10 * time.Second}
	if cfg.API.TLS.Cert != "" {
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if pem, err := os.ReadFile(cfg.API.TLS.Cert); err == nil {
			pool.AppendCertsFromPEM(pem)
		} else {
			log.Debug("admin API certificate not readable; using the system roots only", "err", err)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{Transport: tr, Timeout: 2 * time.Minute}, nil
}

// parseHeaderFlag reads a --header flag, 'Key: Value'. Like curl it drops
// the spaces and tabs around the key and the value (a field value's optional
// whitespace, RFC 9110), and nothing else; the API checks the rest. Bytes
// that are not UTF-8 are refused here: JSON would carry them as U+FFFD, and
// a value different from the one given would be stored. Errors never
// repeat the value, nor an argument without its ':' (a slip such as
// 'Authorization Bearer t' is all value).
func parseHeaderFlag(h string) (key, value string, err error) {
	key, value, ok := strings.Cut(h, ":")
	key, value = strings.Trim(key, " \t"), strings.Trim(value, " \t")
	switch {
	case !ok:
		return "", "", errors.New("--header: want 'Key: Value', found no ':' (the argument is not shown: it may hold a secret)")
	case !utf8.ValidString(key):
		return "", "", errors.New("--header: the key is not valid UTF-8")
	case !utf8.ValidString(value):
		return "", "", fmt.Errorf("--header %q: the value is not valid UTF-8", key)
	}
	return key, value, nil
}
