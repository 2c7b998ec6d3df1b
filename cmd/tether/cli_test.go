package main

import (
	"bytes"
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/tether-chat/tether/internal/testnet"
)

// runChat runs `tether chat` with input on its standard input (a pipe, as
// in a CI job) and returns its exit status and everything it printed.
func runChat(t *testing.T, input string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, tetherBin, append([]string{"chat"}, args...)...)
	cmd.Stdin = strings.NewReader(input)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, out.String()
}

// TestPipeJoinsBeforeItSends: the README's CI line delivers its message
// every time (it used to send before its join was processed: not_member),
// and exits 0 only then.
func TestPipeJoinsBeforeItSends(t *testing.T) {
	addr := testnet.FreeAddr(t)
	startServerProc(t, addr)
	watcher := startChat(t, addr, "watcher")
	watcher.expect("state", "State", "OPEN")
	watcher.say("/join ops")
	watcher.expect("members", "room", "ops")
	for i := range 4 {
		code, out := runChat(t, "deploy finished\n", "--url", "ws://"+addr+"/ws", "--user", "ci", "--room", "ops")
		if code != 0 {
			t.Fatalf("run %d: exit %d:\n%s", i+1, code, out)
		}
		if m := watcher.expect("chat", "text", "deploy finished"); m["room"] != "ops" || m["from"] != "ci" {
			t.Fatalf("run %d: the watcher got %v", i+1, m)
		}
	}
}

// TestPipeExitStatusSaysWhatFailed: a pipe that cannot deliver exits 1
// and says why: a token refused (4401), a handshake refused (HTTP 400, not
// retried forever), no server at all (within --connect-timeout), a
// message refused.
func TestPipeExitStatusSaysWhatFailed(t *testing.T) {
	addr := testnet.FreeAddr(t)
	startServerProc(t, addr)
	url := "ws://" + addr + "/ws"
	for _, tc := range []struct {
		name  string
		input string
		args  []string
		want  string
	}{
		{"handshake refused", "hi\n", []string{"--url", url, "--user", "a b"}, "HTTP 400"},
		{"nobody listening", "hi\n", []string{"--url", "ws://" + testnet.FreeAddr(t) + "/ws", "--user", "x", "--connect-timeout", "1s"}, "connection refused"},
		{"message refused", "/dm nobody hello\n", []string{"--url", url, "--user", "x"}, "user_offline"},
	} {
		code, out := runChat(t, tc.input, tc.args...)
		if code != 1 || !strings.Contains(out, tc.want) {
			t.Errorf("%s: exit %d, output:\n%s\nwant exit 1 and %q", tc.name, code, out, tc.want)
		}
	}

	tokenAddr := testnet.FreeAddr(t)
	startServerProc(t, tokenAddr, "--auth-secret", "k")
	code, out := runChat(t, "hi\n", "--url", "ws://"+tokenAddr+"/ws", "--user", "x")
	if code != 1 || !strings.Contains(out, "4401") || !strings.Contains(out, "token required") {
		t.Errorf("no token: exit %d, output:\n%s\nwant exit 1 and the 4401 reason", code, out)
	}
}

// TestChatCommandsAnswerForThemselves: /dm without arguments says how to
// use it (not the server's bad_user), and a private message is confirmed
// to its sender, who gets no copy of it otherwise.
func TestChatCommandsAnswerForThemselves(t *testing.T) {
	addr := testnet.FreeAddr(t)
	startServerProc(t, addr)
	bob := startChat(t, addr, "bob")
	bob.expect("state", "State", "OPEN")
	code, out := runChat(t, "/dm\n/dm bob hi there\n/nope\n", "--url", "ws://"+addr+"/ws", "--user", "alice")
	for _, want := range []string{"-- usage: /dm USER TEXT", "-- (sent) @bob hi there", "unknown command /nope"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	bob.expect("direct", "text", "hi there")
}

// TestHelpEverywhere: every command answers --help on standard output
// with exit 0; the top level lists the commands; a bad flag is one short
// error, exit 2.
func TestHelpEverywhere(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--help"}, []string{"chat", "serve", "token", "bench", "tether COMMAND --help"}},
		{[]string{"help"}, []string{"chat", "serve"}},
		{[]string{"chat", "--help"}, []string{"/dm USER TEXT", "/join ROOM", "/who", "/quit", "-room", "exit status"}},
		{[]string{"token", "--help"}, []string{"-user", "-ttl"}},
		{[]string{"serve", "--help"}, []string{"-addr", "TETHER_"}},
	} {
		var out, errb bytes.Buffer
		if code := run(tc.args, &out, &errb); code != 0 {
			t.Errorf("%v: exit %d (%s)", tc.args, code, errb.String())
		}
		for _, w := range tc.want {
			if !strings.Contains(out.String(), w) {
				t.Errorf("%v: the help lacks %q", tc.args, w)
			}
		}
	}
	for _, args := range [][]string{{"chat", "--nope"}, {"serve", "--nope"}, {"token", "--nope"}} {
		var out, errb bytes.Buffer
		code := run(args, &out, &errb)
		if lines := strings.Count(errb.String(), "\n"); code != 2 || lines > 3 || !strings.Contains(errb.String(), "--help") {
			t.Errorf("%v: exit %d, %d lines of error:\n%s", args, code, lines, errb.String())
		}
	}
}
