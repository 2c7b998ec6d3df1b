package server

import (
	"context"
	"encoding/json"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tether-chat/tether/engine"
	"github.com/tether-chat/tether/protocol"
)

// hub is the node's registry of who is where: rooms and their member
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
//	hub.mu           guards the maps below; held only briefly, never across
//	                 an engine call. Delivery holds it for reading.
//	Conn.mu          guards one connection's send queue.
type hub struct {
	srv  *Server
	keys *keyLocks[string] // keyLock's: by stream
	// presenceKeys are presenceLock's: a user's presence in one room.
	presenceKeys *keyLocks[roomUser]

	mu       sync.RWMutex
	rooms    map[string]*room
	users    map[string]*userConns
	partners map[string]map[string]struct{} // user -> users they had a private conversation with
	all      map[*Conn]struct{}
	dirty    map[string]struct{} // big rooms whose count changed since the last flush
	ghosts   map[string]*ghost   // session id -> memberships held through the grace period
	// partnerAdds counts the partners noted, so that Shutdown can tell
	// whether a session changed after it saved them all.
	partnerAdds atomic.Uint64

	membersMu      sync.Mutex
	members        map[string]cachedMembers // big rooms' listed users, encoded
	membersLoading map[string]*membersLoad  // reads of big rooms in flight
}

// cachedMembers is a big room's user list (at most MembersMax), encoded.
type cachedMembers struct {
	json  []byte // the listed users
	n     int    // how many are listed
	count int    // the room's size
	at    time.Time
}

// cachedBigRoom returns a big room's cached members, if they are fresh: read
// at most once per PresenceInterval (presence in big rooms is coalesced to
// that interval anyway, and every engine call saved counts when thousands
// of clients join or resume at once).
func (h *hub) cachedBigRoom(room string) (cachedMembers, bool) {
	h.membersMu.Lock()
	m, ok := h.members[room]
	h.membersMu.Unlock()
	return m, ok && time.Since(m.at) < h.srv.cfg.PresenceInterval
}

// loadBigRoom reads a big room's listed users and caches them with its size
// (count, as the caller just read it), for cachedBigRoom. Callers that
// come while a read of the room is in flight wait for it and share its
// result: thousands of clients resuming into a room the node has not
// listed yet would otherwise each read the whole room from the engine.
func (h *hub) loadBigRoom(ctx context.Context, room string, count int) (cachedMembers, error) {
	h.membersMu.Lock()
	if l := h.membersLoading[room]; l != nil {
		h.membersMu.Unlock()
		select {
		case <-l.done:
			return l.m, l.err
		case <-ctx.Done():
			return cachedMembers{}, ctx.Err()
		}
	}
	if h.membersLoading == nil {
		h.membersLoading = make(map[string]*membersLoad)
	}
	l := &membersLoad{done: make(chan struct{})}
	h.membersLoading[room] = l
	h.membersMu.Unlock()

	users, err := h.srv.eng.PresenceMembers(ctx, room, h.srv.cfg.MembersMax)
	if err == nil {
		b, _ := json.Marshal(users)
		l.m = cachedMembers{json: b, n: len(users), count: max(count, len(users)), at: time.Now()}
	}
	l.err = err
	h.membersMu.Lock()
	delete(h.membersLoading, room)
	if err == nil {
		if h.members == nil {
			h.members = make(map[string]cachedMembers)
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
	m    cachedMembers
	err  error
}

type room struct {
	conns []*Conn // live member connections; fan-out iterates a slice, not a map
	index map[*Conn]int
	users map[string]int // user -> holders (connections and ghosts) in the room
}

type userConns struct {
	conns  []*Conn
	ghosts int
}

type ghost struct {
	user  string
	rooms []string
	timer *time.Timer
}

func newHub(s *Server) *hub {
	return &hub{
		srv:          s,
		keys:         newKeyLocks(hashString),
		presenceKeys: newKeyLocks(hashRoomUser),
		rooms:        make(map[string]*room),
		users:        make(map[string]*userConns),
		partners:     make(map[string]map[string]struct{}),
		all:          make(map[*Conn]struct{}),
		dirty:        make(map[string]struct{}),
		ghosts:       make(map[string]*ghost),
	}
}

func (h *hub) keyLock(stream string) keyLock[string] { return h.keys.get(stream) }

// The hub is the engine's handler (engine.Handler).
var _ engine.Handler = (*hub)(nil)

// Deliver is the engine's delivery of one publication: encoded once,
// queued to every local connection of its stream. A panic here (a bug) is
// logged and counted; the engine goes on delivering.
func (h *hub) Deliver(p *engine.Publication) {
	defer h.srv.recoverPanic("delivery", nil)
	kind, name, ok := engine.ParseStream(p.Stream)
	if !ok {
		return
	}
	if p.Type == typeControl {
		if kind == "user" {
			h.control(name, p)
		}
		return
	}
	frame := encodePublication(p)
	if frame == nil {
		return
	}
	h.srv.metrics.observeDelivery(p.Type, p.TS)
	if p.Type == protocol.TypeDirect && kind == "user" {
		other := p.From
		if other == name {
			other = p.To
		}
		h.notePartner(name, other)
	}
	skip := p.SkipConn
	if p.Node != h.srv.nodeID {
		skip = 0
	}
	later := writersPool.Get().(*[]*Conn)
	h.mu.RLock()
	var targets []*Conn
	if kind == "room" {
		if r := h.rooms[name]; r != nil {
			targets = r.conns
		}
	} else if u := h.users[name]; u != nil {
		targets = u.conns
	}
	for _, c := range targets {
		if c.id != skip {
			c.enqueuePub(frame, p.Stream, p.Epoch, p.Seq, later)
		}
	}
	h.mu.RUnlock()
	if f := h.srv.flusher; f != nil && kind == "room" {
		f.startOrPark(later, p.Type == protocol.TypePresence && p.Action == protocol.PresenceCount)
		return
	}
	startWriters(later)
}

// Control messages: the server API's disconnect and unsubscribe, published
// (ephemerally) on the user's inbox stream so that they reach every node
// holding a connection of the user. They are never sent to clients.
const (
	typeControl    = "_control"
	ctlDisconnect  = "disconnect"  // Count: the close code; Text: the reason
	ctlUnsubscribe = "unsubscribe" // Room
)

// control carries out a control message for user's connections on this
// node. Deliver must not block: the work that waits on the engine runs on
// a goroutine of its own.
func (h *hub) control(user string, p *engine.Publication) {
	h.mu.RLock()
	var conns []*Conn
	if u := h.users[user]; u != nil {
		conns = append(conns, u.conns...)
	}
	h.mu.RUnlock()
	switch p.Action {
	case ctlDisconnect:
		h.srv.log.Info("disconnected by the application", "user", user, "connections", len(conns), "code", p.Count)
		for _, c := range conns {
			c.close(protocol.Disconnect{Code: protocol.CloseCode(p.Count), Reason: p.Text}, closeDrain)
		}
	case ctlUnsubscribe:
		if len(conns) == 0 {
			return
		}
		go func() {
			defer h.srv.recoverPanic("unsubscribe", nil)
			ctx, cancel := h.srv.opContext(10 * time.Second)
			defer cancel()
			frame := protocol.Encode(protocol.TypeUnsubscribed, "", protocol.Unsubscribed{Room: p.Room})
			for _, c := range conns {
				if !h.isMember(c, p.Room) {
					continue
				}
				h.leave(ctx, c, p.Room)
				h.srv.saveSession(ctx, c)
				c.enqueue(frame)
			}
		}()
	}
}

// Lost is the engine telling that this node may have missed publications
// of stream which history no longer covers. Every local reader of the
// stream is closed with 4010: it resumes, and the resume's recovery
// replays what history still holds or says plainly that it cannot
// (recovered: false). Nobody keeps reading past a silent gap.
func (h *hub) Lost(stream string) {
	kind, name, ok := engine.ParseStream(stream)
	if !ok {
		return
	}
	h.mu.RLock()
	var conns []*Conn
	if kind == "room" {
		if r := h.rooms[name]; r != nil {
			conns = append(conns, r.conns...)
		}
	} else if u := h.users[name]; u != nil {
		conns = append(conns, u.conns...)
	}
	h.mu.RUnlock()
	h.srv.log.Warn("missed messages the history no longer covers: its connections resume", "stream", stream, "connections", len(conns))
	for _, c := range conns {
		c.close(protocol.DisconnectResync, closeDrain)
	}
}

// writersPool holds the lists of connections whose writers a delivery
// starts once it has released the hub's lock.
var writersPool = sync.Pool{New: func() any { s := make([]*Conn, 0, 64); return &s }}

// writersPerGoroutine is how many connections one goroutine writes to when
// a delivery fans out: a few in the delivering goroutine itself, more in
// batches (the delivering goroutine may hold the engine's stream lock, and
// batches write in parallel on several cores).
const writersPerGoroutine = 256

// startWriters starts the writer of every connection in *later, then puts
// the list back in writersPool.
func startWriters(later *[]*Conn) {
	conns := *later
	if len(conns) <= writersPerGoroutine/4 {
		for _, c := range conns {
			c.startWriterSafely()
		}
	} else {
		// Large fan-out: batches of writersPerGoroutine, each goroutine
		// with its own copy of its slice (the list goes back to the pool).
		for rest := conns; len(rest) > 0; {
			n := min(len(rest), writersPerGoroutine)
			batch := append([]*Conn(nil), rest[:n]...)
			rest = rest[n:]
			go func() {
				for _, c := range batch {
					c.startWriterSafely()
				}
			}()
		}
	}
	clear(conns)
	*later = conns[:0]
	writersPool.Put(later)
}

// encodePublication renders a publication as the frame clients receive.
func encodePublication(p *engine.Publication) []byte {
	switch p.Type {
	case protocol.TypeChat:
		return protocol.Encode(protocol.TypeChat, "", chatOf(p))
	case protocol.TypeDirect:
		return protocol.Encode(protocol.TypeDirect, "", protocol.Direct{From: p.From, To: p.To, Text: p.Text,
			Seq: p.Seq, Epoch: p.Epoch, ID: p.ClientID, TS: p.TS, File: fileInfo(p.File)})
	case protocol.TypePresence:
		return protocol.Encode(protocol.TypePresence, "", protocol.Presence{Room: p.Room, User: p.User,
			Action: p.Action, Count: p.Count})
	case protocol.TypeLeft:
		return protocol.Encode(protocol.TypeLeft, "", protocol.Left{User: p.User})
	}
	return nil
}

func chatOf(p *engine.Publication) protocol.Chat {
	return protocol.Chat{Room: p.Room, From: p.From, Text: p.Text, Seq: p.Seq, Epoch: p.Epoch, ID: p.ClientID, TS: p.TS,
		File: fileInfo(p.File)}
}

// dropConnOfUser removes c from its user's connections, leaving a ghost in
// its place when asked, and reports whether the user has no holder left.
func (h *hub) dropConnOfUser(c *Conn, leaveGhost bool) (gone bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.all, c)
	u := h.users[c.user]
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
	return h.userGoneLocked(c.user, u)
}

// userGoneLocked deletes u when nothing holds it; h.mu must be held.
func (h *hub) userGoneLocked(user string, u *userConns) bool {
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
func (h *hub) userGone(ctx context.Context, user string) {
	eng := h.srv.eng
	eng.Unsubscribe(ctx, engine.UserStream(user))
	removed, _, err := eng.PresenceRemove(ctx, "", user)
	h.mu.Lock()
	partners := h.partners[user]
	delete(h.partners, user)
	h.mu.Unlock()
	if err != nil {
		h.srv.log.Warn("presence remove failed; no left notice", "user", user, "err", err)
		return
	}
	if !removed {
		return // online on another node
	}
	for p := range partners {
		left := &engine.Publication{Stream: engine.UserStream(p), Type: protocol.TypeLeft, User: user, TS: time.Now().UnixMilli()}
		if _, err := eng.Publish(ctx, left, engine.PublishOptions{Ephemeral: true}); err != nil {
			h.srv.log.Warn("left notice not published", "user", user, "partner", p, "err", err)
		}
	}
}

// unregister removes a connection that ended cleanly: it leaves every room
// now, and the user's last holder takes them offline.
func (h *hub) unregister(ctx context.Context, c *Conn) {
	for _, r := range h.roomsOf(c) {
		h.leave(ctx, c, r)
	}
	stream := engine.UserStream(c.user)
	kl := h.keyLock(stream)
	kl.Lock()
	defer kl.Unlock()
	if h.dropConnOfUser(c, false) {
		h.userGone(ctx, c.user)
	}
}

// forget removes a connection from the hub's own maps and tells the engine
// nothing: the node is stopping (see Server.disconnected).
func (h *hub) forget(c *Conn) {
	h.mu.Lock()
	for name := range c.rooms {
		if r := h.rooms[name]; r != nil {
			if i, in := r.index[c]; in {
				r.removeConn(c, i)
				h.releaseHolderLocked(name, r, c.user) // the engine side is left undone on purpose
			}
		}
	}
	clear(c.rooms)
	h.mu.Unlock()
	h.dropConnOfUser(c, false)
}

// detach removes a connection that dropped without a clean close, leaving a
// ghost that holds its memberships until the grace period ends or the
// session resumes (releaseGhost).
func (h *hub) detach(ctx context.Context, c *Conn, session string, grace time.Duration) {
	g := &ghost{user: c.user, rooms: h.roomsOf(c)}
	for _, name := range g.rooms {
		kl := h.keyLock(engine.RoomStream(name))
		kl.Lock()
		h.mu.Lock()
		if r := h.rooms[name]; r != nil {
			if i, in := r.index[c]; in {
				r.removeConn(c, i)
			}
		}
		delete(c.rooms, name)
		h.mu.Unlock()
		kl.Unlock()
	}
	kl := h.keyLock(engine.UserStream(c.user))
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
		defer h.srv.recoverPanic("presence grace", nil)
		ctx, cancel := h.srv.opContext(10 * time.Second)
		defer cancel()
		h.releaseGhost(ctx, session)
	})
	h.mu.Unlock()
}

// releaseGhost ends a ghost: on resume (the new connection already holds
// the rooms again, so no event is published) or when the grace period
// ends (the leaves happen now). Whoever removes it from the map releases it.
func (h *hub) releaseGhost(ctx context.Context, session string) bool {
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

func (h *hub) dropGhost(ctx context.Context, g *ghost) {
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

// dropGhosts forgets every ghost without publishing anything (shutdown).
func (h *hub) dropGhosts() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for id, g := range h.ghosts {
		g.timer.Stop()
		delete(h.ghosts, id)
	}
}

func (h *hub) roomsOf(c *Conn) []string {
	h.mu.RLock()
	defer h.mu.RUnlock()
	rooms := make([]string, 0, len(c.rooms))
	for r := range c.rooms {
		rooms = append(rooms, r)
	}
	sort.Strings(rooms)
	return rooms
}

func (h *hub) notePartner(user, other string) {
	if user == other {
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

// partnersOf lists a user's private-conversation partners, sorted.
func (h *hub) partnersOf(user string) []string {
	h.mu.RLock()
	defer h.mu.RUnlock()
	out := make([]string, 0, len(h.partners[user]))
	for p := range h.partners[user] {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// roomPos is a room's (epoch, top) at one moment.
type roomPos struct {
	epoch string
	top   uint64
}

// presenceLock orders one user's presence updates in one room: their
// first tab joining and their last tab leaving. It is taken after the
// room's key lock.
func (h *hub) presenceLock(room, user string) keyLock[roomUser] {
	return h.presenceKeys.get(roomUser{room, user})
}

// leave takes c out of room. Leaving a room c is not in does nothing (a
// re-sent leave whose first attempt went through).
func (h *hub) leave(ctx context.Context, c *Conn, name string) error {
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
	delete(c.rooms, name)
	lastTab, emptyRoom := h.releaseHolderLocked(name, r, c.user)
	h.mu.Unlock()
	h.afterRelease(ctx, name, c.user, lastTab, emptyRoom)
	return nil
}

// removeConn takes the connection at index i out of the room's live list.
func (r *room) removeConn(c *Conn, i int) {
	last := len(r.conns) - 1
	r.conns[i] = r.conns[last]
	r.index[r.conns[i]] = i
	r.conns[last] = nil
	r.conns = r.conns[:last]
	delete(r.index, c)
}

// releaseHolderLocked drops one of user's holds on room; h.mu must be held.
func (h *hub) releaseHolderLocked(name string, r *room, user string) (lastTab, emptyRoom bool) {
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
func (h *hub) afterRelease(ctx context.Context, name, user string, lastTab, emptyRoom bool) {
	eng := h.srv.eng
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
		h.srv.log.Warn("presence remove failed", "room", name, "user", user, "err", err)
		return
	}
	if removed {
		h.srv.hook(HookEvent{Type: "leave", User: user, Room: name})
		h.presenceChanged(ctx, name, user, protocol.PresenceLeave, n)
	}
}

// presenceChanged tells a room that user joined or left. In a big room it
// only marks the room for the next coalesced count event (flushPresence).
func (h *hub) presenceChanged(ctx context.Context, room, user, action string, count int) {
	if max := h.srv.cfg.PresenceEventsMax; max >= 0 && count > max {
		h.mu.Lock()
		h.dirty[room] = struct{}{}
		h.mu.Unlock()
		return
	}
	h.publishPresence(ctx, room, user, action, count)
}

// flushPresence sends one count event to each big room whose membership
// changed since the last flush, and forgets stale member lists.
func (h *hub) flushPresence(ctx context.Context) {
	h.membersMu.Lock()
	for room, m := range h.members {
		if time.Since(m.at) > h.srv.cfg.PresenceInterval {
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
		n, err := h.srv.eng.PresenceCount(ctx, r)
		if err != nil {
			h.srv.log.Warn("presence count failed", "room", r, "err", err)
			continue
		}
		h.publishPresence(ctx, r, "", protocol.PresenceCount, n)
	}
}

func (h *hub) publishPresence(ctx context.Context, room, user, action string, count int) {
	p := &engine.Publication{Stream: engine.RoomStream(room), Type: protocol.TypePresence, Room: room,
		User: user, Action: action, Count: count, TS: time.Now().UnixMilli()}
	if _, err := h.srv.eng.Publish(ctx, p, engine.PublishOptions{Ephemeral: true}); err != nil {
		h.srv.log.Warn("presence event not published", "room", room, "user", user, "err", err)
	}
}

func (h *hub) isMember(c *Conn, room string) bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	_, ok := c.rooms[room]
	return ok
}

// direct publishes a private message to the recipient's inbox and a copy to
// the sender's inbox for their other tabs, both idempotent by the
// message's id. It returns the publication in the recipient's inbox (with
// its seq), also when refusing it (the caller checks a refused re-send
// against the record of its first attempt).
//
// file, when not nil, is the file the message carries; store is called to
// store it once the recipient is known to be online, before anything is
// published.
func (h *hub) direct(ctx context.Context, c *Conn, to, text, id string, file *engine.FileRef, store func() error) (*engine.Publication, error) {
	eng := h.srv.eng
	p := &engine.Publication{Stream: engine.UserStream(to), Type: protocol.TypeDirect, From: c.user, To: to,
		Text: text, ClientID: id, TS: time.Now().UnixMilli(), SkipConn: c.id, Node: h.srv.nodeID, File: file}
	online, err := eng.PresenceHas(ctx, "", to)
	if err != nil {
		return p, h.srv.engineFailed("presence", err)
	}
	if !online {
		return p, &protocol.Error{Code: protocol.ErrUserOffline, Message: "user " + to + " is not online"}
	}
	if err := c.checkMessage(ctx, p); err != nil {
		return p, err
	}
	if store != nil {
		if err := store(); err != nil {
			return p, err
		}
	}
	if err := h.srv.publish(ctx, p, c.key(id)); err != nil {
		return p, err
	}
	if to != c.user {
		cp := *p
		cp.Stream, cp.Seq, cp.Epoch = engine.UserStream(c.user), 0, ""
		if err := h.srv.publish(ctx, &cp, c.key(id)); err != nil {
			// The recipient has it; only the sender's other tabs miss the
			// copy (a re-send of the message would publish it).
			h.srv.log.Warn("direct copy to sender not published", "user", c.user, "err", err)
		}
	}
	return p, nil
}

// snapshot returns every connection, for the heartbeat and shutdown.
// track and untrack add and remove a connection the hub does not hold
// otherwise (a dialect's before its first join), so that the heartbeat and
// a shutdown reach it.
func (h *hub) track(c *Conn) {
	h.mu.Lock()
	h.all[c] = struct{}{}
	h.mu.Unlock()
}

func (h *hub) untrack(c *Conn) {
	h.mu.Lock()
	delete(h.all, c)
	h.mu.Unlock()
}

func (h *hub) snapshot(buf []*Conn) []*Conn {
	h.mu.RLock()
	defer h.mu.RUnlock()
	for c := range h.all {
		buf = append(buf, c)
	}
	return buf
}

func (h *hub) count() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.all)
}
