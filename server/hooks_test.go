package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tether-chat/tether/protocol"
)

// receiver is the application's end of the hooks: a real HTTP server that
// checks every signature, can be down (503) or slow, and keeps what it
// took.
type receiver struct {
	t      *testing.T
	srv    *httptest.Server
	secret string
	down   atomic.Bool
	slow   atomic.Int64 // nanoseconds per request
	mu     sync.Mutex
	events []HookEvent
	posts  int
	bad    int // requests whose signature did not match
}

func newReceiver(t *testing.T, secret string) *receiver {
	r := &receiver{t: t, secret: secret}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.posts++
		if req.Header.Get("X-Tether-Signature") != "v1="+Signature(secret, req.Header.Get("X-Tether-Timestamp"), body) {
			r.bad++
		}
		r.mu.Unlock()
		time.Sleep(time.Duration(r.slow.Load()))
		if r.down.Load() {
			http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
			return
		}
		var b hookBatch
		if err := json.Unmarshal(body, &b); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		r.mu.Lock()
		r.events = append(r.events, b.Events...)
		r.mu.Unlock()
	}))
	t.Cleanup(r.srv.Close)
	return r
}

// got returns the events taken, each once (by id), in order.
func (r *receiver) got() []HookEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	seen := map[string]bool{}
	var out []HookEvent
	for _, e := range r.events {
		if !seen[e.ID] {
			seen[e.ID] = true
			out = append(out, e)
		}
	}
	return out
}

func (r *receiver) messages() []string {
	var out []string
	for _, e := range r.got() {
		if e.Type == "message" || e.Type == "direct" {
			out = append(out, e.Text)
		}
	}
	return out
}

// TestHooksDeliverEveryEventSigned: connects, joins, messages (with their
// stream and seq), private messages, leaves and disconnects reach the
// application, signed; the events of one node come in order.
func TestHooksDeliverEveryEventSigned(t *testing.T) {
	bothEngines(t, func(t *testing.T, eng engineCase) {
		rcv := newReceiver(t, "hook-secret")
		ts := newTestServer(t, eng.with(Config{HookURL: rcv.srv.URL, HookSecret: "hook-secret"}))
		alice, bob := connect(t, ts, "alice"), connect(t, ts, "bob")
		alice.send(protocol.TypeChat, "c1", map[string]any{"room": "general", "text": "hello room"})
		ack := payloadOf[protocol.Ack](t, alice.expect(protocol.TypeAck, isAck("c1")))
		alice.send(protocol.TypeDirect, "d1", map[string]any{"to": "bob", "text": "hello bob"})
		alice.expect(protocol.TypeAck, isAck("d1"))
		bob.ws.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(1000, "bye")) // a clean close: bob leaves at once
		waitUntil(t, "every event at the application", func() bool {
			types := map[string]int{}
			for _, e := range rcv.got() {
				types[e.Type]++
			}
			return types["connect"] == 2 && types["join"] == 2 && types["message"] == 1 && types["direct"] == 1 &&
				types["leave"] == 1 && types["disconnect"] == 1
		})
		var msg HookEvent
		for _, e := range rcv.got() {
			if e.Type == "message" {
				msg = e
			}
		}
		if msg.User != "alice" || msg.Room != "general" || msg.Stream != "room:general" || msg.Seq != ack.Seq || msg.Epoch == "" || msg.ClientID != "c1" || msg.Node == "" {
			t.Fatalf("message event = %+v", msg)
		}
		rcv.mu.Lock()
		bad := rcv.bad
		rcv.mu.Unlock()
		if bad != 0 {
			t.Fatalf("%d posts with a wrong signature", bad)
		}
	})
}

// TestHooksSurviveTheApplicationBeingDownAndSlow: while the application is
// down, events wait and are retried; clients' messages are not held up;
// once it is back, every message reaches it, once per (stream, seq) after
// dropping retries. A slow application delays only the hooks. Past the
// queue's bound, events are dropped, counted and logged.
func TestHooksSurviveTheApplicationBeingDownAndSlow(t *testing.T) {
	rcv := newReceiver(t, "")
	ts := newTestServer(t, Config{HookURL: rcv.srv.URL})
	alice := connect(t, ts, "alice")
	rcv.down.Store(true)
	send := func(from, to int) {
		for i := from; i < to; i++ {
			id := fmt.Sprint("m", i)
			alice.send(protocol.TypeChat, id, map[string]any{"room": "general", "text": id})
			alice.expect(protocol.TypeAck, isAck(id)) // acked at once: nothing waits for the application
		}
	}
	send(0, 20)
	waitUntil(t, "retries while the application is down", func() bool { return ts.hooks.failures.Load() >= 2 })
	rcv.down.Store(false)
	rcv.slow.Store(int64(100 * time.Millisecond))
	send(20, 40)
	waitUntil(t, "all 40 messages at the application", func() bool { return len(rcv.messages()) == 40 })
	got := rcv.messages()
	for i, text := range got {
		if text != fmt.Sprint("m", i) {
			t.Fatalf("message %d is %q: the node's events must arrive in order", i, text)
		}
	}
	_, metrics := get(t, ts.url+"/metrics", nil)
	if !strings.Contains(metrics, "tether_hook_failures_total") || strings.Contains(metrics, "tether_hook_failures_total 0\n") {
		t.Fatal("/metrics does not count the failed deliveries")
	}

	// A small queue and an application that stays down: dropped, said and counted.
	var logs syncBuffer
	rcv2 := newReceiver(t, "")
	rcv2.down.Store(true)
	small := newTestServer(t, Config{HookURL: rcv2.srv.URL, HookQueue: 3, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	carol := connect(t, small, "carol")
	for i := range 30 {
		carol.send(protocol.TypeChat, fmt.Sprint("x", i), map[string]any{"room": "general", "text": "x"})
	}
	carol.expect(protocol.TypeAck, isAck("x29"))
	waitUntil(t, "dropped events counted", func() bool { return small.hooks.lost.Load() > 0 })
	waitUntil(t, "the log says so", func() bool { return strings.Contains(logs.String(), "hook queue full") })
}

// checker is the application's end of the checks.
func checker(t *testing.T, answer func(CheckRequest) (int, CheckResult)) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		var cr CheckRequest
		json.NewDecoder(req.Body).Decode(&cr)
		code, res := answer(cr)
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(res)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// TestChecks: the application allows, denies or names a connection (from
// its own session cookie), and allows, denies or rewrites a message; when
// it does not answer, the node refuses (fail closed) or, if so configured,
// allows.
func TestChecks(t *testing.T) {
	app := checker(t, func(cr CheckRequest) (int, CheckResult) {
		switch {
		case cr.Type == "connect" && cr.User == "mallory":
			return 200, CheckResult{Result: "deny", Reason: "banned"}
		case cr.Type == "connect" && strings.Contains(cr.Cookie, "sid=alice-session"):
			return 200, CheckResult{Result: "allow", User: "alice"}
		case cr.Type == "publish" && strings.Contains(cr.Text, "spam"):
			return 200, CheckResult{Result: "deny", Reason: "no spam here"}
		case cr.Type == "publish" && strings.Contains(cr.Text, "darn"):
			return 200, CheckResult{Result: "rewrite", Text: strings.ReplaceAll(cr.Text, "darn", "****")}
		}
		return 200, CheckResult{Result: "allow"}
	})
	ts := newTestServer(t, Config{CheckURL: app.URL})
	if code, reason := dial(t, ts.ws+"/ws/mallory").expectClose(); code != 4403 || reason != "banned" {
		t.Fatalf("mallory: close %d %q", code, reason)
	}
	ws, _, err := websocket.DefaultDialer.Dial(ts.ws+"/ws", http.Header{"Cookie": {"sid=alice-session"}})
	if err != nil {
		t.Fatal(err)
	}
	alice := startClient(t, ws)
	if w := alice.expectWelcome(); w.User != "alice" {
		t.Fatalf("the application named the user %q", w.User)
	}
	alice.expect(protocol.TypeMembers, nil)
	bob := connect(t, ts, "bob")
	alice.send(protocol.TypeChat, "s", map[string]any{"room": "general", "text": "buy spam"})
	if e := payloadOf[protocol.Error](t, alice.expect(protocol.TypeError, nil)); e.Code != protocol.ErrRejected || e.Message != "no spam here" {
		t.Fatalf("denied message: %+v", e)
	}
	alice.send(protocol.TypeChat, "r", map[string]any{"room": "general", "text": "darn it"})
	alice.expect(protocol.TypeAck, isAck("r"))
	if m := payloadOf[protocol.Chat](t, bob.expect(protocol.TypeChat, nil)); m.Text != "**** it" {
		t.Fatalf("bob got %q; want the rewrite", m.Text)
	}
	alice.send(protocol.TypeDirect, "d", map[string]any{"to": "bob", "text": "spam for you"})
	if e := payloadOf[protocol.Error](t, alice.expect(protocol.TypeError, nil)); e.Code != protocol.ErrRejected {
		t.Fatalf("denied private message: %+v", e)
	}
	bob.expectNone(protocol.TypeChat, nil, quiet)

	// The application is down: closed by default, open if so configured.
	down := checker(t, func(CheckRequest) (int, CheckResult) { return 500, CheckResult{} })
	closed := newTestServer(t, Config{CheckURL: down.URL})
	if code, _ := dial(t, closed.ws+"/ws/dave").expectClose(); code != 1013 {
		t.Fatalf("fail closed: close %d; want 1013 (try again later)", code)
	}
	open := newTestServer(t, Config{CheckURL: down.URL, CheckFailOpen: true})
	erin := connect(t, open, "erin")
	erin.send(protocol.TypeChat, "m", map[string]any{"room": "general", "text": "hello"})
	erin.expect(protocol.TypeAck, isAck("m"))
	_, metrics := get(t, closed.url+"/metrics", nil)
	if !strings.Contains(metrics, `tether_checks_total{result="down",type="connect"} 1`) {
		t.Fatalf("/metrics does not count the failed check:\n%s", grep(metrics, "tether_checks"))
	}
}

func grep(text, s string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestHooksDeliveredWhenTheNodeStops: the application is down when the
// node begins to stop, with a batch being retried and more queued behind
// it; it comes back while the node stops. By the time Shutdown returns,
// the application has every message and the disconnects: the batch the
// stop interrupted included.
func TestHooksDeliveredWhenTheNodeStops(t *testing.T) {
	rcv := newReceiver(t, "")
	rcv.down.Store(true)
	ts := newTestServer(t, Config{HookURL: rcv.srv.URL})
	alice := connect(t, ts, "alice")
	for i := range 3 {
		alice.send(protocol.TypeChat, fmt.Sprint("c", i), map[string]any{"room": "general", "text": fmt.Sprint("m", i)})
		alice.expect(protocol.TypeAck, isAck(fmt.Sprint("c", i)))
	}
	waitUntil(t, "a batch refused and being retried", func() bool {
		rcv.mu.Lock()
		defer rcv.mu.Unlock()
		return rcv.posts > 0
	})
	go func() {
		time.Sleep(300 * time.Millisecond)
		rcv.down.Store(false)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ts.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(rcv.messages()); got != "[m0 m1 m2]" {
		t.Fatalf("the application has %s when Shutdown returns; want [m0 m1 m2]", got)
	}
	types := map[string]int{}
	for _, e := range rcv.got() {
		types[e.Type]++
	}
	if types["connect"] != 1 || types["disconnect"] != 1 {
		t.Fatalf("events by type %v: want the connect and the disconnect", types)
	}
}
