package hub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tether-chat/tether/engine"
	"github.com/tether-chat/tether/engine/memory"
	"github.com/tether-chat/tether/protocol"
	"github.com/tether-chat/tether/server/transport"
)

// member is a Member that keeps what it was given.
type member struct {
	id    uint64
	user  string
	rooms Rooms

	mu     sync.Mutex
	frames []string
	closed *protocol.Disconnect
}

func (m *member) ID() uint64    { return m.id }
func (m *member) User() string  { return m.user }
func (m *member) Rooms() *Rooms { return &m.rooms }
func (m *member) Close(d protocol.Disconnect, _ transport.CloseMode) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed == nil {
		m.closed = &d
	}
}

func (m *member) Deliver(frame []byte, _, _ string, _ uint64, _ *transport.Batch) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.frames = append(m.frames, string(frame))
	return true
}

func (m *member) got() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.frames)
}

// node is a Node that keeps what it was told.
type node struct {
	mu       sync.Mutex
	events   []string
	controls []string
}

func (n *node) note(to *[]string, s string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	*to = append(*to, s)
}

func (n *node) Joined(user, room string)               { n.note(&n.events, "join "+user+" "+room) }
func (n *node) Left(user, room string)                 { n.note(&n.events, "leave "+user+" "+room) }
func (n *node) Delivered(string, int64)                {}
func (n *node) Panicked(where string, r any)           { panic(fmt.Sprint(where, ": ", r)) }
func (n *node) EngineFailed(_ string, err error) error { return err }
func (n *node) OpContext(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}
func (n *node) Control(user string, p *engine.Publication) {
	n.note(&n.controls, user+" "+p.Action)
}

func (n *node) seen() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.events)
}

// newHub is a hub on the memory engine (the real one) with presence
// events in rooms of up to presenceMax users.
func newHub(t *testing.T, presenceMax int) (*Hub, *node, engine.Engine) {
	t.Helper()
	eng := memory.New(memory.Config{})
	n := &node{}
	h := New(Config{Engine: eng, NodeID: "n1", Log: slog.New(slog.DiscardHandler), PresenceEventsMax: presenceMax,
		MembersMax: 100, MaxRoomsPerConn: 4, PresenceInterval: time.Second, ResumeWindow: time.Minute}, n)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); eng.Close() })
	if err := eng.Start(ctx, h); err != nil {
		t.Fatal(err)
	}
	return h, n, eng
}

// enter sets m up as a connection's set-up does: its user, then rooms,
// in one engine call.
func enter(t *testing.T, h *Hub, m *member, rooms ...string) {
	t.Helper()
	p := h.Plan(m)
	p.User(nil)
	for _, r := range rooms {
		if err := p.Room(r, nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := p.Run(context.Background(), engine.Entering{}); err != nil {
		t.Fatal(err)
	}
}

func publish(t *testing.T, eng engine.Engine, p *engine.Publication) {
	t.Helper()
	p.TS = time.Now().UnixMilli()
	if _, err := eng.Publish(context.Background(), p, engine.PublishOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestDeliveryReachesTheStreamsMembersOnly: a room's publication reaches
// its members and nobody else, not the connection that sent it; an
// inbox's reaches every tab of its user.
func TestDeliveryReachesTheStreamsMembersOnly(t *testing.T) {
	h, _, eng := newHub(t, 100)
	ann, bob, cat := &member{id: 1, user: "ann"}, &member{id: 2, user: "bob"}, &member{id: 3, user: "cat"}
	bob2 := &member{id: 4, user: "bob"}
	enter(t, h, ann, "ops")
	enter(t, h, bob, "ops")
	enter(t, h, cat)
	enter(t, h, bob2)
	before := map[*member]int{ann: len(ann.got()), bob: len(bob.got()), cat: len(cat.got()), bob2: len(bob2.got())}

	publish(t, eng, &engine.Publication{Stream: engine.RoomStream("ops"), Type: protocol.TypeChat, Room: "ops",
		From: "ann", Text: "hi", SkipConn: 1, Node: "n1"})
	publish(t, eng, &engine.Publication{Stream: engine.UserStream("bob"), Type: protocol.TypeDirect, From: "cat", To: "bob", Text: "psst"})

	want := map[*member][]string{ann: nil, bob: {`"hi"`, `"psst"`}, cat: nil, bob2: {`"psst"`}}
	for m, texts := range want {
		got := m.got()[before[m]:]
		if len(got) != len(texts) {
			t.Fatalf("%s (%d) got %q, want %d frames", m.user, m.id, got, len(texts))
		}
		for i, text := range texts {
			if !strings.Contains(got[i], text) {
				t.Fatalf("%s got %q, want %s", m.user, got[i], text)
			}
		}
	}
	if got := h.PartnersOf("bob"); !slices.Equal(got, []string{"cat"}) {
		t.Fatalf("bob's partners %q, want [cat]", got)
	}
}

// TestPresenceFollowsTheLastTab: a user's first tab in a room joins them
// (the node told, the members told), a second tab changes nothing, and
// only the last tab's leave takes them out.
func TestPresenceFollowsTheLastTab(t *testing.T) {
	h, n, eng := newHub(t, 100)
	tab1, tab2 := &member{id: 1, user: "ann"}, &member{id: 2, user: "ann"}
	enter(t, h, tab1, "ops")
	enter(t, h, tab2, "ops")
	if got := n.seen(); !slices.Equal(got, []string{"join ann ops"}) {
		t.Fatalf("events %q, want one join", got)
	}
	ctx := context.Background()
	h.Leave(ctx, tab1, "ops")
	if has, _ := eng.PresenceHas(ctx, "ops", "ann"); !has {
		t.Fatal("ann left ops with a tab still in it")
	}
	if h.IsMember(tab1, "ops") || !h.IsMember(tab2, "ops") {
		t.Fatal("membership wrong after the first tab's leave")
	}
	h.Leave(ctx, tab2, "ops")
	if has, _ := eng.PresenceHas(ctx, "ops", "ann"); has {
		t.Fatal("ann still in ops after the last tab left")
	}
	if got := n.seen(); !slices.Equal(got, []string{"join ann ops", "leave ann ops"}) {
		t.Fatalf("events %q", got)
	}
	if _, rooms := h.Sizes(); rooms != 0 {
		t.Fatalf("%d rooms left on the node", rooms)
	}
}

// TestAGhostHoldsPresenceUntilItsGraceEnds: a dropped connection's ghost
// keeps its user in its rooms; a resume takes it over with no event, and
// an unclaimed one leaves when its grace ends.
func TestAGhostHoldsPresenceUntilItsGraceEnds(t *testing.T) {
	h, n, eng := newHub(t, 100)
	ctx := context.Background()
	first := &member{id: 1, user: "ann"}
	enter(t, h, first, "ops")
	h.Detach(ctx, first, "s1", time.Hour)
	resumed := &member{id: 2, user: "ann"}
	enter(t, h, resumed, "ops")
	if !h.ReleaseGhost(ctx, "s1") {
		t.Fatal("the resume found no ghost")
	}
	if got := n.seen(); !slices.Equal(got, []string{"join ann ops"}) {
		t.Fatalf("events %q: the resume flapped presence", got)
	}

	h.Detach(ctx, resumed, "s1", 50*time.Millisecond)
	deadline := time.Now().Add(5 * time.Second)
	for {
		has, _ := eng.PresenceHas(ctx, "ops", "ann")
		if !has {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the ghost outlived its grace")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := n.seen(); !slices.Equal(got, []string{"join ann ops", "leave ann ops"}) {
		t.Fatalf("events %q", got)
	}
}

// TestControlAndLost: a control message goes to the node, never to a
// member; a stream the engine lost closes its readers with 4010.
func TestControlAndLost(t *testing.T) {
	h, n, eng := newHub(t, 100)
	ann := &member{id: 1, user: "ann"}
	enter(t, h, ann, "ops")
	before := len(ann.got())
	publish(t, eng, &engine.Publication{Stream: engine.UserStream("ann"), Type: TypeControl, Action: "disconnect"})
	if got := ann.got()[before:]; len(got) != 0 {
		t.Fatalf("a control message reached the member: %q", got)
	}
	n.mu.Lock()
	controls := slices.Clone(n.controls)
	n.mu.Unlock()
	if !slices.Equal(controls, []string{"ann disconnect"}) {
		t.Fatalf("node told %q", controls)
	}
	h.Lost(engine.RoomStream("ops"))
	if ann.closed == nil || ann.closed.Code != protocol.DisconnectResync.Code {
		t.Fatalf("closed with %v, want 4010", ann.closed)
	}
}

// TestRoomsPerConnectionAreBounded: past MaxRoomsPerConn a join is
// refused with too_many_rooms, and nothing changes.
func TestRoomsPerConnectionAreBounded(t *testing.T) {
	h, _, _ := newHub(t, 100)
	ann := &member{id: 1, user: "ann"}
	enter(t, h, ann, "a", "b", "c", "d")
	err := h.Plan(ann).Room("e", nil)
	var pe *protocol.Error
	if !errors.As(err, &pe) || pe.Code != protocol.ErrTooManyRooms {
		t.Fatalf("fifth room: %v, want %s", err, protocol.ErrTooManyRooms)
	}
	if got := h.RoomsOf(ann); !slices.Equal(got, []string{"a", "b", "c", "d"}) {
		t.Fatalf("rooms %q", got)
	}
}

// TestBigRoomJoinsAreCounted: past PresenceEventsMax users a join is not
// announced to every member; the room is marked, and the next
// FlushPresence sends one count event.
func TestBigRoomJoinsAreCounted(t *testing.T) {
	h, n, _ := newHub(t, 2)
	members := []*member{{id: 1, user: "a"}, {id: 2, user: "b"}, {id: 3, user: "c"}}
	for _, m := range members {
		enter(t, h, m, "big")
	}
	if got := n.seen(); len(got) != 3 {
		t.Fatalf("hooks told %q: every join is still a join for the application", got)
	}
	joins := func(m *member) (j, counts int) {
		for _, f := range m.got() {
			if strings.Contains(f, `"action":"join"`) {
				j++
			}
			if strings.Contains(f, `"action":"count"`) {
				counts++
			}
		}
		return j, counts
	}
	if j, _ := joins(members[0]); j != 2 {
		t.Fatalf("a saw %d join events, want 2 (its own and b's; c's made the room big)", j)
	}
	if j, _ := joins(members[2]); j != 0 {
		t.Fatalf("c saw %d join events, want none", j)
	}
	h.FlushPresence(context.Background())
	h.FlushPresence(context.Background()) // nothing changed since: no second event
	for _, m := range members {
		if _, counts := joins(m); counts != 1 {
			t.Fatalf("%s got %d count events, want 1: %q", m.user, counts, m.got())
		}
	}
	if f := members[2].got(); !strings.Contains(f[len(f)-1], `"count":3`) {
		t.Fatalf("count event %q, want 3", f[len(f)-1])
	}
}

// TestTheLastTabsEndTellsThePartners: a user's last connection ending
// cleanly takes them offline, and the partners they talked with are told
// they left; the end of a stopping node's connection (Forget) tells the
// engine nothing.
func TestTheLastTabsEndTellsThePartners(t *testing.T) {
	h, _, eng := newHub(t, 100)
	ctx := context.Background()
	ann, bob := &member{id: 1, user: "ann"}, &member{id: 2, user: "bob"}
	enter(t, h, ann)
	enter(t, h, bob, "ops")
	publish(t, eng, &engine.Publication{Stream: engine.UserStream("ann"), Type: protocol.TypeDirect, From: "bob", To: "ann", Text: "hi"})
	publish(t, eng, &engine.Publication{Stream: engine.UserStream("bob"), Type: protocol.TypeDirect, From: "bob", To: "ann", Text: "hi"})
	h.Unregister(ctx, bob)
	if online, _ := eng.PresenceHas(ctx, "", "bob"); online {
		t.Fatal("bob online after his last connection ended")
	}
	if got := ann.got(); !strings.Contains(got[len(got)-1], `"type":"left"`) || !strings.Contains(got[len(got)-1], `"bob"`) {
		t.Fatalf("ann's last frame %q, want bob's left", got[len(got)-1])
	}
	h.Forget(ann)
	if online, _ := eng.PresenceHas(ctx, "", "ann"); !online {
		t.Fatal("Forget took ann offline in the engine: a stopping node leaves that to the presence TTL")
	}
	if h.Count() != 0 {
		t.Fatalf("%d connections left in the hub", h.Count())
	}
}
