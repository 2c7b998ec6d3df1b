package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tether-chat/tether/engine"
	"github.com/tether-chat/tether/engine/memory"
	"github.com/tether-chat/tether/internal/testnet"
	"github.com/tether-chat/tether/protocol"
	"github.com/tether-chat/tether/server/session"
)

const quiet = 300 * time.Millisecond // how long "nothing arrives" is watched

func inRoom(r string) map[string]any { return map[string]any{"room": r} }

func TestRoomBroadcastReachesEveryMemberAndNoOneElse(t *testing.T) {
	ts := newTestServer(t, Config{})
	alice, bob, carol := connect(t, ts, "alice"), connect(t, ts, "bob"), connect(t, ts, "carol")
	for _, c := range []*client{alice, bob} {
		c.send(protocol.TypeJoin, "j", inRoom("lobby"))
		c.expect(protocol.TypeAck, isAck("j"))
		m := payloadOf[protocol.Members](t, c.expect(protocol.TypeMembers, nil))
		if m.Room != "lobby" {
			t.Fatalf("members for %q, want lobby", m.Room)
		}
	}

	alice.send(protocol.TypeChat, "c1", map[string]any{"room": "lobby", "text": "hi lobby"})
	alice.send(protocol.TypeChat, "c2", map[string]any{"room": "lobby", "text": "second"})
	ack := payloadOf[protocol.Ack](t, alice.expect(protocol.TypeAck, isAck("c1")))
	if ack.ID != "c1" || ack.Seq != 1 {
		t.Fatalf("ack = %+v, want id c1 seq 1", ack)
	}
	for _, c := range []*client{alice, bob} { // the sender too
		for i, want := range []string{"hi lobby", "second"} {
			m := payloadOf[protocol.Chat](t, c.expect(protocol.TypeChat, nil))
			if m.Room != "lobby" || m.From != "alice" || m.Text != want || m.Seq != uint64(i+1) || m.Epoch == "" {
				t.Fatalf("%s got %+v, want lobby/alice/%q seq %d", c.user, m, want, i+1)
			}
		}
	}
	carol.expectNone(protocol.TypeChat, nil, quiet)

	// A chat without a room goes to the default room, which everyone is in.
	carol.send(protocol.TypeChat, "", map[string]any{"text": "to general"})
	for _, c := range []*client{alice, bob, carol} {
		m := payloadOf[protocol.Chat](t, c.expect(protocol.TypeChat, nil))
		if m.Room != protocol.DefaultRoom || m.Text != "to general" {
			t.Fatalf("%s got %+v, want general/to general", c.user, m)
		}
	}
}

func TestChatToRoomNotJoinedIsRefused(t *testing.T) {
	ts := newTestServer(t, Config{})
	a := connect(t, ts, "a")
	a.send(protocol.TypeChat, "x", map[string]any{"room": "elsewhere", "text": "hi"})
	e := payloadOf[protocol.Error](t, a.expect(protocol.TypeError, nil))
	if e.Code != protocol.ErrNotMember || e.ID != "x" {
		t.Fatalf("error = %+v, want not_member for x", e)
	}
}

func TestDirectReachesAllRecipientTabsAndSenderOtherTabsOnly(t *testing.T) {
	ts := newTestServer(t, Config{})
	alice1, alice2 := connect(t, ts, "alice"), connect(t, ts, "alice")
	bob1, bob2 := connect(t, ts, "bob"), connect(t, ts, "bob")
	carol := connect(t, ts, "carol")

	bob1.send(protocol.TypeDirect, "d1", map[string]any{"to": "alice", "text": "psst"})
	ack := payloadOf[protocol.Ack](t, bob1.expect(protocol.TypeAck, isAck("d1")))
	if ack.Seq != 1 {
		t.Fatalf("ack seq = %d, want 1 (alice's inbox)", ack.Seq)
	}
	for _, c := range []*client{alice1, alice2, bob2} {
		d := payloadOf[protocol.Direct](t, c.expect(protocol.TypeDirect, nil))
		if d.From != "bob" || d.To != "alice" || d.Text != "psst" || d.ID != "d1" || d.Seq != 1 {
			t.Fatalf("%s got %+v", c.user, d)
		}
	}
	bob1.expectNone(protocol.TypeDirect, nil, quiet)
	carol.expectNone(protocol.TypeDirect, nil, quiet)

	carol.send(protocol.TypeDirect, "d2", map[string]any{"to": "nobody", "text": "hello?"})
	e := payloadOf[protocol.Error](t, carol.expect(protocol.TypeError, nil))
	if e.Code != protocol.ErrUserOffline || e.ID != "d2" {
		t.Fatalf("error = %+v, want user_offline for d2", e)
	}
}

func TestLeftNoticeWhenPartnersLastTabCloses(t *testing.T) {
	// alice1 drops abruptly (its session is held for the grace period),
	// alice2 closes cleanly: the left notice comes when both are gone.
	ts := newTestServer(t, Config{PresenceGrace: 200 * time.Millisecond})
	alice1, alice2 := connect(t, ts, "alice"), connect(t, ts, "alice")
	bob, carol := connect(t, ts, "bob"), connect(t, ts, "carol")
	bob.send(protocol.TypeDirect, "d", map[string]any{"to": "alice", "text": "hi"})
	bob.expect(protocol.TypeAck, isAck("d"))
	alice1.expect(protocol.TypeDirect, nil)

	alice1.ws.Close()
	bob.expectNone(protocol.TypeLeft, nil, quiet)
	bob.expectNone(protocol.TypePresence, func(e protocol.Envelope) bool {
		return payloadOf[protocol.Presence](t, e).Action == protocol.PresenceLeave
	}, 0)

	alice2.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, "bye"), time.Now().Add(time.Second))
	left := payloadOf[protocol.Left](t, bob.expect(protocol.TypeLeft, nil))
	if left.User != "alice" {
		t.Fatalf("left = %+v, want alice", left)
	}
	leave := payloadOf[protocol.Presence](t, bob.expect(protocol.TypePresence, func(e protocol.Envelope) bool {
		return payloadOf[protocol.Presence](t, e).Action == protocol.PresenceLeave
	}))
	if leave.User != "alice" || leave.Room != protocol.DefaultRoom || leave.Count != 2 {
		t.Fatalf("presence = %+v, want alice leaving general, 2 left", leave)
	}
	carol.expectNone(protocol.TypeLeft, nil, quiet) // carol never talked to alice
}

func TestPresenceIsPerUser(t *testing.T) {
	ts := newTestServer(t, Config{AutoJoin: "-"})
	bob := connect(t, ts, "bob")
	bob.send(protocol.TypeJoin, "", inRoom("r"))
	bob.expect(protocol.TypeMembers, nil)

	alice1 := connect(t, ts, "alice")
	alice2 := connect(t, ts, "alice")
	// A user's first connection reads the count as it goes online, a
	// second one asks the engine: the same answer.
	if bob.welcome.Online != 1 || alice1.welcome.Online != 2 || alice2.welcome.Online != 2 {
		t.Fatalf("welcome online = %d, %d, %d; want 1 (bob), then 2 users (2 and 3 sockets)",
			bob.welcome.Online, alice1.welcome.Online, alice2.welcome.Online)
	}
	isPresence := func(e protocol.Envelope) bool { return payloadOf[protocol.Presence](t, e).User == "alice" }
	alice1.send(protocol.TypeJoin, "", inRoom("r"))
	p := payloadOf[protocol.Presence](t, bob.expect(protocol.TypePresence, isPresence))
	if p.User != "alice" || p.Action != protocol.PresenceJoin || p.Count != 2 {
		t.Fatalf("presence = %+v, want alice join, count 2", p)
	}
	m := payloadOf[protocol.Members](t, alice1.expect(protocol.TypeMembers, nil))
	if fmt.Sprint(m.Users) != "[alice bob]" || m.Count != 2 {
		t.Fatalf("members = %+v", m)
	}

	alice2.send(protocol.TypeJoin, "", inRoom("r")) // second tab: no event
	alice2.expect(protocol.TypeMembers, nil)
	alice1.send(protocol.TypeLeave, "l1", inRoom("r")) // one tab leaves: no event
	alice1.expect(protocol.TypeAck, isAck("l1"))
	bob.expectNone(protocol.TypePresence, isPresence, quiet)

	alice2.send(protocol.TypeLeave, "", inRoom("r")) // last tab leaves
	p = payloadOf[protocol.Presence](t, bob.expect(protocol.TypePresence, isPresence))
	if p.User != "alice" || p.Action != protocol.PresenceLeave || p.Count != 1 {
		t.Fatalf("presence = %+v, want alice leave, count 1", p)
	}

	// Leaving a room one is not in changes nothing and is acked: a
	// re-sent leave whose first attempt went through is not an error.
	alice1.send(protocol.TypeLeave, "l2", inRoom("r"))
	alice1.expect(protocol.TypeAck, isAck("l2"))
	bob.expectNone(protocol.TypePresence, isPresence, quiet)
	bob.send(protocol.TypeWho, "w", inRoom("r"))
	m = payloadOf[protocol.Members](t, bob.expect(protocol.TypeMembers, isAck("w")))
	if fmt.Sprint(m.Users) != "[bob]" {
		t.Fatalf("who = %+v, want [bob]", m)
	}
}

func TestPingPongAndAcks(t *testing.T) {
	ts := newTestServer(t, Config{})
	c := connect(t, ts, "pinger")
	c.sendRaw(websocket.TextMessage, []byte(`{"type":"ping","id":17,"data":{"ts":123}}`))
	pong := c.expect(protocol.TypePong, nil)
	if pong.ID != "17" || string(payloadOf[protocol.Pong](t, pong).Echo) != `{"ts":123}` {
		t.Fatalf("pong = %+v %s", pong, pong.Payload)
	}
	// Every message with an id is acked; one without is not.
	c.send(protocol.TypeJoin, "a1", inRoom("x"))
	c.send(protocol.TypeChat, "a2", map[string]any{"room": "x", "text": "t"})
	c.send(protocol.TypeWho, "a3", inRoom("x"))
	c.send(protocol.TypeLeave, "a4", inRoom("x"))
	c.send(protocol.TypeWho, "a5", inRoom("x"))
	for _, id := range []string{"a1", "a2"} {
		c.expect(protocol.TypeAck, isAck(id))
	}
	c.expect(protocol.TypeMembers, isAck("a3")) // who is answered by members with its id
	c.expect(protocol.TypeAck, isAck("a4"))
	// who is for members, like history: after leaving, an error names it.
	if e := payloadOf[protocol.Error](t, c.expect(protocol.TypeError, isAck("a5"))); e.Code != protocol.ErrNotMember {
		t.Fatalf("who after leaving = %+v, want not_member", e)
	}
	c.send(protocol.TypeJoin, "", inRoom("y"))
	c.expect(protocol.TypeMembers, func(e protocol.Envelope) bool { return payloadOf[protocol.Members](t, e).Room == "y" })
	c.expectNone(protocol.TypeAck, nil, quiet)
}

func TestHistoryPage(t *testing.T) {
	ts := newTestServer(t, Config{HistorySize: 3})
	c := connect(t, ts, "h")
	for i := 1; i <= 5; i++ {
		c.send(protocol.TypeChat, fmt.Sprint(i), map[string]any{"text": fmt.Sprint("m", i)})
		c.expect(protocol.TypeAck, isAck(fmt.Sprint(i)))
	}
	c.send(protocol.TypeHistory, "h", map[string]any{"room": "general", "limit": 2})
	page := payloadOf[protocol.HistoryPage](t, c.expect(protocol.TypeHistory, nil))
	if page.Top != 5 || page.Oldest != 3 || len(page.Messages) != 2 || page.Messages[0].Seq != 4 || page.Messages[1].Text != "m5" {
		t.Fatalf("history = %+v", page)
	}
}

// TestBadInputGetsErrorAndConnectionStays sends each kind of bad message
// and checks the documented error, that the same connection still works,
// and that a bystander never notices.
func TestBadInputGetsErrorAndConnectionStays(t *testing.T) {
	ts := newTestServer(t, Config{MaxText: 50})
	c := connect(t, ts, "mallory")
	bystander := connect(t, ts, "bystander")
	for i, tc := range []struct {
		frame string
		code  protocol.ErrorCode
		id    string
	}{
		{`not json at all`, protocol.ErrBadJSON, ""},
		{`{"type":"chat"`, protocol.ErrBadJSON, ""},
		{`[1,2,3]`, protocol.ErrBadEnvelope, ""},
		{`"just a string"`, protocol.ErrBadEnvelope, ""},
		{`12345678901234567890123456789012345678901234567890`, protocol.ErrBadEnvelope, ""},
		{`{"id":"1"}`, protocol.ErrBadEnvelope, "1"},
		{`{"type":"teleport","id":"2"}`, protocol.ErrUnknownType, "2"},
		{`{"type":"join","id":"3"}`, protocol.ErrBadPayload, "3"},
		{`{"type":"join","id":"4","payload":{"room":42}}`, protocol.ErrBadPayload, "4"},
		{`{"type":"join","id":"5","payload":{"room":""}}`, protocol.ErrBadRoom, "5"},
		{`{"type":"join","id":"6","payload":{"room":"../../etc/passwd"}}`, protocol.ErrBadRoom, "6"},
		{`{"type":"join","id":"7","payload":{"room":"rooms.*"}}`, protocol.ErrBadRoom, "7"},
		{`{"type":"join","id":"8","payload":{"room":"` + strings.Repeat("r", 65) + `"}}`, protocol.ErrBadRoom, "8"},
		{`{"type":"chat","id":"9","payload":{"text":""}}`, protocol.ErrBadText, "9"},
		{`{"type":"chat","id":"10","payload":{"text":"` + strings.Repeat("x", 51) + `"}}`, protocol.ErrBadText, "10"},
		{`{"type":"chat","id":"11","payload":{"text":["a"]}}`, protocol.ErrBadPayload, "11"},
		{`{"type":"direct","id":"12","payload":{"to":"<script>","text":"x"}}`, protocol.ErrBadUser, "12"},
		{`{"type":"chat","id":"13","payload":"hello"}`, protocol.ErrBadPayload, "13"},
		{`{"type":"join","id":"14","payload":{"room":` + strings.Repeat("[", 11000) + strings.Repeat("]", 11000) + `}}`, protocol.ErrBadJSON, ""},
	} {
		c.sendRaw(websocket.TextMessage, []byte(tc.frame))
		e := payloadOf[protocol.Error](t, c.expect(protocol.TypeError, nil))
		if e.Code != tc.code || e.ID != tc.id || e.Message == "" {
			t.Fatalf("frame %.60q: error %+v, want code %s id %q", tc.frame, e, tc.code, tc.id)
		}
		c.roundTrip(fmt.Sprint("alive-", i))
	}
	c.sendRaw(websocket.BinaryMessage, []byte{1, 2, 3}) // binary frames are files: this is not one
	if e := payloadOf[protocol.Error](t, c.expect(protocol.TypeError, nil)); e.Code != protocol.ErrBadFile {
		t.Fatalf("binary frame: %+v, want bad_file", e)
	}
	c.roundTrip("after-binary")
	bystander.expectNone(protocol.TypeError, nil, 0)
	bystander.roundTrip("bystander-ok")
}

func TestOversizedFrameCloses1009(t *testing.T) {
	ts := newTestServer(t, Config{MaxMessageSize: 1024})
	c := connect(t, ts, "big")
	other := connect(t, ts, "other")
	c.sendRaw(websocket.TextMessage, []byte(`{"type":"chat","payload":{"text":"`+strings.Repeat("x", 2000)+`"}}`))
	if code, _ := c.expectClose(); code != int(protocol.CloseTooBig) {
		t.Fatalf("close code %d, want 1009", code)
	}
	other.roundTrip("still-served")
}

func TestMegabyteFrameCloses1009(t *testing.T) {
	ts := newTestServer(t, Config{})
	c := connect(t, ts, "huge")
	c.ws.WriteMessage(websocket.TextMessage, make([]byte, 1<<20)) // may fail midway: the server closes early
	if code, _ := c.expectClose(); code != int(protocol.CloseTooBig) {
		t.Fatalf("close code %d, want 1009", code)
	}
	connect(t, ts, "next").roundTrip("ok")
}

func TestInvalidUTF8Closes1007(t *testing.T) {
	ts := newTestServer(t, Config{})
	c := connect(t, ts, "utf")
	other := connect(t, ts, "other")
	c.sendRaw(websocket.TextMessage, []byte("{\"type\":\"chat\",\"payload\":{\"text\":\"\xff\xfe\"}}"))
	if code, _ := c.expectClose(); code != int(protocol.CloseInvalidUTF8) {
		t.Fatalf("close code %d, want 1007", code)
	}
	other.roundTrip("still-served")
}

func TestFloodIsRateLimitedThenClosed(t *testing.T) {
	ts := newTestServer(t, Config{RateLimit: 10, RateBurst: 5, RateStrikes: 20})
	c := connect(t, ts, "flood")
	other := connect(t, ts, "other")
	for i := 0; i < 200; i++ {
		if err := c.ws.WriteMessage(websocket.TextMessage, []byte(fmt.Sprintf(`{"type":"ping","id":"%d"}`, i))); err != nil {
			break // closed by the server mid-flood
		}
	}
	e := payloadOf[protocol.Error](t, c.expect(protocol.TypeError, nil))
	if e.Code != protocol.ErrRateLimited || e.ID == "" {
		t.Fatalf("error = %+v, want rate_limited naming the id", e)
	}
	if code, _ := c.expectClose(); code != int(protocol.CloseRateLimited) {
		t.Fatalf("close code %d, want 4029", code)
	}
	if ts.Stats().RateLimited < 20 {
		t.Fatalf("rate limited count = %d", ts.Stats().RateLimited)
	}
	other.roundTrip("still-served")
}

// TestHandshakeRefusals: a bad handshake gets its status and a reason,
// the same from Serve's fast path and from Handler() under net/http.
func TestHandshakeRefusals(t *testing.T) {
	upgrade := map[string]string{"Connection": "Upgrade", "Upgrade": "websocket",
		"Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
	with := func(k, v string) map[string]string {
		h := map[string]string{k: v}
		for k, v := range upgrade {
			if _, set := h[k]; !set {
				h[k] = v
			}
		}
		return h
	}
	for name, start := range map[string]func(testing.TB, Config) *testServer{"Serve": newTestServer, "Handler": newHandlerTestServer} {
		t.Run(name, func(t *testing.T) {
			ts := start(t, Config{})
			for _, tc := range []struct {
				name   string
				path   string
				header map[string]string
				status int
			}{
				{"no upgrade headers", "/ws", nil, http.StatusBadRequest},
				{"no Connection: upgrade", "/ws", with("Connection", "keep-alive"), http.StatusBadRequest},
				{"version 8", "/ws", with("Sec-WebSocket-Version", "8"), http.StatusUpgradeRequired},
				{"short key", "/ws", with("Sec-WebSocket-Key", "c2hvcnQ="), http.StatusBadRequest},
				{"bad user in path", "/ws/a%20b", upgrade, http.StatusBadRequest},
				{"markup as user in path", "/ws/<b>", upgrade, http.StatusBadRequest},
				{"bad user in query", "/ws?user=%3Cscript%3E", upgrade, http.StatusBadRequest},
				{"foreign origin", "/ws", with("Origin", "https://evil.example"), http.StatusForbidden},
			} {
				req, _ := http.NewRequest("GET", ts.url+tc.path, nil)
				for k, v := range tc.header {
					req.Header.Set(k, v)
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatalf("%s: %v", tc.name, err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != tc.status || len(body) == 0 {
					t.Fatalf("%s: status %d body %q, want %d with a reason", tc.name, resp.StatusCode, body, tc.status)
				}
				if tc.status == http.StatusUpgradeRequired && resp.Header.Get("Sec-WebSocket-Version") != "13" {
					t.Fatalf("%s: 426 without Sec-WebSocket-Version: 13 (%v)", tc.name, resp.Header)
				}
			}
			// Loopback origins are fine in open mode.
			h := http.Header{"Origin": {"http://localhost:5173"}}
			ws, _, err := websocket.DefaultDialer.Dial(ts.ws+"/ws?user=vite", h)
			if err != nil {
				t.Fatalf("loopback origin refused: %v", err)
			}
			ws.Close()
		})
	}
}

func TestGuestNameWhenNoUserGiven(t *testing.T) {
	ts := newTestServer(t, Config{})
	c := dial(t, ts.ws+"/ws")
	w := c.expectWelcome()
	if !strings.HasPrefix(w.User, "guest-") || w.Session == "" || w.Protocol != protocol.Version {
		t.Fatalf("welcome = %+v", w)
	}
	q := dial(t, ts.ws+"/ws?user=quinn")
	if w := q.expectWelcome(); w.User != "quinn" {
		t.Fatalf("user from query = %q", w.User)
	}
}

// TestSlowConsumerIsDroppedAndRoomKeepsPace: a member that never reads fills
// its bounded queue and is closed alone; another member gets every message.
func TestSlowConsumerIsDroppedAndRoomKeepsPace(t *testing.T) {
	ts := newTestServer(t, Config{RateLimit: -1, PresenceGrace: 50 * time.Millisecond})
	d := websocket.Dialer{NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err == nil {
			conn.(*net.TCPConn).SetReadBuffer(4096) // fill up fast
		}
		return conn, err
	}}
	frozen, _, err := d.Dial(ts.ws+"/ws/frozen", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer frozen.Close() // never read from
	healthy := connect(t, ts, "healthy")
	sender := connect(t, ts, "sender")

	// The sender keeps the room busy (paced, so that a healthy reader keeps
	// up even under the race detector) until the frozen member is dropped,
	// then sends "END". The healthy member must see every message, in order.
	text := strings.Repeat("x", 3000)
	stop := make(chan struct{})
	go func() {
		for i := 0; i < 20000; i++ {
			select {
			case <-stop:
				sender.ws.WriteMessage(websocket.TextMessage, []byte(`{"type":"chat","payload":{"text":"END"}}`))
				return
			default:
			}
			sender.ws.WriteMessage(websocket.TextMessage, []byte(fmt.Sprintf(`{"type":"chat","payload":{"text":"%d %s"}}`, i, text)))
			if i%10 == 9 {
				time.Sleep(2 * time.Millisecond)
			}
		}
	}()
	var seq uint64
	dropped := false
	for {
		env := healthy.next()
		if env.Type == protocol.TypePresence {
			if p := payloadOf[protocol.Presence](t, env); p.User == "frozen" && p.Action == protocol.PresenceLeave && !dropped {
				dropped = true
				close(stop)
			}
			continue
		}
		if env.Type != protocol.TypeChat {
			continue
		}
		m := payloadOf[protocol.Chat](t, env)
		if m.Seq != seq+1 {
			t.Fatalf("healthy member got seq %d after %d", m.Seq, seq)
		}
		seq = m.Seq
		if m.Text == "END" {
			break
		}
	}
	if !dropped {
		t.Fatal("END before the frozen member was dropped")
	}
	t.Logf("frozen member dropped; healthy member received all %d messages in order", seq)
	if ts.Stats().SlowConsumers == 0 {
		t.Fatal("slow consumer not counted")
	}
}

// TestHalfOpenPeerIsDetectedByHeartbeat: a client behind a proxy that stops
// forwarding (cable pulled) is closed after PingInterval+PongTimeout and
// its presence leave reaches the room.
func TestHalfOpenPeerIsDetectedByHeartbeat(t *testing.T) {
	interval, timeout := 200*time.Millisecond, 300*time.Millisecond
	ts := newTestServer(t, Config{PingInterval: interval, PongTimeout: timeout, PresenceGrace: time.Millisecond})
	observer := connect(t, ts, "observer")
	px := testnet.NewProxy(t, strings.TrimPrefix(ts.url, "http://"))
	ghost := dial(t, "ws://"+px.Addr()+"/ws/ghost")
	ghost.expectWelcome()
	observer.expect(protocol.TypePresence, func(e protocol.Envelope) bool { return payloadOf[protocol.Presence](t, e).User == "ghost" })

	// The observer answers pings (gorilla does so while reading), so it
	// must survive several intervals while the ghost must not.
	px.Freeze()
	frozenAt := time.Now()
	leave := payloadOf[protocol.Presence](t, observer.expect(protocol.TypePresence, func(e protocol.Envelope) bool {
		p := payloadOf[protocol.Presence](t, e)
		return p.User == "ghost" && p.Action == protocol.PresenceLeave
	}))
	took := time.Since(frozenAt)
	if leave.Count != 1 {
		t.Fatalf("presence = %+v", leave)
	}
	t.Logf("half-open peer detected and its leave published after %s (interval %s + timeout %s + grace 1ms)", took.Round(time.Millisecond), interval, timeout)
	observer.roundTrip("observer-alive")
}

func TestGracefulShutdownClosesEveryClientWith1012(t *testing.T) {
	ts := newTestServer(t, Config{})
	clients := []*client{connect(t, ts, "a"), connect(t, ts, "b"), connect(t, ts, "c")}
	clients[0].send(protocol.TypeChat, "last", map[string]any{"text": "before shutdown"})
	clients[0].expect(protocol.TypeAck, isAck("last"))

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := ts.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	for _, c := range clients {
		m := payloadOf[protocol.Chat](t, c.expect(protocol.TypeChat, nil)) // queued data drains first
		if m.Text != "before shutdown" {
			t.Fatalf("%s got %+v", c.user, m)
		}
		if code, reason := c.expectClose(); code != int(protocol.CloseRestart) || reason == "" {
			t.Fatalf("%s: close %d %q, want 1012 with a reason", c.user, code, reason)
		}
	}
	// The listener is closed; a server embedded through Handler() answers
	// 503 on /readyz and refuses handshakes.
	if _, _, err := websocket.DefaultDialer.Dial(ts.ws+"/ws/late", nil); err == nil {
		t.Fatal("a connection was accepted after shutdown")
	}
	hs := httptest.NewServer(ts.Handler())
	defer hs.Close()
	resp, err := http.Get(hs.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("/readyz after shutdown = %d", resp.StatusCode)
	}
	if _, resp, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(hs.URL, "http")+"/ws/late", nil); err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("handshake through Handler() after shutdown: %v %v, want 503", resp, err)
	}
}

func TestHealthReadyAndStaticAssets(t *testing.T) {
	ts := newTestServer(t, Config{})
	for _, tc := range []struct{ path, want string }{
		{"/healthz", "ok"},
		{"/readyz", "ready"},
		{"/", "<!doctype html>"},
		{"/sdk/tether.js", "export"},
	} {
		resp, err := http.Get(ts.url + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(strings.ToLower(string(body)), strings.ToLower(tc.want)) {
			t.Fatalf("GET %s = %d %.80q", tc.path, resp.StatusCode, body)
		}
	}
}

// TestNoGoroutineGrowth opens and closes connections cleanly and abruptly
// and checks that the goroutine count comes back down.
func TestNoGoroutineGrowth(t *testing.T) {
	ts := newTestServer(t, Config{})
	connect(t, ts, "warm").roundTrip("w")
	time.Sleep(50 * time.Millisecond)
	base := runtime.NumGoroutine()
	for i := 0; i < 200; i++ {
		ws, _, err := websocket.DefaultDialer.Dial(fmt.Sprintf("%s/ws/u%d", ts.ws, i%7), nil)
		if err != nil {
			t.Fatal(err)
		}
		ws.WriteMessage(websocket.TextMessage, []byte(`{"type":"chat","payload":{"text":"x"}}`))
		if i%2 == 0 {
			ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(time.Second))
		}
		ws.Close()
	}
	deadline := time.Now().Add(waitFor)
	for {
		n := runtime.NumGoroutine()
		if n <= base+2 && ts.Stats().Connections == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("goroutines %d (baseline %d), connections %d", n, base, ts.Stats().Connections)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestBigRoomPresenceIsCoalesced: past PresenceEventsMax users, joins are
// not one event per member each (N²) but one count event per interval.
func TestBigRoomPresenceIsCoalesced(t *testing.T) {
	ts := newTestServer(t, Config{PresenceEventsMax: 3, PresenceInterval: 100 * time.Millisecond, MembersMax: 2})
	watcher := connect(t, ts, "watcher")
	var others []*client
	for i := 0; i < 6; i++ {
		others = append(others, connect(t, ts, fmt.Sprint("u", i)))
	}
	// users 1..3 in the room: per-user events; users 4..7: a count event.
	for i := 0; i < 2; i++ {
		p := payloadOf[protocol.Presence](t, watcher.expect(protocol.TypePresence, func(e protocol.Envelope) bool {
			return payloadOf[protocol.Presence](t, e).User != "watcher"
		}))
		if p.Action != protocol.PresenceJoin || p.User != fmt.Sprint("u", i) {
			t.Fatalf("event %d = %+v, want join of u%d", i, p, i)
		}
	}
	p := payloadOf[protocol.Presence](t, watcher.expect(protocol.TypePresence, func(e protocol.Envelope) bool {
		return payloadOf[protocol.Presence](t, e).Action == protocol.PresenceCount
	}))
	for p.Count != 7 {
		p = payloadOf[protocol.Presence](t, watcher.expect(protocol.TypePresence, nil))
	}
	watcher.expectNone(protocol.TypePresence, func(e protocol.Envelope) bool {
		p := payloadOf[protocol.Presence](t, e)
		return p.Action == protocol.PresenceJoin && p.User != "watcher" && p.User != "u0" && p.User != "u1"
	}, quiet)
	m := payloadOf[protocol.Members](t, others[5].who(protocol.DefaultRoom))
	if m.Count != 7 || len(m.Users) != 2 || !m.Truncated {
		t.Fatalf("members in a big room = %+v, want 2 of 7, truncated", m)
	}
}

// TestBigRoomPresenceFollowsTabsExactly: a join's presence update runs
// without the room's lock (so that thousands of resumes into one room do
// not queue behind each other's round trips), ordered only by the user's
// presence lock. A user's tabs joining and leaving at the same moment must
// still leave the user present exactly when one of their tabs is in the
// room.
func TestPresenceFollowsTabsExactly(t *testing.T) {
	bothEngines(t, func(t *testing.T, e engineCase) {
		for _, eventsMax := range []int{2, 100} { // a big room (6 > 2), a small one
			t.Run(fmt.Sprint("events-max-", eventsMax), func(t *testing.T) { presenceFollowsTabs(t, e, eventsMax) })
		}
	})
}

func presenceFollowsTabs(t *testing.T, e engineCase, eventsMax int) {
	const interval = 300 * time.Millisecond
	ts := newTestServer(t, e.with(Config{PresenceEventsMax: eventsMax, PresenceInterval: interval, AutoJoin: "-"}))
	for i := 0; i < 6; i++ {
		u := connect(t, ts, fmt.Sprint("u", i))
		u.send(protocol.TypeJoin, "j", map[string]any{"room": "big"})
		u.expect(protocol.TypeAck, isAck("j"))
		u.expect(protocol.TypeMembers, nil)
	}
	tabs := []*client{connect(t, ts, "alice"), connect(t, ts, "alice")}
	in := []bool{false, false}
	ctx := context.Background()
	for round := 0; round < 40; round++ {
		// Each tab flips (joins if out, leaves if in), both at once;
		// every other round only one of them flips.
		id := fmt.Sprint("r", round)
		var sent []*client
		for i, c := range tabs {
			if round%2 == 1 && i != round%4/2 {
				continue
			}
			typ := protocol.TypeJoin
			if in[i] {
				typ = protocol.TypeLeave
			}
			in[i] = !in[i]
			c.send(typ, id, map[string]any{"room": "big"})
			sent = append(sent, c)
		}
		for _, c := range sent {
			c.expect(protocol.TypeAck, isAck(id))
		}
		has, err := ts.eng.PresenceHas(ctx, "big", "alice")
		if err != nil {
			t.Fatal(err)
		}
		if want := in[0] || in[1]; has != want {
			t.Fatalf("round %d: tabs in the room %v, alice present %v", round, in, has)
		}
	}
}

// firstOfType connects as user, from any goroutine, and returns the first
// frame of type typ the server sends (within 20 s).
func firstOfType(ts *testServer, user, typ string) (protocol.Envelope, error) {
	ws, _, err := websocket.DefaultDialer.Dial(ts.ws+"/ws/"+user, nil)
	if err != nil {
		return protocol.Envelope{}, fmt.Errorf("%s: %w", user, err)
	}
	defer ws.Close()
	ws.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		var env protocol.Envelope
		if err := ws.ReadJSON(&env); err != nil {
			return env, fmt.Errorf("%s: no %s: %w", user, typ, err)
		}
		if env.Type == typ {
			return env, nil
		}
	}
}

// slowMembers is the in-memory engine with a slow, counted
// PresenceMembers, as a remote engine listing a big room is.
type slowMembers struct {
	engine.Engine
	delay time.Duration
	calls atomic.Int64
}

func (e *slowMembers) PresenceMembers(ctx context.Context, set string, limit int) ([]string, error) {
	e.calls.Add(1)
	time.Sleep(e.delay)
	return e.Engine.PresenceMembers(ctx, set, limit)
}

// TestBigRoomListingIsReadOnceForManyJoins: clients pouring into a big
// room whose listing is not cached (a node just restarted) share one read
// of it instead of each reading the whole room, and each gets the room's
// listing.
func TestBigRoomListingIsReadOnceForManyJoins(t *testing.T) {
	eng := &slowMembers{Engine: memory.New(memory.Config{}), delay: 300 * time.Millisecond}
	ts := newTestServer(t, Config{Engine: eng, PresenceEventsMax: 2, MembersMax: 3, PresenceInterval: 200 * time.Millisecond})
	for i := range 5 { // a big room: 5 > 2
		connect(t, ts, fmt.Sprint("early", i))
	}
	time.Sleep(250 * time.Millisecond) // its listing is stale now
	eng.calls.Store(0)
	const n = 40
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			env, err := firstOfType(ts, fmt.Sprint("late", i), protocol.TypeMembers)
			if err != nil {
				errs <- err
				return
			}
			var m protocol.Members
			json.Unmarshal(env.Payload, &m)
			if m.Count < 5 || len(m.Users) != 3 || !m.Truncated {
				errs <- fmt.Errorf("late%d got members %+v", i, m)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if calls := eng.calls.Load(); calls > n/4 {
		t.Fatalf("%d joins read the big room's listing %d times", n, calls)
	}
}

// slowPresence is the in-memory engine with a slow Enter (a set-up's one
// engine call) that records how many calls were in flight at once.
type slowPresence struct {
	engine.Engine
	delay          time.Duration
	inFlight, most atomic.Int64
}

func (e *slowPresence) Enter(ctx context.Context, in engine.Entering) ([]engine.Entered, *engine.Session, error) {
	n := e.inFlight.Add(1)
	for m := e.most.Load(); n > m && !e.most.CompareAndSwap(m, n); m = e.most.Load() {
	}
	time.Sleep(e.delay)
	e.inFlight.Add(-1)
	return e.Engine.Enter(ctx, in)
}

// TestSetUpsTakeTurns: more clients than session.MaxSetups connecting at once are
// all set up, at most session.MaxSetups at a time, the others waiting their turn
// (tether_setups_waiting shows them).
func TestSetUpsTakeTurns(t *testing.T) {
	eng := &slowPresence{Engine: memory.New(memory.Config{}), delay: 200 * time.Millisecond}
	ts := newTestServer(t, Config{Engine: eng, AutoJoin: "-"})
	n := session.MaxSetups + 100
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if _, err := firstOfType(ts, fmt.Sprint("u", i), protocol.TypeWelcome); err != nil {
				errs <- err
			}
		})
	}
	sawWaiting := false
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline) && !sawWaiting; time.Sleep(20 * time.Millisecond) {
		_, body := get(t, ts.url+"/metrics", nil)
		sawWaiting = strings.Contains(body, "tether_setups_waiting ") && !strings.Contains(body, "tether_setups_waiting 0\n")
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if most := eng.most.Load(); most > session.MaxSetups || most < session.MaxSetups/2 {
		t.Fatalf("%d set-ups ran at once, want at most %d (and many)", most, session.MaxSetups)
	}
	if !sawWaiting {
		t.Fatal("/metrics never showed connections waiting for their set-up")
	}
}
