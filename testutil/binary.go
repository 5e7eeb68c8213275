package testutil

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// BinaryVersion is the version stamped into the binary BuildBinary makes, so
// a test can expect "User-Agent: callbackd/" + BinaryVersion.
const BinaryVersion = "test"

var build struct {
	once sync.Once
	path string
	err  error
}

// mainPackage is callbackd's main package.
const mainPackage = "github.com/callbackd/callbackd/cmd/callbackd"

// BuildBinary builds callbackd (mainPackage, as the test's module resolves
// it: this repository's, or the version a plugin's own module requires)
// once per test process,
// with main.version set to BinaryVersion, and returns the executable's path.
// The binary goes beside the test binary, in the work directory that
// `go test` removes when it is done (or in a fresh temporary directory when
// that one is not writable).
func BuildBinary(t testing.TB) string {
	t.Helper()
	build.once.Do(func() { build.path, build.err = buildBinary() })
	if build.err != nil {
		t.Fatalf("build callbackd: %v", build.err)
	}
	return build.path
}

func buildBinary() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside a Go module")
	}
	root := filepath.Dir(gomod)

	dir := ""
	if exe, err := os.Executable(); err == nil {
		d := filepath.Join(filepath.Dir(exe), "callbackd-bin")
		if os.MkdirAll(d, 0o755) == nil {
			dir = d
		}
	}
	if dir == "" {
		if dir, err = os.MkdirTemp("", "callbackd-bin-"); err != nil {
			return "", err
		}
	}
	bin := filepath.Join(dir, "callbackd")
	// By import path, not ./cmd/callbackd: a copy of a plugin example in a
	// module of its own (requiring callbackd, or replacing it with a
	// checkout) builds the callbackd it depends on.
	cmd := exec.Command("go", "build", "-o", bin, "-ldflags", "-X main.version="+BinaryVersion, mainPackage)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", mainPackage, err, out)
	}
	return bin, nil
}

// FreeAddr returns a loopback address ("127.0.0.1:<port>") whose port was
// free a moment ago.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

// SyncBuffer is a bytes.Buffer safe for a writer and concurrent readers:
// a command's output, or a logger's, read while it runs.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Process is a subprocess started by StartBinary.
type Process struct {
	cmd    *exec.Cmd
	stdout SyncBuffer
	stderr SyncBuffer
	done   chan struct{}
	err    error // of Wait, valid once done is closed
}

// StartBinary starts bin with args as a subprocess, its stdout and stderr
// kept in buffers. It gets the test's environment without any CALLBACKD_
// variable, so that its configuration comes from its arguments alone. At
// cleanup it is killed if still running, and when the test failed its
// output is logged.
func StartBinary(t testing.TB, bin string, args ...string) *Process {
	t.Helper()
	p := &Process{cmd: exec.Command(bin, args...), done: make(chan struct{})}
	p.cmd.Env = []string{} // not nil: nil would mean the whole environment
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CALLBACKD_") {
			p.cmd.Env = append(p.cmd.Env, kv)
		}
	}
	p.cmd.Stdout = &p.stdout
	p.cmd.Stderr = &p.stderr
	p.cmd.Stdin = nil
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("%s %s: exit %d\n--- stdout\n%s\n--- stderr\n%s", filepath.Base(bin), strings.Join(args, " "), p.ExitCode(), p.Stdout(), p.Stderr())
		}
	})
	return p
}

// RunBinary runs bin with args to completion (killing it after total) and
// returns its stdout, stderr and exit code.
func RunBinary(t testing.TB, total time.Duration, bin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	p := StartBinary(t, bin, args...)
	code = p.Wait(t, total)
	return p.Stdout(), p.Stderr(), code
}

// Signal sends sig to the process.
func (p *Process) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Kill kills the process if it is still running.
func (p *Process) Kill() {
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Kill()
	}
}

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Wait waits up to total for the process to exit and returns its exit code;
// it fails the test (after killing the process) when it does not exit in
// time.
func (p *Process) Wait(t testing.TB, total time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.ExitCode()
	case <-time.After(total):
		p.Kill()
		<-p.done
		t.Fatalf("%s did not exit within %s\n--- stderr\n%s", p.cmd.Path, total, p.Stderr())
		return -1
	}
}

// ExitCode is the exit code of a process that has exited (-1 when a signal
// ended it, or while it is running).
func (p *Process) ExitCode() int {
	select {
	case <-p.done:
	default:
		return -1
	}
	if p.cmd.ProcessState == nil {
		return -1
	}
	return p.cmd.ProcessState.ExitCode()
}

// Stdout is what the process has written to stdout so far.
func (p *Process) Stdout() string { return p.stdout.String() }

// Stderr is what the process has written to stderr so far.
func (p *Process) Stderr() string { return p.stderr.String() }

// Pid is the process's ID.
func (p *Process) Pid() int { return p.cmd.Process.Pid }
