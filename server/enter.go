package server

import (
	"context"
	"math"
	"slices"
	"sort"
	"time"

	"github.com/tether-chat/tether/engine"
	"github.com/tether-chat/tether/protocol"
)

// Entering the node's online set and rooms. A connection's set-up, a
// join and a `who` each make one Engine.Enter call — one Redis round
// trip — for everything they need from the engine: the presence adds and
// their join events, the sets' sizes and small sets' members, the
// streams' positions and what the client missed, and the session save.
//
// The hub's side is done first, under the key locks: the connection is
// put in its user's and rooms' lists (and the node subscribes to a
// stream for its first reader, which waits for nothing), and whether it
// is the user's first holder of a set on this node is decided there.
// The engine call runs under the (set, user) presence locks of the sets
// the user newly enters, and no key lock: joins and resumes into one room
// never queue behind each other's round trips. A last holder leaving
// takes the user's presence lock before it lets the room's key lock go
// (afterRelease), and a first holder decides under the key lock, so a
// user's removal from a set and their next addition reach the engine in
// the order they happened on the node.

// enterPlan is what one connection is about to enter, and what it found.
type enterPlan struct {
	h       *hub
	c       *Conn
	entries []engine.Entry
	// keys names each entry as a client's position does: the inbox key
	// (protocol.InboxKey) for the online set and the inbox, else the room.
	keys []string
	// entered holds what the engine found for the entries run so far (a
	// plan may run twice: a resume that finds rooms it did not expect).
	entered []engine.Entered
}

func (h *hub) plan(c *Conn) *enterPlan { return &enterPlan{h: h, c: c} }

// announceMax is the largest room whose joins get an event of their own.
func (h *hub) announceMax() int {
	if max := h.srv.cfg.PresenceEventsMax; max >= 0 {
		return max
	}
	return math.MaxInt32
}

// listMax is the largest room that Enter lists in full: a small room
// (per-user events), and never more than a `members` reply shows.
func (h *hub) listMax() int {
	return min(h.announceMax(), h.srv.cfg.MembersMax)
}

// user registers c with its user on this node. The user's first holder
// subscribes the node to their inbox and adds them to the online set;
// every connection reads the inbox's position (and, given the client's
// position since, what it missed) and the number of users online.
func (p *enterPlan) user(since *position) {
	h, c := p.h, p.c
	stream := engine.UserStream(c.user)
	kl := h.keyLock(stream)
	kl.Lock()
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
	if first {
		h.srv.eng.Subscribe(context.Background(), stream) // local: it waits for nothing
	}
	kl.Unlock()
	p.add(engine.Entry{Set: "", User: c.user, Add: first, Stream: stream}, protocol.InboxKey, since)
}

// room puts c in room name on this node (nothing changes if it is in
// already) and plans the engine's part. The room's first member on this
// node subscribes to its stream; the user's first tab in it adds them to
// the room's presence, with a join event in a small room.
func (p *enterPlan) room(name string, since *position) error {
	h, c := p.h, p.c
	if c.claims != nil && !c.claims.MayJoin(name) {
		return &protocol.Error{Code: protocol.ErrForbiddenRoom, Message: "your token does not allow room " + name}
	}
	stream := engine.RoomStream(name)
	kl := h.keyLock(stream)
	kl.Lock()
	h.mu.Lock()
	first, big := false, false
	if _, in := c.rooms[name]; !in {
		if len(c.rooms) >= h.srv.cfg.MaxRoomsPerConn {
			h.mu.Unlock()
			kl.Unlock()
			return &protocol.Error{Code: protocol.ErrTooManyRooms, Message: "room limit per connection reached; leave a room first"}
		}
		r := h.rooms[name]
		if r == nil {
			r = &room{index: make(map[*Conn]int), users: make(map[string]int)}
			h.rooms[name] = r
			h.srv.eng.Subscribe(context.Background(), stream) // local: it waits for nothing
		}
		r.index[c] = len(r.conns)
		r.conns = append(r.conns, c)
		r.users[c.user]++
		first = r.users[c.user] == 1
		// More users here than a join is announced in: the room is big
		// everywhere, so its joins are counted, not announced.
		big = len(r.users) > h.announceMax()
		c.rooms[name] = struct{}{}
	}
	h.mu.Unlock()
	kl.Unlock()
	en := engine.Entry{Set: name, User: c.user, Add: first, List: h.listMax(), Stream: stream}
	if first {
		en.AnnounceMax = h.announceMax()
		if !big {
			en.Announce = &engine.Publication{Stream: stream, Type: protocol.TypePresence, Room: name,
				User: c.user, Action: protocol.PresenceJoin, TS: time.Now().UnixMilli()}
		}
	}
	p.add(en, name, since)
	return nil
}

// look plans a read of a room c is in: its size, small rooms' members and
// the stream's position (`who`).
func (p *enterPlan) look(name string) {
	p.add(engine.Entry{Set: name, User: p.c.user, List: p.h.listMax(), Stream: engine.RoomStream(name)}, name, nil)
}

func (p *enterPlan) add(en engine.Entry, key string, since *position) {
	if since != nil {
		en.Replay, en.After = true, since.seq
	}
	p.entries = append(p.entries, en)
	p.keys = append(p.keys, key)
}

// run makes the engine call for the entries not run yet, with in's
// session load and save, under the presence locks of the sets the user
// newly enters (taken in order, so that two set-ups of one user never
// wait for each other crosswise). A user newly in a big room marks it for
// the next count event. It returns the session loaded.
func (p *enterPlan) run(ctx context.Context, in engine.Entering) (*engine.Session, error) {
	h := p.h
	in.Entries = p.entries[len(p.entered):]
	if in.Save != nil {
		in.TTL = h.srv.cfg.ResumeWindow
	}
	var locks []roomUser
	for _, en := range in.Entries {
		if en.Add {
			locks = append(locks, roomUser{en.Set, en.User})
		}
	}
	sort.Slice(locks, func(i, j int) bool { return locks[i].room < locks[j].room })
	locks = slices.Compact(locks)
	held := make([]keyLock[roomUser], len(locks))
	for i, k := range locks {
		held[i] = h.presenceKeys.get(k)
		held[i].Lock()
	}
	res, loaded, err := h.srv.eng.Enter(ctx, in)
	for i := range held {
		held[i].Unlock()
	}
	if err != nil {
		return nil, h.srv.engineFailed("enter", err)
	}
	for i, en := range in.Entries {
		if en.Set != "" && res[i].Added {
			h.srv.hook(HookEvent{Type: "join", User: en.User, Room: en.Set})
			if res[i].Count > en.AnnounceMax {
				h.presenceChanged(ctx, en.Set, en.User, protocol.PresenceJoin, res[i].Count)
			}
		}
	}
	p.entered = append(p.entered, res...)
	return loaded, nil
}

// join puts c in room and answers for it: the engine's part in one call
// with the session save. A join that fails undoes itself; joining a room
// twice is not an error.
func (h *hub) join(ctx context.Context, c *Conn, name string) (*engine.Entered, error) {
	p := h.plan(c)
	if err := p.room(name, nil); err != nil {
		return nil, err
	}
	if _, err := p.run(ctx, engine.Entering{Save: h.srv.sessionOf(c)}); err != nil {
		undo, cancel := h.srv.opContext(5 * time.Second)
		defer cancel()
		h.leave(undo, c, name)
		return nil, err
	}
	return &p.entered[0], nil
}

// look reads what a `who` answers for a room c is in.
func (h *hub) look(ctx context.Context, c *Conn, name string) (*engine.Entered, error) {
	p := h.plan(c)
	p.look(name)
	if _, err := p.run(ctx, engine.Entering{}); err != nil {
		return nil, err
	}
	return &p.entered[0], nil
}

// sendMembers sends a room's members after a join or for a `who` (id):
// the list Enter read for a small room, the node's cached listing for a
// big one (read once for all joiners per PresenceInterval, see
// loadBigRoom), with the room's position as Enter read it.
func (c *Conn) sendMembers(ctx context.Context, id, room string, en *engine.Entered) {
	pos := roomPos{epoch: en.History.Epoch, top: en.History.Top}
	if en.Listed {
		if en.Members == nil {
			en.Members = []string{}
		}
		c.send(protocol.Encode(protocol.TypeMembers, id, protocol.Members{Room: room, Users: en.Members,
			Count: max(en.Count, len(en.Members)), Epoch: pos.epoch, Top: pos.top}))
		return
	}
	if m, fresh := c.srv.hub.cachedBigRoom(room); fresh {
		c.send(membersFrame(id, room, m, m.count, pos))
		return
	}
	cfg := &c.srv.cfg
	if limit := cfg.PresenceEventsMax; limit < 0 || en.Count <= limit {
		// A small room with more members than a reply lists.
		users, err := c.srv.eng.PresenceMembers(ctx, room, cfg.MembersMax)
		if err != nil {
			c.fail(id, c.srv.engineFailed("members", err))
			return
		}
		c.send(protocol.Encode(protocol.TypeMembers, id, protocol.Members{Room: room, Users: users,
			Count: max(en.Count, len(users)), Truncated: en.Count > len(users), Epoch: pos.epoch, Top: pos.top}))
		return
	}
	listed, err := c.srv.hub.loadBigRoom(ctx, room, en.Count)
	if err != nil {
		c.fail(id, c.srv.engineFailed("members", err))
		return
	}
	c.send(membersFrame(id, room, listed, en.Count, pos))
}
