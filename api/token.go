package api

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// TokenFile is the name of the generated admin token in the data dir.
const TokenFile = "admin.token"

// minTokenLen is the shortest token the server accepts from config.
const minTokenLen = 16

// TokenPath returns the path of the generated admin token in dataDir.
func TokenPath(dataDir string) string { return filepath.Join(dataDir, TokenFile) }

// LoadOrCreateToken returns the admin token kept in <dataDir>/admin.token,
// creating it on first start: 32 random bytes in hex, mode 0600, with
// dataDir created (or tightened) to mode 0700. created reports whether the
// file was made now. A token file that is empty or readable by group or
// others is an error: the token may have leaked.
func LoadOrCreateToken(dataDir string) (token string, created bool, err error) {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return "", false, fmt.Errorf("admin token: create data dir: %w", err)
	}
	if fi, err := os.Stat(dataDir); err == nil && fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(dataDir, 0o700); err != nil {
			return "", false, fmt.Errorf("admin token: data dir %s: %w", dataDir, err)
		}
	}
	path := TokenPath(dataDir)
	token, err = ReadToken(dataDir)
	if err == nil {
		return token, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", false, err
	}
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go ≥ 1.24)
	token = hex.EncodeToString(b)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		// Another process made it in between: use theirs.
		token, err = ReadToken(dataDir)
		return token, false, err
	}
	if err != nil {
		return "", false, fmt.Errorf("admin token: %w", err)
	}
	_, werr := f.WriteString(token + "\n")
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		_ = os.Remove(path)
		return "", false, fmt.Errorf("admin token: write %s: %w", path, err)
	}
	return token, true, nil
}

// ReadToken reads <dataDir>/admin.token. The error wraps fs.ErrNotExist when
// there is none.
func ReadToken(dataDir string) (string, error) {
	path := TokenPath(dataDir)
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("admin token: %s is mode %04o; it must be readable by its owner only (chmod 600 it, or delete it and restart callbackd serve to make a new one)", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return "", fmt.Errorf("admin token: %s is empty", path)
	}
	return token, nil
}

// tokenDigest is what requests are compared against: comparing fixed-size
// digests in constant time reveals neither the token nor its length.
func tokenDigest(token string) [32]byte { return sha256.Sum256([]byte(token)) }

// tokenMatches reports, in constant time, whether the request's token is
// the server's.
func tokenMatches(want [32]byte, got string) bool {
	g := tokenDigest(got)
	return subtle.ConstantTimeCompare(want[:], g[:]) == 1
}
