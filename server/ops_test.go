package server

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tether-chat/tether/auth"
	"github.com/tether-chat/tether/protocol"
)

func get(t *testing.T, url string, header http.Header) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func post(t *testing.T, url, key, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestMetricsEndpoint(t *testing.T) {
	ts := newTestServer(t, Config{})
	a := connect(t, ts, "a")
	a.send(protocol.TypeChat, "1", map[string]any{"text": "hi"})
	a.expect(protocol.TypeAck, isAck("1"))
	a.sendRaw(websocket.TextMessage, []byte("nonsense"))
	a.expect(protocol.TypeError, nil)
	b := connect(t, ts, "b")
	b.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(time.Second))
	b.expectClose()

	deadline := time.Now().Add(waitFor)
	for {
		code, body := get(t, ts.url+"/metrics", nil)
		want := []string{
			"tether_connections 1",
			"tether_connections_opened_total 2",
			`tether_connections_closed_total{code="1000"} 1`,
			`tether_messages_received_total{type="chat"} 1`,
			`tether_messages_received_total{type="invalid"} 1`,
			`tether_publications_total{type="chat"} 1`,
			"tether_publish_to_deliver_seconds_count",
			"tether_history_retained 1",
			"tether_error_replies_total 1",
			"go_goroutines",
		}
		missing := ""
		for _, w := range want {
			if !strings.Contains(body, w) {
				missing = w
				break
			}
		}
		if code == 200 && missing == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics %d lacks %q:\n%s", code, missing, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestPublishAndPresenceAPI(t *testing.T) {
	off := newTestServer(t, Config{})
	if code, body := post(t, off.url+"/api/publish", "k", `{"room":"general","text":"x"}`); code != 404 || !strings.Contains(body, "--api-key") {
		t.Fatalf("API without a key configured: %d %s", code, body)
	}

	ts := newTestServer(t, Config{APIKey: "the-key"})
	alice := connect(t, ts, "alice")
	for _, tc := range []struct {
		key, body string
		code      int
		phrase    string
	}{
		{"", `{"room":"general","text":"x"}`, 401, "API key"},
		{"wrong", `{"room":"general","text":"x"}`, 401, "API key"},
		{"the-key", `not json`, 400, "JSON"},
		{"the-key", `{"text":"x"}`, 400, "exactly one"},
		{"the-key", `{"room":"general","user":"alice","text":"x"}`, 400, "exactly one"},
		{"the-key", `{"room":"../x","text":"x"}`, 400, "letters"},
		{"the-key", `{"room":"general","text":""}`, 400, "empty"},
		{"the-key", `{"room":"general","text":"x","from":"<b>"}`, 400, "letters"},
	} {
		if code, body := post(t, ts.url+"/api/publish", tc.key, tc.body); code != tc.code || !strings.Contains(body, tc.phrase) {
			t.Fatalf("publish %s with key %q: %d %s, want %d mentioning %q", tc.body, tc.key, code, body, tc.code, tc.phrase)
		}
	}
	code, body := post(t, ts.url+"/api/publish", "the-key", `{"room":"general","text":"deploy finished","from":"ci"}`)
	var res publishResponse
	json.Unmarshal([]byte(body), &res)
	if code != 200 || res.Seq != 1 || res.Epoch == "" {
		t.Fatalf("publish: %d %s", code, body)
	}
	m := payloadOf[protocol.Chat](t, alice.expect(protocol.TypeChat, nil))
	if m.From != "ci" || m.Text != "deploy finished" || m.Seq != 1 {
		t.Fatalf("alice got %+v", m)
	}
	if code, body := post(t, ts.url+"/api/publish", "the-key", `{"user":"alice","text":"just for you"}`); code != 200 {
		t.Fatalf("publish to inbox: %d %s", code, body)
	}
	d := payloadOf[protocol.Direct](t, alice.expect(protocol.TypeDirect, nil))
	if d.From != "system" || d.To != "alice" || d.Seq != 1 {
		t.Fatalf("alice got %+v", d)
	}
	// Recoverable like any other message.
	alice.send(protocol.TypeHistory, "h", map[string]any{"room": "general"})
	if page := payloadOf[protocol.HistoryPage](t, alice.expect(protocol.TypeHistory, nil)); len(page.Messages) != 1 || page.Messages[0].From != "ci" {
		t.Fatalf("history = %+v", page)
	}
	code, body = get(t, ts.url+"/api/presence?room=general", http.Header{"Authorization": {"Bearer the-key"}})
	var mem protocol.Members
	json.Unmarshal([]byte(body), &mem)
	if code != 200 || mem.Count != 1 || mem.Users[0] != "alice" {
		t.Fatalf("presence: %d %s", code, body)
	}
	if code, _ := get(t, ts.url+"/api/presence?room=general", nil); code != 401 {
		t.Fatalf("presence without key: %d", code)
	}
}

func TestOriginPolicy(t *testing.T) {
	upgrade := func(ts *testServer, origin string) int {
		h := http.Header{}
		if origin != "" {
			h.Set("Origin", origin)
		}
		ws, resp, err := websocket.DefaultDialer.Dial(ts.ws+"/ws?user=o", h)
		if err == nil {
			ws.Close()
			return 101
		}
		if resp == nil {
			t.Fatal(err)
		}
		return resp.StatusCode
	}
	open := newTestServer(t, Config{AllowedOrigins: []string{"https://*.example.com"}})
	for origin, want := range map[string]int{
		"":                          101, // not a browser
		"http://localhost:5173":     101, // loopback, open mode
		"https://app.example.com":   101, // allowlist
		"https://evil.example.org":  403,
		"https://example.com.evil":  403,
		"null":                      403,
		open.url:                    101, // same origin
		"https://APP.EXAMPLE.COM":   101, // origins are case-insensitive
		"https://a.b.example.com.x": 403,
	} {
		if got := upgrade(open, origin); got != want {
			t.Errorf("open mode, origin %q: %d, want %d", origin, got, want)
		}
	}
	tokenMode := newTestServer(t, Config{AuthSecret: "s"})
	if got := upgrade(tokenMode, "http://localhost:5173"); got != 403 {
		t.Errorf("token mode must not allow other origins by default: %d", got)
	}
}

func TestConnectionLimits(t *testing.T) {
	ts := newTestServer(t, Config{MaxConnsPerUser: 2, MaxConnsPerIP: 4})
	a1, a2 := connect(t, ts, "ann"), connect(t, ts, "ann")
	third := dial(t, ts.ws+"/ws/ann")
	if code, reason := third.expectClose(); code != int(protocol.CloseTryAgainLater) || !strings.Contains(reason, "user") {
		t.Fatalf("third connection of a user: %d %q", code, reason)
	}
	connect(t, ts, "bob")
	connect(t, ts, "cy")
	fifth := dial(t, ts.ws+"/ws/dee")
	if code, reason := fifth.expectClose(); code != int(protocol.CloseTryAgainLater) || !strings.Contains(reason, "address") {
		t.Fatalf("fifth connection from one address: %d %q", code, reason)
	}
	a1.ws.Close()
	a2.roundTrip("still") // the others are unaffected
	deadline := time.Now().Add(waitFor)
	for {
		// The server frees a1's slot when it has processed the close.
		ws, _, err := websocket.DefaultDialer.Dial(ts.ws+"/ws/ann", nil)
		if err != nil {
			t.Fatal(err)
		}
		_, first, err := ws.ReadMessage()
		ws.Close()
		if err == nil && strings.Contains(string(first), `"welcome"`) {
			break // a freed slot is usable again
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot not released after a connection closed: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	rated := newTestServer(t, Config{ConnRatePerIP: 1}) // bursts of 2
	connect(t, rated, "r1")
	connect(t, rated, "r2")
	fast := dial(t, rated.ws+"/ws/r3")
	if code, reason := fast.expectClose(); code != int(protocol.CloseTryAgainLater) || !strings.Contains(reason, "too fast") {
		t.Fatalf("connection over the rate: %d %q", code, reason)
	}
}

// syncBuffer is a log sink safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestSecretsAreNeverLogged(t *testing.T) {
	var logs syncBuffer
	secret, key := "token-secret-value", "api-key-value"
	ts := newTestServer(t, Config{AuthSecret: secret, APIKey: key,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	good, _ := auth.Sign([]byte(secret), auth.Claims{Subject: "alice", ExpiresAt: time.Now().Add(time.Hour).Unix()})
	forged, _ := auth.Sign([]byte("other"), auth.Claims{Subject: "alice", ExpiresAt: time.Now().Add(time.Hour).Unix()})
	c := dial(t, ts.ws+"/ws?token="+good)
	c.expectWelcome()
	bad := dial(t, ts.ws+"/ws?token="+forged)
	bad.expectClose()
	post(t, ts.url+"/api/publish", "wrong-"+key, `{"room":"general","text":"x"}`)
	post(t, ts.url+"/api/publish", key, `{"room":"general","text":"x"}`)
	c.ws.Close()
	time.Sleep(100 * time.Millisecond)
	out := logs.String()
	if !strings.Contains(out, "token signature invalid") || !strings.Contains(out, "wrong API key") {
		t.Fatalf("the refusals were not logged:\n%s", out)
	}
	for _, s := range []string{secret, key, good, forged} {
		if strings.Contains(out, s) {
			t.Fatalf("the log contains a secret or token %q:\n%s", s, out)
		}
	}
}

// TestSDKIsServedToOtherOrigins: the browser SDK and its types are served
// with CORS, so an application's page on its own origin can import the
// module from the node (a browser refuses a cross-origin module without
// it); the chat page is not.
func TestSDKIsServedToOtherOrigins(t *testing.T) {
	ts := newTestServer(t, Config{})
	for _, path := range []string{"/sdk/tether.js", "/sdk/tether.d.ts", "/sdk/vue.js"} {
		req, _ := http.NewRequest("GET", ts.url+path, nil)
		req.Header.Set("Origin", "https://app.example.com")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("Access-Control-Allow-Origin") != "*" {
			t.Fatalf("%s: %d, Access-Control-Allow-Origin %q", path, resp.StatusCode, resp.Header.Get("Access-Control-Allow-Origin"))
		}
	}
	resp, err := http.Get(ts.url + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatal("the chat page is served with CORS")
	}
}
