package host

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// CheckDir returns an error wrapping ErrRefused when dir, plugins.dir, is
// missing, not a directory, or writable by its group or by others: anyone
// who can write there could swap a plugin between two launches (the
// checksum would catch it, but the plugin would then not start).
func CheckDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("%w: plugins.dir: %v", ErrRefused, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%w: plugins.dir %s is not a directory", ErrRefused, dir)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("%w: plugins.dir %s is group- or world-writable (mode %04o); chmod go-w it", ErrRefused, dir, perm)
	}
	return nil
}

// Checksum returns the hex SHA-256 of the file at path.
func Checksum(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer func() { _ = f.Close() }()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// resolvePluginPath returns the file of a plugin entry: rel inside dir.
// Config validation keeps rel local (no "..", not absolute).
func resolvePluginPath(dir, rel string) (string, error) {
	if !filepath.IsLocal(rel) {
		return "", fmt.Errorf("%w: path %q is not inside plugins.dir", ErrRefused, rel)
	}
	return filepath.Join(dir, rel), nil
}

// verifiedCopy copies the plugin file src into execDir, hashing exactly
// the bytes it writes, and returns the copy's path when their SHA-256 is
// want (hex). The copy, in a directory only callbackd can write, is what
// gets executed: whatever happens to src after the check, the bytes that
// run are the bytes that were checked (no check-then-exec race).
func verifiedCopy(src, want, execDir string) (string, error) {
	f, err := os.OpenFile(src, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return "", fmt.Errorf("%w: %s is a symbolic link; put the file itself in plugins.dir", ErrRefused, src)
		}
		return "", fmt.Errorf("%w: %v", ErrRefused, err)
	}
	defer func() { _ = f.Close() }()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrRefused, err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%w: %s is not a regular file", ErrRefused, src)
	}
	tmp, err := os.CreateTemp(execDir, filepath.Base(src)+".*")
	if err != nil {
		return "", fmt.Errorf("copy plugin for execution: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(tmp, h), f); err != nil {
		return "", fmt.Errorf("copy plugin for execution: %w", err)
	}
	got := hex.EncodeToString(h.Sum(nil))
	if !strings.EqualFold(got, want) {
		return "", fmt.Errorf("%w: checksum mismatch for %s: sha256 is %s, configured %s", ErrRefused, src, got, strings.ToLower(want))
	}
	if err := tmp.Chmod(0o500); err != nil {
		return "", fmt.Errorf("copy plugin for execution: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("copy plugin for execution: %w", err)
	}
	ok = true
	return tmp.Name(), nil
}
