package main

import (
	"bytes"
	"flag"
	"strings"
	"testing"
	"time"

	"github.com/tether-chat/tether/auth"
	"github.com/tether-chat/tether/server"
)

func TestEnvironmentFillsUnsetFlags(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	var cfg server.Config
	var addr, lf, ll string
	var rc redisFlags
	serveFlags(fs, &cfg, &addr, &lf, &ll, &rc)
	if err := fs.Parse([]string{"--ping-interval", "3s"}); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"TETHER_ADDR": "0.0.0.0:9", "TETHER_PING_INTERVAL": "9s", "TETHER_MAX_TEXT": "77"}
	if err := applyEnv(fs, func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if addr != "0.0.0.0:9" || cfg.PingInterval != 3*time.Second || cfg.MaxText != 77 {
		t.Fatalf("addr %q ping %s max-text %d: the flag must win, the env fill the rest", addr, cfg.PingInterval, cfg.MaxText)
	}
	bad := map[string]string{"TETHER_PONG_TIMEOUT": "soon"}
	err := applyEnv(fs, func(k string) string { return bad[k] })
	if err == nil || !strings.Contains(err.Error(), "pong-timeout") {
		t.Fatalf("invalid env value: err = %v, want one naming pong-timeout", err)
	}
}

func TestInvalidSettingIsAnErrorNamingIt(t *testing.T) {
	for _, args := range [][]string{{"--ping-interval", "-1s"}, {"--write-delay", "2s"}} {
		var stderr bytes.Buffer
		if code := run(append([]string{"serve"}, args...), &stderr, &stderr); code != 2 {
			t.Fatalf("%v: exit %d", args, code)
		}
		if !strings.Contains(stderr.String(), strings.TrimPrefix(args[0], "--")) {
			t.Fatalf("%v: stderr = %q", args, stderr.String())
		}
	}
}

// TestRedisURLErrors: a malformed --redis URL is one clear line (it
// repeated "redis:" and ended in a dangling colon).
func TestRedisURLErrors(t *testing.T) {
	var out, errb bytes.Buffer
	code := run([]string{"serve", "--addr", "127.0.0.1:0", "--redis", "foo://x"}, &out, &errb)
	msg := errb.String()
	if code != 2 || !strings.Contains(msg, `invalid Redis URL "foo://x"`) || strings.Contains(msg, "redis: redis:") ||
		strings.Count(strings.TrimSpace(msg), "\n") != 0 {
		t.Fatalf("exit %d, stderr %q", code, msg)
	}
}

func TestTokenCommand(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"token", "--user", "alice", "--ttl", "1h", "--rooms", "general,ops", "--auth-secret", "k"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	c, err := auth.Verify([]byte("k"), strings.TrimSpace(out.String()), time.Now())
	if err != nil || c.Subject != "alice" || !c.MayJoin("ops") || c.MayJoin("x") {
		t.Fatalf("claims %+v, %v", c, err)
	}
	if code := run([]string{"token", "--user", "alice"}, &out, &errb); code != 2 {
		t.Fatal("a token without a secret was printed")
	}
}
