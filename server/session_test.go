package server

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tether-chat/tether/auth"
	"github.com/tether-chat/tether/protocol"
)

// cut drops a client's TCP connection without a close frame, the way a
// network failure does.
func (c *client) cut() {
	c.ws.UnderlyingConn().Close()
	<-c.done
}

// resumeURL is the URL a client uses to resume: its session and its
// positions.
func resumeURL(base, user, session string, since map[string][2]any) string {
	u := fmt.Sprintf("%s/ws/%s?session=%s", base, user, url.QueryEscape(session))
	if since != nil {
		b, _ := json.Marshal(since)
		u += "&since=" + url.QueryEscape(string(b))
	}
	return u
}

func isRecovered(room string, inbox bool) func(protocol.Envelope) bool {
	return func(e protocol.Envelope) bool {
		var r protocol.Recovered
		json.Unmarshal(e.Payload, &r)
		return r.Room == room && r.Inbox == inbox
	}
}

// TestResumeReplaysExactlyWhatWasMissed: a member drops while 50 messages
// go to its room and 10 to it privately; on resume it gets exactly those
// 60, in order, then live messages, with recovered: true.
func TestResumeReplaysExactlyWhatWasMissed(t *testing.T) {
	bothEngines(t, testResumeReplaysExactlyWhatWasMissed)
}

func testResumeReplaysExactlyWhatWasMissed(t *testing.T, eng engineCase) {
	ts := newTestServer(t, eng.with(Config{HistorySize: 200, PresenceGrace: 10 * time.Second}))
	alice := connect(t, ts, "alice")
	bob := connect(t, ts, "bob")
	alice.send(protocol.TypeJoin, "j", inRoom("ops"))
	alice.expect(protocol.TypeAck, isAck("j"))
	bob.send(protocol.TypeJoin, "j", inRoom("ops"))
	bob.expect(protocol.TypeAck, isAck("j"))

	// alice has seen ops up to seq 2 and her inbox up to seq 1.
	bob.send(protocol.TypeChat, "", map[string]any{"room": "ops", "text": "seen 1"})
	bob.send(protocol.TypeChat, "", map[string]any{"room": "ops", "text": "seen 2"})
	bob.send(protocol.TypeDirect, "", map[string]any{"to": "alice", "text": "seen dm"})
	var last protocol.Chat
	for i := 0; i < 2; i++ {
		last = payloadOf[protocol.Chat](t, alice.expect(protocol.TypeChat, nil))
	}
	dm := payloadOf[protocol.Direct](t, alice.expect(protocol.TypeDirect, nil))
	session := alice.welcome.Session

	alice.cut()
	for i := 1; i <= 50; i++ {
		bob.send(protocol.TypeChat, fmt.Sprint("c", i), map[string]any{"room": "ops", "text": fmt.Sprint("missed ", i)})
	}
	for i := 1; i <= 10; i++ {
		bob.send(protocol.TypeDirect, fmt.Sprint("d", i), map[string]any{"to": "alice", "text": fmt.Sprint("missed dm ", i)})
	}
	bob.expect(protocol.TypeAck, isAck("d10"))
	bob.expectNone(protocol.TypePresence, func(e protocol.Envelope) bool {
		p := payloadOf[protocol.Presence](t, e)
		return p.User == "alice" && p.Action == protocol.PresenceLeave
	}, quiet) // no leave within the grace period (through Redis, alice's own join can still be in flight)

	again := dial(t, resumeURL(ts.ws, "alice", session, map[string][2]any{
		"ops": {last.Epoch, last.Seq}, "@": {dm.Epoch, dm.Seq},
	}))
	w := again.expectWelcome()
	if !w.Resumed || w.Session != session || fmt.Sprint(w.Rooms) != "[general ops]" {
		t.Fatalf("welcome = %+v, want resumed with general and ops", w)
	}
	var gotRoom, gotDM []string
	recs := map[string]protocol.Recovered{}
	for len(recs) < 2 {
		env := again.next()
		switch env.Type {
		case protocol.TypeChat:
			m := payloadOf[protocol.Chat](t, env)
			if m.Room == "ops" {
				if m.Seq != last.Seq+uint64(len(gotRoom))+1 {
					t.Fatalf("replayed ops seq %d after %d messages", m.Seq, len(gotRoom))
				}
				gotRoom = append(gotRoom, m.Text)
			}
		case protocol.TypeDirect:
			gotDM = append(gotDM, payloadOf[protocol.Direct](t, env).Text)
		case protocol.TypeRecovered:
			r := payloadOf[protocol.Recovered](t, env)
			if r.Inbox && len(gotDM) != 10 || r.Room == "ops" && len(gotRoom) != 50 {
				t.Fatalf("recovered %+v before its stream's replay was complete", r)
			}
			recs[fmt.Sprint(r.Room, r.Inbox)] = r
		}
	}
	if len(gotRoom) != 50 || len(gotDM) != 10 || gotRoom[0] != "missed 1" || gotRoom[49] != "missed 50" || gotDM[0] != "missed dm 1" || gotDM[9] != "missed dm 10" {
		t.Fatalf("replay: %d room messages, %d private; first %v", len(gotRoom), len(gotDM), gotRoom[:1])
	}
	if r := recs["opsfalse"]; !r.Recovered || r.Count != 50 || r.Top != last.Seq+50 {
		t.Fatalf("ops recovered = %+v, want 50", r)
	}
	if r := recs["true"]; !r.Recovered || r.Count != 10 {
		t.Fatalf("inbox recovered = %+v, want 10", r)
	}
	// Live delivery continues after the replay, without duplicates.
	bob.send(protocol.TypeChat, "", map[string]any{"room": "ops", "text": "live"})
	m := payloadOf[protocol.Chat](t, again.expect(protocol.TypeChat, func(e protocol.Envelope) bool {
		return payloadOf[protocol.Chat](t, e).Room == "ops"
	}))
	if m.Text != "live" || m.Seq != last.Seq+51 {
		t.Fatalf("first live message = %+v", m)
	}
	again.expectNone(protocol.TypeChat, func(e protocol.Envelope) bool { return payloadOf[protocol.Chat](t, e).Room == "ops" }, quiet)
	if s := ts.Stats(); s.Resumes != 1 || s.Recoveries != 2 {
		t.Fatalf("stats = %+v", s)
	}
}

// TestResumeDuringTrafficLosesNothing resumes while messages keep flowing,
// so publications land between the history read and the switch to live.
func TestResumeDuringTrafficLosesNothing(t *testing.T) {
	bothEngines(t, testResumeDuringTrafficLosesNothing)
}

func testResumeDuringTrafficLosesNothing(t *testing.T, eng engineCase) {
	ts := newTestServer(t, eng.with(Config{HistorySize: 5000, RateLimit: -1}))
	bob := connect(t, ts, "bob")
	alice := connect(t, ts, "alice")
	bob.send(protocol.TypeChat, "", map[string]any{"text": "first"})
	first := payloadOf[protocol.Chat](t, alice.expect(protocol.TypeChat, nil))
	session := alice.welcome.Session
	alice.cut()

	const n = 1500
	go func() {
		for i := 0; i < n; i++ {
			bob.ws.WriteMessage(websocket.TextMessage, []byte(fmt.Sprintf(`{"type":"chat","payload":{"text":"%d"}}`, i)))
		}
	}()
	time.Sleep(5 * time.Millisecond)
	again := dial(t, resumeURL(ts.ws, "alice", session, map[string][2]any{"general": {first.Epoch, first.Seq}}))
	again.expectWelcome()
	want := first.Seq + 1
	for want <= first.Seq+n {
		env := again.next()
		if env.Type != protocol.TypeChat {
			continue
		}
		m := payloadOf[protocol.Chat](t, env)
		if m.Seq != want {
			t.Fatalf("got seq %d, want %d: a gap or a duplicate around the resume", m.Seq, want)
		}
		want++
	}
}

func TestResumeBeyondHistoryIsNotRecoveredAndHistoryFillsIn(t *testing.T) {
	bothEngines(t, testResumeBeyondHistoryIsNotRecoveredAndHistoryFillsIn)
}

func testResumeBeyondHistoryIsNotRecoveredAndHistoryFillsIn(t *testing.T, eng engineCase) {
	ts := newTestServer(t, eng.with(Config{HistorySize: 5}))
	alice, bob := connect(t, ts, "alice"), connect(t, ts, "bob")
	bob.send(protocol.TypeChat, "", map[string]any{"text": "seen"})
	seen := payloadOf[protocol.Chat](t, alice.expect(protocol.TypeChat, nil))
	session := alice.welcome.Session
	alice.cut()
	for i := 1; i <= 12; i++ {
		bob.send(protocol.TypeChat, fmt.Sprint(i), map[string]any{"text": fmt.Sprint("m", i)})
	}
	bob.expect(protocol.TypeAck, isAck("12"))

	again := dial(t, resumeURL(ts.ws, "alice", session, map[string][2]any{"general": {seen.Epoch, seen.Seq}}))
	if w := again.expectWelcome(); !w.Resumed {
		t.Fatal("session not resumed")
	}
	r := payloadOf[protocol.Recovered](t, again.expect(protocol.TypeRecovered, isRecovered("general", false)))
	if r.Recovered || r.Count != 0 || r.Top != seen.Seq+12 || r.Epoch != seen.Epoch {
		t.Fatalf("recovered = %+v, want false with top %d", r, seen.Seq+12)
	}
	again.send(protocol.TypeHistory, "h", map[string]any{"room": "general", "limit": 50})
	page := payloadOf[protocol.HistoryPage](t, again.expect(protocol.TypeHistory, nil))
	if len(page.Messages) != 5 || page.Messages[4].Text != "m12" || page.Oldest != seen.Seq+8 {
		t.Fatalf("history = %+v", page)
	}
}

// TestLostAckIsNotProcessedTwice: the server processed a message but the
// connection died before the ack arrived; the client re-sends it on resume.
func TestLostAckIsNotProcessedTwice(t *testing.T) { bothEngines(t, testLostAckIsNotProcessedTwice) }

func testLostAckIsNotProcessedTwice(t *testing.T, eng engineCase) {
	ts := newTestServer(t, eng.with(Config{}))
	alice, bob := connect(t, ts, "alice"), connect(t, ts, "bob")
	alice.send(protocol.TypeChat, "once", map[string]any{"text": "exactly once"})
	orig := payloadOf[protocol.Chat](t, bob.expect(protocol.TypeChat, nil)) // processed
	session := alice.welcome.Session
	alice.cut() // before alice read her ack

	again := dial(t, resumeURL(ts.ws, "alice", session, nil))
	again.expectWelcome()
	again.send(protocol.TypeChat, "once", map[string]any{"text": "exactly once"})
	ack := payloadOf[protocol.Ack](t, again.expect(protocol.TypeAck, isAck("once")))
	if ack.Seq != orig.Seq {
		t.Fatalf("re-sent message acked with seq %d, want the original %d", ack.Seq, orig.Seq)
	}
	bob.expectNone(protocol.TypeChat, nil, quiet)
	if ts.Stats().Duplicates != 1 {
		t.Fatalf("duplicates = %d", ts.Stats().Duplicates)
	}
	// A new id is processed as usual.
	again.send(protocol.TypeChat, "twice", map[string]any{"text": "new"})
	if m := payloadOf[protocol.Chat](t, bob.expect(protocol.TypeChat, nil)); m.Text != "new" || m.Seq != orig.Seq+1 {
		t.Fatalf("next message = %+v", m)
	}
}

func TestSessionRefusals(t *testing.T) { bothEngines(t, testSessionRefusals) }

func testSessionRefusals(t *testing.T, eng engineCase) {
	ts := newTestServer(t, eng.with(Config{ResumeWindow: 200 * time.Millisecond, PresenceGrace: 100 * time.Millisecond}))
	alice := connect(t, ts, "alice")
	session := alice.welcome.Session
	alice.cut()

	// Another user presenting alice's session is refused and learns nothing.
	mallory := dial(t, resumeURL(ts.ws, "mallory", session, nil))
	if code, _ := mallory.expectClose(); code != int(protocol.CloseSessionInvalid) {
		t.Fatalf("foreign session: close %d, want 4409", code)
	}
	if len(mallory.msgs) != 0 {
		t.Fatalf("refused connection received %d messages", len(mallory.msgs))
	}
	// After the resume window the session is gone: a fresh one starts.
	time.Sleep(400 * time.Millisecond)
	late := dial(t, resumeURL(ts.ws, "alice", session, nil))
	if w := late.expectWelcome(); w.Resumed || w.Session == session {
		t.Fatalf("expired session resumed: %+v", w)
	}
}

func TestCleanCloseForgetsTheSession(t *testing.T) { bothEngines(t, testCleanCloseForgetsTheSession) }

func testCleanCloseForgetsTheSession(t *testing.T, eng engineCase) {
	ts := newTestServer(t, eng.with(Config{}))
	alice := connect(t, ts, "alice")
	alice.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, "bye"), time.Now().Add(time.Second))
	alice.expectClose()
	time.Sleep(50 * time.Millisecond)
	again := dial(t, resumeURL(ts.ws, "alice", alice.welcome.Session, nil))
	if w := again.expectWelcome(); w.Resumed {
		t.Fatal("a session closed cleanly was resumed")
	}
}

// TestGoingAwayResumesButLeavesSoon: a client that closes with 1001 (a
// browser page closed, reloaded or navigated away) keeps its session: a
// reload resumes and gets what was sent meanwhile. If it does not come
// back, its room and its private partner learn of it after the short
// away-grace, not the full grace period.
func TestGoingAwayResumesButLeavesSoon(t *testing.T) {
	bothEngines(t, testGoingAwayResumesButLeavesSoon)
}

func testGoingAwayResumesButLeavesSoon(t *testing.T, eng engineCase) {
	away := 300 * time.Millisecond
	ts := newTestServer(t, eng.with(Config{PresenceGrace: 10 * time.Second, PresenceGraceAway: away}))
	bob, alice := connect(t, ts, "bob"), connect(t, ts, "alice")
	aboutAlice := func(e protocol.Envelope) bool { return payloadOf[protocol.Presence](t, e).User == "alice" }
	bob.expect(protocol.TypePresence, aboutAlice) // her join
	alice.send(protocol.TypeDirect, "d", map[string]any{"to": "bob", "text": "hi"})
	bob.expect(protocol.TypeDirect, nil)

	// A reload: 1001, then back at once with the session.
	alice.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1001, ""), time.Now().Add(time.Second))
	alice.expectClose()
	bob.send(protocol.TypeChat, "m", map[string]any{"text": "while you reloaded"})
	missed := payloadOf[protocol.Chat](t, bob.expect(protocol.TypeChat, nil))
	again := dial(t, resumeURL(ts.ws, "alice", alice.welcome.Session, map[string][2]any{"general": {missed.Epoch, missed.Seq - 1}}))
	if !again.expectWelcome().Resumed {
		t.Fatal("a page that went away (1001) did not resume its session")
	}
	if m := payloadOf[protocol.Chat](t, again.expect(protocol.TypeChat, nil)); m.Text != "while you reloaded" {
		t.Fatalf("replayed %+v", m)
	}
	bob.expectNone(protocol.TypePresence, aboutAlice, 2*away)

	// A closed tab: 1001, and nobody comes back.
	again.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1001, ""), time.Now().Add(time.Second))
	closed := time.Now()
	p := payloadOf[protocol.Presence](t, bob.expect(protocol.TypePresence, aboutAlice))
	bob.expect(protocol.TypeLeft, nil)
	if p.Action != protocol.PresenceLeave || time.Since(closed) < away || time.Since(closed) > 3*time.Second {
		t.Fatalf("presence %+v %s after the tab closed; want a leave after the away-grace (%s), well before the grace (10 s)",
			p, time.Since(closed), away)
	}
}

// TestPresenceDoesNotFlap: a resume within the grace period causes no
// leave/join for others; a drop without resume causes exactly one leave,
// when the grace period ends.
func TestPresenceDoesNotFlap(t *testing.T) { bothEngines(t, testPresenceDoesNotFlap) }

func testPresenceDoesNotFlap(t *testing.T, eng engineCase) {
	grace := 300 * time.Millisecond
	ts := newTestServer(t, eng.with(Config{PresenceGrace: grace}))
	watcher := connect(t, ts, "watcher")
	alice := connect(t, ts, "alice")
	aboutAlice := func(e protocol.Envelope) bool { return payloadOf[protocol.Presence](t, e).User == "alice" }
	watcher.expect(protocol.TypePresence, aboutAlice) // alice's join

	alice.cut()
	again := dial(t, resumeURL(ts.ws, "alice", alice.welcome.Session, nil))
	again.expectWelcome()
	watcher.expectNone(protocol.TypePresence, aboutAlice, 2*grace)

	again.cut()
	dropped := time.Now()
	p := payloadOf[protocol.Presence](t, watcher.expect(protocol.TypePresence, aboutAlice))
	if p.Action != protocol.PresenceLeave || time.Since(dropped) < grace {
		t.Fatalf("presence %+v after %s, want a leave after the %s grace", p, time.Since(dropped), grace)
	}
	watcher.expectNone(protocol.TypePresence, aboutAlice, 2*grace)
}

func TestTokenMode(t *testing.T) {
	secret := "s3cret"
	ts := newTestServer(t, Config{AuthSecret: secret})
	sign := func(c auth.Claims) string {
		tok, err := auth.Sign([]byte(secret), c)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	hour := time.Now().Add(time.Hour).Unix()
	good := sign(auth.Claims{Subject: "alice", ExpiresAt: hour, Rooms: []string{"general", "ops"}})

	for _, tc := range []struct {
		name   string
		url    string
		header http.Header
		code   int
	}{
		{"no token", ts.ws + "/ws", nil, 4401},
		{"forged", ts.ws + "/ws?token=" + func() string {
			tok, _ := auth.Sign([]byte("wrong"), auth.Claims{Subject: "alice", ExpiresAt: hour})
			return tok
		}(), nil, 4401},
		{"expired", ts.ws + "/ws?token=" + sign(auth.Claims{Subject: "alice", ExpiresAt: time.Now().Add(-time.Minute).Unix()}), nil, 4401},
		{"malformed", ts.ws + "/ws?token=abc", nil, 4401},
		{"other user in path", ts.ws + "/ws/bob?token=" + good, nil, 4403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, tc.url)
			code, reason := c.expectClose()
			if code != tc.code || reason == "" {
				t.Fatalf("close %d %q, want %d with a reason", code, reason, tc.code)
			}
			if len(c.msgs) != 0 {
				t.Fatal("a refused connection received messages")
			}
		})
	}

	// The token names the user; ?user= cannot override it.
	c := dial(t, ts.ws+"/ws?token="+good)
	if w := c.expectWelcome(); w.User != "alice" {
		t.Fatalf("user = %q", w.User)
	}
	c.send(protocol.TypeJoin, "ok", inRoom("ops"))
	c.expect(protocol.TypeAck, isAck("ok"))
	c.send(protocol.TypeJoin, "no", inRoom("secret"))
	e := payloadOf[protocol.Error](t, c.expect(protocol.TypeError, nil))
	if e.Code != protocol.ErrForbiddenRoom || e.ID != "no" {
		t.Fatalf("error = %+v, want forbidden_room", e)
	}
	// Nor can it read the room: who and history are for members.
	for _, typ := range []string{protocol.TypeWho, protocol.TypeHistory} {
		c.send(typ, "peek-"+typ, inRoom("secret"))
		e := payloadOf[protocol.Error](t, c.expect(protocol.TypeError, isAck("peek-"+typ)))
		if e.Code != protocol.ErrNotMember {
			t.Fatalf("%s of a room the token does not allow = %+v, want not_member", typ, e)
		}
	}
	// Authorization: Bearer works for non-browser clients.
	ws, _, err := websocket.DefaultDialer.Dial(ts.ws+"/ws", http.Header{"Authorization": {"Bearer " + good}})
	if err != nil {
		t.Fatal(err)
	}
	b := startClient(t, ws)
	if w := b.expectWelcome(); w.User != "alice" {
		t.Fatalf("bearer user = %q", w.User)
	}
	if ts.Stats().Refused != 5 {
		t.Fatalf("refused = %d, want 5", ts.Stats().Refused)
	}
}

// TestEngineRestartStartsNewEpoch: a server restart with the memory engine
// loses history; clients come back, are told recovered: false with the new
// epoch, and carry on.
func TestEngineRestartStartsNewEpoch(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	start := func(ln net.Listener) *Server {
		srv, err := New(Config{Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(ln)
		return srv
	}
	first := start(ln)
	base := "ws://" + addr
	alice := dial(t, base+"/ws/alice")
	alice.expectWelcome()
	alice.send(protocol.TypeChat, "1", map[string]any{"text": "before"})
	before := payloadOf[protocol.Chat](t, alice.expect(protocol.TypeChat, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	first.Shutdown(ctx)
	if code, _ := alice.expectClose(); code != int(protocol.CloseRestart) {
		t.Fatalf("shutdown close = %d", code)
	}

	ln2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	second := start(ln2)
	t.Cleanup(func() { second.Shutdown(context.Background()) })
	again := dial(t, resumeURL(base, "alice", alice.welcome.Session, map[string][2]any{"general": {before.Epoch, before.Seq}}))
	if w := again.expectWelcome(); w.Resumed {
		t.Fatal("a session from before the restart was resumed")
	}
	// The room has not published since the restart: its position is
	// ("", 0), which the old one is not.
	r := payloadOf[protocol.Recovered](t, again.expect(protocol.TypeRecovered, isRecovered("general", false)))
	if r.Recovered || r.Epoch != "" || r.Top != 0 {
		t.Fatalf("recovered = %+v, want false at the new empty position (old epoch %s)", r, before.Epoch)
	}
	again.send(protocol.TypeChat, "2", map[string]any{"text": "after"})
	m := payloadOf[protocol.Chat](t, again.expect(protocol.TypeChat, nil))
	if m.Epoch == before.Epoch || m.Epoch == "" || m.Seq != 1 {
		t.Fatalf("after restart: %+v; want seq 1 of a new epoch", m)
	}
}

// TestJoinPositionLetsASilentMemberResume: a member that has received
// nothing from a room resumes from the position its join reply gave.
func TestJoinPositionLetsASilentMemberResume(t *testing.T) {
	bothEngines(t, testJoinPositionLetsASilentMemberResume)
}

func testJoinPositionLetsASilentMemberResume(t *testing.T, eng engineCase) {
	ts := newTestServer(t, eng.with(Config{}))
	bob := connect(t, ts, "bob")
	for i := 0; i < 3; i++ {
		bob.send(protocol.TypeChat, fmt.Sprint("old", i), map[string]any{"text": "before alice"})
		bob.expect(protocol.TypeAck, isAck(fmt.Sprint("old", i)))
	}
	alice := dial(t, ts.ws+"/ws/alice")
	alice.expectWelcome()
	m := payloadOf[protocol.Members](t, alice.expect(protocol.TypeMembers, nil))
	if m.Top != 3 || m.Epoch == "" {
		t.Fatalf("members position = %q/%d, want top 3", m.Epoch, m.Top)
	}
	alice.cut()
	bob.send(protocol.TypeChat, "new", map[string]any{"text": "while alice was away"})
	bob.expect(protocol.TypeAck, isAck("new"))
	again := dial(t, resumeURL(ts.ws, "alice", alice.welcome.Session, map[string][2]any{"general": {m.Epoch, m.Top}}))
	again.expectWelcome()
	got := payloadOf[protocol.Chat](t, again.expect(protocol.TypeChat, nil))
	if got.Seq != 4 || got.Text != "while alice was away" {
		t.Fatalf("replayed %+v, want seq 4 only", got)
	}
	if r := payloadOf[protocol.Recovered](t, again.expect(protocol.TypeRecovered, nil)); !r.Recovered || r.Count != 1 {
		t.Fatalf("recovered = %+v", r)
	}
}

// TestExpiredSessionsSetUpWhileTheUpkeepSaves: connections that come back
// with a session that expired get a new one during their set-up, while the
// upkeep saves every live connection's session (every ResumeWindow/3).
// The upkeep must not read a session id the set-up is still replacing (the
// race detector failed this before sessionSet), and each new session is
// saved: a later resume with it finds it.
func TestExpiredSessionsSetUpWhileTheUpkeepSaves(t *testing.T) {
	ts := newTestServer(t, Config{AutoJoin: "-", ResumeWindow: 90 * time.Millisecond, PresenceGrace: 30 * time.Millisecond})
	var sessions []string
	for i := range 20 {
		user := fmt.Sprint("u", i)
		c := dial(t, resumeURL(ts.ws, user, "expired-"+user, nil))
		w := c.expectWelcome()
		if w.Resumed || w.Session == "expired-"+user {
			t.Fatalf("welcome %+v: an unknown session was resumed", w)
		}
		sessions = append(sessions, w.Session)
		time.Sleep(10 * time.Millisecond) // set-ups spread over several upkeep rounds
	}
	// Saved by the set-ups and the upkeep: each resumes (the window is
	// kept alive by the upkeep while its connection lives).
	time.Sleep(100 * time.Millisecond)
	for i, s := range sessions {
		c := dial(t, resumeURL(ts.ws, fmt.Sprint("u", i), s, nil))
		if w := c.expectWelcome(); !w.Resumed || w.Session != s {
			t.Fatalf("u%d: welcome %+v, want session %s resumed", i, w, s)
		}
	}
}
