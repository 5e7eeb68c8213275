//go:build !unix

package embedded

import "os"

// lockDataDir takes no lock where flock is not available.
func lockDataDir(string) (*os.File, error) { return nil, nil }
