package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/pflag"
)

const testSHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

// writeFile writes body as a config file in a fresh temp dir.
func writeFile(t testing.TB, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "callbackd.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// load runs Load with a file holding yaml (none if empty; the working
// directory's callbackd.yaml is never read), env and flag args.
func load(t testing.TB, yaml string, env []string, args ...string) (*Config, []string, error) {
	t.Helper()
	fs := pflag.NewFlagSet("callbackd", pflag.ContinueOnError)
	RegisterFlags(fs)
	file := ""
	if yaml != "" {
		file = writeFile(t, yaml)
	}
	if err := fs.Parse(append([]string{"--config=" + file}, args...)); err != nil {
		t.Fatalf("parse flags %q: %v", args, err)
	}
	return Load(fs, env)
}

func TestLoad_layers(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		env  []string
		args []string
		want func(c *Config)
	}{
		{
			name: "defaults",
			want: func(*Config) {},
		},
		{
			name: "file over default",
			yaml: "data_dir: /var/lib/callbackd\nnats:\n  url: nats://file:4222\nlog: {level: debug, format: json}\n",
			want: func(c *Config) {
				c.DataDir = "/var/lib/callbackd"
				c.NATS.URL = "nats://file:4222"
				c.Log = Log{Level: "debug", Format: "json"}
			},
		},
		{
			name: "env over file",
			yaml: "nats: {url: nats://file:4222}\n",
			env:  []string{"CALLBACKD_NATS__URL=nats://env:4222"},
			want: func(c *Config) { c.NATS.URL = "nats://env:4222" },
		},
		{
			name: "flag over env",
			yaml: "nats: {url: nats://file:4222}\n",
			env:  []string{"CALLBACKD_NATS__URL=nats://env:4222"},
			args: []string{"--nats.url=nats://flag:4222"},
			want: func(c *Config) { c.NATS.URL = "nats://flag:4222" },
		},
		{
			name: "unchanged flags do not override file or env",
			yaml: "log: {level: debug}\ndispatcher: {workers: 10}\n",
			env:  []string{"CALLBACKD_API__LISTEN=0.0.0.0:9090"},
			want: func(c *Config) {
				c.Log.Level = "debug"
				c.Dispatcher.Workers = 10
				c.Dispatcher.MaxAckPending = 40
				c.API.Listen = "0.0.0.0:9090"
			},
		},
		{
			name: "a flag set to its default still overrides",
			yaml: "log: {level: debug}\n",
			args: []string{"--log.level=info"},
			want: func(*Config) {},
		},
		{
			name: "single underscore stays in the key",
			env:  []string{"CALLBACKD_DATA_DIR=/srv/data", "CALLBACKD_DISPATCHER__MAX_ACK_PENDING=7", "CALLBACKD_NATS__SERVER_NAME=n1"},
			want: func(c *Config) {
				c.DataDir = "/srv/data"
				c.Dispatcher.MaxAckPending = 7
				c.NATS.ServerName = "n1"
			},
		},
		{
			name: "env scalars of every kind",
			env: []string{
				"CALLBACKD_NATS__EMBEDDED=false",
				"CALLBACKD_NATS__URL=nats://a:4222,nats://b:4222",
				"CALLBACKD_NATS__REPLICAS=3",
				"CALLBACKD_NATS__AUTH__TOKEN=s3cret",
				"CALLBACKD_DELIVERY__ALLOW_PRIVATE=true",
				"CALLBACKD_DELIVERY__TIMEOUT=45s",
			},
			want: func(c *Config) {
				c.NATS.Embedded = false
				c.NATS.URL = "nats://a:4222,nats://b:4222"
				c.NATS.Replicas = 3
				c.NATS.Auth.Token = "s3cret"
				c.Delivery.AllowPrivate = true
				c.Delivery.Timeout = 45 * time.Second
			},
		},
		{
			name: "flags of every kind",
			args: []string{
				"--data_dir=/d", "--nats.embedded=false", "--nats.url=nats://x:4222",
				"--dispatcher.workers=2", "--delivery.timeout=1m", "--delivery.allow_private",
				"--delivery.backoff=1s,2s", "--delivery.allow_cidrs=10.0.0.0/8,192.168.0.0/16",
				"--nats.cluster.routes=nats://a:6222", "--api.listen=:8081",
				"--plugins.transport=builtin:other", "--retention.log_bytes=2GiB",
			},
			want: func(c *Config) {
				c.DataDir = "/d"
				c.NATS.Embedded = false
				c.NATS.URL = "nats://x:4222"
				c.Dispatcher.Workers = 2
				c.Dispatcher.MaxAckPending = 8
				c.Delivery.Timeout = time.Minute
				c.Delivery.AllowPrivate = true
				c.Delivery.Backoff = []time.Duration{time.Second, 2 * time.Second}
				c.Delivery.AllowCIDRs = []string{"10.0.0.0/8", "192.168.0.0/16"}
				c.NATS.Cluster.Routes = []string{"nats://a:6222"}
				c.API.Listen = ":8081"
				c.Plugins.Transport = PluginEntry{Builtin: "other"}
				c.Retention.LogBytes = 2 * GiB
			},
		},
		{
			name: "max_ack_pending derived from workers in the file",
			yaml: "dispatcher: {workers: 10}\n",
			want: func(c *Config) { c.Dispatcher.Workers = 10; c.Dispatcher.MaxAckPending = 40 },
		},
		{
			name: "max_ack_pending derived from workers in env and flag",
			env:  []string{"CALLBACKD_DISPATCHER__WORKERS=10"},
			args: []string{"--dispatcher.workers=3"},
			want: func(c *Config) { c.Dispatcher.Workers = 3; c.Dispatcher.MaxAckPending = 12 },
		},
		{
			name: "explicit max_ack_pending wins over derivation",
			yaml: "dispatcher: {workers: 10, max_ack_pending: 15}\n",
			want: func(c *Config) { c.Dispatcher.Workers = 10; c.Dispatcher.MaxAckPending = 15 },
		},
		{
			name: "explicit max_ack_pending flag",
			args: []string{"--dispatcher.workers=10", "--dispatcher.max_ack_pending=11"},
			want: func(c *Config) { c.Dispatcher.Workers = 10; c.Dispatcher.MaxAckPending = 11 },
		},
		{
			name: "sizes",
			yaml: "dispatcher: {max_payload: 1MiB}\nretention: {log_bytes: 4096}\n",
			want: func(c *Config) { c.Dispatcher.MaxPayload = MiB; c.Retention.LogBytes = 4096 },
		},
		{
			name: "sizes from env and flag",
			env:  []string{"CALLBACKD_RETENTION__LOG_BYTES=1024", "CALLBACKD_DISPATCHER__MAX_PAYLOAD=1MiB"},
			args: []string{"--dispatcher.max_payload=256KiB"},
			want: func(c *Config) { c.Retention.LogBytes = 1024 },
		},
		{
			name: "durations and duration lists",
			yaml: "delivery:\n  timeout: 45s\n  backoff: [1s, 5s, 1m30s, 2h]\nretention: {events: 24h, dead: 720h, log: 30m}\nplugins: {call_timeout: 250ms}\nnats: {duplicates: 10m}\n",
			want: func(c *Config) {
				c.Delivery.Timeout = 45 * time.Second
				c.Delivery.Backoff = []time.Duration{time.Second, 5 * time.Second, 90 * time.Second, 2 * time.Hour}
				c.Retention = Retention{Events: 24 * time.Hour, Dead: 720 * time.Hour, Log: 30 * time.Minute, LogBytes: GiB}
				c.Plugins.CallTimeout = 250 * time.Millisecond
				c.NATS.Duplicates = 10 * time.Minute
			},
		},
		{
			name: "a shorter list replaces the default",
			yaml: "delivery: {backoff: [1s]}\n",
			want: func(c *Config) { c.Delivery.Backoff = []time.Duration{time.Second} },
		},
		{
			name: "lists from env, comma separated",
			env:  []string{"CALLBACKD_DELIVERY__BACKOFF=2s, 3s", "CALLBACKD_DELIVERY__ALLOW_CIDRS=10.0.0.0/8,fd00::/8", "CALLBACKD_NATS__CLUSTER__ROUTES="},
			want: func(c *Config) {
				c.Delivery.Backoff = []time.Duration{2 * time.Second, 3 * time.Second}
				c.Delivery.AllowCIDRs = []string{"10.0.0.0/8", "fd00::/8"}
				c.NATS.Cluster.Routes = []string{}
			},
		},
		{
			name: "lists from env in YAML's flow form",
			env:  []string{"CALLBACKD_DELIVERY__BACKOFF=[1s,2s]", `CALLBACKD_DELIVERY__ALLOW_CIDRS=[ "10.0.0.0/8", '::1/128' ]`, "CALLBACKD_NATS__CLUSTER__ROUTES=[]"},
			want: func(c *Config) {
				c.Delivery.Backoff = []time.Duration{time.Second, 2 * time.Second}
				c.Delivery.AllowCIDRs = []string{"10.0.0.0/8", "::1/128"}
				c.NATS.Cluster.Routes = []string{}
			},
		},
		{
			name: "plugin entries in both forms",
			yaml: `plugins:
  dir: /opt/callbackd/plugins
  encoders:
    crawl_status: builtin:crawl_status_v2
    invoice_paid:
      path: invoice-encoder
      sha256: ` + testSHA + `
      args: [--mode, fast, 8080]
      env: {REGION: eu, DEBUG: true}
  transport:
    path: transport-grpc
    sha256: ` + testSHA + `
  failure: builtin:sso-webhook
`,
			want: func(c *Config) {
				c.Plugins.Dir = "/opt/callbackd/plugins"
				c.Plugins.Encoders["crawl_status"] = PluginEntry{Builtin: "crawl_status_v2"}
				c.Plugins.Encoders["invoice_paid"] = PluginEntry{
					Path: "invoice-encoder", SHA256: testSHA,
					Args: []string{"--mode", "fast", "8080"},
					Env:  map[string]string{"REGION": "eu", "DEBUG": "true"},
				}
				// The map form replaces the default built-in; it does not merge into it.
				c.Plugins.Transport = PluginEntry{Path: "transport-grpc", SHA256: testSHA}
			},
		},
		{
			name: "plugin entries from env",
			env: []string{
				"CALLBACKD_PLUGINS__FAILURE=builtin:email",
				"CALLBACKD_PLUGINS__ENCODERS__REPORT_DOWNLOAD_AVAILABLE=builtin:report_v2",
				"CALLBACKD_PLUGINS__TRANSPORT__PATH=t",
				"CALLBACKD_PLUGINS__TRANSPORT__SHA256=" + testSHA,
				"CALLBACKD_PLUGINS__TRANSPORT__ARGS=-v,--x",
			},
			want: func(c *Config) {
				c.Plugins.Failure = PluginEntry{Builtin: "email"}
				c.Plugins.Encoders["report_download_available"] = PluginEntry{Builtin: "report_v2"}
				c.Plugins.Transport = PluginEntry{Path: "t", SHA256: testSHA, Args: []string{"-v", "--x"}}
			},
		},
		{
			// Variable names are case-sensitive: env overrides the
			// file's REGION, and no "region" appears beside it.
			name: "a plugin's environment variable from env keeps its case",
			yaml: "plugins:\n  encoders:\n    invoice_paid: {path: p, sha256: " + testSHA + ", env: {REGION: eu, Mixed_Case: a}}\n",
			env: []string{
				"CALLBACKD_PLUGINS__ENCODERS__INVOICE_PAID__ENV__REGION=us",
				"CALLBACKD_PLUGINS__ENCODERS__INVOICE_PAID__ENV__Mixed_Case=b",
			},
			want: func(c *Config) {
				c.Plugins.Encoders["invoice_paid"] = PluginEntry{Path: "p", SHA256: testSHA, Env: map[string]string{"REGION": "us", "Mixed_Case": "b"}}
			},
		},
		{
			name: "a null section keeps the defaults",
			yaml: "nats:\ndelivery:\n",
			want: func(*Config) {},
		},
		{
			name: "an empty file keeps the defaults",
			yaml: "# nothing here\n",
			want: func(*Config) {},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, warnings, err := load(t, tt.yaml, tt.env, tt.args...)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if len(warnings) != 0 {
				t.Errorf("warnings = %q, want none", warnings)
			}
			want := Default()
			tt.want(want)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("config (-want +got):\n%s", diff)
			}
		})
	}
}

func TestLoad_errors_name_the_key(t *testing.T) {
	tests := []struct {
		name     string
		yaml     string
		env      []string
		args     []string
		wantKeys []string
		wantMsg  string
	}{
		{
			name:     "a fraction for an integer",
			yaml:     "dispatcher: {per_host_concurrency: 3.9}\nnats: {replicas: 1.7}\n",
			wantKeys: []string{"nats.replicas", "dispatcher.per_host_concurrency"},
			wantMsg:  "want a whole number, got 3.9",
		},
		{
			name:     "a number too large for the key wraps no more",
			yaml:     "dispatcher: {workers: 99999999999999999999, max_payload: 99999999999999999999}\nretention: {log_bytes: 18446744073709551615}\n",
			wantKeys: []string{"dispatcher.workers", "dispatcher.max_payload", "retention.log_bytes"},
			wantMsg:  "too large: 18446744073709551615",
		},
		{
			name:     "2^63 is too large",
			yaml:     "dispatcher: {max_retry_pending: 9223372036854775808}\n",
			wantKeys: []string{"dispatcher.max_retry_pending"},
			wantMsg:  "too large",
		},
		{
			name:     "null in a list, and a key with no value",
			yaml:     "delivery: {backoff: [1s, null, 2s], allow_cidrs: [null]}\nlog:\n  level:\napi:\nplugins: {encoders: {crawl_status: null}}\n",
			wantKeys: []string{"delivery.allow_cidrs[0]", "delivery.backoff[1]", "log.level", "plugins.encoders.crawl_status"},
			wantMsg:  "config: delivery.backoff[1]: no value (null) in ",
		},
		{
			name:     "stream durations below JetStream's 100ms",
			yaml:     "retention: {log: 1ns, events: 50ms}\nnats: {duplicates: 10ms}\ndelivery: {backoff: [10ms]}\n",
			wantKeys: []string{"nats.duplicates", "retention.events", "retention.log"},
			wantMsg:  "must be at least 100ms (JetStream's least), got 1ns",
		},
		{
			name:     "types named in the file's words, not Go's",
			yaml:     "dispatcher: {max_payload: true}\nplugins: {encoders: [a]}\ndelivery: {backoff: 1s}\n",
			wantKeys: []string{"dispatcher.max_payload", "delivery.backoff", "plugins.encoders"},
			wantMsg:  "dispatcher.max_payload: want a size (256KiB, 1MiB or bytes), got true",
		},
		{
			name:     "a value from the environment names its variable",
			env:      []string{"CALLBACKD_DISPATCHER__WORKERS=abc", "CALLBACKD_DELIVERY__BACKOFF=1s,x"},
			wantKeys: []string{"dispatcher.workers", "delivery.backoff[1]"},
			wantMsg:  `config: dispatcher.workers: want a whole number, got "abc" (set by CALLBACKD_DISPATCHER__WORKERS)`,
		},
		{
			name:     "a plugin's variable from the environment names itself",
			yaml:     "plugins: {transport: {path: t, sha256: " + testSHA + "}}\n",
			env:      []string{"CALLBACKD_PLUGINS__TRANSPORT__ENV__PLUGIN_MIN_PORT=1"},
			wantKeys: []string{"plugins.transport.env.PLUGIN_MIN_PORT"},
			wantMsg:  `(set by CALLBACKD_PLUGINS__TRANSPORT__ENV__PLUGIN_MIN_PORT)`,
		},
		{
			name:     "a bound broken from the environment names its variable",
			env:      []string{"CALLBACKD_DELIVERY__TIMEOUT=2h"},
			wantKeys: []string{"delivery.timeout"},
			wantMsg:  `(set by CALLBACKD_DELIVERY__TIMEOUT)`,
		},
		{
			name:     "a credentials file that cannot be read",
			yaml:     "nats: {embedded: false, url: nats://127.0.0.1:4222, credentials: /nonexistent/callbackd.creds}\n",
			wantKeys: []string{"nats.credentials"},
			wantMsg:  "config: nats.credentials: cannot read /nonexistent/callbackd.creds: no such file or directory",
		},
		{
			name:     "unknown keys and bad values, all at once",
			yaml:     "dispatcher:\n  wokers: 3\ndelivery:\n  timeout: 5x\n",
			wantKeys: []string{"dispatcher.wokers", "delivery.timeout"},
			wantMsg:  `config: unknown key "dispatcher.wokers" in `,
		},
		{
			name:     "unknown keys and values wrong by the rules",
			yaml:     "dispatcher:\n  wokers: 3\nlog:\n  level: verbose\n",
			wantKeys: []string{"dispatcher.wokers", "log.level"},
		},
		{
			name:     "unknown key in the file",
			yaml:     "dispatcher:\n  wokers: 3\n",
			wantKeys: []string{"dispatcher.wokers"},
			wantMsg:  `config: unknown key "dispatcher.wokers" in `,
		},
		{
			name:     "every unknown key, sorted",
			yaml:     "colour: red\nnats: {tls: {pem: x}, cluster: {tls: {crt: y}}}\n",
			wantKeys: []string{"colour", "nats.cluster.tls.crt", "nats.tls.pem"},
		},
		{
			name:     "unknown key in a plugin map",
			yaml:     "plugins:\n  transport: {path: t, sha256: " + testSHA + ", sha: x}\n",
			wantKeys: []string{"plugins.transport.sha"},
		},
		{
			name:     "builtin is not a key of the map form",
			yaml:     "plugins:\n  encoders:\n    crawl_status: {builtin: crawl_status}\n",
			wantKeys: []string{"plugins.encoders.crawl_status.builtin"},
		},
		{
			name:     "keys are case sensitive",
			yaml:     "Data_Dir: /x\n",
			wantKeys: []string{"Data_Dir"},
		},
		{
			name:     "bad duration",
			yaml:     "delivery: {timeout: abc}\n",
			wantKeys: []string{"delivery.timeout"},
			wantMsg:  `config: delivery.timeout: invalid duration "abc"`,
		},
		{
			name:     "bare number is not a duration",
			yaml:     "delivery: {timeout: 30}\n",
			wantKeys: []string{"delivery.timeout"},
			wantMsg:  `want Go syntax such as "30s"`,
		},
		{
			name:     "bad duration in a list",
			yaml:     "delivery: {backoff: [1s, soon]}\n",
			wantKeys: []string{"delivery.backoff[1]"},
		},
		{
			name:     "bad duration from env",
			env:      []string{"CALLBACKD_PLUGINS__CALL_TIMEOUT=5"},
			wantKeys: []string{"plugins.call_timeout"},
		},
		{
			name:     "bad size in the file",
			yaml:     "dispatcher: {max_payload: 12XB}\n",
			wantKeys: []string{"dispatcher.max_payload"},
			wantMsg:  `config: dispatcher.max_payload: invalid size "12XB"`,
		},
		{
			name:     "bad size from env",
			env:      []string{"CALLBACKD_RETENTION__LOG_BYTES=lots"},
			wantKeys: []string{"retention.log_bytes"},
		},
		{
			name:     "bad size from a flag",
			args:     []string{"--dispatcher.max_payload=1.5MiB"},
			wantKeys: []string{"dispatcher.max_payload"},
		},
		{
			name:     "bad integer",
			yaml:     "dispatcher: {workers: many}\n",
			wantKeys: []string{"dispatcher.workers"},
			wantMsg:  `config: dispatcher.workers: want a whole number, got "many"`,
		},
		{
			name:     "no guessing between types",
			yaml:     "data_dir: true\nnats: {replicas: \"3\"}\ndelivery: {allow_private: 1}\nlog: {level: 2}\n",
			wantKeys: []string{"data_dir", "nats.replicas", "delivery.allow_private", "log.level"},
			wantMsg:  "config: data_dir: want a string, got true",
		},
		{
			name:     "every bad value is reported",
			yaml:     "delivery: {timeout: abc}\ndispatcher: {max_payload: 1TB}\napi: {listen: [x]}\n",
			wantKeys: []string{"dispatcher.max_payload", "delivery.timeout", "api.listen"},
		},
		{
			name:     "bad integer from env",
			env:      []string{"CALLBACKD_NATS__REPLICAS=three"},
			wantKeys: []string{"nats.replicas"},
		},
		{
			name:     "bad boolean from env",
			env:      []string{"CALLBACKD_NATS__EMBEDDED=maybe"},
			wantKeys: []string{"nats.embedded"},
		},
		{
			name:     "map for a scalar",
			yaml:     "nats: {replicas: {a: 1}}\n",
			wantKeys: []string{"nats.replicas"},
			wantMsg:  "want a whole number, got a map",
		},
		{
			name:     "plugin entry that is neither form",
			yaml:     "plugins: {transport: http-form}\n",
			wantKeys: []string{"plugins.transport"},
			wantMsg:  `want "builtin:<name>" or a map`,
		},
		{
			name:     "encoder entry that is a number",
			yaml:     "plugins: {encoders: {crawl_status: 42}}\n",
			wantKeys: []string{"plugins.encoders.crawl_status"},
		},
		{
			name:     "plugin sha256 that is not a string",
			yaml:     "plugins: {failure: {path: f, sha256: [1]}}\n",
			wantKeys: []string{"plugins.failure.sha256"},
		},
		{
			name:     "plugin args that are not scalars",
			yaml:     "plugins: {failure: {path: f, sha256: " + testSHA + ", args: [ok, {a: b}]}}\n",
			wantKeys: []string{"plugins.failure.args[1]"},
		},
		{
			name:     "validation after loading",
			yaml:     "dispatcher: {workers: 0}\n",
			wantKeys: []string{"dispatcher.workers"}, // max_ack_pending, derived from it, is not reported too
			wantMsg:  "config: dispatcher.workers: must be at least 1, got 0",
		},
		{
			name:     "explicit zero max_ack_pending is not derived",
			yaml:     "dispatcher: {max_ack_pending: 0}\n",
			wantKeys: []string{"dispatcher.max_ack_pending"},
		},
		{
			name:     "bad event type from the file",
			yaml:     "plugins: {encoders: {Crawl-Status: builtin:x}}\n",
			wantKeys: []string{"plugins.encoders.Crawl-Status"},
		},
		{
			name:     "external server without url",
			env:      []string{"CALLBACKD_NATS__EMBEDDED=false"},
			wantKeys: []string{"nats.url"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, _, err := load(t, tt.yaml, tt.env, tt.args...)
			if err == nil {
				t.Fatalf("Load succeeded with %+v, want an error", cfg)
			}
			if cfg != nil {
				t.Errorf("Load returned a config along with error %v", err)
			}
			if diff := cmp.Diff(tt.wantKeys, keysOf(err)); diff != "" {
				t.Errorf("keys of %q (-want +got):\n%s", err, diff)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q does not contain %q", err, tt.wantMsg)
			}
		})
	}
}

func TestLoad_unknown_key_is_ErrUnknownKey(t *testing.T) {
	path := writeFile(t, "dispatcher: {wokers: 3}\n")
	fs := pflag.NewFlagSet("callbackd", pflag.ContinueOnError)
	RegisterFlags(fs)
	if err := fs.Parse([]string{"--config", path}); err != nil {
		t.Fatal(err)
	}
	_, _, err := Load(fs, nil)
	if !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("Load = %v, want ErrUnknownKey", err)
	}
	if want := `config: unknown key "dispatcher.wokers" in ` + path; err.Error() != want {
		t.Errorf("error = %q, want %q", err, want)
	}
}

// koanf reads a file's first YAML document alone: keys in a second one
// would be dropped without a word, unknown ones included.
func TestLoad_one_YAML_document(t *testing.T) {
	for body, ok := range map[string]bool{
		"log: {level: debug}\n":                    true,
		"---\nlog: {level: debug}\n":               true,
		"log: {level: debug}\n---\n":               true, // an empty second document
		"log: {level: debug}\n---\n# a comment\n":  true,
		"log: {level: debug}\n---\nbogus: 1\n":     false,
		"log: {level: debug}\n---\n---\napi: {}\n": false,
		"log: {level: debug}\n...\n---\n[1, 2]\n":  false,
	} {
		cfg, _, err := load(t, body, nil)
		switch {
		case ok && (err != nil || cfg.Log.Level != "debug"):
			t.Errorf("%q: Load = %v, level %v", body, err, cfg)
		case !ok && (err == nil || !strings.Contains(err.Error(), "more than one YAML document")):
			t.Errorf("%q: Load = %v, want the documents refused", body, err)
		}
	}
}

func TestLoad_unknown_env_is_a_warning(t *testing.T) {
	cfg, warnings, err := load(t, "", []string{
		"PATH=/usr/bin",
		"CALLBACKD_NATS_URL=nats://x:4222",
		"CALLBACKD_NATS=x",
		"CALLBACKD_FROBNICATE=1",
		"CALLBACKD_LOG__LEVEL=warn",
		"callbackd_log__level=debug",
	})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if cfg.Log.Level != "warn" {
		t.Errorf("log.level = %q, want warn", cfg.Log.Level)
	}
	want := []string{
		"config: unknown environment variable CALLBACKD_NATS_URL ignored (did you mean CALLBACKD_NATS__URL?)",
		"config: unknown environment variable CALLBACKD_NATS ignored",
		"config: unknown environment variable CALLBACKD_FROBNICATE ignored",
	}
	if diff := cmp.Diff(want, warnings); diff != "" {
		t.Errorf("warnings (-want +got):\n%s", diff)
	}
}

func TestLoad_returns_warnings_with_an_error(t *testing.T) {
	_, warnings, err := load(t, "", []string{"CALLBACKD_TYPO=1", "CALLBACKD_LOG__LEVEL=loud"})
	if err == nil || len(warnings) != 1 {
		t.Fatalf("Load = %v, warnings %q; want an error and one warning", err, warnings)
	}
}

func TestLoad_missing_explicit_config_is_an_error(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope.yaml")
	fs := pflag.NewFlagSet("callbackd", pflag.ContinueOnError)
	RegisterFlags(fs)
	if err := fs.Parse([]string{"--config", missing}); err != nil {
		t.Fatal(err)
	}
	_, _, err := Load(fs, nil)
	if err == nil || !strings.Contains(err.Error(), missing) {
		t.Fatalf("Load = %v, want an error naming %s", err, missing)
	}
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load = %v, want it to wrap os.ErrNotExist", err)
	}
}

func TestLoad_bad_yaml_is_an_error(t *testing.T) {
	for _, yaml := range []string{
		"nats: [unclosed\n",
		"dispatcher:\n  workers: 1\n  workers: 2\n", // the parser's errors come on lines of their own
	} {
		_, _, err := load(t, yaml, nil)
		if err == nil || !strings.Contains(err.Error(), "callbackd.yaml") || strings.Contains(err.Error(), "\n") {
			t.Errorf("Load(%q) = %v, want a one-line error naming the file", yaml, err)
		}
	}
}

// A bad dispatcher.workers is one error: max_ack_pending, derived from it
// when not set, is not reported as well.
func TestLoad_bad_workers_is_one_error(t *testing.T) {
	for _, workers := range []string{"0", "4611686018427387904"} {
		_, _, err := load(t, "dispatcher: {workers: "+workers+"}\n", nil)
		if err == nil || !strings.Contains(err.Error(), "dispatcher.workers") || strings.Contains(err.Error(), "max_ack_pending") {
			t.Errorf("workers %s: Load = %v, want one error naming dispatcher.workers", workers, err)
		}
	}
}

func TestLoad_reads_the_default_file_when_present(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)

	// No file: defaults.
	cfg, _, err := Load(nil, nil)
	if err != nil {
		t.Fatalf("Load without a file: %v", err)
	}
	if diff := cmp.Diff(Default(), cfg); diff != "" {
		t.Errorf("config without a file (-want +got):\n%s", diff)
	}

	if err := os.WriteFile(filepath.Join(dir, DefaultFile), []byte("log: {level: debug}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fs := pflag.NewFlagSet("callbackd", pflag.ContinueOnError)
	RegisterFlags(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		fs   *pflag.FlagSet
	}{{"nil flags", nil}, {"--config not set", fs}} {
		cfg, _, err := Load(tc.fs, nil)
		if err != nil {
			t.Fatalf("%s: Load: %v", tc.name, err)
		}
		if cfg.Log.Level != "debug" {
			t.Errorf("%s: log.level = %q, want debug from %s", tc.name, cfg.Log.Level, DefaultFile)
		}
	}

	// An explicit empty --config reads no file.
	fs = pflag.NewFlagSet("callbackd", pflag.ContinueOnError)
	RegisterFlags(fs)
	if err := fs.Parse([]string{"--config="}); err != nil {
		t.Fatal(err)
	}
	cfg, _, err = Load(fs, nil)
	if err != nil || cfg.Log.Level != "info" {
		t.Fatalf("Load with --config= : level %v, %v; want info", cfg, err)
	}
}

func TestLoad_ignores_flags_that_are_not_keys(t *testing.T) {
	fs := pflag.NewFlagSet("callbackd", pflag.ContinueOnError)
	RegisterFlags(fs)
	fs.Bool("verbose", false, "a command's own flag")
	fs.BoolP("help", "h", false, "help")
	if err := fs.Parse([]string{"--config=", "--verbose", "--log.level=warn"}); err != nil {
		t.Fatal(err)
	}
	cfg, warnings, err := Load(fs, nil)
	if err != nil || len(warnings) != 0 {
		t.Fatalf("Load = %v, warnings %q", err, warnings)
	}
	if cfg.Log.Level != "warn" {
		t.Errorf("log.level = %q, want warn", cfg.Log.Level)
	}
}

func TestLoad_does_not_read_the_process_environment(t *testing.T) {
	t.Setenv("CALLBACKD_LOG__LEVEL", "debug")
	cfg, _, err := load(t, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Log.Level != "info" {
		t.Errorf("log.level = %q: Load read os.Environ", cfg.Log.Level)
	}
}

// TestRegisterFlags_covers_every_scalar_key keeps the flags in step with the
// Config struct: each key that holds one value has a flag of its name, and
// every flag but --config is such a key.
func TestRegisterFlags_covers_every_scalar_key(t *testing.T) {
	fs := pflag.NewFlagSet("callbackd", pflag.ContinueOnError)
	RegisterFlags(fs)

	var keys []string
	var walk func(prefix string, t reflect.Type)
	walk = func(prefix string, t reflect.Type) {
		for i := range t.NumField() {
			f := t.Field(i)
			key := prefix + f.Tag.Get("koanf")
			switch {
			case f.Type == pluginEntryType:
				keys = append(keys, key)
			case f.Type.Kind() == reflect.Struct:
				walk(key+".", f.Type)
			case f.Type.Kind() == reflect.Map:
				// plugins.encoders: entries have no flags
			default:
				keys = append(keys, key)
			}
		}
	}
	walk("", configType)

	for _, key := range keys {
		if fs.Lookup(key) == nil {
			t.Errorf("no flag --%s", key)
		}
	}
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Name != "config" && !slices.Contains(keys, f.Name) {
			t.Errorf("flag --%s is not a configuration key", f.Name)
		}
	})
	if got := fs.Lookup("dispatcher.max_payload").DefValue; got != "256KiB" {
		t.Errorf("--dispatcher.max_payload default shows %q, want 256KiB", got)
	}
}
