package hub

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

// Plan is what one connection is about to enter, and what it found.
type Plan struct {
	h       *Hub
	c       Member
	entries []engine.Entry
	// keys names each entry as a client's position does: the inbox key
	// (protocol.InboxKey) for the online set and the inbox, else the room.
	keys []string
	// entered holds what the engine found for the entries run so far (a
	// plan may run twice: a resume that finds rooms it did not expect).
	entered []engine.Entered
}

// Plan starts the plan of what c enters: User first, then Room for each
// room, then Run.
func (h *Hub) Plan(c Member) *Plan { return &Plan{h: h, c: c} }

// Entered is what the engine found for each entry run so far, in the
// order they were planned: the user's (online set and inbox) first.
func (p *Plan) Entered() []engine.Entered { return p.entered }

// Keys names each entry as a client's position does: the inbox key
// (protocol.InboxKey) for the user's, else the room.
func (p *Plan) Keys() []string { return p.keys }

// Pending says whether entries were planned that have not run yet.
func (p *Plan) Pending() bool { return len(p.entered) < len(p.entries) }

// announceMax is the largest room whose joins get an event of their own.
func (h *Hub) announceMax() int {
	if max := h.cfg.PresenceEventsMax; max >= 0 {
		return max
	}
	return math.MaxInt32
}

// listMax is the largest room that Enter lists in full: a small room
// (per-user events), and never more than a `members` reply shows.
func (h *Hub) listMax() int {
	return min(h.announceMax(), h.cfg.MembersMax)
}

// User registers c with its user on this node. The user's first holder
// subscribes the node to their inbox and adds them to the online set;
// every connection reads the inbox's position (and, given the client's
// position, after, what it missed) and the number of users online.
func (p *Plan) User(after *uint64) {
	h, c := p.h, p.c
	stream := engine.UserStream(c.User())
	kl := h.keyLock(stream)
	kl.Lock()
	h.mu.Lock()
	u := h.users[c.User()]
	first := u == nil
	if first {
		u = &userConns{}
		h.users[c.User()] = u
	}
	u.conns = append(u.conns, c)
	h.all[c] = struct{}{}
	h.mu.Unlock()
	if first {
		h.cfg.Engine.Subscribe(context.Background(), stream) // local: it waits for nothing
	}
	kl.Unlock()
	p.add(engine.Entry{Set: "", User: c.User(), Add: first, Stream: stream}, protocol.InboxKey, after)
}

// Room puts c in room name on this node (nothing changes if it is in
// already) and plans the engine's part. The room's first member on this
// node subscribes to its stream; the user's first tab in it adds them to
// the room's presence, with a join event in a small room. after is the
// client's position in the room's stream, nil if it has none. What the
// member may join is the session's to check first.
func (p *Plan) Room(name string, after *uint64) error {
	h, c := p.h, p.c
	stream := engine.RoomStream(name)
	kl := h.keyLock(stream)
	kl.Lock()
	h.mu.Lock()
	first, big := false, false
	rs := c.Rooms()
	if _, in := rs.m[name]; !in {
		if len(rs.m) >= h.cfg.MaxRoomsPerConn {
			h.mu.Unlock()
			kl.Unlock()
			return &protocol.Error{Code: protocol.ErrTooManyRooms, Message: "room limit per connection reached; leave a room first"}
		}
		r := h.rooms[name]
		if r == nil {
			r = &room{index: make(map[Member]int), users: make(map[string]int)}
			h.rooms[name] = r
			h.cfg.Engine.Subscribe(context.Background(), stream) // local: it waits for nothing
		}
		r.index[c] = len(r.conns)
		r.conns = append(r.conns, c)
		r.users[c.User()]++
		first = r.users[c.User()] == 1
		// More users here than a join is announced in: the room is big
		// everywhere, so its joins are counted, not announced.
		big = len(r.users) > h.announceMax()
		if rs.m == nil {
			rs.m = make(map[string]struct{})
		}
		rs.m[name] = struct{}{}
	}
	h.mu.Unlock()
	kl.Unlock()
	en := engine.Entry{Set: name, User: c.User(), Add: first, List: h.listMax(), Stream: stream}
	if first {
		en.AnnounceMax = h.announceMax()
		if !big {
			en.Announce = &engine.Publication{Stream: stream, Type: protocol.TypePresence, Room: name,
				User: c.User(), Action: protocol.PresenceJoin, TS: time.Now().UnixMilli()}
		}
	}
	p.add(en, name, after)
	return nil
}

// Look plans a read of a room c is in: its size, small rooms' members and
// the stream's position (`who`).
func (p *Plan) Look(name string) {
	p.add(engine.Entry{Set: name, User: p.c.User(), List: p.h.listMax(), Stream: engine.RoomStream(name)}, name, nil)
}

func (p *Plan) add(en engine.Entry, key string, after *uint64) {
	if after != nil {
		en.Replay, en.After = true, *after
	}
	p.entries = append(p.entries, en)
	p.keys = append(p.keys, key)
}

// Run makes the engine call for the entries not run yet, with in's
// session load and save, under the presence locks of the sets the user
// newly enters (taken in order, so that two set-ups of one user never
// wait for each other crosswise). A user newly in a big room marks it for
// the next count event. It returns the session loaded.
func (p *Plan) Run(ctx context.Context, in engine.Entering) (*engine.Session, error) {
	h := p.h
	in.Entries = p.entries[len(p.entered):]
	if in.Save != nil {
		in.TTL = h.cfg.ResumeWindow
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
	res, loaded, err := h.cfg.Engine.Enter(ctx, in)
	for i := range held {
		held[i].Unlock()
	}
	if err != nil {
		return nil, h.node.EngineFailed("enter", err)
	}
	for i, en := range in.Entries {
		if en.Set != "" && res[i].Added {
			h.node.Joined(en.User, en.Set)
			if res[i].Count > en.AnnounceMax {
				h.presenceChanged(ctx, en.Set, en.User, protocol.PresenceJoin, res[i].Count)
			}
		}
	}
	p.entered = append(p.entered, res...)
	return loaded, nil
}

// Join puts c in room and answers for it: the engine's part in one call
// with the session's save (save names the session as it is once c is in
// the room). A join that fails undoes itself; joining a room twice is not
// an error.
func (h *Hub) Join(ctx context.Context, c Member, name string, save func() *engine.Session) (*engine.Entered, error) {
	p := h.Plan(c)
	if err := p.Room(name, nil); err != nil {
		return nil, err
	}
	if _, err := p.Run(ctx, engine.Entering{Save: save()}); err != nil {
		undo, cancel := h.node.OpContext(5 * time.Second)
		defer cancel()
		h.Leave(undo, c, name)
		return nil, err
	}
	return &p.entered[0], nil
}

// Look reads what a `who` answers for a room c is in.
func (h *Hub) Look(ctx context.Context, c Member, name string) (*engine.Entered, error) {
	p := h.Plan(c)
	p.Look(name)
	if _, err := p.Run(ctx, engine.Entering{}); err != nil {
		return nil, err
	}
	return &p.entered[0], nil
}
