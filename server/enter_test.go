package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tether-chat/tether/auth"
	"github.com/tether-chat/tether/engine"
	"github.com/tether-chat/tether/engine/memory"
	"github.com/tether-chat/tether/protocol"
)

// countingEngine is the in-memory engine that counts the calls made to it
// that go to the store (on the Redis engine, each is at least one round
// trip); Subscribe and Unsubscribe are local and not counted.
type countingEngine struct {
	engine.Engine
	mu    sync.Mutex
	calls map[string]int
}

func newCountingEngine() *countingEngine {
	return &countingEngine{Engine: memory.New(memory.Config{}), calls: map[string]int{}}
}

func (e *countingEngine) note(m string) {
	e.mu.Lock()
	e.calls[m]++
	e.mu.Unlock()
}

// take returns the calls counted since the last take, as "Method×n" sorted.
func (e *countingEngine) take() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for m, n := range e.calls {
		out = append(out, fmt.Sprintf("%s×%d", m, n))
	}
	clear(e.calls)
	sort.Strings(out)
	return strings.Join(out, " ")
}

func (e *countingEngine) Publish(ctx context.Context, p *engine.Publication, o engine.PublishOptions) (bool, error) {
	e.note("Publish")
	return e.Engine.Publish(ctx, p, o)
}
func (e *countingEngine) PublishBatch(ctx context.Context, ps []*engine.Publication, o []engine.PublishOptions) []engine.Published {
	e.note(fmt.Sprintf("PublishBatch(%d)", len(ps)))
	return e.Engine.PublishBatch(ctx, ps, o)
}
func (e *countingEngine) Recorded(ctx context.Context, s, k string) (uint64, string, bool, error) {
	e.note("Recorded")
	return e.Engine.Recorded(ctx, s, k)
}
func (e *countingEngine) Enter(ctx context.Context, in engine.Entering) ([]engine.Entered, *engine.Session, error) {
	e.note("Enter")
	return e.Engine.Enter(ctx, in)
}
func (e *countingEngine) History(ctx context.Context, s string, q engine.HistoryQuery) (engine.History, error) {
	e.note("History")
	return e.Engine.History(ctx, s, q)
}
func (e *countingEngine) PresenceAdd(ctx context.Context, set, user string) (bool, int, error) {
	e.note("PresenceAdd")
	return e.Engine.PresenceAdd(ctx, set, user)
}
func (e *countingEngine) PresenceRemove(ctx context.Context, set, user string) (bool, int, error) {
	e.note("PresenceRemove")
	return e.Engine.PresenceRemove(ctx, set, user)
}
func (e *countingEngine) PresenceMembers(ctx context.Context, set string, limit int) ([]string, error) {
	e.note("PresenceMembers")
	return e.Engine.PresenceMembers(ctx, set, limit)
}
func (e *countingEngine) PresenceHas(ctx context.Context, set, user string) (bool, error) {
	e.note("PresenceHas")
	return e.Engine.PresenceHas(ctx, set, user)
}
func (e *countingEngine) PresenceCount(ctx context.Context, set string) (int, error) {
	e.note("PresenceCount")
	return e.Engine.PresenceCount(ctx, set)
}
func (e *countingEngine) SaveSession(ctx context.Context, s *engine.Session, ttl time.Duration) error {
	e.note("SaveSession")
	return e.Engine.SaveSession(ctx, s, ttl)
}
func (e *countingEngine) SaveSessions(ctx context.Context, ss []*engine.Session, ttl time.Duration) error {
	e.note("SaveSessions")
	return e.Engine.SaveSessions(ctx, ss, ttl)
}
func (e *countingEngine) LoadSession(ctx context.Context, id string) (*engine.Session, error) {
	e.note("LoadSession")
	return e.Engine.LoadSession(ctx, id)
}
func (e *countingEngine) DeleteSession(ctx context.Context, id string) error {
	e.note("DeleteSession")
	return e.Engine.DeleteSession(ctx, id)
}

// TestSetUpIsOneEngineCall: everything a new connection needs from the
// engine — the session, presence online and in three rooms, the join
// events, the members and the positions — is one Enter call (one Redis
// round trip); a resume adds loading its session; a join, a who, one call
// each.
func TestSetUpIsOneEngineCall(t *testing.T) {
	eng := newCountingEngine()
	ts := newTestServer(t, Config{Engine: eng, PresenceGrace: time.Minute})
	other := connect(t, ts, "other") // the rooms have a member and the join events a receiver
	other.send(protocol.TypeJoin, "j", inRoom("a"))
	other.expect(protocol.TypeAck, isAck("j"))
	eng.take()

	c := dial(t, ts.ws+"/ws/alice?rooms=a,b")
	if w := c.expectWelcome(); fmt.Sprint(w.Rooms) != "[general a b]" {
		t.Fatalf("welcome rooms = %v", w.Rooms)
	}
	for range 3 {
		c.expect(protocol.TypeMembers, nil)
	}
	other.expect(protocol.TypePresence, func(e protocol.Envelope) bool { return payloadOf[protocol.Presence](t, e).User == "alice" })
	if got := eng.take(); got != "Enter×1" {
		t.Fatalf("a new connection in three rooms made engine calls %q, want one Enter", got)
	}

	c.send(protocol.TypeJoin, "j", inRoom("c"))
	c.expect(protocol.TypeAck, isAck("j"))
	c.expect(protocol.TypeMembers, nil)
	c.who("a")
	if got := eng.take(); got != "Enter×2" {
		t.Fatalf("a join and a who made engine calls %q, want one Enter each", got)
	}

	session := c.welcome.Session
	c.cut()
	waitUntil(t, "the drop to be noticed", func() bool { return ts.hub.Count() == 1 })
	eng.take() // the dropped connection's session save
	// As the SDKs do: the session, the positions and the rooms it is in.
	again := dial(t, resumeURL(ts.ws, "alice", session, map[string][2]any{"a": {"", 0}})+"&rooms=general,a,b,c")
	if w := again.expectWelcome(); !w.Resumed || fmt.Sprint(w.Rooms) != "[general a b c]" {
		t.Fatalf("resume welcome = %+v", w)
	}
	again.expect(protocol.TypeRecovered, isRecovered("a", false))
	for range 4 {
		again.expect(protocol.TypeMembers, nil)
	}
	if got := eng.take(); got != "Enter×1" {
		t.Fatalf("a resume made engine calls %q, want one Enter (which reads the session)", got)
	}

	// A resume that does not say which rooms it is in learns them from the
	// session, and enters them in a second call.
	again.cut()
	waitUntil(t, "the drop to be noticed", func() bool { return ts.hub.Count() == 1 })
	eng.take()
	third := dial(t, resumeURL(ts.ws, "alice", session, nil))
	if w := third.expectWelcome(); !w.Resumed || fmt.Sprint(w.Rooms) != "[a b c general]" {
		t.Fatalf("resume welcome = %+v", w)
	}
	if got := eng.take(); got != "Enter×2" {
		t.Fatalf("a resume without its rooms made engine calls %q, want two Enters", got)
	}
}

// TestRoomsAtConnect: ?rooms= joins rooms in the same step as the
// connection; each room it cannot join (a bad name, a room the token does
// not allow, past the room limit) is refused with an error that names it,
// and the connection goes on.
func TestRoomsAtConnect(t *testing.T) { bothEngines(t, testRoomsAtConnect) }

func testRoomsAtConnect(t *testing.T, eng engineCase) {
	ts := newTestServer(t, eng.with(Config{MaxRoomsPerConn: 3}))
	bob := connect(t, ts, "bob")
	bob.send(protocol.TypeJoin, "j", inRoom("ops"))
	bob.expect(protocol.TypeAck, isAck("j"))

	c := dial(t, ts.ws+"/ws/alice?rooms="+url.QueryEscape("ops,bad name,*,ops,dev,extra"))
	w := c.expectWelcome()
	if fmt.Sprint(w.Rooms) != "[general ops dev]" {
		t.Fatalf("welcome rooms = %v, want general ops dev", w.Rooms)
	}
	var refusals []string
	members := map[string]protocol.Members{}
	for len(refusals) < 3 || len(members) < 3 {
		env := c.next()
		switch env.Type {
		case protocol.TypeError:
			e := payloadOf[protocol.Error](t, env)
			refusals = append(refusals, string(e.Code)+" "+e.Message)
		case protocol.TypeMembers:
			m := payloadOf[protocol.Members](t, env)
			members[m.Room] = m
		}
	}
	want := []string{`bad_room rooms: "bad name"`, `bad_room rooms: "*"`, `too_many_rooms rooms: "extra"`}
	for i, r := range refusals {
		if !strings.HasPrefix(r, want[i]) {
			t.Fatalf("refusal %d = %q, want %q…", i, r, want[i])
		}
	}
	if m := members["ops"]; fmt.Sprint(m.Users) != "[alice bob]" || m.Count != 2 {
		t.Fatalf("ops members = %+v", m)
	}
	bob.expect(protocol.TypePresence, func(e protocol.Envelope) bool {
		p := payloadOf[protocol.Presence](t, e)
		return p.Room == "ops" && p.User == "alice" && p.Action == protocol.PresenceJoin
	})
	bob.send(protocol.TypeChat, "m", map[string]any{"room": "ops", "text": "hi"})
	if m := payloadOf[protocol.Chat](t, c.expect(protocol.TypeChat, nil)); m.Text != "hi" || m.Room != "ops" {
		t.Fatalf("chat = %+v", m)
	}
	c.roundTrip("still-open")
}

// TestRoomsAtConnectRecoverAfterTheSessionExpired: a client whose session
// is gone (here: closed cleanly) but who still has its rooms' positions
// asks for the rooms and gives the positions: what it missed is replayed
// in the same step, as a resume would.
func TestRoomsAtConnectRecoverAfterTheSessionExpired(t *testing.T) {
	bothEngines(t, func(t *testing.T, eng engineCase) {
		ts := newTestServer(t, eng.with(Config{AutoJoin: "-"}))
		bob := connect(t, ts, "bob")
		bob.send(protocol.TypeJoin, "j", inRoom("ops"))
		bob.expect(protocol.TypeAck, isAck("j"))
		bob.send(protocol.TypeChat, "m0", map[string]any{"room": "ops", "text": "seen"})
		bob.expect(protocol.TypeAck, isAck("m0"))

		alice := dial(t, ts.ws+"/ws/alice?rooms=ops")
		alice.expectWelcome()
		pos := payloadOf[protocol.Members](t, alice.expect(protocol.TypeMembers, nil))
		alice.ws.Close() // gone without its session: a new one next time
		for i := 1; i <= 3; i++ {
			bob.send(protocol.TypeChat, fmt.Sprint("m", i), map[string]any{"room": "ops", "text": fmt.Sprint("missed ", i)})
			bob.expect(protocol.TypeAck, isAck(fmt.Sprint("m", i)))
		}
		since, _ := json.Marshal(map[string][2]any{"ops": {pos.Epoch, pos.Top}})
		again := dial(t, ts.ws+"/ws/alice?rooms=ops&since="+url.QueryEscape(string(since)))
		if w := again.expectWelcome(); w.Resumed || fmt.Sprint(w.Rooms) != "[ops]" {
			t.Fatalf("welcome = %+v, want a new session in ops", w)
		}
		var got []string
		for {
			env := again.next()
			if env.Type == protocol.TypeChat {
				got = append(got, payloadOf[protocol.Chat](t, env).Text)
			}
			if env.Type == protocol.TypeRecovered {
				r := payloadOf[protocol.Recovered](t, env)
				if r.Room != "ops" || !r.Recovered || r.Count != 3 {
					t.Fatalf("recovered = %+v", r)
				}
				break
			}
		}
		if fmt.Sprint(got) != "[missed 1 missed 2 missed 3]" {
			t.Fatalf("replayed %q", got)
		}
	})
}

// TestRoomsAtConnectHonourTheToken: in token mode ?rooms= joins only the
// rooms the token allows.
func TestRoomsAtConnectHonourTheToken(t *testing.T) {
	secret := "s3cret"
	ts := newTestServer(t, Config{AuthSecret: secret})
	tok, err := auth.Sign([]byte(secret), auth.Claims{Subject: "alice", ExpiresAt: time.Now().Add(time.Hour).Unix(), Rooms: []string{"general", "ops"}})
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t, ts.ws+"/ws?token="+tok+"&rooms=ops,secret")
	if w := c.expectWelcome(); fmt.Sprint(w.Rooms) != "[general ops]" {
		t.Fatalf("welcome rooms = %v", w.Rooms)
	}
	e := payloadOf[protocol.Error](t, c.expect(protocol.TypeError, nil))
	if e.Code != protocol.ErrForbiddenRoom || !strings.Contains(e.Message, "secret") {
		t.Fatalf("refusal = %+v", e)
	}
	c.roundTrip("still-open")
}
