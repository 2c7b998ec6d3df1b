package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/tether-chat/tether/internal/testbin"
	"github.com/tether-chat/tether/internal/testnet"
)

var tetherBin string

func TestMain(m *testing.M) { testbin.Main(m, "../..", &tetherBin) }

func startServerProc(t *testing.T, addr string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(tetherBin, append([]string{"serve", "--addr", addr, "--log-level", "warn"}, args...)...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	for deadline := time.Now().Add(10 * time.Second); ; {
		if r, err := http.Get("http://" + addr + "/healthz"); err == nil {
			r.Body.Close()
			return cmd
		}
		if time.Now().After(deadline) {
			t.Fatal("server did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// chatProc is a `tether chat --json` process fed through a pipe.
type chatProc struct {
	t      *testing.T
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	events chan map[string]any
}

func startChat(t *testing.T, addr, user string) *chatProc {
	t.Helper()
	cmd := exec.Command(tetherBin, "chat", "--url", "ws://"+addr+"/ws", "--user", user, "--json")
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &chatProc{t: t, name: user, cmd: cmd, stdin: stdin, events: make(chan map[string]any, 1000)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var ev map[string]any
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				t.Errorf("%s printed a line that is not JSON: %q", user, sc.Text())
				continue
			}
			p.events <- ev
		}
		close(p.events)
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return p
}

func (p *chatProc) say(line string) {
	p.t.Helper()
	if _, err := io.WriteString(p.stdin, line+"\n"); err != nil {
		p.t.Fatalf("%s: %v", p.name, err)
	}
}

// expect waits for an event of type typ whose payload field key is want.
func (p *chatProc) expect(typ, key, want string) map[string]any {
	p.t.Helper()
	deadline := time.After(15 * time.Second)
	for {
		select {
		case ev, ok := <-p.events:
			if !ok {
				p.t.Fatalf("%s exited while waiting for %s %s=%q", p.name, typ, key, want)
			}
			pl, _ := ev["payload"].(map[string]any)
			if ev["type"] == typ && fmt.Sprint(pl[key]) == want {
				return pl
			}
		case <-deadline:
			p.t.Fatalf("%s: no %s with %s=%q", p.name, typ, key, want)
		}
	}
}

func TestChatProcessesTalkAcrossAServerRestart(t *testing.T) {
	addr := testnet.FreeAddr(t)
	srv := startServerProc(t, addr)
	bob := startChat(t, addr, "bob")
	bob.expect("state", "State", "OPEN")
	alice := startChat(t, addr, "alice")
	alice.expect("state", "State", "OPEN")

	alice.say("hello bob")
	if m := bob.expect("chat", "text", "hello bob"); m["from"] != "alice" || m["room"] != "general" {
		t.Fatalf("bob got %v", m)
	}
	alice.say("/dm bob psst")
	bob.expect("direct", "text", "psst")

	srv.Process.Signal(syscall.SIGTERM)
	srv.Wait()
	alice.expect("state", "State", "RECONNECTING")
	bob.expect("state", "State", "RECONNECTING")
	alice.say("typed while the server was down")
	startServerProc(t, addr)

	bob.expect("state", "State", "OPEN") // the welcome comes before anything else on the new connection
	bob.expect("chat", "text", "typed while the server was down")
	alice.say("/dm bob after the restart")
	bob.expect("direct", "text", "after the restart")
	bob.say("/dm alice got everything")
	alice.expect("direct", "text", "got everything")

	// End of input: alice exits once everything she typed was acknowledged.
	alice.stdin.Close()
	done := make(chan error, 1)
	go func() { done <- alice.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("alice exited with %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("alice did not exit after the end of her input")
	}
	bob.expect("presence", "user", "alice") // her clean exit is a leave at once
}
