package server

import (
	"context"
	"hash/maphash"
	"sync"
	"time"

	"github.com/tether-chat/tether/engine"
	"github.com/tether-chat/tether/protocol"
)

// hub is the node's registry of who is where: rooms and their member
// connections, users and their connections (tabs), and private-conversation
// partners. It turns engine deliveries into enqueued frames.
//
// Locks, in the order they may be taken:
//
//	keyLock(stream)  serializes membership changes of one room or user with
//	                 the engine calls they cause (Subscribe, presence,
//	                 presence events), so "first tab in" and "last tab out"
//	                 decisions and their engine effects never interleave.
//	hub.mu           guards the maps below; held only briefly, never across
//	                 an engine call. Delivery holds it for reading.
//	Conn.mu          guards one connection's send queue.
type hub struct {
	srv  *Server
	keys [64]sync.Mutex
	seed maphash.Seed

	mu       sync.RWMutex
	rooms    map[string]*room
	users    map[string]*userConns
	partners map[string]map[string]struct{} // user -> users they had a private conversation with
	all      map[*Conn]struct{}
	dirty    map[string]struct{} // big rooms whose count changed since the last flush
}

type room struct {
	conns []*Conn // fan-out iterates a slice, not a map
	index map[*Conn]int
	users map[string]int // user -> connections of theirs in the room
}

type userConns struct {
	conns []*Conn
}

func newHub(s *Server) *hub {
	return &hub{
		srv:      s,
		seed:     maphash.MakeSeed(),
		rooms:    make(map[string]*room),
		users:    make(map[string]*userConns),
		partners: make(map[string]map[string]struct{}),
		all:      make(map[*Conn]struct{}),
		dirty:    make(map[string]struct{}),
	}
}

func (h *hub) keyLock(stream string) *sync.Mutex {
	return &h.keys[maphash.String(h.seed, stream)%uint64(len(h.keys))]
}

// deliver is the engine's handler: one publication, encoded once, queued to
// every local connection of its stream.
func (h *hub) deliver(p *engine.Publication) {
	kind, name, ok := engine.ParseStream(p.Stream)
	if !ok {
		return
	}
	frame := encodePublication(p)
	if frame == nil {
		return
	}
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
			c.enqueue(frame)
		}
	}
	h.mu.RUnlock()
}

// encodePublication renders a publication as the frame clients receive.
func encodePublication(p *engine.Publication) []byte {
	switch p.Type {
	case protocol.TypeChat:
		return protocol.Encode(protocol.TypeChat, "", chatOf(p))
	case protocol.TypeDirect:
		return protocol.Encode(protocol.TypeDirect, "", protocol.Direct{From: p.From, To: p.To, Text: p.Text,
			Seq: p.Seq, Epoch: p.Epoch, ID: p.ClientID, TS: p.TS})
	case protocol.TypePresence:
		return protocol.Encode(protocol.TypePresence, "", protocol.Presence{Room: p.Room, User: p.User,
			Action: p.Action, Count: p.Count})
	case protocol.TypeLeft:
		return protocol.Encode(protocol.TypeLeft, "", protocol.Left{User: p.User})
	}
	return nil
}

func chatOf(p *engine.Publication) protocol.Chat {
	return protocol.Chat{Room: p.Room, From: p.From, Text: p.Text, Seq: p.Seq, Epoch: p.Epoch, ID: p.ClientID, TS: p.TS}
}

// register adds a new connection and its user; the user's first
// connection subscribes to their inbox and puts them online.
func (h *hub) register(ctx context.Context, c *Conn) error {
	stream := engine.UserStream(c.user)
	kl := h.keyLock(stream)
	kl.Lock()
	defer kl.Unlock()
	h.mu.Lock()
	u := h.users[c.user]
	first := u == nil
	if first {
		u = &userConns{}
		h.users[c.user] = u
	}
	u.conns = append(u.conns, c)
	h.all[c] = struct{}{}
	h.mu.Unlock()
	if !first {
		return nil
	}
	if err := h.srv.eng.Subscribe(ctx, stream); err != nil {
		h.dropUser(c)
		return err
	}
	if _, _, err := h.srv.eng.PresenceAdd(ctx, "", c.user); err != nil {
		h.dropUser(c)
		h.srv.eng.Unsubscribe(ctx, stream)
		return err
	}
	return nil
}

// dropUser removes c from its user's connections and reports whether it
// was the last one.
func (h *hub) dropUser(c *Conn) (last bool) {
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
	if len(u.conns) > 0 {
		return false
	}
	delete(h.users, c.user)
	return true
}

// unregister removes a finished connection from every room, then from its
// user; the user's last connection takes them offline and tells their
// private-conversation partners with a `left` notice.
func (h *hub) unregister(ctx context.Context, c *Conn) {
	h.mu.RLock()
	rooms := make([]string, 0, len(c.rooms))
	for r := range c.rooms {
		rooms = append(rooms, r)
	}
	h.mu.RUnlock()
	for _, r := range rooms {
		h.leave(ctx, c, r)
	}

	stream := engine.UserStream(c.user)
	kl := h.keyLock(stream)
	kl.Lock()
	defer kl.Unlock()
	if !h.dropUser(c) {
		return
	}
	eng := h.srv.eng
	eng.Unsubscribe(ctx, stream)
	eng.PresenceRemove(ctx, "", c.user)
	h.mu.Lock()
	partners := h.partners[c.user]
	delete(h.partners, c.user)
	h.mu.Unlock()
	for p := range partners {
		left := &engine.Publication{Stream: engine.UserStream(p), Type: protocol.TypeLeft, User: c.user, TS: time.Now().UnixMilli()}
		if err := eng.Publish(ctx, left, engine.PublishOptions{Ephemeral: true}); err != nil {
			h.srv.log.Warn("left notice not published", "user", c.user, "partner", p, "err", err)
		}
	}
}

func (h *hub) notePartner(user, other string) {
	if user == other {
		return
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
}

// join puts c in room. Joining a room twice is not an error.
func (h *hub) join(ctx context.Context, c *Conn, name string) error {
	stream := engine.RoomStream(name)
	kl := h.keyLock(stream)
	kl.Lock()
	defer kl.Unlock()

	h.mu.Lock()
	if _, in := c.rooms[name]; in {
		h.mu.Unlock()
		return nil
	}
	if len(c.rooms) >= h.srv.cfg.MaxRoomsPerConn {
		h.mu.Unlock()
		return &protocol.Error{Code: protocol.ErrTooManyRooms, Message: "room limit per connection reached; leave a room first"}
	}
	r := h.rooms[name]
	newRoom := r == nil
	if newRoom {
		r = &room{index: make(map[*Conn]int), users: make(map[string]int)}
		h.rooms[name] = r
	}
	r.index[c] = len(r.conns)
	r.conns = append(r.conns, c)
	r.users[c.user]++
	firstTab := r.users[c.user] == 1
	c.rooms[name] = struct{}{}
	h.mu.Unlock()

	eng := h.srv.eng
	if newRoom {
		if err := eng.Subscribe(ctx, stream); err != nil {
			h.removeMember(c, name)
			return unavailable(err)
		}
	}
	if !firstTab {
		return nil
	}
	added, n, err := eng.PresenceAdd(ctx, name, c.user)
	if err != nil {
		h.srv.log.Warn("presence add failed", "room", name, "user", c.user, "err", err)
		return nil // the member is in; presence catches up on the next change
	}
	if added {
		h.presenceChanged(ctx, name, c.user, protocol.PresenceJoin, n)
	}
	return nil
}

// leave takes c out of room.
func (h *hub) leave(ctx context.Context, c *Conn, name string) error {
	stream := engine.RoomStream(name)
	kl := h.keyLock(stream)
	kl.Lock()
	defer kl.Unlock()

	lastTab, emptyRoom, ok := h.removeMember(c, name)
	if !ok {
		return notMember(name)
	}
	eng := h.srv.eng
	if emptyRoom {
		eng.Unsubscribe(ctx, stream)
	}
	if lastTab {
		removed, n, err := eng.PresenceRemove(ctx, name, c.user)
		if err != nil {
			h.srv.log.Warn("presence remove failed", "room", name, "user", c.user, "err", err)
		} else if removed {
			h.presenceChanged(ctx, name, c.user, protocol.PresenceLeave, n)
		}
	}
	return nil
}

// removeMember updates the maps for c leaving room name.
func (h *hub) removeMember(c *Conn, name string) (lastTab, emptyRoom, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.rooms[name]
	if r == nil {
		return false, false, false
	}
	i, in := r.index[c]
	if !in {
		return false, false, false
	}
	last := len(r.conns) - 1
	r.conns[i] = r.conns[last]
	r.index[r.conns[i]] = i
	r.conns[last] = nil
	r.conns = r.conns[:last]
	delete(r.index, c)
	delete(c.rooms, name)
	r.users[c.user]--
	if r.users[c.user] == 0 {
		delete(r.users, c.user)
		lastTab = true
	}
	if len(r.conns) == 0 {
		delete(h.rooms, name)
		emptyRoom = true
	}
	return lastTab, emptyRoom, true
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
// changed since the last flush.
func (h *hub) flushPresence(ctx context.Context) {
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
	if err := h.srv.eng.Publish(ctx, p, engine.PublishOptions{Ephemeral: true}); err != nil {
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
// the sender's inbox for their other tabs. It returns the sequence the
// message got in the recipient's inbox.
func (h *hub) direct(ctx context.Context, c *Conn, to, text, id string) (uint64, error) {
	eng := h.srv.eng
	online, err := eng.PresenceHas(ctx, "", to)
	if err != nil {
		return 0, unavailable(err)
	}
	if !online {
		return 0, &protocol.Error{Code: protocol.ErrUserOffline, Message: "user " + to + " is not online"}
	}
	now := time.Now().UnixMilli()
	p := &engine.Publication{Stream: engine.UserStream(to), Type: protocol.TypeDirect, From: c.user, To: to,
		Text: text, ClientID: id, TS: now, SkipConn: c.id, Node: h.srv.nodeID}
	if err := h.srv.publish(ctx, p, engine.PublishOptions{}); err != nil {
		return 0, err
	}
	if to != c.user {
		cp := *p
		cp.Stream, cp.Seq, cp.Epoch = engine.UserStream(c.user), 0, ""
		if err := h.srv.publish(ctx, &cp, engine.PublishOptions{}); err != nil {
			// The recipient has it; only the sender's other tabs miss the copy.
			h.srv.log.Warn("direct copy to sender not published", "user", c.user, "err", err)
		}
	}
	return p.Seq, nil
}

// snapshot returns every connection, for the heartbeat and shutdown.
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
