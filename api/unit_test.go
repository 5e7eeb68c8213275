package api_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/callbackd/callbackd/api"
	"github.com/callbackd/callbackd/subjects"
)

func TestGlobalID(t *testing.T) {
	if got := api.GlobalID("Project", "123"); got != "TjAwNlByb2plY3QxMjM" {
		t.Fatalf("GlobalID = %s", got)
	}
	for _, c := range []struct {
		typ, in, want string
		ok            bool
	}{
		{"Project", "TjAwNlByb2plY3QxMjM", "123", true},
		{"Project", "TjAwNlByb2plY3QxMjM=", "123", true},
		{"Project", "123", "123", true},
		{"Project", "9223372036854775807", "9223372036854775807", true},
		{"Account", api.GlobalID("Account", "45"), "45", true},
		{"SsoClient", "TjAwNlNzb0NsaWVudDc3", "77", true},
		{"Account", "TjAwNlByb2plY3QxMjM", "", false},
		{"Project", "0123", "", false},
		{"Project", "", "", false},
		{"Project", "-1", "", false},
		{"Project", api.GlobalID("Project", "0"), "", false},
		{"Project", api.GlobalID("Project", "12a"), "", false},
		{"Project", "TjAwNlByb2plY3QxMjM==", "", false},
		{"Project", "%%%", "", false},
		{"Project", "TjAwNlByb2plY3QxMj", "", false},    // "N006Project12" in non-canonical base64 (trailing bits set)
		{"Project", "TjAwNlByb2plY3Qx\nMjM", "", false}, // base64 decoders skip CR and LF
		{"Project", "TjAwNlByb2plY3QxMjM\r\n", "", false},
		{"Project", "TjAwNlByb2plY3QxMjM=\n", "", false},
	} {
		got, err := api.ParseID(c.typ, c.in)
		if c.ok != (err == nil) || got != c.want {
			t.Errorf("ParseID(%s, %q) = %q, %v", c.typ, c.in, got, err)
		}
		if err != nil && !errors.Is(err, api.ErrBadID) {
			t.Errorf("ParseID(%s, %q): %v does not wrap ErrBadID", c.typ, c.in, err)
		}
	}
}

func TestLoadOrCreateToken(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	tok, created, err := api.LoadOrCreateToken(dir)
	if err != nil || !created || len(tok) != 64 {
		t.Fatalf("token %q created %v: %v", tok, created, err)
	}
	for path, want := range map[string]os.FileMode{dir: 0o700, api.TokenPath(dir): 0o600} {
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v (%v), want %04o", path, fi.Mode().Perm(), err, want)
		}
	}
	again, created, err := api.LoadOrCreateToken(dir)
	if err != nil || created || again != tok {
		t.Fatalf("second start: %q %v %v", again, created, err)
	}
	if got, err := api.ReadToken(dir); err != nil || got != tok {
		t.Fatalf("ReadToken = %q, %v", got, err)
	}

	// A token others could read is refused; a data dir others could list is
	// tightened.
	if err := os.Chmod(api.TokenPath(dir), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := api.ReadToken(dir); err == nil {
		t.Fatal("a 0644 token was accepted")
	}
	if err := os.Chmod(api.TokenPath(dir), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, _, err := api.LoadOrCreateToken(dir); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Errorf("data dir mode %v", fi.Mode().Perm())
	}
	if _, err := api.ReadToken(t.TempDir()); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("no token: %v", err)
	}
}

// IDs come from API clients: ParseID never panics, accepts only what names
// an ID of the type, and the global ID of what it returns parses back.
func FuzzParseID(f *testing.F) {
	for _, s := range []string{"TjAwNlByb2plY3QxMjM", "TjAwNlByb2plY3QxMjM=", "123", "0123", "", "TjAwNkFjY291bnQ3", "N006Project1", "=="} {
		f.Add("Project", s)
		f.Add("Account", s)
	}
	f.Fuzz(func(t *testing.T, typ, s string) {
		num, err := api.ParseID(typ, s)
		if err != nil {
			if !errors.Is(err, api.ErrBadID) {
				t.Fatalf("ParseID(%q, %q): %v does not wrap ErrBadID", typ, s, err)
			}
			return
		}
		if subjects.ValidateID(num) != nil {
			t.Fatalf("ParseID(%q, %q) = %q, not an ID", typ, s, num)
		}
		if back, err := api.ParseID(typ, api.GlobalID(typ, num)); err != nil || back != num {
			t.Fatalf("ParseID(%q, GlobalID(%q)) = %q, %v", typ, num, back, err)
		}
	})
}
