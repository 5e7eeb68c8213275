package config

import (
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/callbackd/callbackd/subjects"
)

// MinAPITokenLen is the shortest api.token accepted (the admin API's own
// minimum, api.New).
const MinAPITokenLen = 16

// maxWorkers caps dispatcher.workers, of which max_ack_pending's default is
// four times.
const maxWorkers = 1 << 20

// maxDeliveryTimeout caps delivery.timeout: the consumers' ack wait is
// 10 s more, and an attempt that may take longer than an hour is a hang.
const maxDeliveryTimeout = time.Hour

// maxPayloadLimit caps dispatcher.max_payload: NATS' own default max_payload
// is 1MiB and its hard ceiling 64MiB; 8MiB keeps one event well below it.
const maxPayloadLimit = 8 * MiB

// Validate checks every key and returns an errors.Join of *KeyError, one per
// wrong key, or nil. Load calls it; call it again after changing a Config in
// code.
func (c *Config) Validate() error {
	var p problems

	p.check(c.DataDir != "", "data_dir", "must not be empty")

	n := &c.NATS
	if !n.Embedded && n.URL == "" {
		p.add("nats.url", "must be set when nats.embedded is false")
	}
	if n.URL != "" {
		p.natsURLs("nats.url", n.URL)
	}
	if n.Credentials != "" {
		// nats.go reads it only when it connects, with an error that
		// names the file but not the key.
		if f, err := os.Open(n.Credentials); err != nil {
			p.add("nats.credentials", "cannot read %s: %v", n.Credentials, errors.Unwrap(err))
		} else {
			_ = f.Close()
		}
	}
	if n.Listen != "" {
		p.hostPort("nats.listen", n.Listen)
	}
	if n.Auth.User != "" && n.Auth.Password == "" {
		p.add("nats.auth.password", "must be set with nats.auth.user")
	}
	p.certKey("nats.tls", n.TLS.Cert, n.TLS.Key)
	if n.Cluster.Listen != "" {
		p.hostPort("nats.cluster.listen", n.Cluster.Listen)
	}
	for i, r := range n.Cluster.Routes {
		u, err := url.Parse(r)
		if err != nil || u.Scheme != "nats" || u.Hostname() == "" || u.Port() == "" {
			p.add(fmt.Sprintf("nats.cluster.routes[%d]", i), "must be nats://host:port, got %q", r)
		}
	}
	p.certKey("nats.cluster.tls", n.Cluster.TLS.Cert, n.Cluster.TLS.Key)
	if n.Auth.Token != "" && n.Auth.User != "" {
		p.add("nats.auth.token", "set either nats.auth.token or nats.auth.user/password, not both")
	}
	if n.Embedded && (n.Cluster.Listen != "") != (len(n.Cluster.Routes) > 0) {
		p.add("nats.cluster.routes", "nats.cluster.listen and nats.cluster.routes are set together (routes may list this node too)")
	}
	if n.Cluster.TLS.Cert != "" && n.Cluster.TLS.CA == "" {
		p.add("nats.cluster.tls.ca", "must be set with nats.cluster.tls.cert: routes are verified both ways")
	}
	// nats-server refuses these with white space, naming neither key.
	p.name("nats.server_name", n.ServerName)
	p.name("nats.cluster.name", n.Cluster.Name)
	p.check(1 <= n.Replicas && n.Replicas <= 5, "nats.replicas", "must be 1 to 5, got %d", n.Replicas)
	if n.Embedded && n.Cluster.Listen == "" && 1 < n.Replicas && n.Replicas <= 5 {
		p.add("nats.replicas", "must be 1 for a lone embedded server (more replicas need nats.cluster), got %d", n.Replicas)
	}
	p.atLeastStreamMin("nats.duplicates", n.Duplicates)

	d := &c.Dispatcher
	p.atLeast1("dispatcher.workers", d.Workers)
	p.check(d.Workers <= maxWorkers, "dispatcher.workers", "must be at most %d, got %d", maxWorkers, d.Workers)
	p.atLeast1("dispatcher.per_host_concurrency", d.PerHostConcurrency)
	p.atLeast1("dispatcher.max_ack_pending", d.MaxAckPending)
	p.atLeast1("dispatcher.max_retry_pending", d.MaxRetryPending)
	p.atLeast1("dispatcher.max_deliveries", d.MaxDeliveries)
	p.check(1 <= d.MaxPayload && d.MaxPayload <= maxPayloadLimit, "dispatcher.max_payload",
		"must be 1B to %s, got %s", maxPayloadLimit, d.MaxPayload)

	dl := &c.Delivery
	p.positive("delivery.timeout", dl.Timeout)
	p.check(dl.Timeout <= maxDeliveryTimeout, "delivery.timeout", "must be at most %s, got %s", maxDeliveryTimeout, dl.Timeout)
	p.atLeast1("delivery.max_in_flight", dl.MaxInFlight)
	p.atLeast1("delivery.max_attempts", dl.MaxAttempts)
	p.check(len(dl.Backoff) > 0, "delivery.backoff", "must not be empty")
	for i, b := range dl.Backoff {
		key := fmt.Sprintf("delivery.backoff[%d]", i)
		p.positive(key, b)
		// A retry waits in CALLBACKS_RETRY, whose max age is
		// retention.events: a longer wait would expire it unsent.
		if c.Retention.Events > 0 {
			p.check(b < c.Retention.Events, key, "must be shorter than retention.events (%s), how long a waiting retry is kept, got %s", c.Retention.Events, b)
		}
	}
	for i, s := range dl.AllowCIDRs {
		if _, err := netip.ParsePrefix(s); err != nil {
			p.add(fmt.Sprintf("delivery.allow_cidrs[%d]", i), "must be a CIDR such as 10.0.0.0/8, got %q", s)
		}
	}

	r := &c.Retention
	p.atLeastStreamMin("retention.events", r.Events)
	p.atLeastStreamMin("retention.dead", r.Dead)
	// JetStream refuses a de-duplication window longer than a stream's
	// max age; CALLBACKS, CALLBACKS_RETRY and CALLBACKS_DEAD have both.
	for _, ret := range []struct {
		key string
		d   time.Duration
	}{{"retention.events", r.Events}, {"retention.dead", r.Dead}} {
		if ret.d > 0 && n.Duplicates > ret.d {
			p.add(ret.key, "must be at least nats.duplicates (%s), the streams' de-duplication window, got %s", n.Duplicates, ret.d)
		}
	}
	p.atLeastStreamMin("retention.log", r.Log)
	p.check(r.LogBytes > 0, "retention.log_bytes", "must be > 0, got %s", r.LogBytes)

	pl := &c.Plugins
	p.oneOf("plugins.builtins", pl.Builtins, "process", "inprocess")
	p.positive("plugins.call_timeout", pl.CallTimeout)
	for _, typ := range slices.Sorted(maps.Keys(pl.Encoders)) {
		key := "plugins.encoders." + typ
		if err := subjects.ValidateEventType(typ); err != nil {
			p = append(p, &KeyError{Key: key, Err: err})
			continue
		}
		p.plugin(key, pl.Encoders[typ])
	}
	p.plugin("plugins.transport", pl.Transport)
	p.plugin("plugins.failure", pl.Failure)

	p.hostPort("api.listen", c.API.Listen)
	if t := c.API.Token; t != "" {
		p.check(len(t) >= MinAPITokenLen, "api.token", "must be at least %d characters (or unset: serve then generates one)", MinAPITokenLen)
		// It travels in an Authorization header, which cannot carry a
		// space at either end, a control character or a byte over 0x7E:
		// such a token would never match.
		p.check(!strings.ContainsFunc(t, func(r rune) bool { return r < 0x21 || r > 0x7e }), "api.token",
			"must be printable ASCII without spaces (it is sent as \"Authorization: Bearer <token>\")")
	}
	p.certKey("api.tls", c.API.TLS.Cert, c.API.TLS.Key)

	p.oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")
	p.oneOf("log.format", c.Log.Format, "text", "json")

	return errors.Join(p...)
}

// problems collects one *KeyError per wrong key.
type problems []error

func (p *problems) add(key, format string, args ...any) {
	*p = append(*p, &KeyError{Key: key, Err: fmt.Errorf(format, args...)})
}

func (p *problems) check(ok bool, key, format string, args ...any) {
	if !ok {
		p.add(key, format, args...)
	}
}

func (p *problems) atLeast1(key string, n int) {
	p.check(n >= 1, key, "must be at least 1, got %d", n)
}

func (p *problems) positive(key string, d time.Duration) {
	p.check(d > 0, key, "must be > 0, got %s", d)
}

// minStreamDuration is JetStream's least max age and de-duplication window.
const minStreamDuration = 100 * time.Millisecond

// atLeastStreamMin checks a stream's max age or de-duplication window, which
// JetStream refuses below 100ms with an API error that names no key.
func (p *problems) atLeastStreamMin(key string, d time.Duration) {
	p.check(d >= minStreamDuration, key, "must be at least %s (JetStream's least), got %s", minStreamDuration, d)
}

func (p *problems) oneOf(key, v string, allowed ...string) {
	p.check(slices.Contains(allowed, v), key, "must be one of %q, got %q", allowed, v)
}

// name checks a server or cluster name: no white space (nats-server's
// rule), no control characters, valid UTF-8.
func (p *problems) name(key, v string) {
	switch {
	case strings.ContainsAny(v, " \t\r\n"):
		p.add(key, "must not contain white space, got %q", v)
	case !utf8.ValidString(v) || strings.ContainsFunc(v, unicode.IsControl):
		p.add(key, "must not hold control characters or bytes that are not UTF-8, got %q", v)
	}
}

func (p *problems) hostPort(key, addr string) {
	_, port, err := net.SplitHostPort(addr)
	if err == nil {
		_, err = strconv.ParseUint(port, 10, 16)
	}
	p.check(err == nil, key, "must be host:port, got %q", addr)
}

// natsURLs checks a nats.url: one server URL or a comma-separated list,
// each nats://, tls://, ws:// or wss:// (or bare host:port, which nats.go
// reads as nats://) with a host and, when given, a port from 1 to 65535.
func (p *problems) natsURLs(key, list string) {
	parts := strings.Split(list, ",")
	for i, raw := range parts {
		s := strings.TrimSpace(raw)
		if !strings.Contains(s, "://") {
			s = "nats://" + s
		}
		u, err := url.Parse(s)
		ok := err == nil && slices.Contains([]string{"nats", "tls", "ws", "wss"}, u.Scheme) && u.Hostname() != ""
		if ok && strings.Contains(u.Hostname(), ":") { // only a bracketed IPv6 address
			_, err := netip.ParseAddr(u.Hostname())
			ok = err == nil && strings.HasPrefix(u.Host, "[")
		}
		if ok && u.Port() != "" {
			n, err := strconv.ParseUint(u.Port(), 10, 16)
			ok = err == nil && n > 0
		}
		if !ok {
			// Not echoed: a URL may hold a password.
			which := ""
			if len(parts) > 1 {
				which = fmt.Sprintf(" (entry %d of the list)", i+1)
			}
			p.add(key, "must be a NATS server URL such as nats://host:4222, or a comma-separated list of them%s", which)
			return
		}
	}
}

// certKey checks that a certificate and its key come together.
func (p *problems) certKey(prefix, cert, key string) {
	switch {
	case cert != "" && key == "":
		p.add(prefix+".key", "must be set with %s.cert", prefix)
	case cert == "" && key != "":
		p.add(prefix+".cert", "must be set with %s.key", prefix)
	}
}

func (p *problems) plugin(key string, e PluginEntry) {
	switch {
	case e.Builtin != "":
		if e.Path != "" || e.SHA256 != "" || len(e.Args) > 0 || len(e.Env) > 0 {
			p.add(key, "builtin:%s takes no path, sha256, args or env", e.Builtin)
		}
	case e.Path == "" && e.SHA256 == "":
		p.add(key, `want "builtin:<name>" with a name, or path and sha256`)
	default:
		if e.Path == "" {
			p.add(key+".path", "must be set with sha256")
		} else if !filepath.IsLocal(e.Path) {
			p.add(key+".path", "must be a file inside plugins.dir, got %q", e.Path)
		}
		b, err := hex.DecodeString(e.SHA256)
		p.check(err == nil && len(b) == 32, key+".sha256", "must be 64 hex characters, got %q", e.SHA256)
		for _, name := range slices.Sorted(maps.Keys(e.Env)) {
			p.check(name != "" && !strings.ContainsAny(name, "=\x00"), key+".env", "variable name %q: must not be empty or hold = or NUL", name)
			p.check(!strings.ContainsRune(e.Env[name], 0), key+".env."+name, "must not hold NUL")
			p.check(!slices.Contains(pluginProtocolEnv, name), key+".env."+name, "variable name %q: set by the plugin protocol (go-plugin's handshake), which would override it", name)
		}
	}
}

// pluginProtocolEnv are the variables go-plugin sets for the handshake
// whatever a plugin's env says: the magic cookie and its own settings.
var pluginProtocolEnv = []string{
	"CALLBACKD_PLUGIN", "PLUGIN_MIN_PORT", "PLUGIN_MAX_PORT", "PLUGIN_PROTOCOL_VERSIONS",
	"PLUGIN_UNIX_SOCKET_DIR", "PLUGIN_UNIX_SOCKET_GROUP", "PLUGIN_MULTIPLEX_GRPC",
}
