// Package testbin builds the tether binary once for a test package whose
// tests run it as a real process (killed, restarted, piped).
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Main builds ./cmd/tether from the module at root (a path relative to the
// test package, e.g. "../..") into a temporary directory, sets *path to
// it, runs the tests and removes it. Call it from TestMain.
func Main(m *testing.M, root string, path *string) {
	dir, err := os.MkdirTemp("", "tether-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	*path = filepath.Join(dir, "tether")
	cmd := exec.Command("go", "build", "-o", *path, "./cmd/tether")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building tether: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
