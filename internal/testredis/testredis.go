// Package testredis starts a real redis-server for tests, on a free
// loopback port, and stops it when the test binary is done with it. Under
// CI=true a missing redis-server is a test failure, never a skip.
package testredis

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Server is a running redis-server process.
type Server struct {
	Addr string
	URL  string
	dir  string
	port int
	cmd  *exec.Cmd
}

// Require returns the path of redis-server, or skips the test (fails it
// under CI=true) when it is not installed.
func Require(t testing.TB) string {
	t.Helper()
	path, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("redis-server is not installed (CI=true: a missing dependency is a failure; make test installs it)")
		}
		t.Skip("redis-server is not installed; run `make test` to install it")
	}
	return path
}

// Start runs a fresh redis-server (no persistence) on a free port.
func Start(t testing.TB) *Server {
	t.Helper()
	Require(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	s := &Server{Addr: fmt.Sprintf("127.0.0.1:%d", port), port: port, dir: t.TempDir()}
	s.URL = "redis://" + s.Addr + "/0"
	s.start(t)
	t.Cleanup(s.Stop)
	return s
}

func (s *Server) start(t testing.TB) {
	t.Helper()
	s.cmd = exec.Command("redis-server", "--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir, "--logfile", filepath.Join(s.dir, "redis.log"))
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", s.Addr)
		if err == nil {
			c.Write([]byte("PING\r\n"))
			buf := make([]byte, 16)
			n, _ := c.Read(buf)
			c.Close()
			if strings.HasPrefix(string(buf[:n]), "+PONG") {
				return
			}
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
			t.Fatalf("redis-server did not start on %s:\n%s", s.Addr, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop kills the server (its data is gone: no persistence).
func (s *Server) Stop() {
	if s.cmd != nil && s.cmd.ProcessState == nil {
		s.cmd.Process.Signal(syscall.SIGKILL)
		s.cmd.Wait()
	}
}

// Restart stops the server and starts an empty one on the same port.
func (s *Server) Restart(t testing.TB, down time.Duration) {
	t.Helper()
	s.Stop()
	time.Sleep(down)
	s.start(t)
}
