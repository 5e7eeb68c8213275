//go:build unix

package embedded

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// lockFile is the file in the data dir whose lock says a server owns it.
const lockFile = "embedded.lock"

// lockDataDir takes an exclusive lock on dataDir's lock file, so that a
// second callbackd cannot run a JetStream store in the same directory: two
// servers writing one store hand out the same stream sequences and lose
// each other's messages. The lock is the kernel's (flock): it ends with
// the process, kill -9 included, so a crash never leaves it behind.
// Close the returned file to release it.
func lockDataDir(dataDir string) (*os.File, error) {
	path := filepath.Join(dataDir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		owner := ""
		if b, rerr := os.ReadFile(path); rerr == nil {
			if pid := strings.TrimSpace(string(b)); pid != "" {
				owner = " (pid " + pid + ")"
			}
		}
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("data dir %s is in use by another callbackd serve%s: give each instance a data_dir of its own", dataDir, owner)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	// The owner's pid, for the message above; the lock, not the text,
	// is what counts.
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}
