package host

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

func TestCheckDir(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		path string
		mode os.FileMode
		ok   bool
	}{
		"0755":            {path: dir, mode: 0o755, ok: true},
		"0700":            {path: dir, mode: 0o700, ok: true},
		"group-writable":  {path: dir, mode: 0o775},
		"world-writable":  {path: dir, mode: 0o757},
		"sticky and open": {path: dir, mode: 0o777 | os.ModeSticky},
		"missing":         {path: filepath.Join(dir, "nope")},
		"a file":          {path: file},
	} {
		t.Run(name, func(t *testing.T) {
			if c.mode != 0 {
				if err := os.Chmod(c.path, c.mode); err != nil {
					t.Fatal(err)
				}
			}
			err := CheckDir(c.path)
			if c.ok != (err == nil) || (err != nil && !errors.Is(err, ErrRefused)) {
				t.Errorf("CheckDir = %v", err)
			}
		})
	}
}

func TestVerifiedCopy(t *testing.T) {
	src := filepath.Join(t.TempDir(), "plugin")
	if err := os.WriteFile(src, []byte("#!/bin/sh\necho hi\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	sum, err := Checksum(src)
	if err != nil {
		t.Fatal(err)
	}
	exec := t.TempDir()
	cp, err := verifiedCopy(src, strings.ToUpper(sum), exec)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(cp)
	if err != nil || fi.Mode().Perm() != 0o500 || filepath.Dir(cp) != exec {
		t.Fatalf("copy %s: %v, %v", cp, fi, err)
	}
	if got, _ := os.ReadFile(cp); string(got) != "#!/bin/sh\necho hi\n" {
		t.Errorf("copy holds %q", got)
	}

	_, err = verifiedCopy(src, strings.Repeat("0", 64), exec)
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), sum) {
		t.Errorf("mismatch: %v", err)
	}
	if entries, _ := os.ReadDir(exec); len(entries) != 1 {
		t.Errorf("a refused copy was left behind: %d files", len(entries))
	}
}

func TestHCLogAdapter(t *testing.T) {
	var buf bytes.Buffer
	l := newHCLogger(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})), "crawl_failed")
	if l.IsDebug() || !l.IsInfo() || l.GetLevel() != hclog.Info {
		t.Errorf("levels: debug %v info %v level %v", l.IsDebug(), l.IsInfo(), l.GetLevel())
	}
	l.Debug("hidden")
	l.Named("sub").With("k", 1).Warn("careful", "plugin", "/tmp/copy", "timestamp", "x", "dangling")
	out := buf.String()
	for _, want := range []string{"level=WARN", `msg=careful`, "plugin=crawl_failed", "k=1", "plugin_path=/tmp/copy", "extra=dangling"} {
		if !strings.Contains(out, want) {
			t.Errorf("log %q lacks %q", out, want)
		}
	}
	if strings.Contains(out, "hidden") || strings.Contains(out, "timestamp=") {
		t.Errorf("log %q", out)
	}
	// A plugin's command line may hold a secret: not logged.
	buf.Reset()
	l.Info("starting plugin", "path", "/tmp/copy", "args", []string{"/tmp/copy", "--token=argsecret123"})
	if out := buf.String(); strings.Contains(out, "argsecret123") || !strings.Contains(out, `args="1, not shown"`) {
		t.Errorf("log %q", out)
	}
	// go-plugin's line about a process that exited is info: the
	// supervisor's error line is the one about a crash.
	buf.Reset()
	l.Error("plugin process exited", "path", "/tmp/copy", "error", "signal: killed")
	if out := buf.String(); !strings.Contains(out, "level=INFO") || !strings.Contains(out, `error="signal: killed"`) {
		t.Errorf("log %q", out)
	}
}

// A new manager removes the exec dirs of processes that are gone (killed
// before Close), and leaves alone those of running processes and those
// without an owner.
func TestNewManager_removes_exec_dirs_of_dead_processes(t *testing.T) {
	base := t.TempDir()
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	mk := func(name, owner string) string {
		t.Helper()
		d := filepath.Join(base, "callbackd-plugins-"+name)
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if owner != "" {
			if err := os.WriteFile(filepath.Join(d, "owner.pid"), []byte(owner), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		return d
	}
	gone := mk("gone", strconv.Itoa(dead.Process.Pid))
	live := mk("live", strconv.Itoa(os.Getppid()))
	unowned := mk("unowned", "")

	m, err := NewManager(Options{ExecDir: base})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(gone); !os.IsNotExist(err) {
		t.Errorf("exec dir of a dead process still there (%v)", err)
	}
	for _, d := range []string{live, unowned, m.execDir} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("%s: %v, want it kept", d, err)
		}
	}
	m.Close()
	if _, err := os.Stat(m.execDir); !os.IsNotExist(err) {
		t.Errorf("Close left its exec dir (%v)", err)
	}
}
