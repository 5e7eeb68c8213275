package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/callbackd/callbackd/plugins"
	"github.com/callbackd/callbackd/plugins/host"
	"github.com/callbackd/callbackd/plugins/plugintest"
)

var build struct {
	once sync.Once
	path string
	err  error
	out  []byte
}

// buildPlugin builds this example as a separate binary, once per test run,
// and returns a fresh plugins dir (mode 0755) holding it, with its SHA-256.
func buildPlugin(t *testing.T) (dir, sum string) {
	t.Helper()
	build.once.Do(func() {
		d, err := os.MkdirTemp("", "crawl_failed-build-")
		if err != nil {
			build.err = err
			return
		}
		build.path = filepath.Join(d, "crawl_failed")
		cmd := exec.Command("go", "build", "-o", build.path, ".")
		build.out, build.err = cmd.CombinedOutput()
	})
	if build.err != nil {
		t.Fatalf("go build: %v\n%s", build.err, build.out)
	}
	dir = filepath.Join(t.TempDir(), "plugins")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(build.path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "crawl_failed"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	sum, err = host.Checksum(filepath.Join(dir, "crawl_failed"))
	if err != nil {
		t.Fatal(err)
	}
	return dir, sum
}

// TestPlugin_through_the_host runs the built plugin the way callbackd does
// (checksum verified, clean environment, go-plugin over gRPC) and runs the
// conformance suite through it.
func TestPlugin_through_the_host(t *testing.T) {
	dir, sum := buildPlugin(t)
	m, err := host.NewManager(host.Options{Dir: dir, ExecDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	p, err := m.Launch(context.Background(), host.Spec{
		Name: "crawl_failed", Path: "crawl_failed", SHA256: sum, Kinds: []string{plugins.PluginEncoder},
	})
	if err != nil {
		t.Fatal(err)
	}
	enc, info, err := p.Encoder("crawl_failed")
	if err != nil {
		t.Fatal(err)
	}
	if info.EventType != "crawl_failed" || len(info.IDFields) != 1 || info.IDFields[0] != "crawl_id" {
		t.Errorf("info = %+v", info)
	}
	plugintest.TestEncoder(t, func(*testing.T) plugins.Encoder { return enc }, cases)
}
