package config

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestValidate_names_the_key(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(c *Config)
		wantKey string // "" means valid
	}{
		{"data_dir empty", func(c *Config) { c.DataDir = "" }, "data_dir"},

		{"external without url", func(c *Config) { c.NATS.Embedded = false }, "nats.url"},
		{"external with url", func(c *Config) { c.NATS.Embedded = false; c.NATS.URL = "nats://n:4222" }, ""},
		{"nats.url list, bare, tls, ws, credentials", func(c *Config) {
			c.NATS.Embedded = false
			c.NATS.URL = "nats://u:p@a:4222, b:4222,tls://c,ws://d:8080,wss://e,[::1]:4222"
		}, ""},
		{"nats.url garbage", func(c *Config) { c.NATS.Embedded = false; c.NATS.URL = "::::" }, "nats.url"},
		{"nats.url port out of range", func(c *Config) { c.NATS.Embedded = false; c.NATS.URL = "nats://127.0.0.1:99999" }, "nats.url"},
		{"nats.url port 0", func(c *Config) { c.NATS.Embedded = false; c.NATS.URL = "nats://127.0.0.1:0" }, "nats.url"},
		{"nats.url scheme", func(c *Config) { c.NATS.Embedded = false; c.NATS.URL = "ftp://x:1" }, "nats.url"},
		{"nats.url unparsable", func(c *Config) { c.NATS.Embedded = false; c.NATS.URL = "ht!tp://bad url" }, "nats.url"},
		{"nats.url empty list entry", func(c *Config) { c.NATS.Embedded = false; c.NATS.URL = "nats://a:4222," }, "nats.url"},
		{"nats.url checked when embedded too", func(c *Config) { c.NATS.URL = "ftp://x" }, "nats.url"},
		{"retention.events under the de-duplication window", func(c *Config) {
			c.Retention.Events, c.Delivery.Backoff = 15*time.Second, []time.Duration{time.Second}
		}, "retention.events"},
		{"retention.dead under the de-duplication window", func(c *Config) { c.Retention.Dead = time.Minute }, "retention.dead"},
		{"short retention with a shorter window", func(c *Config) {
			c.Retention.Events, c.NATS.Duplicates, c.Delivery.Backoff = 15*time.Second, 5*time.Second, []time.Duration{time.Second, 14 * time.Second}
		}, ""},
		{"a backoff as long as retention.events", func(c *Config) {
			c.Retention.Events, c.NATS.Duplicates, c.Delivery.Backoff = time.Hour, time.Minute, []time.Duration{time.Second, time.Hour}
		}, "delivery.backoff[1]"},
		{"delivery.timeout 1h", func(c *Config) { c.Delivery.Timeout = time.Hour }, ""},
		{"delivery.timeout over 1h", func(c *Config) { c.Delivery.Timeout = time.Hour + time.Second }, "delivery.timeout"},
		{"workers at the cap", func(c *Config) { c.Dispatcher.Workers = 1 << 20 }, ""},
		{"workers over the cap", func(c *Config) { c.Dispatcher.Workers = 1<<20 + 1 }, "dispatcher.workers"},
		{"nats.server_name with a space", func(c *Config) { c.NATS.ServerName = "a b" }, "nats.server_name"},
		{"nats.server_name with a NUL", func(c *Config) { c.NATS.ServerName = "a\x00b" }, "nats.server_name"},
		{"nats.server_name not UTF-8", func(c *Config) { c.NATS.ServerName = "a\xffb" }, "nats.server_name"},
		{"nats.server_name in another script", func(c *Config) { c.NATS.ServerName = "nœud-1" }, ""},
		{"nats.cluster.name with a tab", func(c *Config) {
			c.NATS.Cluster = Cluster{Name: "a\tb", Listen: "0.0.0.0:6222", Routes: []string{"nats://a:6222"}}
		}, "nats.cluster.name"},
		{"replicas without a cluster", func(c *Config) { c.NATS.Replicas = 3 }, "nats.replicas"},
		{"replicas on an external server", func(c *Config) { c.NATS.Replicas, c.NATS.Embedded, c.NATS.URL = 3, false, "nats://n:4222" }, ""},
		{"api.token too short", func(c *Config) { c.API.Token = "tok123" }, "api.token"},
		{"api.token long enough", func(c *Config) { c.API.Token = "0123456789abcdef" }, ""},
		{"api.token with a newline", func(c *Config) { c.API.Token = "abcdefghijklmnop\nqrstuvwxyz" }, "api.token"},
		{"api.token with a space", func(c *Config) { c.API.Token = "abcdefgh ijklmnopq" }, "api.token"},
		{"api.token not ASCII", func(c *Config) { c.API.Token = "abcdefghijklmnopé" }, "api.token"},
		{"api.token of every visible character", func(c *Config) { c.API.Token = "!~aZ09+/=._-~!~aZ" }, ""},
		{"nats.listen empty is in-process only", func(c *Config) { c.NATS.Listen = "" }, ""},
		{"nats.listen any port", func(c *Config) { c.NATS.Listen = ":0" }, ""},
		{"nats.listen without port", func(c *Config) { c.NATS.Listen = "127.0.0.1" }, "nats.listen"},
		{"nats.listen port out of range", func(c *Config) { c.NATS.Listen = "127.0.0.1:65536" }, "nats.listen"},
		{"nats.auth user without password", func(c *Config) { c.NATS.Auth.User = "u" }, "nats.auth.password"},
		{"nats.tls cert without key", func(c *Config) { c.NATS.TLS.Cert = "c.pem" }, "nats.tls.key"},
		{"nats.tls key without cert", func(c *Config) { c.NATS.TLS.Key = "k.pem" }, "nats.tls.cert"},
		{"nats.tls ca alone", func(c *Config) { c.NATS.TLS.CA = "ca.pem" }, ""},
		{"nats.cluster.listen bad", func(c *Config) {
			c.NATS.Cluster.Listen = "0.0.0.0"
			c.NATS.Cluster.Routes = []string{"nats://a:6222"}
		}, "nats.cluster.listen"},
		{"nats.cluster.routes bad", func(c *Config) {
			c.NATS.Cluster.Listen = "0.0.0.0:6222"
			c.NATS.Cluster.Routes = []string{"nats://a:6222", "b:6222"}
		}, "nats.cluster.routes[1]"},
		{"nats.cluster.listen without routes", func(c *Config) { c.NATS.Cluster.Listen = "0.0.0.0:6222" }, "nats.cluster.routes"},
		{"nats.cluster.tls without ca", func(c *Config) {
			c.NATS.Cluster.TLS.Cert, c.NATS.Cluster.TLS.Key = "c.pem", "k.pem"
		}, "nats.cluster.tls.ca"},
		{"nats.auth token and user", func(c *Config) {
			c.NATS.Auth.User, c.NATS.Auth.Password, c.NATS.Auth.Token = "u", "p", "t"
		}, "nats.auth.token"},
		{"nats.cluster.tls pair", func(c *Config) { c.NATS.Cluster.TLS.Key = "k.pem" }, "nats.cluster.tls.cert"},
		{"nats.cluster valid", func(c *Config) {
			c.NATS.Cluster = Cluster{Name: "c", Listen: "0.0.0.0:6222", Routes: []string{"nats://a:6222", "nats://u:p@b:6222"}}
		}, ""},
		{"nats.replicas 0", func(c *Config) { c.NATS.Replicas = 0 }, "nats.replicas"},
		{"nats.replicas 6", func(c *Config) { c.NATS.Replicas = 6 }, "nats.replicas"},
		{"nats.replicas 5", func(c *Config) {
			c.NATS.Replicas = 5
			c.NATS.Cluster = Cluster{Listen: "0.0.0.0:6222", Routes: []string{"nats://a:6222"}}
		}, ""},
		{"nats.duplicates 0", func(c *Config) { c.NATS.Duplicates = 0 }, "nats.duplicates"},

		{"workers 0", func(c *Config) { c.Dispatcher.Workers = 0 }, "dispatcher.workers"},
		{"per_host_concurrency 0", func(c *Config) { c.Dispatcher.PerHostConcurrency = 0 }, "dispatcher.per_host_concurrency"},
		{"max_ack_pending 0", func(c *Config) { c.Dispatcher.MaxAckPending = 0 }, "dispatcher.max_ack_pending"},
		{"max_retry_pending 0", func(c *Config) { c.Dispatcher.MaxRetryPending = 0 }, "dispatcher.max_retry_pending"},
		{"max_deliveries 0", func(c *Config) { c.Dispatcher.MaxDeliveries = 0 }, "dispatcher.max_deliveries"},
		{"max_payload 0", func(c *Config) { c.Dispatcher.MaxPayload = 0 }, "dispatcher.max_payload"},
		{"max_payload 8MiB", func(c *Config) { c.Dispatcher.MaxPayload = 8 * MiB }, ""},
		{"max_payload above 8MiB", func(c *Config) { c.Dispatcher.MaxPayload = 8*MiB + 1 }, "dispatcher.max_payload"},

		{"delivery.timeout 0", func(c *Config) { c.Delivery.Timeout = 0 }, "delivery.timeout"},
		{"delivery.timeout negative", func(c *Config) { c.Delivery.Timeout = -time.Second }, "delivery.timeout"},
		{"max_in_flight 0", func(c *Config) { c.Delivery.MaxInFlight = 0 }, "delivery.max_in_flight"},
		{"max_attempts 0", func(c *Config) { c.Delivery.MaxAttempts = 0 }, "delivery.max_attempts"},
		{"backoff empty", func(c *Config) { c.Delivery.Backoff = nil }, "delivery.backoff"},
		{"backoff step 0", func(c *Config) { c.Delivery.Backoff = []time.Duration{time.Second, 0} }, "delivery.backoff[1]"},
		{"allow_cidrs bare address", func(c *Config) { c.Delivery.AllowCIDRs = []string{"10.0.0.1"} }, "delivery.allow_cidrs[0]"},
		{"allow_cidrs valid", func(c *Config) { c.Delivery.AllowCIDRs = []string{"10.0.0.0/8", "::1/128"} }, ""},

		{"retention.events 0", func(c *Config) { c.Retention.Events = 0 }, "retention.events"},
		{"retention.dead 0", func(c *Config) { c.Retention.Dead = 0 }, "retention.dead"},
		{"retention.log 0", func(c *Config) { c.Retention.Log = 0 }, "retention.log"},
		{"retention.log_bytes 0", func(c *Config) { c.Retention.LogBytes = 0 }, "retention.log_bytes"},

		{"plugins.builtins other", func(c *Config) { c.Plugins.Builtins = "thread" }, "plugins.builtins"},
		{"plugins.builtins inprocess", func(c *Config) { c.Plugins.Builtins = "inprocess" }, ""},
		{"plugins.call_timeout 0", func(c *Config) { c.Plugins.CallTimeout = 0 }, "plugins.call_timeout"},
		{"encoder event type", func(c *Config) {
			c.Plugins.Encoders["Crawl-Status"] = PluginEntry{Builtin: "x"}
		}, "plugins.encoders.Crawl-Status"},
		{"encoder event type too long", func(c *Config) {
			c.Plugins.Encoders[strings.Repeat("a", 65)] = PluginEntry{Builtin: "x"}
		}, "plugins.encoders." + strings.Repeat("a", 65)},
		{"encoder empty builtin", func(c *Config) {
			c.Plugins.Encoders["crawl_status"] = PluginEntry{}
		}, "plugins.encoders.crawl_status"},
		{"encoder by path", func(c *Config) {
			c.Plugins.Encoders["invoice_paid"] = PluginEntry{Path: "enc", SHA256: strings.ToUpper(testSHA), Args: []string{"-v"}}
		}, ""},
		{"path without sha256", func(c *Config) {
			c.Plugins.Transport = PluginEntry{Path: "t"}
		}, "plugins.transport.sha256"},
		{"sha256 too short", func(c *Config) {
			c.Plugins.Transport = PluginEntry{Path: "t", SHA256: testSHA[:63]}
		}, "plugins.transport.sha256"},
		{"sha256 not hex", func(c *Config) {
			c.Plugins.Transport = PluginEntry{Path: "t", SHA256: "z" + testSHA[1:]}
		}, "plugins.transport.sha256"},
		{"sha256 without path", func(c *Config) {
			c.Plugins.Failure = PluginEntry{SHA256: testSHA}
		}, "plugins.failure.path"},
		{"path outside plugins.dir", func(c *Config) {
			c.Plugins.Failure = PluginEntry{Path: "../bin/sh", SHA256: testSHA}
		}, "plugins.failure.path"},
		{"absolute path", func(c *Config) {
			c.Plugins.Failure = PluginEntry{Path: "/bin/sh", SHA256: testSHA}
		}, "plugins.failure.path"},
		{"env name with =", func(c *Config) {
			c.Plugins.Transport = PluginEntry{Path: "t", SHA256: testSHA, Env: map[string]string{"A=B": "y"}}
		}, "plugins.transport.env"},
		{"env value with NUL", func(c *Config) {
			c.Plugins.Transport = PluginEntry{Path: "t", SHA256: testSHA, Env: map[string]string{"A": "y\x00"}}
		}, "plugins.transport.env.A"},
		{"env name of go-plugin's handshake", func(c *Config) {
			c.Plugins.Transport = PluginEntry{Path: "t", SHA256: testSHA, Env: map[string]string{"CALLBACKD_PLUGIN": "x"}}
		}, "plugins.transport.env.CALLBACKD_PLUGIN"},
		{"env overriding what callbackd tells plugins", func(c *Config) {
			c.Plugins.Transport = PluginEntry{Path: "t", SHA256: testSHA, Env: map[string]string{"CALLBACKD_USER_AGENT": "acme/1"}}
		}, ""},
		{"env fine", func(c *Config) {
			c.Plugins.Transport = PluginEntry{Path: "t", SHA256: testSHA, Env: map[string]string{"API_KEY": "a=b c"}}
		}, ""},
		{"builtin with args", func(c *Config) {
			c.Plugins.Transport = PluginEntry{Builtin: "http-form", Args: []string{"-v"}}
		}, "plugins.transport"},

		{"api.listen empty", func(c *Config) { c.API.Listen = "" }, "api.listen"},
		{"api.listen bad", func(c *Config) { c.API.Listen = "localhost" }, "api.listen"},
		{"api.tls cert without key", func(c *Config) { c.API.TLS.Cert = "c.pem" }, "api.tls.key"},
		{"api.tls pair", func(c *Config) { c.API.TLS = CertKey{Cert: "c.pem", Key: "k.pem"} }, ""},

		{"log.level", func(c *Config) { c.Log.Level = "verbose" }, "log.level"},
		{"log.level debug", func(c *Config) { c.Log.Level = "debug" }, ""},
		{"log.format", func(c *Config) { c.Log.Format = "xml" }, "log.format"},
		{"log.format json", func(c *Config) { c.Log.Format = "json" }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			tt.mutate(c)
			err := c.Validate()
			var want []string
			if tt.wantKey != "" {
				want = []string{tt.wantKey}
			}
			if diff := cmp.Diff(want, keysOf(err)); diff != "" {
				t.Fatalf("Validate() = %v; keys (-want +got):\n%s", err, diff)
			}
			if err != nil && !strings.HasPrefix(err.Error(), "config: "+tt.wantKey+": ") {
				t.Errorf("Validate() = %q, want it to start with the key", err)
			}
		})
	}
}

func TestValidate_reports_every_problem(t *testing.T) {
	c := Default()
	c.Dispatcher.Workers = 0
	c.Log.Level = "loud"
	c.API.Listen = ""
	want := []string{"dispatcher.workers", "api.listen", "log.level"}
	if diff := cmp.Diff(want, keysOf(c.Validate())); diff != "" {
		t.Errorf("keys (-want +got):\n%s", diff)
	}
}
