// Package config is callbackd's configuration: one tagged Config struct with
// the defaults of SPEC §6, loaded in layers (defaults < YAML file <
// CALLBACKD_ environment < flags) and validated so that every error names the
// key that is wrong. Only this package touches koanf; everyone else receives
// plain typed values.
package config

import (
	"net/netip"
	"time"
)

// Config is the whole daemon configuration. Its koanf tags are the keys of
// the YAML file, the environment (CALLBACKD_NATS__URL) and the flags
// (--nats.url).
type Config struct {
	// DataDir holds the embedded server's JetStream store and node state.
	DataDir    string     `koanf:"data_dir"`
	NATS       NATS       `koanf:"nats"`
	Dispatcher Dispatcher `koanf:"dispatcher"`
	Delivery   Delivery   `koanf:"delivery"`
	Retention  Retention  `koanf:"retention"`
	Plugins    Plugins    `koanf:"plugins"`
	API        API        `koanf:"api"`
	Log        Log        `koanf:"log"`
}

// NATS is the nats section: an embedded server (the default) or an external
// server or cluster.
type NATS struct {
	// Embedded runs an in-process server with JetStream in DataDir.
	Embedded bool `koanf:"embedded"`
	// Listen is the embedded server's client port; "" means in-process only.
	Listen string `koanf:"listen"`
	// URL is the external server or cluster, required when Embedded is false.
	URL string `koanf:"url"`
	// Credentials is a creds file for an external server.
	Credentials string `koanf:"credentials"`
	// Auth is required of clients of the embedded listener when set.
	Auth Auth `koanf:"auth"`
	// TLS secures the embedded listener or the external connection.
	TLS TLS `koanf:"tls"`
	// ServerName must be unique and stable per node; "" means generated once
	// and kept in DataDir.
	ServerName string `koanf:"server_name"`
	// Cluster makes the embedded server join a cluster.
	Cluster Cluster `koanf:"cluster"`
	// Replicas of every stream and bucket; 3 for the node-loss guarantee.
	Replicas int `koanf:"replicas"`
	// Duplicates is the stream's Nats-Msg-Id de-duplication window.
	Duplicates time.Duration `koanf:"duplicates"`
}

// Auth is user/password or token authentication.
type Auth struct {
	User     string `koanf:"user"`
	Password string `koanf:"password"`
	Token    string `koanf:"token"`
}

// TLS is a certificate and key pair with an optional CA bundle; empty means
// no TLS.
type TLS struct {
	Cert string `koanf:"cert"`
	Key  string `koanf:"key"`
	CA   string `koanf:"ca"`
}

// Cluster is the embedded server's cluster listener and routes.
type Cluster struct {
	Name   string `koanf:"name"`
	Listen string `koanf:"listen"`
	// Routes are seed servers as nats://host:port.
	Routes []string `koanf:"routes"`
	TLS    TLS      `koanf:"tls"`
}

// Dispatcher is the dispatcher section.
type Dispatcher struct {
	// Workers bounds CPU work (decode, encode, route); attempts in flight
	// hold none.
	Workers            int `koanf:"workers"`
	PerHostConcurrency int `koanf:"per_host_concurrency"`
	// MaxAckPending defaults to 4 × Workers when not set.
	MaxAckPending   int `koanf:"max_ack_pending"`
	MaxRetryPending int `koanf:"max_retry_pending"`
	// MaxDeliveries caps redeliveries of one message (crash-loop cap).
	MaxDeliveries int  `koanf:"max_deliveries"`
	MaxPayload    Size `koanf:"max_payload"`
}

// Delivery is the delivery section.
type Delivery struct {
	Timeout     time.Duration   `koanf:"timeout"`
	MaxInFlight int             `koanf:"max_in_flight"`
	MaxAttempts int             `koanf:"max_attempts"`
	Backoff     []time.Duration `koanf:"backoff"`
	// AllowPrivate permits callback URLs that resolve to private,
	// loopback or link-local addresses.
	AllowPrivate bool `koanf:"allow_private"`
	// AllowCIDRs are permitted despite AllowPrivate being false; see
	// Config.AllowCIDRs for the parsed form.
	AllowCIDRs []string `koanf:"allow_cidrs"`
}

// Retention is how long (or how much) each stream keeps.
type Retention struct {
	Events   time.Duration `koanf:"events"`
	Dead     time.Duration `koanf:"dead"`
	Log      time.Duration `koanf:"log"`
	LogBytes Size          `koanf:"log_bytes"`
}

// Plugins is the plugins section.
type Plugins struct {
	// Dir holds the executables named by PluginEntry.Path.
	Dir string `koanf:"dir"`
	// Builtins is "process" (built-ins run as subprocesses) or "inprocess".
	Builtins    string        `koanf:"builtins"`
	CallTimeout time.Duration `koanf:"call_timeout"`
	// Encoders maps an event type to its encoder. The file and environment
	// add to or replace the default entries; they cannot remove one.
	Encoders  map[string]PluginEntry `koanf:"encoders"`
	Transport PluginEntry            `koanf:"transport"`
	Failure   PluginEntry            `koanf:"failure"`
}

// PluginEntry names one plugin: a built-in (written "builtin:<name>") or an
// executable in Plugins.Dir pinned by its SHA-256 (written as a map
// {path, sha256, args, env}). Exactly one of Builtin and Path is set.
type PluginEntry struct {
	Builtin string            `koanf:"-"`
	Path    string            `koanf:"path"`
	SHA256  string            `koanf:"sha256"`
	Args    []string          `koanf:"args"`
	Env     map[string]string `koanf:"env"`
}

// API is the admin API listener.
type API struct {
	Listen string  `koanf:"listen"`
	Token  string  `koanf:"token"`
	TLS    CertKey `koanf:"tls"`
}

// CertKey is a certificate and key pair; empty means no TLS.
type CertKey struct {
	Cert string `koanf:"cert"`
	Key  string `koanf:"key"`
}

// Log is the log section.
type Log struct {
	// Level is debug, info, warn or error.
	Level string `koanf:"level"`
	// Format is text or json.
	Format string `koanf:"format"`
}

// Default returns a new Config holding the defaults of SPEC §6.
func Default() *Config {
	return &Config{
		DataDir: "./data",
		NATS: NATS{
			Embedded:   true,
			Listen:     "127.0.0.1:4222",
			Replicas:   1,
			Duplicates: 2 * time.Minute,
		},
		Dispatcher: Dispatcher{
			Workers:            64,
			PerHostConcurrency: 8,
			MaxAckPending:      4 * 64,
			MaxRetryPending:    100000,
			MaxDeliveries:      50,
			MaxPayload:         256 * KiB,
		},
		Delivery: Delivery{
			Timeout:     30 * time.Second,
			MaxInFlight: 1024,
			MaxAttempts: 4,
			Backoff:     []time.Duration{10 * time.Second, time.Minute, 5 * time.Minute},
		},
		Retention: Retention{
			Events:   168 * time.Hour,
			Dead:     336 * time.Hour,
			Log:      168 * time.Hour,
			LogBytes: GiB,
		},
		Plugins: Plugins{
			Dir:         "./plugins",
			Builtins:    "process",
			CallTimeout: 5 * time.Second,
			Encoders: map[string]PluginEntry{
				"crawl_status":              {Builtin: "crawl_status"},
				"report_download_available": {Builtin: "report_download_available"},
			},
			Transport: PluginEntry{Builtin: "http-form"},
			Failure:   PluginEntry{Builtin: "sso-webhook"},
		},
		API: API{Listen: "127.0.0.1:8080"},
		Log: Log{Level: "info", Format: "text"},
	}
}

// AllowCIDRs returns Delivery.AllowCIDRs parsed; entries that do not parse
// are skipped (Validate rejects them).
func (c *Config) AllowCIDRs() []netip.Prefix {
	out := make([]netip.Prefix, 0, len(c.Delivery.AllowCIDRs))
	for _, s := range c.Delivery.AllowCIDRs {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// AckWait returns the consumers' AckWait: Delivery.Timeout plus 10s, so an
// attempt that times out is recorded before the message is redelivered.
func (c *Config) AckWait() time.Duration {
	return c.Delivery.Timeout + 10*time.Second
}
