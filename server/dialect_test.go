package server

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tether-chat/tether/auth"
	"github.com/tether-chat/tether/protocol"
	"github.com/tether-chat/tether/server/session"
)

// rawPeer is a client that speaks a tutorial's protocol: it sees frames
// as they are, text.
type rawPeer struct {
	t      *testing.T
	ws     *websocket.Conn
	frames chan string
}

func dialRaw(t *testing.T, url string) *rawPeer {
	t.Helper()
	ws, _, err := websocket.DefaultDialer.Dial(url, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	p := &rawPeer{t: t, ws: ws, frames: make(chan string, 1000)}
	go func() {
		defer close(p.frames)
		for {
			_, b, err := ws.ReadMessage()
			if err != nil {
				return
			}
			p.frames <- string(b)
		}
	}()
	t.Cleanup(func() { ws.Close() })
	return p
}

func (p *rawPeer) send(s string) {
	p.t.Helper()
	if err := p.ws.WriteMessage(websocket.TextMessage, []byte(s)); err != nil {
		p.t.Fatal(err)
	}
}

// next returns the next frame that contains want.
func (p *rawPeer) next(want string) string {
	p.t.Helper()
	deadline := time.After(waitFor)
	for {
		select {
		case f, ok := <-p.frames:
			if !ok {
				p.t.Fatalf("closed while waiting for a frame with %q", want)
			}
			if strings.Contains(f, want) {
				return f
			}
		case <-deadline:
			p.t.Fatalf("no frame with %q within %s", want, waitFor)
		}
	}
}

// none checks that no frame containing s arrives within d.
func (p *rawPeer) none(s string, d time.Duration) {
	p.t.Helper()
	deadline := time.After(d)
	for {
		select {
		case f, ok := <-p.frames:
			if !ok {
				return
			}
			if strings.Contains(f, s) {
				p.t.Fatalf("unexpected frame %q", f)
			}
		case <-deadline:
			return
		}
	}
}

// data001 reads a tutorial-001 frame: {"type", "data"}.
func data001(t *testing.T, frame string) (string, map[string]any) {
	t.Helper()
	var m struct {
		Type string         `json:"type"`
		Data map[string]any `json:"data"`
	}
	if err := json.Unmarshal([]byte(frame), &m); err != nil {
		t.Fatalf("not JSON: %q", frame)
	}
	return m.Type, m.Data
}

// TestTutorial001: a client of tutorial 001 on /ws names itself in its
// join, is welcomed with the room's count, chats with a tether client in
// the same room ({type, data} both ways, ts in seconds), is in one room at
// a time, and gets nothing it has no words for.
func TestTutorial001(t *testing.T) {
	bothEngines(t, func(t *testing.T, eng engineCase) {
		ts := newTestServer(t, eng.with(Config{WSDialect: session.Dialect001}))
		bob := dial(t, ts.ws+"/tether/ws/bob") // tether's protocol, beside the dialect
		bob.expectWelcome()
		bob.expect(protocol.TypeMembers, nil)
		bob.send(protocol.TypeJoin, "j", inRoom("random"))
		bob.expect(protocol.TypeAck, isAck("j"))

		alice := dialRaw(t, ts.ws+"/ws")
		alice.none(`"type"`, 200*time.Millisecond) // nothing before the join: the tutorial's client speaks first
		alice.send(`{"type":"join","data":{"room":"random","user":"alice"}}`)
		typ, d := data001(t, alice.next(`"welcome"`))
		if typ != "welcome" || d["online"] != float64(2) || d["room"] != "random" {
			t.Fatalf("welcome = %s %v", typ, d)
		}
		p := payloadOf[protocol.Presence](t, bob.expect(protocol.TypePresence, func(e protocol.Envelope) bool {
			return payloadOf[protocol.Presence](t, e).User != "bob"
		}))
		if p.User != "alice" || p.Room != "random" || p.Action != protocol.PresenceJoin {
			t.Fatalf("bob saw %+v; want alice joining random under her name", p)
		}

		alice.send(`{"type":"chat","data":{"text":"hi from 001"}}`)
		m := payloadOf[protocol.Chat](t, bob.expect(protocol.TypeChat, nil))
		if m.From != "alice" || m.Room != "random" || m.Text != "hi from 001" {
			t.Fatalf("bob got %+v", m)
		}
		bob.send(protocol.TypeChat, "c1", map[string]any{"room": "random", "text": "hi from tether"})
		typ, d = data001(t, alice.next("hi from tether"))
		if typ != "chat" || d["from"] != "bob" || d["text"] != "hi from tether" {
			t.Fatalf("alice got %s %v", typ, d)
		}
		if ts, _ := d["ts"].(float64); ts < float64(time.Now().Add(-time.Minute).Unix()) || ts > float64(time.Now().Unix()+1) {
			t.Fatalf("ts = %v; want seconds since the epoch", d["ts"])
		}
		// general (the auto-join room of tether clients) is not hers.
		bob.send(protocol.TypeChat, "c2", map[string]any{"room": "general", "text": "general only"})
		bob.expect(protocol.TypeAck, isAck("c2"))
		alice.none("general only", 300*time.Millisecond)

		alice.send(`{"type":"ping"}`)
		if typ, _ := data001(t, alice.next(`"pong"`)); typ != "pong" {
			t.Fatal("no pong")
		}
		// Another join moves her: out of random, into general.
		alice.send(`{"type":"join","data":{"room":"general","user":"alice"}}`)
		if _, d := data001(t, alice.next(`"welcome"`)); d["room"] != "general" {
			t.Fatalf("welcome = %v", d)
		}
		bob.expect(protocol.TypePresence, func(e protocol.Envelope) bool {
			p := payloadOf[protocol.Presence](t, e)
			return p.Room == "random" && p.User == "alice" && p.Action == protocol.PresenceLeave
		})
		bob.send(protocol.TypeChat, "c3", map[string]any{"room": "random", "text": "random after she left"})
		bob.send(protocol.TypeChat, "c4", map[string]any{"room": "general", "text": "general now"})
		alice.next("general now")
		alice.none("random after she left", 200*time.Millisecond)

		// Bad input gets an error in her terms; the connection goes on.
		alice.send(`not json`)
		if typ, d := data001(t, alice.next(`"error"`)); typ != "error" || d["code"] != string(protocol.ErrBadJSON) {
			t.Fatalf("error = %s %v", typ, d)
		}
		alice.send(`{"type":"ping"}`)
		alice.next(`"pong"`)
	})
}

// TestTutorial001BeforeAJoin: a tutorial-001 client that chats before it
// joins is told to join; one that never joins is still pinged, and a
// token names the user whatever the join says.
func TestTutorial001BeforeAJoin(t *testing.T) {
	secret := "s3cret"
	ts := newTestServer(t, Config{WSDialect: session.Dialect001, AuthSecret: secret})
	tok, _ := auth.Sign([]byte(secret), auth.Claims{Subject: "carol", ExpiresAt: time.Now().Add(time.Hour).Unix()})
	c := dialRaw(t, ts.ws+"/ws?token="+tok)
	c.send(`{"type":"chat","data":{"text":"too early"}}`)
	if _, d := data001(t, c.next(`"error"`)); d["code"] != string(protocol.ErrNotMember) {
		t.Fatalf("error = %v", d)
	}
	waitUntil(t, "the connection to be known to the heartbeat", func() bool { return ts.hub.Count() == 1 })
	c.send(`{"type":"join","data":{"room":"ops","user":"mallory"}}`)
	_, d := data001(t, c.next(`"welcome"`))
	if users := fmt.Sprint(d["users"]); users != "[carol]" {
		t.Fatalf("members %s; want the token's user, not the name in the join", users)
	}
}

// TestTutorial003: clients of tutorial 003 on /ws/{client_id} chat in
// plain text ("target:message"), with each other and with a tether
// client; the partner of one that closes (close() without a code) is told
// it left within the short grace; no JSON ever reaches them.
func TestTutorial003(t *testing.T) {
	bothEngines(t, func(t *testing.T, eng engineCase) {
		ts := newTestServer(t, eng.with(Config{WSIDDialect: session.Dialect003, PresenceGraceAway: 300 * time.Millisecond}))
		a, b := dialRaw(t, ts.ws+"/ws/1001"), dialRaw(t, ts.ws+"/ws/1002")
		bob := dial(t, ts.ws+"/tether/ws/bob")
		bob.expectWelcome()
		waitUntil(t, "both tutorial clients online", func() bool { return ts.hub.Count() == 3 })

		a.send("1002:hello there")
		if got := b.next("says"); got != "Client #1001 says: hello there" {
			t.Fatalf("1002 got %q", got)
		}
		if got := a.next("You wrote"); got != "You wrote: hello there" {
			t.Fatalf("1001 got %q", got)
		}
		bob.send(protocol.TypeDirect, "d1", map[string]any{"to": "1001", "text": "from tether"})
		bob.expect(protocol.TypeAck, isAck("d1"))
		if got := a.next("from tether"); got != "Client #bob says: from tether" {
			t.Fatalf("1001 got %q", got)
		}
		a.send("bob:back to tether")
		if m := payloadOf[protocol.Direct](t, bob.expect(protocol.TypeDirect, nil)); m.From != "1001" || m.Text != "back to tether" {
			t.Fatalf("bob got %+v", m)
		}
		a.send("no colon here")
		if got := a.next("Error"); !strings.Contains(got, "colon") {
			t.Fatalf("1001 got %q", got)
		}
		a.send("nobody:are you there")
		if got := a.next("Error"); !strings.Contains(got, "not connected") {
			t.Fatalf("1001 got %q", got)
		}

		// 1002 closes the way the tutorial's page does: close(), no code.
		b.ws.WriteMessage(websocket.CloseMessage, nil)
		start := time.Now()
		if got := a.next("left"); got != "Client #1002 left the chat" {
			t.Fatalf("1001 got %q", got)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("the left notice took %s", d)
		}
		bob.send(protocol.TypeChat, "c", map[string]any{"room": "general", "text": "to the room"})
		a.none("to the room", 300*time.Millisecond)
		a.ws.Close()
		for f := range a.frames {
			if strings.HasPrefix(strings.TrimSpace(f), "{") {
				t.Fatalf("JSON reached a tutorial-003 client: %q", f)
			}
		}
	})
}

// TestDialectsAreChosenPerEndpoint: tutorial-003 needs the user in the
// path; /tether/ws speaks tether's protocol whatever /ws speaks.
func TestDialectsAreChosenPerEndpoint(t *testing.T) {
	if err := (Config{WSDialect: session.Dialect003}).Validate(); err == nil || !strings.Contains(err.Error(), "ws-dialect") {
		t.Fatalf("tutorial-003 on /ws: %v", err)
	}
	if err := (Config{WSIDDialect: "tutorial-999"}).Validate(); err == nil || !strings.Contains(err.Error(), "unknown dialect") {
		t.Fatalf("an unknown dialect: %v", err)
	}
	ts := newTestServer(t, Config{WSDialect: session.Dialect001, WSIDDialect: session.Dialect003})
	c := dial(t, ts.ws+"/tether/ws?user=dave")
	if w := c.expectWelcome(); w.User != "dave" {
		t.Fatalf("welcome = %+v", w)
	}
}
