package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tether-chat/tether/engine/redis"
	"github.com/tether-chat/tether/internal/testredis"
	"github.com/tether-chat/tether/internal/testwait"
	"github.com/tether-chat/tether/protocol"
)

const waitFor = 5 * time.Second

type testServer struct {
	*Server
	url string // http://host:port
	ws  string // ws://host:port
}

func newServer(t testing.TB, cfg Config) *Server {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return srv
}

func newTestServer(t testing.TB, cfg Config) *testServer {
	t.Helper()
	srv := newServer(t, cfg)
	// Serve, as the tether binary does: WebSocket handshakes take its fast
	// path, everything else net/http (newHandlerTestServer serves Handler()
	// alone).
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	ts := &testServer{Server: srv, url: "http://" + ln.Addr().String(), ws: "ws://" + ln.Addr().String()}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		srv.Shutdown(ctx) // a test may have shut it down already
		if err := <-served; err != http.ErrServerClosed {
			t.Errorf("Serve returned %v, want http.ErrServerClosed", err)
		}
	})
	return ts
}

// newHandlerTestServer serves Handler() with net/http alone (httptest), as
// a program embedding Tether does: no fast path.
func newHandlerTestServer(t testing.TB, cfg Config) *testServer {
	t.Helper()
	srv := newServer(t, cfg)
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		hs.Close()
	})
	return &testServer{Server: srv, url: hs.URL, ws: "ws" + strings.TrimPrefix(hs.URL, "http")}
}

// client is a test peer on a real socket. A goroutine reads every frame
// into msgs; expect and expectNone consume them in order.
type client struct {
	t       *testing.T
	user    string
	ws      *websocket.Conn
	msgs    chan protocol.Envelope
	done    chan struct{}
	mu      sync.Mutex
	readErr error
	welcome protocol.Welcome
	backlog []protocol.Envelope
}

func dial(t *testing.T, url string) *client {
	t.Helper()
	ws, _, err := websocket.DefaultDialer.Dial(url, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	return startClient(t, ws)
}

// connect dials as user and consumes the welcome and the auto-join's
// members message.
func connect(t *testing.T, ts *testServer, user string) *client {
	t.Helper()
	c := dial(t, ts.ws+"/ws/"+user)
	c.expectWelcome()
	if ts.cfg.AutoJoin != "-" {
		c.expect(protocol.TypeMembers, nil)
	}
	return c
}

func startClient(t *testing.T, ws *websocket.Conn) *client {
	c := &client{t: t, ws: ws, msgs: make(chan protocol.Envelope, 100000), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for {
			_, b, err := ws.ReadMessage()
			if err != nil {
				c.mu.Lock()
				c.readErr = err
				c.mu.Unlock()
				return
			}
			var env protocol.Envelope
			if err := json.Unmarshal(b, &env); err != nil {
				t.Errorf("server sent invalid JSON %q: %v", b, err)
				return
			}
			c.msgs <- env
		}
	}()
	t.Cleanup(func() { ws.Close() })
	return c
}

func (c *client) expectWelcome() protocol.Welcome {
	c.t.Helper()
	env := c.next()
	if env.Type != protocol.TypeWelcome {
		c.t.Fatalf("first message is %s, want welcome", env.Type)
	}
	decode(c.t, env, &c.welcome)
	c.user = c.welcome.User
	return c.welcome
}

func (c *client) send(typ, id string, payload any) {
	c.t.Helper()
	m := map[string]any{"type": typ}
	if id != "" {
		m["id"] = id
	}
	if payload != nil {
		m["payload"] = payload
	}
	b, _ := json.Marshal(m)
	c.sendRaw(websocket.TextMessage, b)
}

func (c *client) sendRaw(mt int, b []byte) {
	c.t.Helper()
	if err := c.ws.WriteMessage(mt, b); err != nil {
		c.t.Fatalf("%s: write: %v", c.user, err)
	}
}

// next returns the next message, or fails.
func (c *client) next() protocol.Envelope {
	c.t.Helper()
	if len(c.backlog) > 0 {
		env := c.backlog[0]
		c.backlog = c.backlog[1:]
		return env
	}
	select {
	case env := <-c.msgs:
		return env
	case <-c.done:
		if env, ok := c.drained(); ok {
			return env
		}
		c.t.Fatalf("%s: connection ended while waiting: %v", c.user, c.err())
	case <-time.After(waitFor):
		c.t.Fatalf("%s: no message within %s", c.user, waitFor)
	}
	return protocol.Envelope{}
}

// expect returns the first message of type typ for which match (if any)
// holds. Other messages before it are kept for later expects.
func (c *client) expect(typ string, match func(protocol.Envelope) bool) protocol.Envelope {
	c.t.Helper()
	var skipped []protocol.Envelope
	defer func() { c.backlog = append(skipped, c.backlog...) }()
	deadline := time.After(waitFor)
	for {
		var env protocol.Envelope
		if len(c.backlog) > 0 {
			env, c.backlog = c.backlog[0], c.backlog[1:]
		} else {
			select {
			case env = <-c.msgs:
			case <-c.done:
				var ok bool
				if env, ok = c.drained(); !ok {
					c.t.Fatalf("%s: connection ended while waiting for %s: %v", c.user, typ, c.err())
				}
			case <-deadline:
				c.t.Fatalf("%s: no %s within %s (other messages: %v)", c.user, typ, waitFor, types(skipped))
			}
		}
		if env.Type == typ && (match == nil || match(env)) {
			return env
		}
		skipped = append(skipped, env)
	}
}

// expectNone fails if a message of type typ (matching match) arrives within d.
func (c *client) expectNone(typ string, match func(protocol.Envelope) bool, d time.Duration) {
	c.t.Helper()
	check := func(env protocol.Envelope) {
		if env.Type == typ && (match == nil || match(env)) {
			c.t.Fatalf("%s: unexpected %s: %s", c.user, typ, env.Payload)
		}
	}
	for _, env := range c.backlog {
		check(env)
	}
	deadline := time.After(d)
	for {
		select {
		case env := <-c.msgs:
			check(env)
			c.backlog = append(c.backlog, env)
		case <-deadline:
			return
		case <-c.done:
			return
		}
	}
}

// expectClose waits for the connection to end and returns the close code
// the server sent (or 1006 when it sent none).
func (c *client) expectClose() (int, string) {
	c.t.Helper()
	select {
	case <-c.done:
	case <-time.After(waitFor):
		c.t.Fatalf("%s: connection still open after %s", c.user, waitFor)
	}
	var ce *websocket.CloseError
	if errors.As(c.err(), &ce) {
		return ce.Code, ce.Text
	}
	return int(protocol.CloseAbnormal), ""
}

// drained returns a message that arrived before the connection ended, if
// any is left: select picks at random between a ready msgs and a closed done.
func (c *client) drained() (protocol.Envelope, bool) {
	select {
	case env := <-c.msgs:
		return env, true
	default:
		return protocol.Envelope{}, false
	}
}

func (c *client) err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.readErr
}

// who asks for a room's members and returns the reply.
func (c *client) who(room string) protocol.Envelope {
	c.t.Helper()
	c.send(protocol.TypeWho, "", map[string]any{"room": room})
	return c.expect(protocol.TypeMembers, func(e protocol.Envelope) bool {
		return payloadOf[protocol.Members](c.t, e).Room == room
	})
}

// roundTrip proves the connection is alive and served: ping → pong.
func (c *client) roundTrip(id string) {
	c.t.Helper()
	c.send(protocol.TypePing, id, nil)
	c.expect(protocol.TypePong, func(e protocol.Envelope) bool { return e.ID == id })
}

func decode(t *testing.T, env protocol.Envelope, v any) {
	t.Helper()
	if err := json.Unmarshal(env.Payload, v); err != nil {
		t.Fatalf("%s payload %s: %v", env.Type, env.Payload, err)
	}
}

func payloadOf[T any](t *testing.T, env protocol.Envelope) T {
	t.Helper()
	var v T
	decode(t, env, &v)
	return v
}

func isAck(id string) func(protocol.Envelope) bool {
	return func(e protocol.Envelope) bool { return e.ID == id }
}

// types describes envs for a failure message: each one's type, and its
// payload when it is short.
func types(envs []protocol.Envelope) []string {
	var out []string
	for _, e := range envs {
		if len(e.Payload) > 0 && len(e.Payload) <= 200 {
			out = append(out, e.Type+string(e.Payload))
		} else {
			out = append(out, e.Type)
		}
	}
	return out
}

// engineCase is one engine a test suite runs against.
type engineCase struct {
	name     string
	redisURL string
}

var redisPrefixes atomic.Int64

// with returns cfg running on this engine case.
func (e engineCase) with(cfg Config) Config {
	if e.redisURL != "" {
		eng, err := redis.New(redis.Config{URL: e.redisURL, Prefix: fmt.Sprintf("srv%d:", redisPrefixes.Add(1)),
			HistorySize: cfg.HistorySize, HistoryTTL: cfg.HistoryTTL, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			panic(err)
		}
		cfg.Engine = eng
	}
	return cfg
}

// clusterNodes returns a function that starts nodes sharing one Redis
// (started here) under one fresh prefix: node id cfg runs with the Redis
// engine as node id.
func clusterNodes(t *testing.T, name string) func(id string, cfg Config) *testServer {
	rs := testredis.Start(t)
	prefix := fmt.Sprintf("%s%d:", name, redisPrefixes.Add(1))
	return func(id string, cfg Config) *testServer {
		eng, err := redis.New(redis.Config{URL: rs.URL, Prefix: prefix, NodeID: id, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		cfg.Engine, cfg.NodeID = eng, id
		return newTestServer(t, cfg)
	}
}

// bothEngines runs a test against the memory engine and against the Redis
// engine (a real redis-server): the guarantees are the engines' contract.
func bothEngines(t *testing.T, f func(t *testing.T, eng engineCase)) {
	t.Run("memory", func(t *testing.T) { f(t, engineCase{name: "memory"}) })
	t.Run("redis", func(t *testing.T) {
		rs := testredis.Start(t)
		f(t, engineCase{name: "redis", redisURL: rs.URL})
	})
}

// waitUntil polls cond until it holds, failing the test after waitFor.
func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testwait.Until(t, waitFor, what, cond)
}

// readUntil reads raw bytes from conn until they contain want, and returns
// them all.
func readUntil(t *testing.T, conn net.Conn, want string) []byte {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(waitFor))
	var got []byte
	buf := make([]byte, 4096)
	for !bytes.Contains(got, []byte(want)) {
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("read: %v; so far %q", err, got)
		}
		got = append(got, buf[:n]...)
	}
	return got
}
