package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

// TestDist: `make dist` (scripts/dist.sh), for the host only, builds a
// static binary with the version and commit stamped in and a SHA256SUMS
// that matches it; the binary says its version.
func TestDist(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a release binary")
	}
	dir := t.TempDir()
	cmd := exec.Command("../../scripts/dist.sh")
	cmd.Env = append(os.Environ(), "TARGETS=host", "VERSION=v9.9.9-test", "DIST_DIR="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("dist.sh: %v\n%s", err, out)
	}
	name := "tether-v9.9.9-test-" + runtime.GOOS + "-" + runtime.GOARCH
	if runtime.GOOS == "windows" {
		name += ".exe"
	}
	bin := filepath.Join(dir, name)
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	sums, err := os.Open(filepath.Join(dir, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	defer sums.Close()
	sum := sha256.Sum256(data)
	found := false
	for sc := bufio.NewScanner(sums); sc.Scan(); {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[1] == name {
			found = f[0] == hex.EncodeToString(sum[:])
		}
	}
	if !found {
		t.Fatalf("SHA256SUMS has no matching line for %s", name)
	}
	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^tether v9\.9\.9-test \(protocol v1; commit [0-9a-f]{7,12}(\+dirty)?, go[0-9.]+, ` + runtime.GOOS + "/" + runtime.GOARCH + `\)\n$`).Match(out) {
		t.Fatalf("tether version = %q", out)
	}
	info, err := exec.Command("go", "version", "-m", bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath=true"} {
		if !strings.Contains(string(info), want) {
			t.Errorf("the release binary was not built with %s:\n%s", want, info)
		}
	}
}

// TestGoInstall: the README's install line from a checkout works.
func TestGoInstall(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	dir := t.TempDir()
	cmd := exec.Command("go", "install", "./cmd/tether")
	cmd.Dir = filepath.Join("..", "..")
	cmd.Env = append(os.Environ(), "GOBIN="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go install ./cmd/tether: %v\n%s", err, out)
	}
	out, err := exec.Command(filepath.Join(dir, "tether"), "version").Output()
	if err != nil || !strings.HasPrefix(string(out), "tether dev (protocol v1; ") {
		t.Fatalf("tether version = %q, %v", out, err)
	}
}
