package main

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/tether-chat/tether/internal/testbin"
	"github.com/tether-chat/tether/internal/testredis"
)

// unitSettings reads a systemd unit's Key=Value lines (the last of each).
func unitSettings(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m := map[string]string{}
	for sc := bufio.NewScanner(f); sc.Scan(); {
		line := strings.TrimSpace(sc.Text())
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			m[k] = v
		}
	}
	return m
}

// TestSystemdUnit: deploy/systemd/tether.service runs `tether serve` as a
// user of its own, restarts it on failure, raises the file limit and reads
// a TETHER_* environment file; systemd-analyze finds nothing wrong with it.
func TestSystemdUnit(t *testing.T) {
	unit := filepath.Join("..", "..", "deploy", "systemd", "tether.service")
	s := unitSettings(t, unit)
	if u := s["User"]; u == "" || u == "root" {
		t.Errorf("User=%q: the service must run as a user of its own", u)
	}
	if s["Restart"] != "on-failure" || s["EnvironmentFile"] == "" || !strings.HasSuffix(s["ExecStart"], "tether serve") {
		t.Errorf("Restart=%q EnvironmentFile=%q ExecStart=%q", s["Restart"], s["EnvironmentFile"], s["ExecStart"])
	}
	if n, _ := strconv.Atoi(s["LimitNOFILE"]); n < 65536 {
		t.Errorf("LimitNOFILE=%q: one open file per connection needs far more than the default", s["LimitNOFILE"])
	}
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("systemd-analyze is not installed (CI=true: a missing dependency is a failure; make test installs it)")
		}
		t.Skip("systemd-analyze is not installed; run `make test` to install it")
	}
	// Verified as installed: the binary and the environment file where the
	// unit expects them (here, in a temporary directory).
	dir := t.TempDir()
	b, _ := os.ReadFile(unit)
	text := strings.ReplaceAll(string(b), "/usr/local/bin/tether", tetherBin)
	envFile, err := filepath.Abs(filepath.Join("..", "..", "deploy", "systemd", "tether.env"))
	if err != nil {
		t.Fatal(err)
	}
	text = strings.ReplaceAll(text, "/etc/tether/tether.env", envFile)
	copyPath := filepath.Join(dir, "tether.service")
	if err := os.WriteFile(copyPath, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", copyPath).CombinedOutput()
	// A machine without a "tether" user or a running systemd may note
	// that; anything about the unit's own settings is a failure.
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line == "" || strings.Contains(line, "tether.service: ") && strings.Contains(line, "user") {
			continue
		}
		if strings.Contains(line, "tether.service") {
			t.Errorf("systemd-analyze verify: %s", line)
		}
	}
	if err != nil && t.Failed() {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestProductionEnvExample: deploy/systemd/tether.env holds only settings
// tether knows, with values it takes: a node started with exactly that
// environment (its address and Redis pointed at the test's) is ready.
func TestProductionEnvExample(t *testing.T) {
	redis := testredis.Start(t)
	f, err := os.Open(filepath.Join("..", "..", "deploy", "systemd", "tether.env"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	env := []string{"PATH=" + os.Getenv("PATH")}
	n := 0
	for sc := bufio.NewScanner(f); sc.Scan(); {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || !strings.HasPrefix(k, "TETHER_") {
			t.Fatalf("not a TETHER_ setting: %q", line)
		}
		switch k {
		case "TETHER_ADDR":
			v = addr
		case "TETHER_REDIS":
			v = redis.URL
		}
		env = append(env, k+"="+v)
		n++
	}
	if n < 8 {
		t.Fatalf("only %d settings in the example", n)
	}
	cmd := exec.Command(tetherBin, "serve")
	cmd.Env = env
	out, err := os.CreateTemp(t.TempDir(), "log")
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	testbin.WaitReady(t, addr, 200)
}
