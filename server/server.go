// Package server is Tether's node: the HTTP endpoints, the WebSocket
// connections (reader, on-demand writer, bounded send queue), the hub
// (rooms, private messages, presence) and the heartbeat.
//
// Data path of one chat message: connection reader → protocol.Decode →
// Conn.handle → Server.publish → engine (sequence, history, fan-out to
// nodes) → hub.deliver (encode once) → each member's queue → one write()
// of everything queued, at once or, for a busy connection, after the write
// delay (flusher).
//
// A Server is safe for concurrent use. Every goroutine it starts for its
// connections, its heartbeat and its flusher ends by the time Shutdown
// returns; the process-wide pools of reader and handshake goroutines
// (netpoll.Pool) keep idle workers for up to two seconds more.
package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tether-chat/tether/auth"
	"github.com/tether-chat/tether/engine"
	"github.com/tether-chat/tether/engine/memory"
	"github.com/tether-chat/tether/internal/ws"
	"github.com/tether-chat/tether/protocol"
	"github.com/tether-chat/tether/web"
)

// Server is one Tether node.
type Server struct {
	cfg Config
	// closeGrace, when set (nanoseconds), replaces the close grace (tests).
	closeGrace atomic.Int64
	log        *slog.Logger
	eng        engine.Engine
	// immediate: eng is an engine.Immediate, whose calls need no deadline.
	immediate bool
	hub       *hub
	nodeID    string
	// wsDialect and wsIDDialect are what /ws and /ws/{client_id} speak
	// (Config.WSDialect); nil is tether's own protocol.
	wsDialect, wsIDDialect dialect

	ctx       context.Context // cancelled when Shutdown finishes
	cancel    context.CancelFunc
	upkeepOff chan struct{}

	mux *http.ServeMux

	started      time.Time
	nextID       atomic.Uint64
	shuttingDown atomic.Bool
	// stopSaveGen is hub.partnerAdds when Shutdown saved every session.
	stopSaveGen atomic.Uint64
	// processing is held for reading while a client message is processed;
	// Shutdown takes it for writing after raising shuttingDown, so that no
	// message is processed (and acked) once any connection may be closing:
	// a message acked during shutdown reaches every member that was
	// connected, and one that was not processed is re-sent by its client.
	processing   sync.RWMutex
	conns        sync.WaitGroup // one per live connection
	heartbeatOff chan struct{}
	flusher      *flusher    // nil without a write delay
	hooks        *hookSender // nil without Config.HookURL

	httpMu  sync.Mutex
	httpSrv *http.Server

	limits *limiter

	// setups bounds the connection set-ups in progress (see maxSetups);
	// setupsWaiting counts the connections waiting for a turn.
	setups        chan struct{}
	setupsWaiting atomic.Int64

	metrics metrics
}

// maxSetups is how many connection set-ups (session, presence, joins,
// replay: with Redis, several round trips each) run at once; past it, new
// connections wait their turn in arrival order, each already accepted and
// holding only its socket. When 19,000 clients come back at once, running
// all their set-ups together made each of them finish late, kept tens of
// thousands of goroutines runnable, and left the accept loop so far
// behind that the kernel's listen queue overflowed (and dropped clients
// retried a second or three later). 256 keeps Redis busy: a set-up is
// mostly waiting for its replies.
const maxSetups = 256

// KeyTTL is how long an engine must remember a client message's id (its
// idempotency key) for a server with this resume window: a message is
// re-sent at the latest one resume window after the server noticed the
// drop, which can itself come a heartbeat timeout after the message was
// sent. Twice the window covers both with room to spare (4 min by
// default). cmd/tether gives the Redis engine the same.
func KeyTTL(resumeWindow time.Duration) time.Duration { return 2 * resumeWindow }

// New makes a server from cfg and starts its engine and heartbeat.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	s := &Server{cfg: cfg, log: cfg.Logger, eng: cfg.Engine, nodeID: cfg.NodeID, heartbeatOff: make(chan struct{}),
		upkeepOff: make(chan struct{}), setups: make(chan struct{}, maxSetups)}
	if s.eng == nil {
		s.eng = memory.New(memory.Config{HistorySize: cfg.HistorySize, HistoryTTL: cfg.HistoryTTL, KeyTTL: KeyTTL(cfg.ResumeWindow)})
	}
	_, s.immediate = s.eng.(engine.Immediate)
	s.wsDialect, _ = dialectNamed(cfg.WSDialect, false) // Validate checked both
	s.wsIDDialect, _ = dialectNamed(cfg.WSIDDialect, true)
	if s.nodeID == "" {
		s.nodeID = randomID(6)
	}
	s.started = time.Now()
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.limits = newLimiter()
	s.hub = newHub(s)
	s.initMetrics()
	if err := s.eng.Start(s.ctx, s.hub); err != nil {
		return nil, err
	}
	s.routes()
	go s.heartbeat()
	go s.upkeep()
	if cfg.WriteDelay > 0 {
		s.flusher = newFlusher(s.ctx, cfg.WriteDelay, &s.metrics.delayed)
	}
	if cfg.HookURL != "" {
		s.hooks = newHookSender(s)
	}
	return s, nil
}

func (s *Server) routes() {
	s.mux = http.NewServeMux()
	s.mux.HandleFunc("GET /ws", s.serveWS)
	s.mux.HandleFunc("GET /ws/{client_id}", s.serveWS)
	s.mux.HandleFunc("GET /tether/ws", s.serveWS)
	s.mux.HandleFunc("GET /tether/ws/{client_id}", s.serveWS)
	s.mux.HandleFunc("GET /files/{id}", s.serveFile)
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	s.mux.HandleFunc("GET /readyz", s.serveReady)
	s.mux.Handle("GET /metrics", s.metricsHandler())
	s.apiRoutes()
	s.adminRoutes()
	chat, _ := fs.Sub(web.FS, "chat")
	sdk, _ := fs.Sub(web.FS, "sdk")
	s.mux.Handle("GET /sdk/", sdkHandler(http.StripPrefix("/sdk/", http.FileServerFS(sdk))))
	s.mux.Handle("GET /", http.FileServerFS(chat))
}

// sdkHandler serves the browser SDK to any origin: it is public code, and
// an application's pages import it from the node they talk to
// (`import … from 'https://chat.example.com/sdk/tether.js'`), which a
// browser allows for a module only with CORS.
func sdkHandler(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Access-Control-Allow-Origin", "*")
		h.ServeHTTP(w, r)
	})
}

// Handler returns the server's HTTP handler, for embedding in another
// server or an httptest.Server.
func (s *Server) Handler() http.Handler { return s.mux }

func (s *Server) serveReady(w http.ResponseWriter, r *http.Request) {
	if s.shuttingDown.Load() {
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	}
	if err := s.eng.Ready(r.Context()); err != nil {
		http.Error(w, "engine not ready: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.Write([]byte("ready\n"))
}

// serveWS is /ws served by net/http (Handler(), TLS): it upgrades one
// connection and starts its reader.
func (s *Server) serveWS(w http.ResponseWriter, r *http.Request) {
	s.openWS(&handshake{req: requestFromHTTP(r), w: w})
}

// openWS upgrades one connection, sets it up and starts its reader.
func (s *Server) openWS(h *handshake) {
	r := &h.req
	if s.shuttingDown.Load() {
		h.fail(http.StatusServiceUnavailable, "server is shutting down; reconnect to another node")
		return
	}
	user := r.clientID
	if user == "" {
		user = r.query("user")
	}
	var claims *auth.Claims
	var refuse *protocol.Disconnect
	if s.cfg.AuthSecret != "" {
		claims, refuse = s.authenticate(r, user)
		if refuse == nil {
			user = claims.Subject
		}
	} else if user == "" {
		user = "guest-" + randomID(3)
	}
	if refuse == nil {
		if msg := protocol.ValidateUser(user); msg != "" {
			if claims == nil {
				h.fail(http.StatusBadRequest, "invalid user: "+msg)
				return
			}
			d := protocol.Unauthorized("token subject is not a valid user name")
			refuse = &d
		}
	}
	ip := remoteIP(r.remote)
	admitted := false
	if refuse == nil {
		if refuse = s.admit(ip, user); refuse == nil {
			admitted = true
		}
	}

	raw, resp, early, err := s.upgrade(h)
	if err != nil {
		if admitted {
			s.release(ip, user)
		}
		return // upgrade has answered and logged
	}
	if refuse != nil {
		// Refused after the upgrade, with a close code, because a browser
		// cannot read the status of a failed handshake: it would only see
		// 1006 and retry forever.
		s.metrics.refused.Add(1)
		s.log.Warn("connection refused", "remote", r.remote, "user", user, "code", int(refuse.Code), "reason", refuse.Reason)
		raw.write(ws.AppendFrame(resp, ws.OpClose, closePayload(*refuse)))
		raw.Conn.Close()
		return
	}
	c := &Conn{
		id: s.nextID.Add(1), user: user, ip: ip, remote: r.remote, opened: time.Now(),
		srv: s, raw: raw, rooms: make(map[string]struct{}), claims: claims,
		corked:  true, // until the welcome is queued first
		limiter: bucket{rate: s.cfg.RateLimit, burst: float64(s.cfg.RateBurst), tokens: float64(s.cfg.RateBurst)},
		// The 101 response goes out in one write with the welcome and the
		// first replies, once the set-up is done.
		queue:  []outFrame{{op: opRaw, data: resp}},
		queued: len(resp),
	}
	if !r.tether {
		c.dialect = s.wsDialect
		if r.withID {
			c.dialect = s.wsIDDialect
		}
	}
	c.attach()
	c.touch()
	s.conns.Add(1)
	s.metrics.opened.Add(1)
	if c.dialect != nil && c.dialect.deferSetUp() {
		// Set up by its first join (dialect.go); until then the heartbeat
		// and a shutdown know it, nothing else does.
		s.hub.track(c)
		c.uncork()
	} else if err := s.setUp(c, r); err != nil {
		s.setUpFailed(c, err)
	}
	c.flushLater()
	// Reading is driven by the poller (or a goroutine of its own) and the
	// handler returns, so net/http's per-request state (buffers, request,
	// response writer) is garbage as soon as the set-up is done instead of
	// living as long as the connection.
	c.startReading(early)
}

// setUp runs connected when its turn comes (maxSetups). A panic in it
// fails this set-up (close 1011), nothing else.
func (s *Server) setUp(c *Conn, r *wsRequest) error {
	return s.runSetUp(c, func() error {
		if err := s.checkConnect(c, r.cookie, r.origin, r.query("session") != ""); err != nil {
			return err
		}
		return s.connected(c, r.query("session"), parseSince(r.query("since")), r.query("rooms"))
	})
}

// setUpLater sets up, from its reader, a connection whose dialect defers
// its set-up to its first join: in room, with a new session.
func (s *Server) setUpLater(c *Conn, room string) {
	if err := s.runSetUp(c, func() error {
		if err := s.checkConnect(c, "", "", false); err != nil {
			return err
		}
		return s.connected(c, "", nil, room)
	}); err != nil {
		s.setUpFailed(c, err)
	}
}

// setUpFailed closes a connection whose set-up failed: with the close
// code err carries, or 1011.
func (s *Server) setUpFailed(c *Conn, err error) {
	c.uncork()
	var d protocol.Disconnect
	if errors.As(err, &d) {
		s.log.Warn("connection refused", "user", c.user, "remote", c.remote, "code", int(d.Code), "reason", d.Reason)
		c.close(d, closeDrain)
	} else {
		s.log.Error("connection set-up failed", "user", c.user, "remote", c.remote, "err", err)
		c.close(protocol.DisconnectInternal, closeDrain)
	}
}

// runSetUp runs one connection's set-up, f, when its turn comes.
func (s *Server) runSetUp(c *Conn, f func() error) (err error) {
	select {
	case s.setups <- struct{}{}:
	default:
		s.setupsWaiting.Add(1)
		s.setups <- struct{}{}
		s.setupsWaiting.Add(-1)
	}
	defer func() { <-s.setups }()
	defer func() {
		if r := recover(); r != nil {
			s.panicked("set-up", r, nil)
			err = protocol.DisconnectInternal
		}
	}()
	if s.shuttingDown.Load() { // it stopped while this one waited
		return protocol.DisconnectShutdown
	}
	c.busy.Store(true)
	defer c.busy.Store(false)
	return f()
}

// authenticate checks the token of a request in token mode. The token
// comes from ?token= (browsers cannot set headers on a WebSocket) or an
// Authorization: Bearer header. It is never logged.
func (s *Server) authenticate(r *wsRequest, named string) (*auth.Claims, *protocol.Disconnect) {
	tok := r.query("token")
	if h := r.authorization; tok == "" && len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
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
func (s *Server) connected(c *Conn, sessionID string, since map[string]position, rooms string) error {
	ctx, cancel := s.opContext(10 * time.Second)
	defer cancel()
	c.mu.Lock()
	c.resuming = true
	c.mu.Unlock()
	if s.shuttingDown.Load() {
		return protocol.DisconnectShutdown
	}
	fresh := &engine.Session{ID: randomID(16), User: c.user}
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

	p := s.hub.plan(c)
	p.user(sinceOf(since, protocol.InboxKey))
	c.registered = true // from here on, disconnected undoes what this did
	joined, refused := p.rooms(asked, since, nil)
	fresh.Rooms = slices.Sorted(slices.Values(joined))
	loaded, err := p.run(ctx, engine.Entering{Load: sessionID, Save: fresh})
	if err != nil {
		return err
	}
	if loaded != nil && loaded.User != c.user {
		c.session = fresh.ID // what disconnected saves is this user's own
		return protocol.DisconnectSessionUser
	}
	resumed := loaded != nil
	var more []string // rooms this connection is in that the stored session does not list
	switch {
	case resumed:
		for _, partner := range loaded.Partners {
			s.hub.notePartner(c.user, partner)
		}
		extra, _ := p.rooms(loaded.Rooms, since, joined)
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
			extra, no := p.rooms([]string{s.cfg.AutoJoin}, since, joined)
			joined, refused = append(joined, extra...), append(refused, no...)
			more = extra
		}
	}
	if len(p.entered) < len(p.entries) || len(more) > 0 {
		if _, err := p.run(ctx, engine.Entering{Save: s.sessionOf(c)}); err != nil {
			return err
		}
	}
	if resumed {
		s.hub.releaseGhost(ctx, loaded.ID)
		s.metrics.resumes.Add(1)
	}

	entered := p.entered
	inbox := entered[0].History
	c.sendFirst(protocol.Encode(protocol.TypeWelcome, "", protocol.Welcome{
		Protocol: protocol.Version, User: c.user, Session: c.session, Resumed: resumed, Online: entered[0].Count, Rooms: joined,
		Inbox:     protocol.Position{Epoch: inbox.Epoch, Top: inbox.Top},
		Heartbeat: protocol.Heartbeat{Interval: s.cfg.PingInterval.Milliseconds(), Timeout: s.cfg.PongTimeout.Milliseconds()},
		MaxText:   s.cfg.MaxText, MaxFile: max(s.cfg.MaxFileSize, 0),
	}))
	for _, e := range refused {
		c.sendError(e) // after the welcome, which lists the rooms joined
	}
	read := make(map[string]*engine.Entered, len(p.keys))
	for i, k := range p.keys {
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
	// After the held deliveries: a member reply's position must come after
	// every message up to it that this connection is sent.
	for i, k := range p.keys[1:] {
		c.sendMembers(ctx, "", k, &entered[i+1])
	}
	s.log.Info("connect", "user", c.user, "conn", c.id, "remote", c.remote, "resumed", resumed, "rooms", len(joined))
	s.hook(HookEvent{Type: "connect", User: c.user, Conn: c.id, Remote: c.remote, Resumed: resumed})
	return nil
}

// rooms plans c's entry into each of names that is not in skip, and
// returns those it may enter and, for the others, why not (an error that
// names the room, for an error frame).
func (p *enterPlan) rooms(names []string, since map[string]position, skip []string) (joined []string, refused []*protocol.Error) {
	for _, room := range names {
		if slices.Contains(skip, room) || slices.Contains(joined, room) {
			continue
		}
		if msg := protocol.ValidateRoom(room); msg != "" {
			refused = append(refused, &protocol.Error{Code: protocol.ErrBadRoom, Message: fmt.Sprintf("rooms: %q: %s", room, msg)})
			continue
		}
		if err := p.room(room, sinceOf(since, room)); err != nil {
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

// sinceOf is the client's position in one stream, if it gave one.
func sinceOf(since map[string]position, key string) *position {
	if p, ok := since[key]; ok {
		return &p
	}
	return nil
}

// recover tells the client with `recovered` whether what it missed on one
// stream since pos is still retained, and replays it if so. en is what
// Enter read of the stream (its first page after pos); nil when the
// client is not in the room (any more): nothing to replay or reveal.
func (s *Server) recover(ctx context.Context, c *Conn, key string, pos position, en *engine.Entered, replayed map[string]roomPos) {
	rec := protocol.Recovered{}
	stream := engine.RoomStream(key)
	if key == protocol.InboxKey {
		stream, rec.Inbox = engine.UserStream(c.user), true
	} else {
		rec.Room = key
	}
	if en == nil {
		s.metrics.recoveriesFailed.Add(1)
		c.send(protocol.Encode(protocol.TypeRecovered, "", rec))
		return
	}
	hist := en.History
	rec.Epoch, rec.Top = hist.Epoch, hist.Top
	rec.Recovered = hist.Covers(pos.epoch, pos.seq)
	if !rec.Recovered {
		s.metrics.recoveriesFailed.Add(1)
		c.send(protocol.Encode(protocol.TypeRecovered, "", rec))
		return
	}
	last := pos.seq
	for len(hist.Pubs) > 0 {
		for _, p := range hist.Pubs {
			if !c.enqueueReplay(encodePublication(p)) {
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
	s.metrics.recoveries.Add(1)
	c.send(protocol.Encode(protocol.TypeRecovered, "", rec))
}

// saveSession stores what a resume of c's session needs, for the resume
// window. It is refreshed while the connection lives (heartbeat).
func (s *Server) saveSession(ctx context.Context, c *Conn) {
	if c.session == "" {
		return
	}
	if err := s.eng.SaveSession(ctx, s.sessionOf(c), s.cfg.ResumeWindow); err != nil {
		s.log.Warn("session not saved", "user", c.user, "err", err)
	}
}

// sessionOf is what a resume of c's session needs: its user, rooms and
// private-conversation partners.
func (s *Server) sessionOf(c *Conn) *engine.Session {
	return &engine.Session{ID: c.session, User: c.user, Rooms: s.hub.roomsOf(c), Partners: s.hub.partnersOf(c.user)}
}

// saveSessions saves the sessions of many connections in as few engine
// round trips as the engine allows, and reports whether all were saved.
func (s *Server) saveSessions(ctx context.Context, conns []*Conn) bool {
	ss := make([]*engine.Session, 0, len(conns))
	for _, c := range conns {
		if c.session != "" {
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
func (s *Server) disconnected(c *Conn) {
	c.raw.Conn.Close()
	code, reason, clean := protocol.CloseAbnormal, "", false
	grace := s.cfg.PresenceGrace
	c.mu.Lock()
	closing, peer := c.closing, c.peer
	c.mu.Unlock()
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
	ctx, cancel := s.opContext(5 * time.Second)
	switch {
	case !c.registered:
		s.hub.untrack(c) // a dialect's connection that never joined
	case clean:
		s.hub.unregister(ctx, c)
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
		if !c.savedAtStop.Load() || s.hub.partnerAdds.Load() != s.stopSaveGen.Load() {
			s.saveSession(ctx, c)
		}
		s.hub.forget(c)
	default:
		s.saveSession(ctx, c)
		s.hub.detach(ctx, c, c.session, grace)
	}
	cancel()
	if c.registered {
		s.hook(HookEvent{Type: "disconnect", User: c.user, Conn: c.id, Remote: c.remote, Code: int(code)})
	}
	s.release(c.ip, c.user)
	s.metrics.closed.Add(1)
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

// publish hands a retained publication to the engine, idempotent by key
// (see Conn.key), mapping a failure to the error the client sees.
func (s *Server) publish(ctx context.Context, p *engine.Publication, key string) error {
	dup, err := s.eng.Publish(ctx, p, engine.PublishOptions{Key: key})
	if err != nil {
		return s.engineFailed("publish", err)
	}
	s.hookPublished(p) // a duplicate too: at least once, the receiver drops it by (stream, seq)
	if dup {
		s.metrics.duplicates.Add(1) // a re-send, or a retry that found its first attempt done
	}
	return nil
}

// heartbeat is the one goroutine that keeps every connection honest: it
// pings connections that have been silent for PingInterval and closes those
// silent for PingInterval+PongTimeout. It reads only timestamps the readers
// store, so a backlog on the send side never makes a live client look
// dead, and it never calls the engine: a stalled store does not stop the
// pings or the closes (upkeep does the engine's part). A connection whose
// reader is waiting on the engine (Conn.busy) has not read its client's
// pongs: it is pinged but not closed until its reader has caught up.
func (s *Server) heartbeat() {
	defer close(s.heartbeatOff)
	interval, timeout := s.cfg.PingInterval, s.cfg.PongTimeout
	tick := min(time.Second, interval/2, timeout/4)
	t := time.NewTicker(tick)
	defer t.Stop()
	var conns []*Conn
	for {
		select {
		case <-s.ctx.Done():
			return
		case now := <-t.C:
			conns = s.hub.snapshot(conns[:0])
			for _, c := range conns {
				seen := c.lastSeen.Load()
				silent := time.Duration(now.UnixNano() - seen)
				switch {
				case silent >= interval+timeout && !c.busy.Load():
					c.close(protocol.DisconnectHeartbeat, closeDrop)
				case silent >= interval && c.pinged.Load() < seen:
					c.pinged.Store(now.UnixNano())
					c.ping()
				}
			}
			clear(conns)
		}
	}
}

// upkeep does the periodic work that needs the engine, each round with a
// deadline of its own: big rooms' coalesced presence counts, and keeping
// live sessions from expiring. It also forgets idle per-address rate
// limits.
func (s *Server) upkeep() {
	defer close(s.upkeepOff)
	presence := time.NewTicker(s.cfg.PresenceInterval)
	defer presence.Stop()
	sessions := time.NewTicker(s.cfg.ResumeWindow / 3)
	defer sessions.Stop()
	var conns []*Conn
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-presence.C:
			ctx, cancel := s.opContext(s.cfg.PresenceInterval)
			s.hub.flushPresence(ctx)
			cancel()
		case now := <-sessions.C:
			s.sweepRates(now)
			// Live sessions must not expire: refresh them well within the window.
			conns = s.hub.snapshot(conns[:0])
			ctx, cancel := s.opContext(s.cfg.ResumeWindow / 3)
			s.saveSessions(ctx, conns)
			cancel()
			clear(conns)
		}
	}
}

// Shutdown stops the server gracefully: readiness turns false, no new
// connection is accepted, every connection gets what is queued for it and
// then a close with 1012 (reconnect), and Shutdown waits for them to finish
// until ctx is done, when it closes the rest. Then the engine is closed.
func (s *Server) Shutdown(ctx context.Context) error {
	if !s.shuttingDown.CompareAndSwap(false, true) {
		return errors.New("server: Shutdown called twice")
	}
	// Wait for the messages being processed; none starts after. Twice:
	// readers that were waiting for the lock while the first Lock was
	// pending see shuttingDown once they have it and answer `unavailable`;
	// the second Lock waits for those answers to be queued, so that they
	// go out before the close frames below.
	for range 2 {
		s.processing.Lock()
		s.processing.Unlock()
	}
	s.httpMu.Lock()
	hs := s.httpSrv
	s.httpMu.Unlock()
	if hs != nil {
		hs.Shutdown(ctx) // closes the listeners; hijacked connections are ours
	}
	conns := s.hub.snapshot(nil)
	s.log.Info("shutting down", "connections", len(conns))
	// Every session is saved before its client is told to reconnect, so
	// that a resume on another node finds it current, and in batches: one
	// engine call per connection made stopping a node with many clients
	// on Redis take seconds. No command is processed from here on, so
	// only a partner noted by a message from another node can still change
	// a session (disconnected saves again then).
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	s.stopSaveGen.Store(s.hub.partnerAdds.Load())
	if s.saveSessions(sctx, conns) {
		for _, c := range conns {
			c.savedAtStop.Store(true)
		}
	}
	cancel()
	for _, c := range conns {
		c.close(protocol.DisconnectShutdown, closeShutdown)
	}
	done := make(chan struct{})
	go func() { s.conns.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
		for _, c := range s.hub.snapshot(nil) {
			c.closeSocket()
		}
		<-done
	}
	s.cancel()
	<-s.heartbeatOff
	<-s.upkeepOff
	if s.flusher != nil {
		<-s.flusher.done
	}
	s.hub.dropGhosts()
	s.eng.Close()
	return err
}

// opContext bounds one connection's set-up or one command's engine calls.
// It does not derive from s.ctx: Shutdown cancels s.ctx only after every
// connection has ended (and no command is being processed by then), so a
// child of it would never see that cancellation, and registering every
// child with s.ctx cost a lock and a map entry per command on a context
// shared by all connections.
//
// An engine.Immediate engine's calls are not bounded at all.
func (s *Server) opContext(d time.Duration) (context.Context, context.CancelFunc) {
	if s.immediate {
		return context.Background(), noCancel
	}
	return context.WithTimeout(context.Background(), d)
}

func noCancel() {}

// Stats is a snapshot of the server's counters.
type Stats struct {
	Connections      int
	Opened           int64
	Closed           int64
	Received         int64
	Delivered        int64
	Errors           int64
	RateLimited      int64
	SlowConsumers    int64
	EngineErrors     int64
	Refused          int64 // connections refused (credentials, session)
	Resumes          int64 // sessions resumed
	Recoveries       int64 // streams replayed from the client's position
	RecoveriesFailed int64 // streams whose position could not be served
	Duplicates       int64 // re-sent client messages acked without processing
	SocketFull       int64 // writes the socket could not take at once
	Writes           int64 // write() calls that put frames on sockets
	Delayed          int64 // room deliveries parked by the write delay
}

// Stats returns the current counters.
func (s *Server) Stats() Stats {
	m := &s.metrics
	return Stats{Connections: s.hub.count(), Opened: m.opened.Load(), Closed: m.closed.Load(),
		Received: m.received.Load(), Delivered: m.delivered.Load(), Errors: m.errors.Load(),
		RateLimited: m.rateLimited.Load(), SlowConsumers: m.slowConsumers.Load(), EngineErrors: m.engineErrors.Load(),
		Refused: m.refused.Load(), Resumes: m.resumes.Load(), Recoveries: m.recoveries.Load(),
		RecoveriesFailed: m.recoveriesFailed.Load(), Duplicates: m.duplicates.Load(), SocketFull: m.socketFull.Load(),
		Writes: m.writes.Load(), Delayed: m.delayed.Load()}
}

func (s *Server) handshakeError(h *handshake, status int, reason error, header ...string) {
	s.log.Info("handshake failed", "remote", h.req.remote, "status", status, "err", reason)
	h.fail(status, reason.Error(), header...)
}

func randomID(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
