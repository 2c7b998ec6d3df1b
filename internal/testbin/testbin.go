// Package testbin builds the tether binary once for a test package whose
// tests run it as a real process (killed, restarted, piped), and watches
// such a process's readiness.
package testbin

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
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

// Readyz returns the status of a node's GET /readyz (0 when it does not
// answer within a second).
func Readyz(addr string) int {
	c := http.Client{Timeout: time.Second}
	r, err := c.Get("http://" + addr + "/readyz")
	if err != nil {
		return 0
	}
	r.Body.Close()
	return r.StatusCode
}

// WaitReady waits until a node's /readyz answers want, or fails the test
// after 20 s.
func WaitReady(t testing.TB, addr string, want int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for Readyz(addr) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s/readyz = %d, want %d", addr, Readyz(addr), want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
