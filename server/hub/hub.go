// Package hub is the node's registry of who is where: rooms and their
// member connections, users and their connections (tabs), private
// conversations' partners and ghosts, presence and its coalescing in big
// rooms, and the delivery of the engine's publications to the members of
// their streams. It knows members through a small interface (Member) and
// the node it runs in through another (Node); it never sees a socket.
package hub

import (
	"context"
	"encoding/json"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tether-chat/tether/engine"
	"github.com/tether-chat/tether/protocol"
	"github.com/tether-chat/tether/server/transport"
)

// Member is one connection as the hub sees it: the session's connection.
type Member interface {
	ID() uint64
	User() string
	// Rooms is the member's set of rooms on this node; the hub keeps it,
	// under its lock.
	Rooms() *Rooms
	// Deliver queues a publication's frame for the member (or holds it
	// while the member replays what it missed); a member whose writer
	// must start is added to later. It never blocks.
	Deliver(frame []byte, stream, epoch string, seq uint64, later *transport.Batch) bool
	// Close closes the member's connection.
	Close(d protocol.Disconnect, mode transport.CloseMode)
}

// Rooms is a member's set of rooms on this node, kept by the hub. The
// zero value is empty; embed it in the member.
type Rooms struct{ m map[string]struct{} }

// Node is what the hub needs from the node it runs in.
type Node interface {
	// Joined and Left are told when a user's presence enters or leaves a
	// room (the application's hooks).
	Joined(user, room string)
	Left(user, room string)
	// Delivered is told of each publication delivered on this node (its
	// type and when it was published, unix milliseconds: metrics).
	Delivered(typ string, ts int64)
	// Control carries out a control message published on user's inbox
	// (typeControl): it is for the node, never sent to clients. It must
	// not block.
	Control(user string, p *engine.Publication)
	// Panicked is told of a panic the hub recovered (in a delivery, a
	// grace timer); the hub goes on.
	Panicked(where string, r any)
	// EngineFailed turns an engine error into what the client is
	// answered (and counts it).
	EngineFailed(op string, err error) error
	// OpContext is the context for an engine call of at most d.
	OpContext(d time.Duration) (context.Context, context.CancelFunc)
}

// Config is a hub's.
type Config struct {
	Engine engine.Engine
	NodeID string // a publication from this node skips the connection that sent it (SkipConn)
	Log    *slog.Logger
	// Flusher, when not nil, is the write delay's: room deliveries park
	// their writers with it.
	Flusher *transport.Flusher
	// See server.Config.
	PresenceEventsMax int
	MembersMax        int
	MaxRoomsPerConn   int
	PresenceInterval  time.Duration
	ResumeWindow      time.Duration
}

// TypeControl is the type of a control message: the server API's
// disconnect and unsubscribe, published (ephemerally) on the user's inbox
// stream so that they reach every node holding a connection of the user.
// The hub hands them to Node.Control; they are never sent to clients.
const TypeControl = "_control"

// Hub is the node's registry of who is where: rooms and their member
// connections, users and their connections (tabs), private-conversation
// partners, and ghosts. It turns engine deliveries into enqueued frames.
//
// A ghost holds the memberships of a connection that dropped without a
// clean close, for the presence grace period: while it exists the user is
// still present in their rooms and online, so a quick reconnect that
// resumes the session causes no leave/join flapping. When it expires
// unclaimed, the leaves happen then.
//
// Locks, in the order they may be taken:
//
//	keyLock(stream)  serializes membership changes of one room or user on
//	                 this node: "first tab in" and "last tab out" are
//	                 decided under it. One mutex per key (keylock.go):
//	                 different users and rooms never wait for each other.
//	                 A join or set-up lets it go before its engine call
//	                 (enter.go); a leave holds it across its own.
//	presenceLock(set, user)
//	                 orders one user's presence updates in one set (a room,
//	                 or "" for online): a first holder's Enter and a last
//	                 holder's removal. A leave takes it before it lets the
//	                 key lock go; a set-up takes those of every set it
//	                 newly enters, sorted, holding no key lock.
//	Hub.mu           guards the maps below; held only briefly, never across
//	                 an engine call. Delivery holds it for reading.
//	(then the member's own locks: its held deliveries, its send queue)
type Hub struct {
	cfg  Config
	node Node
	keys *keyLocks[string] // keyLock's: by stream
	// presenceKeys are presenceLock's: a user's presence in one room.
	presenceKeys *keyLocks[roomUser]

	mu       sync.RWMutex
	rooms    map[string]*room
	users    map[string]*userConns
	partners map[string]map[string]struct{} // user -> users they had a private conversation with
	all      map[Member]struct{}
	dirty    map[string]struct{} // big rooms whose count changed since the last flush
	ghosts   map[string]*ghost   // session id -> memberships held through the grace period
	// partnerAdds counts the partners noted, so that Shutdown can tell
	// whether a session changed after it saved them all.
	partnerAdds atomic.Uint64

	membersMu      sync.Mutex
	members        map[string]Listing      // big rooms' listed users, encoded
	membersLoading map[string]*membersLoad // reads of big rooms in flight
}

// Listing is a big room's user list (at most MembersMax), encoded.
type Listing struct {
	JSON   []byte // the listed users, a JSON array
	Listed int    // how many are listed
	Count  int    // the room's size
	At     time.Time
}

// CachedBigRoom returns a big room's cached members, if they are fresh: read
// at most once per PresenceInterval (presence in big rooms is coalesced to
// that interval anyway, and every engine call saved counts when thousands
// of clients join or resume at once).
func (h *Hub) CachedBigRoom(room string) (Listing, bool) {
	h.membersMu.Lock()
	m, ok := h.members[room]
	h.membersMu.Unlock()
	return m, ok && time.Since(m.At) < h.cfg.PresenceInterval
}

// LoadBigRoom reads a big room's listed users and caches them with its size
// (count, as the caller just read it), for cachedBigRoom. Callers that
// come while a read of the room is in flight wait for it and share its
// result: thousands of clients resuming into a room the node has not
// listed yet would otherwise each read the whole room from the engine.
func (h *Hub) LoadBigRoom(ctx context.Context, room string, count int) (Listing, error) {
	h.membersMu.Lock()
	if l := h.membersLoading[room]; l != nil {
		h.membersMu.Unlock()
		select {
		case <-l.done:
			return l.m, l.err
		case <-ctx.Done():
			return Listing{}, ctx.Err()
		}
	}
	if h.membersLoading == nil {
		h.membersLoading = make(map[string]*membersLoad)
	}
	l := &membersLoad{done: make(chan struct{})}
	h.membersLoading[room] = l
	h.membersMu.Unlock()

	users, err := h.cfg.Engine.PresenceMembers(ctx, room, h.cfg.MembersMax)
	if err == nil {
		b, _ := json.Marshal(users)
		l.m = Listing{JSON: b, Listed: len(users), Count: max(count, len(users)), At: time.Now()}
	}
	l.err = err
	h.membersMu.Lock()
	delete(h.membersLoading, room)
	if err == nil {
		if h.members == nil {
			h.members = make(map[string]Listing)
		}
		h.members[room] = l.m
	}
	h.membersMu.Unlock()
	close(l.done)
	return l.m, l.err
}

// membersLoad is a read of a big room's members in flight.
type membersLoad struct {
	done chan struct{} // closed when m and err are set
	m    Listing
	err  error
}

type room struct {
	conns []Member // live member connections; fan-out iterates a slice, not a map
	index map[Member]int
	users map[string]int // user -> holders (connections and ghosts) in the room
}

type userConns struct {
	conns  []Member
	ghosts int
}

type ghost struct {
	user  string
	rooms []string
	timer *time.Timer
}

// New makes the hub of a node.
func New(cfg Config, node Node) *Hub {
	return &Hub{
		cfg:          cfg,
		node:         node,
		keys:         newKeyLocks(hashString),
		presenceKeys: newKeyLocks(hashRoomUser),
		rooms:        make(map[string]*room),
		users:        make(map[string]*userConns),
		partners:     make(map[string]map[string]struct{}),
		all:          make(map[Member]struct{}),
		dirty:        make(map[string]struct{}),
		ghosts:       make(map[string]*ghost),
	}
}

// recoverPanic is deferred by the hub's own goroutines and by Deliver.
func (h *Hub) recoverPanic(where string) {
	if r := recover(); r != nil {
		h.node.Panicked(where, r)
	}
}

func (h *Hub) keyLock(stream string) keyLock[string] { return h.keys.get(stream) }

// The hub is the engine's handler (engine.Handler), told of sweeps too
// (engine.SweepHandler).
var (
	_ engine.Handler      = (*Hub)(nil)
	_ engine.SweepHandler = (*Hub)(nil)
)

// Deliver is the engine's delivery of one publication: encoded once,
// queued to every local connection of its stream. A panic here (a bug) is
// logged and counted; the engine goes on delivering.
func (h *Hub) Deliver(p *engine.Publication) {
	defer h.recoverPanic("delivery")
	kind, name, ok := engine.ParseStream(p.Stream)
	if !ok {
		return
	}
	if p.Type == TypeControl {
		if kind == "user" {
			h.node.Control(name, p)
		}
		return
	}
	frame := Frame(p)
	if frame == nil {
		return
	}
	h.node.Delivered(p.Type, p.TS)
	if p.Type == protocol.TypeDirect && kind == "user" {
		h.NotePartner(name, p.Partner(name))
	}
	skip := p.SkipConn
	if p.Node != h.cfg.NodeID {
		skip = 0
	}
	later := transport.NewBatch()
	h.mu.RLock()
	var targets []Member
	if kind == "room" {
		if r := h.rooms[name]; r != nil {
			targets = r.conns
		}
	} else if u := h.users[name]; u != nil {
		targets = u.conns
	}
	for _, c := range targets {
		if c.ID() != skip {
			c.Deliver(frame, p.Stream, p.Epoch, p.Seq, later)
		}
	}
	h.mu.RUnlock()
	if f := h.cfg.Flusher; f != nil && kind == "room" {
		f.StartOrPark(later, p.Type == protocol.TypePresence && p.Action == protocol.PresenceCount)
		return
	}
	later.Start()
}

// Lost is the engine telling that this node may have missed publications
// of stream which history no longer covers. Every local reader of the
// stream is closed with 4010: it resumes, and the resume's recovery
// replays what history still holds or says plainly that it cannot
// (recovered: false). Nobody keeps reading past a silent gap.
func (h *Hub) Lost(stream string) {
	kind, name, ok := engine.ParseStream(stream)
	if !ok {
		return
	}
	h.mu.RLock()
	var conns []Member
	if kind == "room" {
		if r := h.rooms[name]; r != nil {
			conns = append(conns, r.conns...)
		}
	} else if u := h.users[name]; u != nil {
		conns = append(conns, u.conns...)
	}
	h.mu.RUnlock()
	h.cfg.Log.Warn("missed messages the history no longer covers: its connections resume", "stream", stream, "connections", len(conns))
	for _, c := range conns {
		c.Close(protocol.DisconnectResync, transport.CloseDrain)
	}
}

// Frame renders a publication as the frame clients receive (nil for a
// type they are not sent).
func Frame(p *engine.Publication) []byte {
	switch p.Type {
	case protocol.TypeChat:
		return protocol.Encode(protocol.TypeChat, "", ChatOf(p))
	case protocol.TypeDirect:
		return protocol.Encode(protocol.TypeDirect, "", protocol.Direct{From: p.From, To: p.To, Text: p.Text,
			Seq: p.Seq, Epoch: p.Epoch, ID: p.ClientID, TS: p.TS, File: FileInfo(p.File)})
	case protocol.TypePresence:
		return protocol.Encode(protocol.TypePresence, "", protocol.Presence{Room: p.Room, User: p.User,
			Action: p.Action, Count: p.Count})
	case protocol.TypeLeft:
		return protocol.Encode(protocol.TypeLeft, "", protocol.Left{User: p.User})
	}
	return nil
}

// ChatOf is a chat publication as clients see it.
func ChatOf(p *engine.Publication) protocol.Chat {
	return protocol.Chat{Room: p.Room, From: p.From, Text: p.Text, Seq: p.Seq, Epoch: p.Epoch, ID: p.ClientID, TS: p.TS,
		File: FileInfo(p.File)}
}

// dropConnOfUser removes c from its user's connections, leaving a ghost in
// its place when asked, and reports whether the user has no holder left.
func (h *Hub) dropConnOfUser(c Member, leaveGhost bool) (gone bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.all, c)
	u := h.users[c.User()]
	if u == nil {
		return false
	}
	for i, x := range u.conns {
		if x == c {
			u.conns = append(u.conns[:i], u.conns[i+1:]...)
			break
		}
	}
	if leaveGhost {
		u.ghosts++
	}
	return h.userGoneLocked(c.User(), u)
}

// userGoneLocked deletes u when nothing holds it; h.mu must be held.
func (h *Hub) userGoneLocked(user string, u *userConns) bool {
	if len(u.conns) > 0 || u.ghosts > 0 {
		return false
	}
	delete(h.users, user)
	return true
}

// userGone takes a user with no holder left on this node offline here
// and, if that was the last node holding them, tells their
// private-conversation partners with a `left` notice: a user who resumed
// on another node is still online, and nobody is told they left. The
// user's key lock must be held.
func (h *Hub) userGone(ctx context.Context, user string) {
	eng := h.cfg.Engine
	eng.Unsubscribe(ctx, engine.UserStream(user))
	removed, _, err := eng.PresenceRemove(ctx, "", user)
	h.mu.Lock()
	partners := h.partners[user]
	delete(h.partners, user)
	h.mu.Unlock()
	if err != nil {
		h.cfg.Log.Warn("presence remove failed; no left notice", "user", user, "err", err)
		return
	}
	if !removed {
		return // online on another node
	}
	for p := range partners {
		left := &engine.Publication{Stream: engine.UserStream(p), Type: protocol.TypeLeft, User: user, TS: time.Now().UnixMilli()}
		if _, err := eng.Publish(ctx, left, engine.PublishOptions{Ephemeral: true}); err != nil {
			h.cfg.Log.Warn("left notice not published", "user", user, "partner", p, "err", err)
		}
	}
}

// Unregister removes a connection that ended cleanly: it leaves every room
// now, and the user's last holder takes them offline.
func (h *Hub) Unregister(ctx context.Context, c Member) {
	for _, r := range h.RoomsOf(c) {
		h.Leave(ctx, c, r)
	}
	stream := engine.UserStream(c.User())
	kl := h.keyLock(stream)
	kl.Lock()
	defer kl.Unlock()
	if h.dropConnOfUser(c, false) {
		h.userGone(ctx, c.User())
	}
}

// Forget removes a connection from the hub's own maps and tells the engine
// nothing: the node is stopping (see the session's disconnected).
func (h *Hub) Forget(c Member) {
	h.mu.Lock()
	rs := c.Rooms()
	for name := range rs.m {
		if r := h.rooms[name]; r != nil {
			if i, in := r.index[c]; in {
				r.removeConn(c, i)
				h.releaseHolderLocked(name, r, c.User()) // the engine side is left undone on purpose
			}
		}
	}
	clear(rs.m)
	h.mu.Unlock()
	h.dropConnOfUser(c, false)
}

// Detach removes a connection that dropped without a clean close, leaving a
// ghost that holds its memberships until the grace period ends or the
// session resumes (releaseGhost).
func (h *Hub) Detach(ctx context.Context, c Member, session string, grace time.Duration) {
	g := &ghost{user: c.User(), rooms: h.RoomsOf(c)}
	for _, name := range g.rooms {
		kl := h.keyLock(engine.RoomStream(name))
		kl.Lock()
		h.mu.Lock()
		if r := h.rooms[name]; r != nil {
			if i, in := r.index[c]; in {
				r.removeConn(c, i)
			}
		}
		delete(c.Rooms().m, name)
		h.mu.Unlock()
		kl.Unlock()
	}
	kl := h.keyLock(engine.UserStream(c.User()))
	kl.Lock()
	h.dropConnOfUser(c, true)
	kl.Unlock()

	h.mu.Lock()
	if old := h.ghosts[session]; old != nil {
		// The same session dropped twice within the grace period: the older
		// ghost's holds are released now, without events.
		delete(h.ghosts, session)
		old.timer.Stop()
		h.mu.Unlock()
		h.dropGhost(ctx, old)
		h.mu.Lock()
	}
	h.ghosts[session] = g
	g.timer = time.AfterFunc(grace, func() {
		defer h.recoverPanic("presence grace")
		ctx, cancel := h.node.OpContext(10 * time.Second)
		defer cancel()
		h.ReleaseGhost(ctx, session)
	})
	h.mu.Unlock()
}

// ReleaseGhost ends a ghost: on resume (the new connection already holds
// the rooms again, so no event is published) or when the grace period
// ends (the leaves happen now). Whoever removes it from the map releases it.
func (h *Hub) ReleaseGhost(ctx context.Context, session string) bool {
	h.mu.Lock()
	g := h.ghosts[session]
	delete(h.ghosts, session)
	h.mu.Unlock()
	if g == nil {
		return false
	}
	g.timer.Stop()
	h.dropGhost(ctx, g)
	return true
}

func (h *Hub) dropGhost(ctx context.Context, g *ghost) {
	for _, name := range g.rooms {
		stream := engine.RoomStream(name)
		kl := h.keyLock(stream)
		kl.Lock()
		h.mu.Lock()
		var lastTab, emptyRoom bool
		if r := h.rooms[name]; r != nil {
			lastTab, emptyRoom = h.releaseHolderLocked(name, r, g.user)
		}
		h.mu.Unlock()
		h.afterRelease(ctx, name, g.user, lastTab, emptyRoom)
		kl.Unlock()
	}
	kl := h.keyLock(engine.UserStream(g.user))
	kl.Lock()
	defer kl.Unlock()
	h.mu.Lock()
	gone := false
	if u := h.users[g.user]; u != nil {
		u.ghosts--
		gone = h.userGoneLocked(g.user, u)
	}
	h.mu.Unlock()
	if gone {
		h.userGone(ctx, g.user)
	}
}

// DropGhosts forgets every ghost without publishing anything (shutdown).
func (h *Hub) DropGhosts() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for id, g := range h.ghosts {
		g.timer.Stop()
		delete(h.ghosts, id)
	}
}

func (h *Hub) RoomsOf(c Member) []string {
	h.mu.RLock()
	defer h.mu.RUnlock()
	rs := c.Rooms()
	rooms := make([]string, 0, len(rs.m))
	for r := range rs.m {
		rooms = append(rooms, r)
	}
	sort.Strings(rooms)
	return rooms
}

func (h *Hub) NotePartner(user, other string) {
	if other == "" || user == other {
		return
	}
	h.mu.RLock()
	_, known := h.partners[user][other]
	h.mu.RUnlock()
	if known {
		return // the common case: no write lock on the delivery path
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.users[user] == nil {
		return
	}
	m := h.partners[user]
	if m == nil {
		m = make(map[string]struct{})
		h.partners[user] = m
	}
	m[other] = struct{}{}
	h.partnerAdds.Add(1)
}

// Swept implements engine.SweepHandler: a user whom this node's sweep of
// a dead node took out of a room left it, and the node hears of it as of
// any leave (its hooks post it); the dead node could not. Going offline
// ("" set) has no event of its own here: the engine told the user's
// partners.
func (h *Hub) Swept(set, user string) {
	if set != "" {
		h.node.Left(user, set)
	}
}

// PartnersOf lists a user's private-conversation partners, sorted.
func (h *Hub) PartnersOf(user string) []string {
	h.mu.RLock()
	defer h.mu.RUnlock()
	out := make([]string, 0, len(h.partners[user]))
	for p := range h.partners[user] {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// presenceLock orders one user's presence updates in one room: their
// first tab joining and their last tab leaving. It is taken after the
// room's key lock.
func (h *Hub) presenceLock(room, user string) keyLock[roomUser] {
	return h.presenceKeys.get(roomUser{room, user})
}

// Leave takes c out of room. Leaving a room c is not in does nothing (a
// re-sent leave whose first attempt went through).
func (h *Hub) Leave(ctx context.Context, c Member, name string) error {
	kl := h.keyLock(engine.RoomStream(name))
	kl.Lock()
	defer kl.Unlock()

	h.mu.Lock()
	r := h.rooms[name]
	i, in := 0, false
	if r != nil {
		i, in = r.index[c]
	}
	if !in {
		h.mu.Unlock()
		return nil
	}
	r.removeConn(c, i)
	delete(c.Rooms().m, name)
	lastTab, emptyRoom := h.releaseHolderLocked(name, r, c.User())
	h.mu.Unlock()
	h.afterRelease(ctx, name, c.User(), lastTab, emptyRoom)
	return nil
}

// removeConn takes the connection at index i out of the room's live list.
func (r *room) removeConn(c Member, i int) {
	last := len(r.conns) - 1
	r.conns[i] = r.conns[last]
	r.index[r.conns[i]] = i
	r.conns[last] = nil
	r.conns = r.conns[:last]
	delete(r.index, c)
}

// releaseHolderLocked drops one of user's holds on room; h.mu must be held.
func (h *Hub) releaseHolderLocked(name string, r *room, user string) (lastTab, emptyRoom bool) {
	r.users[user]--
	if r.users[user] <= 0 {
		delete(r.users, user)
		lastTab = true
	}
	if len(r.users) == 0 {
		delete(h.rooms, name)
		emptyRoom = true
	}
	return lastTab, emptyRoom
}

// afterRelease carries out the engine side of a released hold; the room's
// key lock must be held.
func (h *Hub) afterRelease(ctx context.Context, name, user string, lastTab, emptyRoom bool) {
	eng := h.cfg.Engine
	if emptyRoom {
		eng.Unsubscribe(ctx, engine.RoomStream(name))
	}
	if !lastTab {
		return
	}
	pl := h.presenceLock(name, user)
	pl.Lock()
	defer pl.Unlock()
	removed, n, err := eng.PresenceRemove(ctx, name, user)
	if err != nil {
		h.cfg.Log.Warn("presence remove failed", "room", name, "user", user, "err", err)
		return
	}
	if removed {
		h.node.Left(user, name)
		h.presenceChanged(ctx, name, user, protocol.PresenceLeave, n)
	}
}

// presenceChanged tells a room that user joined or left. In a big room it
// only marks the room for the next coalesced count event (flushPresence).
func (h *Hub) presenceChanged(ctx context.Context, room, user, action string, count int) {
	if max := h.cfg.PresenceEventsMax; max >= 0 && count > max {
		h.mu.Lock()
		h.dirty[room] = struct{}{}
		h.mu.Unlock()
		return
	}
	h.publishPresence(ctx, room, user, action, count)
}

// FlushPresence sends one count event to each big room whose membership
// changed since the last flush, and forgets stale member lists.
func (h *Hub) FlushPresence(ctx context.Context) {
	h.membersMu.Lock()
	for room, m := range h.members {
		if time.Since(m.At) > h.cfg.PresenceInterval {
			delete(h.members, room)
		}
	}
	h.membersMu.Unlock()
	h.mu.Lock()
	if len(h.dirty) == 0 {
		h.mu.Unlock()
		return
	}
	rooms := make([]string, 0, len(h.dirty))
	for r := range h.dirty {
		rooms = append(rooms, r)
	}
	clear(h.dirty)
	h.mu.Unlock()
	for _, r := range rooms {
		n, err := h.cfg.Engine.PresenceCount(ctx, r)
		if err != nil {
			h.cfg.Log.Warn("presence count failed", "room", r, "err", err)
			continue
		}
		h.publishPresence(ctx, r, "", protocol.PresenceCount, n)
	}
}

func (h *Hub) publishPresence(ctx context.Context, room, user, action string, count int) {
	p := &engine.Publication{Stream: engine.RoomStream(room), Type: protocol.TypePresence, Room: room,
		User: user, Action: action, Count: count, TS: time.Now().UnixMilli()}
	if _, err := h.cfg.Engine.Publish(ctx, p, engine.PublishOptions{Ephemeral: true}); err != nil {
		h.cfg.Log.Warn("presence event not published", "room", room, "user", user, "err", err)
	}
}

func (h *Hub) IsMember(c Member, room string) bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	_, ok := c.Rooms().m[room]
	return ok
}

// Track and Untrack add and remove a connection the hub does not hold
// otherwise (a dialect's before its first join), so that Snapshot (the
// heartbeat, a shutdown) reaches it.
func (h *Hub) Track(c Member) {
	h.mu.Lock()
	h.all[c] = struct{}{}
	h.mu.Unlock()
}

func (h *Hub) Untrack(c Member) {
	h.mu.Lock()
	delete(h.all, c)
	h.mu.Unlock()
}

// Snapshot appends every connection the hub holds, as the node's own
// type M, to buf: for the heartbeat and shutdown.
func Snapshot[M Member](h *Hub, buf []M) []M {
	h.mu.RLock()
	defer h.mu.RUnlock()
	for c := range h.all {
		if m, ok := c.(M); ok {
			buf = append(buf, m)
		}
	}
	return buf
}

func (h *Hub) Count() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.all)
}

// FileInfo is what a client is told of a message's file.
func FileInfo(r *engine.FileRef) *protocol.FileInfo {
	if r == nil {
		return nil
	}
	return &protocol.FileInfo{ID: r.ID, Name: r.Name, Mime: r.Mime, Size: r.Size, Image: r.Image, URL: "/files/" + r.ID}
}

// PartnerAdds counts the partners noted so far, so that a node stopping
// can tell whether a session changed after it saved them all.
func (h *Hub) PartnerAdds() uint64 { return h.partnerAdds.Load() }

// Sizes is how many users and rooms have connections on this node.
func (h *Hub) Sizes() (users, rooms int) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.users), len(h.rooms)
}

// ConnsOf lists user's connections on this node.
func (h *Hub) ConnsOf(user string) []Member {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if u := h.users[user]; u != nil {
		return append([]Member(nil), u.conns...)
	}
	return nil
}
