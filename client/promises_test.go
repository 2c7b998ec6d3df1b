package client

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tether-chat/tether/internal/testnet"
	"github.com/tether-chat/tether/protocol"
	"github.com/tether-chat/tether/server"
)

// TestSilenceIsCaughtWhenTheTimeoutElapses: a frozen peer is noticed when
// the heartbeat timeout has elapsed since the last frame, not at the next
// ping tick (with a 2 s interval and a 2.5 s timeout the ticks come at 2
// and 4 s: a tick-based check would leave OPEN at 4 s).
func TestSilenceIsCaughtWhenTheTimeoutElapses(t *testing.T) {
	_, addr := startServer(t, server.Config{PingInterval: time.Minute, PongTimeout: time.Minute})
	px := testnet.NewProxy(t, addr)
	o := fast("fritz")
	o.HeartbeatInterval, o.HeartbeatTimeout = 2*time.Second, 2500*time.Millisecond
	c := dialT(t, px.Addr(), o)
	// The last frame: the pong of a ping answered just now.
	time.Sleep(2200 * time.Millisecond)
	px.Freeze()
	last := c.Info().LastMessage
	waitState(t, c, StateReconnecting)
	after := time.Since(last)
	t.Logf("left OPEN %s after the last frame (timeout 2.5s)", after.Round(time.Millisecond))
	if after < 2500*time.Millisecond || after > 3300*time.Millisecond {
		t.Fatalf("left OPEN %s after the last frame; want at the 2.5 s timeout, within 0.8 s", after)
	}
}

// TestHandshakeRefusalIsTerminal: a server that refuses the handshake
// itself (HTTP 400: an invalid user name) will refuse every retry: Dial
// returns at once with the server's reason, instead of retrying forever
// with 1006.
func TestHandshakeRefusalIsTerminal(t *testing.T) {
	srv, addr := startServer(t, server.Config{})
	_, err := Dial(context.Background(), "ws://"+addr+"/ws", fast("a b"))
	var ce *CloseError
	if !errors.As(err, &ce) || ce.Code != protocol.ClosePolicy || !strings.Contains(ce.Reason, "HTTP 400") ||
		!strings.Contains(ce.Reason, "invalid user") {
		t.Fatalf("Dial = %v; want a terminal CloseError with the server's reason", err)
	}
	if n := srv.Stats().Opened; n != 0 {
		t.Fatalf("%d connections opened", n)
	}
}

// TestReconnectEventsAndNoSecretsInTheLog: every scheduled retry is an
// event (attempt, delay, time, the close that led to it), and the log
// never holds the session id or the token.
func TestReconnectEventsAndNoSecretsInTheLog(t *testing.T) {
	_, addr := startServer(t, server.Config{})
	px := testnet.NewProxy(t, addr)
	var log logLines
	o := fast("rita")
	o.Token = "tok-s3cret"
	o.Logf = log.logf
	c := dialT(t, px.Addr(), o)
	session := c.Info().Session
	px.Cut()
	ev := next(t, c, "reconnect")
	if r := ev.Reconnect; r.Attempt != 1 || r.Delay <= 0 || r.At.IsZero() || r.Code != protocol.CloseAbnormal {
		t.Fatalf("reconnect event = %+v", r)
	}
	waitState(t, c, StateOpen)
	log.mu.Lock()
	defer log.mu.Unlock()
	for _, l := range log.lines {
		if strings.Contains(l, session) || strings.Contains(l, "s3cret") {
			t.Fatalf("a log line holds a secret: %q", l)
		}
	}
}

// TestLastCloseSurvivesFailedRetries: after a server restart the client
// shows why it lost its connection (1012, server restarting), not the
// refused retries' 1006, which are the last failure.
func TestLastCloseSurvivesFailedRetries(t *testing.T) {
	srv, addr := startServer(t, server.Config{})
	c := dialT(t, addr, fast("lars"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	srv.Shutdown(ctx) // 1012; then every retry is refused (HTTP 503) until a new node is up
	waitState(t, c, StateReconnecting)
	for c.Info().LastFailure == nil {
		time.Sleep(20 * time.Millisecond)
	}
	info := c.Info()
	if info.LastClose == nil || info.LastClose.Code != protocol.CloseRestart || info.LastFailure.Code != protocol.CloseAbnormal {
		t.Fatalf("last close %+v, last failure %+v; want 1012 and 1006", info.LastClose, info.LastFailure)
	}
}
