package session

// A connection's session: the user it is for (Identify), its set-up in
// turn with the others (MaxSetups) once the node has upgraded it (Open),
// authentication, the rooms it asks for, the resume of a session with the
// replay of what it missed, and its end (disconnected). The commands it
// sends afterwards are handled in commands.go; the hub (server/hub) holds
// the rooms and presence it joins.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/tether-chat/tether/auth"
	"github.com/tether-chat/tether/engine"
	"github.com/tether-chat/tether/internal/bucket"
	"github.com/tether-chat/tether/protocol"
	"github.com/tether-chat/tether/server/hub"
	"github.com/tether-chat/tether/server/transport"
)

// Identify names the user a request is for: the token's subject in token
// mode (refuse says why there is none), the name the client gave in open
// mode (a guest's when it gave none). A name that is not valid is bad (the
// reason, for a 400 answer) in open mode and refused with 4401 in token
// mode.
func (s *Manager) Identify(r Request) (user string, claims *auth.Claims, refuse *protocol.Disconnect, bad string) {
	user, _ = r.ClientID()
	if user == "" {
		user = r.Query("user")
	}
	if s.cfg.AuthSecret != "" {
		claims, refuse = s.authenticate(r, user)
		if refuse == nil {
			user = claims.Subject
		}
	} else if user == "" {
		user = "guest-" + NewID(3)
	}
	if refuse == nil {
		if msg := protocol.ValidateUser(user); msg != "" {
			if claims == nil {
				return "", nil, nil, "invalid user: " + msg
			}
			d := protocol.Unauthorized("token subject is not a valid user name")
			refuse = &d
		}
	}
	return user, claims, refuse, ""
}

// newConn makes the connection of an upgraded socket, in the dialect its
// path asks for, and hands the socket to the poller. It starts corked:
// the 101 response (resp) goes out in one write with the welcome and the
// first replies, once the set-up is done.
func (s *Manager) newConn(nc net.Conn, resp []byte, r Request, user, ip string, claims *auth.Claims) *Conn {
	c := &Conn{
		id: s.nextID.Add(1), user: user, ip: ip, remote: r.Remote(), opened: time.Now(),
		m: s, claims: claims,
		limiter: bucket.New(s.cfg.RateLimit, float64(s.cfg.RateBurst)),
	}
	c.Init(s.tp, nc, c, resp)
	if !r.Tether() {
		c.dialect = s.wsDialect
		if _, withID := r.ClientID(); withID {
			c.dialect = s.wsIDDialect
		}
	}
	if c.dialect != nil {
		c.Translate()
	}
	c.Attach()
	s.conns.Add(1)
	s.metrics.Opened.Add(1)
	return c
}

// setUp runs connected when its turn comes (MaxSetups). A panic in it
// fails this set-up (close 1011), nothing else.
func (s *Manager) setUp(c *Conn, r Request) error {
	return s.runSetUp(c, func() error {
		named, err := s.node.CheckConnect(c, r.Cookie(), r.Origin(), r.Query("session") != "")
		if err != nil {
			return err
		}
		if named != "" {
			c.user = named // the node moved its place under the limits
		}
		return s.connected(c, r.Query("session"), parseSince(r.Query("since")), r.Query("rooms"))
	})
}

// setUpLater sets up, from its reader, a connection whose dialect defers
// its set-up to its first join: in room, with a new session.
func (s *Manager) setUpLater(c *Conn, room string) {
	if err := s.runSetUp(c, func() error {
		named, err := s.node.CheckConnect(c, "", "", false)
		if err != nil {
			return err
		}
		if named != "" {
			c.user = named
		}
		return s.connected(c, "", nil, room)
	}); err != nil {
		s.setUpFailed(c, err)
	}
}

// setUpFailed closes a connection whose set-up failed: with the close
// code err carries, or 1011.
func (s *Manager) setUpFailed(c *Conn, err error) {
	c.Uncork()
	var d protocol.Disconnect
	if errors.As(err, &d) {
		s.log.Warn("connection refused", "user", c.user, "remote", c.remote, "code", int(d.Code), "reason", d.Reason)
		c.Close(d, transport.CloseDrain)
	} else {
		s.log.Error("connection set-up failed", "user", c.user, "remote", c.remote, "err", err)
		c.Close(protocol.DisconnectInternal, transport.CloseDrain)
	}
}

// runSetUp runs one connection's set-up, f, when its turn comes.
//
// A set-up that had to wait for its turn runs on one of the manager's
// set-up workers while the caller waits: set-ups wait when thousands of
// connections arrive together (a storm of reconnects), and then the
// caller is one of thousands of fresh goroutines, on which a set-up,
// which goes deep (the session, the engine's reply, JSON), grew a small
// stack by copying it two or three times; a worker grows its stack once.
// One that did not wait runs at once on the caller's goroutine (usually
// a reused handshake worker; a hand-off would cost two switches).
func (s *Manager) runSetUp(c *Conn, f func() error) error {
	waited := false
	select {
	case s.setups <- struct{}{}:
	default:
		waited = true
		s.setupsWaiting.Add(1)
		s.setups <- struct{}{}
		s.setupsWaiting.Add(-1)
	}
	defer func() { <-s.setups }()
	if s.shuttingDown.Load() { // it stopped while this one waited
		return protocol.DisconnectShutdown
	}
	job := setUpJob{m: s, c: c, f: f}
	if !waited {
		return job.run()
	}
	job.done = make(chan error, 1)
	s.setUpWorkers.Dispatch(job)
	return <-job.done
}

// setUpJob is one set-up, run in place or by a set-up worker (done is
// then where its result goes).
type setUpJob struct {
	m    *Manager
	c    *Conn
	f    func() error
	done chan error
}

// run runs the set-up; a panic in it fails this set-up only.
func (j setUpJob) run() (err error) {
	defer func() {
		if r := recover(); r != nil {
			j.m.node.Panicked("set-up", r, nil)
			err = protocol.DisconnectInternal
		}
	}()
	j.c.busy.Store(true)
	defer j.c.busy.Store(false)
	return j.f()
}

// authenticate checks the token of a request in token mode. The token
// comes from ?token= (browsers cannot set headers on a WebSocket) or an
// Authorization: Bearer header. It is never logged.
func (s *Manager) authenticate(r Request, named string) (*auth.Claims, *protocol.Disconnect) {
	tok := r.Query("token")
	if h := r.Authorization(); tok == "" && len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		tok = strings.TrimSpace(h[7:])
	}
	if tok == "" {
		d := protocol.Unauthorized("token required")
		return nil, &d
	}
	claims, err := auth.Verify([]byte(s.cfg.AuthSecret), tok, time.Now())
	if err != nil {
		d := protocol.Unauthorized(err.Error())
		return nil, &d
	}
	if named != "" && named != claims.Subject {
		d := protocol.Forbidden("user does not match token")
		return nil, &d
	}
	return claims, nil
}

// position is where a client was in one stream: (epoch, seq).
type position struct {
	epoch string
	seq   uint64
}

// parseSince reads a client's positions: ?since= is a JSON object from room
// name (or "@" for the inbox) to [epoch, seq]. Anything malformed is
// ignored: the client then simply gets no replay for it.
func parseSince(raw string) map[string]position {
	if raw == "" || len(raw) > 64<<10 {
		return nil
	}
	var m map[string][2]json.RawMessage
	if json.Unmarshal([]byte(raw), &m) != nil {
		return nil
	}
	out := make(map[string]position, len(m))
	for k, v := range m {
		var p position
		if json.Unmarshal(v[0], &p.epoch) != nil || json.Unmarshal(v[1], &p.seq) != nil {
			continue
		}
		if k == protocol.InboxKey || protocol.ValidateRoom(k) == "" {
			out[k] = p
		}
	}
	return out
}

// connected sets up a new connection: it resumes the session it presents
// (or starts one), registers it and puts it in its rooms (the session's
// and those the client asks for with ?rooms=), queues the welcome first,
// replays what the client missed on every stream it gave a position for,
// and only then lets live deliveries through.
//
// Everything it needs from the engine is one Enter call (one Redis round
// trip). A resume reads its session in that same call, having entered the
// rooms the client asks for (the SDKs ask for every room they are in, so
// these are the session's); only a session with rooms the client did not
// ask for, or one that expired, takes a second call.
func (s *Manager) connected(c *Conn, sessionID string, since map[string]position, rooms string) error {
	ctx, cancel := s.OpContext(10 * time.Second)
	defer cancel()
	c.startResume()
	if s.shuttingDown.Load() {
		return protocol.DisconnectShutdown
	}
	p := s.hub.Plan(c)
	resumed, joined, refused, err := s.enterSession(ctx, c, p, sessionID, since, rooms)
	if err != nil {
		return err
	}
	s.welcome(c, p, resumed, joined, refused)
	s.replay(ctx, c, p, since)
	s.log.Info("connect", "user", c.user, "conn", c.id, "remote", c.remote, "resumed", resumed, "rooms", len(joined))
	s.node.Connected(c, resumed)
	return nil
}

// enterSession enters c, through p, into its session: the user's presence
// and inbox, the rooms it asked for (and, on a new session, the room every
// session starts in), and, when it resumes, the stored session's rooms
// and partners, all in one engine call when it can, two when the stored
// session names rooms the first did not enter. It returns whether the
// session was resumed, the rooms joined and the refusals (each names its
// room).
func (s *Manager) enterSession(ctx context.Context, c *Conn, p *hub.Plan, sessionID string, since map[string]position, rooms string) (resumed bool, joined []string, refused []*protocol.Error, err error) {
	fresh := &engine.Session{ID: NewID(16), User: c.user}
	c.session = fresh.ID
	if sessionID != "" {
		c.session = sessionID
	}
	autoJoin := s.cfg.AutoJoin != "-" && c.dialect == nil // a tutorial client joins its rooms itself
	var asked []string
	if sessionID == "" && autoJoin {
		asked = append(asked, s.cfg.AutoJoin)
	}
	asked = append(asked, splitRooms(rooms)...)

	p.User(afterOf(since, protocol.InboxKey))
	c.registered = true // from here on, disconnected undoes what this did
	joined, refused = c.enterRooms(p, asked, since, nil)
	fresh.Rooms = slices.Sorted(slices.Values(joined))
	loaded, err := p.Run(ctx, engine.Entering{Load: sessionID, Save: fresh})
	if err != nil {
		return false, nil, nil, err
	}
	if loaded != nil && loaded.User != c.user {
		c.session = fresh.ID // what disconnected saves is this user's own
		return false, nil, nil, protocol.DisconnectSessionUser
	}
	resumed = loaded != nil
	var more []string // rooms this connection is in that the stored session does not list
	switch {
	case resumed:
		for _, partner := range loaded.Partners {
			s.hub.NotePartner(c.user, partner)
		}
		extra, _ := c.enterRooms(p, loaded.Rooms, since, joined)
		joined = append(joined, extra...)
		for _, r := range joined {
			if !slices.Contains(loaded.Rooms, r) {
				more = append(more, r)
			}
		}
	case sessionID != "":
		// The session expired: this is a new one (the call saved it), with
		// the room every new session starts in.
		c.session = fresh.ID
		if autoJoin && !slices.Contains(joined, s.cfg.AutoJoin) {
			extra, no := c.enterRooms(p, []string{s.cfg.AutoJoin}, since, joined)
			joined, refused = append(joined, extra...), append(refused, no...)
			more = extra
		}
	}
	if p.Pending() || len(more) > 0 {
		if _, err := p.Run(ctx, engine.Entering{Save: s.sessionOf(c)}); err != nil {
			return false, nil, nil, err
		}
	}
	c.sessionSet.Store(true) // c.session is final
	if resumed {
		s.hub.ReleaseGhost(ctx, loaded.ID)
		s.metrics.Resumes.Add(1)
	}
	return resumed, joined, refused, nil
}

// welcome sends c its welcome, always its first message, then the
// refusals of rooms it asked for.
func (s *Manager) welcome(c *Conn, p *hub.Plan, resumed bool, joined []string, refused []*protocol.Error) {
	inbox := p.Entered()[0].History
	c.SendFirst(protocol.Encode(protocol.TypeWelcome, "", protocol.Welcome{
		Protocol: protocol.Version, User: c.user, Session: c.session, Resumed: resumed, Online: p.Entered()[0].Count, Rooms: joined,
		Inbox:     protocol.Position{Epoch: inbox.Epoch, Top: inbox.Top},
		Heartbeat: protocol.Heartbeat{Interval: s.cfg.PingInterval.Milliseconds(), Timeout: s.cfg.PongTimeout.Milliseconds()},
		MaxText:   s.cfg.MaxText, MaxFile: max(s.cfg.MaxFileSize, 0),
	}))
	for _, e := range refused {
		c.sendError(e) // after the welcome, which lists the rooms joined
	}
}

// replay sends c what it missed in every stream it gave a position for
// (in the order of their keys), then takes it live: deliveries held
// during the replay follow it, and then each room's members, whose
// position comes after every message up to it that c is sent.
func (s *Manager) replay(ctx context.Context, c *Conn, p *hub.Plan, since map[string]position) {
	entered := p.Entered()
	read := make(map[string]*engine.Entered, len(p.Keys()))
	for i, k := range p.Keys() {
		read[k] = &entered[i]
	}
	replayed := make(map[string]roomPos)
	keys := make([]string, 0, len(since))
	for k := range since {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		s.recover(ctx, c, k, since[k], read[k], replayed)
	}
	c.goLive(replayed)
	for i, k := range p.Keys()[1:] {
		c.sendMembers(ctx, "", k, &entered[i+1])
	}
}

// enterRooms plans c's entry, through p, into each of names that is not
// in skip, and returns those it may enter and, for the others, why not
// (an error that names the room, for an error frame).
func (c *Conn) enterRooms(p *hub.Plan, names []string, since map[string]position, skip []string) (joined []string, refused []*protocol.Error) {
	for _, room := range names {
		if slices.Contains(skip, room) || slices.Contains(joined, room) {
			continue
		}
		if msg := protocol.ValidateRoom(room); msg != "" {
			refused = append(refused, &protocol.Error{Code: protocol.ErrBadRoom, Message: fmt.Sprintf("rooms: %q: %s", room, msg)})
			continue
		}
		err := c.mayJoin(room)
		if err == nil {
			err = p.Room(room, afterOf(since, room))
		}
		if err != nil {
			var pe *protocol.Error
			if errors.As(err, &pe) {
				refused = append(refused, &protocol.Error{Code: pe.Code, Message: fmt.Sprintf("rooms: %q: %s", room, pe.Message)})
			}
			continue
		}
		joined = append(joined, room)
	}
	return joined, refused
}

// splitRooms reads ?rooms=: room names separated by commas (a comma is
// never part of a room's name), at most maxConnectRooms of them.
func splitRooms(raw string) []string {
	if raw == "" {
		return nil
	}
	rooms := strings.Split(raw, ",")
	if len(rooms) > maxConnectRooms {
		rooms = rooms[:maxConnectRooms]
	}
	return rooms
}

// maxConnectRooms bounds ?rooms= before any room is looked at; the
// per-connection room limit (MaxRoomsPerConn) applies after it.
const maxConnectRooms = 1000

// afterOf is the client's position in one stream, if it gave one.
func afterOf(since map[string]position, key string) *uint64 {
	if p, ok := since[key]; ok {
		return &p.seq
	}
	return nil
}

// recover tells the client with `recovered` whether what it missed on one
// stream since pos is still retained, and replays it if so. en is what
// Enter read of the stream (its first page after pos); nil when the
// client is not in the room (any more): nothing to replay or reveal.
func (s *Manager) recover(ctx context.Context, c *Conn, key string, pos position, en *engine.Entered, replayed map[string]roomPos) {
	rec := protocol.Recovered{}
	stream := engine.RoomStream(key)
	if key == protocol.InboxKey {
		stream, rec.Inbox = engine.UserStream(c.user), true
	} else {
		rec.Room = key
	}
	if en == nil {
		s.metrics.RecoveriesFailed.Add(1)
		c.Reply(protocol.Encode(protocol.TypeRecovered, "", rec))
		return
	}
	hist := en.History
	rec.Epoch, rec.Top = hist.Epoch, hist.Top
	rec.Recovered = hist.Covers(pos.epoch, pos.seq)
	if !rec.Recovered {
		s.metrics.RecoveriesFailed.Add(1)
		c.Reply(protocol.Encode(protocol.TypeRecovered, "", rec))
		return
	}
	last := pos.seq
	for len(hist.Pubs) > 0 {
		for _, p := range hist.Pubs {
			if !c.SendReplay(hub.Frame(p)) {
				return
			}
			last = p.Seq
			rec.Count++
		}
		if last >= hist.Top {
			break
		}
		var err error
		if hist, err = s.eng.History(ctx, stream, engine.HistoryQuery{After: last}); err != nil {
			// Replayed up to last; the client's continuity check asks for
			// the rest when the next message comes.
			s.log.Warn("recovery cut short", "user", c.user, "stream", stream, "after", last, "err", err)
			break
		}
	}
	replayed[stream] = roomPos{epoch: rec.Epoch, top: last}
	s.metrics.Recoveries.Add(1)
	c.Reply(protocol.Encode(protocol.TypeRecovered, "", rec))
}

// saveSession stores what a resume of c's session needs, for the resume
// window. It is refreshed while the connection lives (heartbeat).
func (s *Manager) saveSession(ctx context.Context, c *Conn) {
	if c.session == "" {
		return
	}
	if err := s.eng.SaveSession(ctx, s.sessionOf(c), s.cfg.ResumeWindow); err != nil {
		s.log.Warn("session not saved", "user", c.user, "err", err)
	}
}

// sessionOf is what a resume of c's session needs: its user, rooms and
// private-conversation partners.
func (s *Manager) sessionOf(c *Conn) *engine.Session {
	return &engine.Session{ID: c.session, User: c.user, Rooms: s.hub.RoomsOf(c), Partners: s.hub.PartnersOf(c.user)}
}

// SaveSessions saves the sessions of many connections in as few engine
// round trips as the engine allows, and reports whether all were saved.
func (s *Manager) SaveSessions(ctx context.Context, conns []*Conn) bool {
	ss := make([]*engine.Session, 0, len(conns))
	for _, c := range conns {
		if c.sessionSet.Load() { // not one still being set up
			ss = append(ss, s.sessionOf(c))
		}
	}
	if err := s.eng.SaveSessions(ctx, ss, s.cfg.ResumeWindow); err != nil {
		s.log.Warn("sessions not saved", "sessions", len(ss), "err", err)
		return false
	}
	return true
}

// disconnected runs once per connection, when its reader has returned. A
// clean end (the client closed with 1000, or the server with a terminal
// code) leaves at once and forgets the session. Any other end keeps the
// session for the resume window and the presence for the grace period —
// a short one (PresenceGraceAway) when the client said 1001 "going away":
// a page that was reloaded resumes and misses nothing, and the partners
// of a tab that was closed learn of it within a second or two.
func (s *Manager) disconnected(c *Conn) {
	c.CloseSocket()
	code, reason, clean := protocol.CloseAbnormal, "", false
	grace := s.cfg.PresenceGrace
	closing, peer := c.Closed()
	switch {
	case peer != nil: // the client closed first
		code, reason = peer.Code, peer.Reason
		clean = code == protocol.CloseNormal
		if code == protocol.CloseGoingAway || c.dialect != nil {
			// A page going away; or a tutorial client, which never
			// resumes: its close() (1005, no code) is a leave.
			grace = s.cfg.PresenceGraceAway
		}
	case closing != nil:
		code, reason = closing.Code, closing.Reason
		clean = protocol.PolicyFor(closing.Code) == protocol.Terminal
	}
	ctx, cancel := s.OpContext(5 * time.Second)
	switch {
	case !c.registered:
		s.hub.Untrack(c) // a dialect's connection that never joined
	case clean:
		s.hub.Unregister(ctx, c)
		s.eng.DeleteSession(ctx, c.session)
	case s.shuttingDown.Load():
		// The client reconnects (1012) and resumes on the node that
		// replaces this one: its session is saved for that. Its presence
		// is left as a crashed node's is, to expire after the presence TTL
		// unless it comes back (with the memory engine it ends with the
		// process): users who resume within it never appear to leave (no
		// leave/join flap in their rooms, no `left` to their partners), and
		// stopping costs one engine call per connection instead of five.
		// No ghost outlives this node. Shutdown has saved the sessions it
		// found in one batch; only a connection it missed saves its own.
		// (A partner noted since then, by a message from another node,
		// makes every connection save again.)
		if !c.savedAtStop.Load() || s.hub.PartnerAdds() != s.stopSaveGen.Load() {
			s.saveSession(ctx, c)
		}
		s.hub.Forget(c)
	default:
		s.saveSession(ctx, c)
		s.hub.Detach(ctx, c, c.session, grace)
	}
	cancel()
	if c.registered {
		s.node.Disconnected(c, code)
	}
	s.node.Release(c.ip, c.user)
	s.metrics.Closed.Add(1)
	s.metrics.closedWith(int(code))
	// A dropped connection (1006) is routine on real networks; only a
	// server-side failure is worth a warning.
	level := slog.LevelInfo
	if code == protocol.CloseInternal {
		level = slog.LevelWarn
	}
	s.log.Log(context.Background(), level, "disconnect", "user", c.user, "conn", c.id, "remote", c.remote,
		"code", int(code), "reason", reason, "clean", clean, "duration", time.Since(c.opened).Round(time.Millisecond))
	s.conns.Done()
}
