package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callbackd/callbackd/config"
)

func TestRedactURLs_drops_userinfo_of_every_server(t *testing.T) {
	got := redactURLs("nats://u:p@a:4222, tls://tok@b:4222,nats://c:4222")
	if want := "nats://a:4222,tls://b:4222,nats://c:4222"; got != want {
		t.Fatalf("redactURLs = %q, want %q", got, want)
	}
	for in, want := range map[string]string{
		"alice:SECRETPW@10.0.0.1:4222":      "10.0.0.1:4222", // no scheme: the client adds nats://
		"nats://h:1?x=QSECRET#frag":         "nats://h:1",
		"a:4222":                            "a:4222",
		"nats://u:p%zz@h:4222":              "h:4222", // does not parse
		"ws://u:SECRET@h:443/path?token=QS": "ws://h:443/path",
	} {
		if got := redactURLs(in); got != want {
			t.Errorf("redactURLs(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestDialableAddr_turns_wildcards_into_loopback(t *testing.T) {
	for in, want := range map[string]string{
		"0.0.0.0:4222":   "127.0.0.1:4222",
		":4222":          "127.0.0.1:4222",
		"[::]:4222":      "127.0.0.1:4222",
		"10.0.0.5:4222":  "10.0.0.5:4222",
		"nats.lan:4222":  "nats.lan:4222",
		"127.0.0.1:4222": "127.0.0.1:4222",
	} {
		if got := dialableAddr(in); got != want {
			t.Errorf("dialableAddr(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestReconnectDelay_grows_to_a_cap_with_jitter(t *testing.T) {
	prev := time.Duration(0)
	for a := 1; a <= 20; a++ {
		d := reconnectDelay(a)
		if d < 250*time.Millisecond || d > 10*time.Second {
			t.Fatalf("attempt %d: %s out of [250ms, 10s]", a, d)
		}
		if a <= 6 && d < prev*3/4 {
			t.Fatalf("attempt %d: %s after %s does not grow", a, d, prev)
		}
		prev = d
	}
}

func TestClusterForming_retries_only_what_a_forming_cluster_answers(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&jetstream.APIError{ErrorCode: 10023, Description: "insufficient resources"}, true},
		{fmt.Errorf("ensure stream X: %w", &jetstream.APIError{ErrorCode: 10005}), true},
		{&jetstream.APIError{ErrorCode: 10008}, true},
		{fmt.Errorf("wrapped: %w", context.DeadlineExceeded), true},
		{nats.ErrNoResponders, true},
		{&jetstream.APIError{ErrorCode: 10074, Description: "replicas > 1 not supported in non-clustered mode"}, false},
		{&jetstream.APIError{ErrorCode: 10058}, false},
		{errors.New("permission denied"), false},
	} {
		if got := clusterForming(tc.err); got != tc.want {
			t.Errorf("clusterForming(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// "Insufficient resources" is a forming cluster's answer only in a cluster:
// a server on its own says it of its storage, which waiting does not fix.
func TestJetStreamRetry_insufficient_resources_alone_is_final(t *testing.T) {
	insufficient := fmt.Errorf("ensure stream X: %w", &jetstream.APIError{ErrorCode: 10023, Description: "insufficient resources"})
	if !jetStreamRetry(true)(insufficient) {
		t.Error("clustered: insufficient resources not retried")
	}
	if jetStreamRetry(false)(insufficient) {
		t.Error("single server: insufficient resources retried")
	}
	if !jetStreamRetry(false)(nats.ErrNoResponders) {
		t.Error("single server: no responders (JetStream starting) not retried")
	}
}

func TestRetryJetStream_stops_at_a_permanent_error_and_retries_transient_ones(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	calls := 0
	err := retryJetStream(context.Background(), log, time.Minute, time.Second, "x", func(context.Context) error {
		calls++
		if calls < 3 {
			return &jetstream.APIError{ErrorCode: 10023}
		}
		return nil
	}, clusterForming)
	if err != nil || calls != 3 {
		t.Fatalf("transient: err %v after %d calls, want nil after 3", err, calls)
	}
	calls = 0
	perm := &jetstream.APIError{ErrorCode: 10074}
	err = retryJetStream(context.Background(), log, time.Minute, time.Second, "x", func(context.Context) error {
		calls++
		return perm
	}, clusterForming)
	if !errors.Is(err, perm) || calls != 1 {
		t.Fatalf("permanent: err %v after %d calls, want it at once", err, calls)
	}
	err = retryJetStream(context.Background(), log, 300*time.Millisecond, time.Second, "JetStream", func(context.Context) error {
		return nats.ErrNoResponders
	}, clusterForming)
	if err == nil || !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("bounded: err %v, want the last error after the deadline", err)
	}
}

func TestEmbeddedOptions_carry_auth_TLS_and_cluster(t *testing.T) {
	cfg := config.Default()
	cfg.NATS.Auth = config.Auth{User: "u", Password: "p"}
	cfg.NATS.TLS = config.TLS{Cert: "c", Key: "k", CA: "a"}
	cfg.NATS.Cluster = config.Cluster{Name: "site", Listen: "0.0.0.0:6222", Routes: []string{"nats://a:6222"},
		TLS: config.TLS{Cert: "cc", Key: "ck", CA: "ca"}}
	o := embeddedOptions(cfg, slog.New(slog.DiscardHandler))
	if o.Auth.User != "u" || o.Auth.Password != "p" || o.TLS.CA != "a" || o.Cluster.Name != "site" ||
		o.Cluster.Routes[0] != "nats://a:6222" || o.Cluster.TLS.CA != "ca" || o.DataDir != cfg.DataDir {
		t.Fatalf("embeddedOptions = %+v", o)
	}
}

func TestDialNATS_without_a_listener_says_why(t *testing.T) {
	cfg := config.Default()
	cfg.NATS.Listen = ""
	if _, err := dialNATS(cfg, slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("dialNATS without nats.listen succeeded")
	}
	cfg = config.Default()
	cfg.NATS.Embedded, cfg.NATS.URL = false, "nats://user:hunter2@127.0.0.1:1"
	_, err := dialNATS(cfg, slog.New(slog.DiscardHandler))
	if err == nil {
		t.Fatal("dialNATS to a closed port succeeded")
	}
	if s := err.Error(); strings.Contains(s, "hunter2") {
		t.Fatalf("error shows the password: %s", s)
	}
}

// An embedded client or route listener beyond loopback without auth or TLS
// is warned about; one on loopback, or with both, is not.
func TestWarnOpenListener(t *testing.T) {
	tcp := func(ip string) net.Addr { return &net.TCPAddr{IP: net.ParseIP(ip), Port: 4222} }
	for _, tc := range []struct {
		name   string
		n      config.NATS
		addr   net.Addr
		routes net.Addr
		want   []string // substrings of the warnings, in order
	}{
		{"loopback", config.NATS{}, tcp("127.0.0.1"), nil, nil},
		{"IPv6 loopback", config.NATS{}, tcp("::1"), nil, nil},
		{"in-process only", config.NATS{}, nil, nil, nil},
		{"wildcard, nothing", config.NATS{}, tcp("0.0.0.0"), nil, []string{"without nats.auth", "without TLS"}},
		{"IPv6 wildcard, nothing", config.NATS{}, tcp("::"), nil, []string{"without nats.auth", "without TLS"}},
		{"address, auth only", config.NATS{Auth: config.Auth{Token: "t"}}, tcp("10.0.0.5"), nil, []string{"without TLS"}},
		{"address, auth and TLS", config.NATS{Auth: config.Auth{User: "u", Password: "p"},
			TLS: config.TLS{Cert: "c.pem", Key: "k.pem"}}, tcp("10.0.0.5"), nil, nil},
		{"routes on loopback", config.NATS{}, tcp("127.0.0.1"), tcp("127.0.0.1"), nil},
		{"routes beyond loopback, nothing", config.NATS{}, tcp("127.0.0.1"), tcp("0.0.0.0"),
			[]string{"cluster routes listen beyond loopback without nats.auth", "cluster routes listen beyond loopback without TLS"}},
		{"routes beyond loopback, auth and client TLS only", config.NATS{Auth: config.Auth{Token: "t"},
			TLS: config.TLS{Cert: "c.pem", Key: "k.pem"}}, tcp("10.0.0.5"), tcp("10.0.0.5"), []string{"cluster routes listen beyond loopback without TLS"}},
		{"routes beyond loopback, auth and route TLS", config.NATS{Auth: config.Auth{Token: "t"}, TLS: config.TLS{Cert: "c.pem", Key: "k.pem"},
			Cluster: config.Cluster{TLS: config.TLS{Cert: "c.pem", Key: "k.pem", CA: "ca.pem"}}}, tcp("10.0.0.5"), tcp("10.0.0.5"), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf strings.Builder
			warnOpenListener(tc.n, tc.addr, tc.routes, slog.New(slog.NewTextHandler(&buf, nil)))
			lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
			if buf.Len() == 0 {
				lines = nil
			}
			if len(lines) != len(tc.want) {
				t.Fatalf("%d warnings, want %d:\n%s", len(lines), len(tc.want), buf.String())
			}
			for i, w := range tc.want {
				if !strings.Contains(lines[i], w) {
					t.Errorf("warning %d = %q, want it to say %q", i, lines[i], w)
				}
			}
		})
	}
}
