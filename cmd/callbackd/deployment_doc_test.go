package main_test

import (
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/spf13/pflag"

	"github.com/callbackd/callbackd/config"
	"github.com/callbackd/callbackd/testutil"
)

// docBlocks returns the fenced code blocks of a Markdown file whose info
// string is lang and whose first line starts with marker.
func docBlocks(t *testing.T, path, lang, marker string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var blocks []string
	var cur []string
	in := false
	for _, line := range strings.Split(string(b), "\n") {
		switch {
		case !in && line == "```"+lang:
			in, cur = true, nil
		case in && line == "```":
			in = false
			if len(cur) > 0 && strings.HasPrefix(cur[0], marker) {
				blocks = append(blocks, strings.Join(cur, "\n")+"\n")
			}
		case in:
			cur = append(cur, line)
		}
	}
	return blocks
}

// The config files of docs/deployment.md load and validate as they are,
// and every one whose NATS is reachable beyond loopback sets auth and TLS
// (SPEC §8 Security).
func TestDeploymentDoc_callbackd_configs_are_valid_and_secure(t *testing.T) {
	blocks := docBlocks(t, "../../docs/deployment.md", "yaml", "# callbackd config")
	if len(blocks) != 3 {
		t.Fatalf("found %d callbackd configs in docs/deployment.md, want 3", len(blocks))
	}
	for _, block := range blocks {
		name := strings.TrimPrefix(strings.SplitN(block, "\n", 2)[0], "# callbackd config: ")
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "callbackd.yaml")
			if err := os.WriteFile(path, []byte(block), 0o600); err != nil {
				t.Fatal(err)
			}
			fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
			config.RegisterFlags(fs)
			if err := fs.Set("config", path); err != nil {
				t.Fatal(err)
			}
			cfg, warnings, err := config.Load(fs, nil)
			if err != nil {
				t.Fatalf("load: %v", err)
			}
			if len(warnings) > 0 {
				t.Errorf("warnings: %v", warnings)
			}
			n := cfg.NATS
			beyondLoopback := !n.Embedded || n.Cluster.Listen != ""
			if host, _, err := net.SplitHostPort(n.Listen); n.Embedded && err == nil {
				if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
					beyondLoopback = true
				}
			}
			hasAuth := n.Auth.User != "" || n.Auth.Token != "" || n.Credentials != ""
			if !hasAuth && n.Listen != "" {
				t.Error("no nats.auth: every local process could read the settings")
			}
			if beyondLoopback {
				if n.Embedded && n.TLS.Cert == "" {
					t.Error("NATS listens beyond loopback without nats.tls")
				}
				if !n.Embedded && n.TLS.CA == "" {
					t.Error("external NATS without nats.tls.ca")
				}
				if n.Cluster.Listen != "" && n.Cluster.TLS.CA == "" {
					t.Error("cluster routes without nats.cluster.tls")
				}
				if n.Replicas != 3 {
					t.Errorf("nats.replicas = %d in a site recipe, want 3", n.Replicas)
				}
			}
		})
	}
}

// The nats-server.conf of docs/deployment.md parses with nats-server's own
// parser (TLS files included, stand-ins made by a test CA).
func TestDeploymentDoc_nats_server_conf_parses(t *testing.T) {
	blocks := docBlocks(t, "../../docs/deployment.md", "conf", "# nats-server.conf")
	if len(blocks) != 1 {
		t.Fatalf("found %d nats-server.conf blocks, want 1", len(blocks))
	}
	ca := testutil.NewCA(t)
	ca.Issue(t, "node")
	tlsDir := filepath.Dir(ca.File)
	conf := strings.ReplaceAll(blocks[0], "/etc/nats/tls/", tlsDir+"/")
	conf = strings.ReplaceAll(conf, "/var/lib/nats", t.TempDir())
	path := filepath.Join(t.TempDir(), "nats-server.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("nats-server.conf: %v", err)
	}
	verify := opts.TLSConfig != nil && opts.TLSConfig.ClientAuth == tls.RequireAndVerifyClientCert
	if !opts.JetStream || len(opts.Routes) != 3 || opts.Cluster.TLSConfig == nil || !verify {
		t.Errorf("parsed: jetstream %v, %d routes, cluster TLS %v, client certificates required %v",
			opts.JetStream, len(opts.Routes), opts.Cluster.TLSConfig != nil, verify)
	}
}
