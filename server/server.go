// Package server is Tether's node: the HTTP endpoints, the WebSocket
// connections (reader, on-demand writer, bounded send queue), the hub
// (rooms, private messages, presence) and the heartbeat.
//
// Data path of one chat message: connection reader → protocol.Decode →
// Conn.handle → Server.publish → engine (sequence, history, fan-out to
// nodes) → hub.deliver (encode once) → each member's Conn.enqueue → the
// writer coalesces the queue into one write().
//
// A Server is safe for concurrent use. Every goroutine it starts ends by
// the time Shutdown returns.
package server

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tether-chat/tether/engine"
	"github.com/tether-chat/tether/engine/memory"
	"github.com/tether-chat/tether/protocol"
	"github.com/tether-chat/tether/web"
)

// Server is one Tether node.
type Server struct {
	cfg    Config
	log    *slog.Logger
	eng    engine.Engine
	hub    *hub
	nodeID string

	ctx    context.Context // cancelled when Shutdown finishes
	cancel context.CancelFunc

	upgrader websocket.Upgrader
	mux      *http.ServeMux

	nextID       atomic.Uint64
	shuttingDown atomic.Bool
	conns        sync.WaitGroup // one per live connection
	heartbeatOff chan struct{}

	httpMu  sync.Mutex
	httpSrv *http.Server

	metrics metrics
}

// New makes a server from cfg and starts its engine and heartbeat.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	s := &Server{cfg: cfg, log: cfg.Logger, eng: cfg.Engine, nodeID: cfg.NodeID, heartbeatOff: make(chan struct{})}
	if s.eng == nil {
		s.eng = memory.New(memory.Config{HistorySize: cfg.HistorySize, HistoryTTL: cfg.HistoryTTL})
	}
	if s.nodeID == "" {
		s.nodeID = randomID(6)
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.hub = newHub(s)
	s.upgrader = websocket.Upgrader{
		HandshakeTimeout: 10 * time.Second,
		ReadBufferSize:   512,
		WriteBufferPool:  &sync.Pool{}, // gorilla never writes data frames here; see rawConn
		CheckOrigin:      s.checkOrigin,
		Error:            s.handshakeError,
	}
	if err := s.eng.Start(s.ctx, s.hub.deliver); err != nil {
		return nil, err
	}
	s.routes()
	go s.heartbeat()
	return s, nil
}

func (s *Server) routes() {
	s.mux = http.NewServeMux()
	s.mux.HandleFunc("GET /ws", s.serveWS)
	s.mux.HandleFunc("GET /ws/{client_id}", s.serveWS)
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	s.mux.HandleFunc("GET /readyz", s.serveReady)
	chat, _ := fs.Sub(web.FS, "chat")
	sdk, _ := fs.Sub(web.FS, "sdk")
	s.mux.Handle("GET /sdk/", http.StripPrefix("/sdk/", http.FileServerFS(sdk)))
	s.mux.Handle("GET /", http.FileServerFS(chat))
}

// Handler returns the server's HTTP handler, for embedding in another
// server or an httptest.Server.
func (s *Server) Handler() http.Handler { return s.mux }

// Serve accepts connections on ln until Shutdown. It returns
// http.ErrServerClosed after a shutdown.
func (s *Server) Serve(ln net.Listener) error {
	hs := &http.Server{Handler: s.mux, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)}
	s.httpMu.Lock()
	s.httpSrv = hs
	s.httpMu.Unlock()
	if s.shuttingDown.Load() {
		return http.ErrServerClosed
	}
	return hs.Serve(ln)
}

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

// serveWS upgrades one connection and starts its reader.
func (s *Server) serveWS(w http.ResponseWriter, r *http.Request) {
	if s.shuttingDown.Load() {
		http.Error(w, "server is shutting down; reconnect to another node", http.StatusServiceUnavailable)
		return
	}
	user := r.PathValue("client_id")
	if user == "" {
		user = r.URL.Query().Get("user")
	}
	if user == "" {
		user = "guest-" + randomID(3)
	}
	if msg := protocol.ValidateUser(user); msg != "" {
		http.Error(w, "invalid user: "+msg, http.StatusBadRequest)
		return
	}

	hj := &hijacker{ResponseWriter: w, timeout: s.cfg.WriteTimeout}
	ws, err := s.upgrader.Upgrade(hj, r, nil)
	if err != nil {
		return // handshakeError has answered and logged
	}
	c := &Conn{
		id: s.nextID.Add(1), user: user, remote: r.RemoteAddr, opened: time.Now(),
		srv: s, ws: ws, raw: hj.raw, rooms: make(map[string]struct{}),
		writing: true, // corked until the welcome is queued first
		limiter: bucket{rate: s.cfg.RateLimit, burst: float64(s.cfg.RateBurst), tokens: float64(s.cfg.RateBurst)},
	}
	c.touch()
	s.conns.Add(1)
	s.metrics.opened.Add(1)
	if err := s.connected(c); err != nil {
		s.log.Error("connection set-up failed", "user", user, "remote", c.remote, "err", err)
		c.close(protocol.DisconnectInternal, closeDrain)
	}
	// The reader gets a goroutine of its own and the handler returns, so
	// net/http's per-request state (buffers, request, response writer) is
	// garbage as soon as the upgrade is done instead of living as long as
	// the connection.
	go c.readLoop()
}

// connected registers a new connection, queues its welcome (first, before
// anything a delivery may have queued meanwhile) and auto-joins it.
func (s *Server) connected(c *Conn) error {
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
	defer cancel()
	err := s.hub.register(ctx, c)
	if err == nil && s.shuttingDown.Load() {
		err = errors.New("shutting down")
	}
	online, _ := s.eng.PresenceCount(ctx, "")
	rooms := []string{}
	if s.cfg.AutoJoin != "-" {
		rooms = append(rooms, s.cfg.AutoJoin)
	}
	welcome := protocol.Encode(protocol.TypeWelcome, "", protocol.Welcome{
		Protocol: protocol.Version, User: c.user, Session: randomID(16), Online: online, Rooms: rooms,
		Heartbeat: protocol.Heartbeat{Interval: s.cfg.PingInterval.Milliseconds(), Timeout: s.cfg.PongTimeout.Milliseconds()},
		MaxText:   s.cfg.MaxText,
	})
	c.mu.Lock()
	c.queue = append(c.queue, outFrame{})
	copy(c.queue[1:], c.queue)
	c.queue[0] = outFrame{op: websocket.TextMessage, data: welcome}
	c.writing = false
	c.kickLocked()
	c.mu.Unlock()
	if err != nil {
		return err
	}
	s.log.Info("connect", "user", c.user, "conn", c.id, "remote", c.remote)
	if s.cfg.AutoJoin != "-" {
		if err := s.hub.join(ctx, c, s.cfg.AutoJoin); err != nil {
			return err
		}
		c.sendMembers(ctx, s.cfg.AutoJoin)
	}
	return nil
}

// disconnected runs once per connection, when its reader has returned.
func (s *Server) disconnected(c *Conn, readErr error) {
	c.raw.Conn.Close()
	code, reason := protocol.CloseAbnormal, ""
	if d := c.closeReason(); d != nil {
		code, reason = d.Code, d.Reason
	} else {
		var ce *websocket.CloseError
		if errors.As(readErr, &ce) {
			code, reason = protocol.CloseCode(ce.Code), ce.Text
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	s.hub.unregister(ctx, c)
	cancel()
	s.metrics.closed.Add(1)
	level := slog.LevelInfo
	if code == protocol.CloseAbnormal || code == protocol.CloseInternal {
		level = slog.LevelWarn
	}
	s.log.Log(context.Background(), level, "disconnect", "user", c.user, "conn", c.id, "remote", c.remote,
		"code", int(code), "reason", reason, "duration", time.Since(c.opened).Round(time.Millisecond))
	s.conns.Done()
}

// publish hands a publication to the engine, mapping failures to the error
// the client sees.
func (s *Server) publish(ctx context.Context, p *engine.Publication, opts engine.PublishOptions) error {
	if err := s.eng.Publish(ctx, p, opts); err != nil {
		s.metrics.engineErrors.Add(1)
		return unavailable(err)
	}
	return nil
}

// heartbeat is the one goroutine that keeps every connection honest: it
// pings connections that have been silent for PingInterval and closes those
// silent for PingInterval+PongTimeout. It reads only timestamps the readers
// store, so a backlog on the send side never makes a live client look dead.
// It also sends big rooms their coalesced presence counts.
func (s *Server) heartbeat() {
	defer close(s.heartbeatOff)
	interval, timeout := s.cfg.PingInterval, s.cfg.PongTimeout
	tick := min(time.Second, interval/2, timeout/4)
	t := time.NewTicker(tick)
	defer t.Stop()
	presence := time.NewTicker(s.cfg.PresenceInterval)
	defer presence.Stop()
	var conns []*Conn
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-presence.C:
			s.hub.flushPresence(s.ctx)
		case now := <-t.C:
			conns = s.hub.snapshot(conns[:0])
			for _, c := range conns {
				seen := c.lastSeen.Load()
				silent := time.Duration(now.UnixNano() - seen)
				switch {
				case silent >= interval+timeout:
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

// Shutdown stops the server gracefully: readiness turns false, no new
// connection is accepted, every connection gets what is queued for it and
// then a close with 1012 (reconnect), and Shutdown waits for them to finish
// until ctx is done, when it closes the rest. Then the engine is closed.
func (s *Server) Shutdown(ctx context.Context) error {
	if !s.shuttingDown.CompareAndSwap(false, true) {
		return errors.New("server: Shutdown called twice")
	}
	s.httpMu.Lock()
	hs := s.httpSrv
	s.httpMu.Unlock()
	if hs != nil {
		hs.Shutdown(ctx) // closes the listeners; hijacked connections are ours
	}
	conns := s.hub.snapshot(nil)
	s.log.Info("shutting down", "connections", len(conns))
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
			c.raw.Conn.Close()
		}
		<-done
	}
	s.cancel()
	<-s.heartbeatOff
	s.eng.Close()
	return err
}

// Stats is a snapshot of the server's counters.
type Stats struct {
	Connections   int
	Opened        int64
	Closed        int64
	Received      int64
	Delivered     int64
	Errors        int64
	RateLimited   int64
	SlowConsumers int64
	EngineErrors  int64
}

// Stats returns the current counters.
func (s *Server) Stats() Stats {
	m := &s.metrics
	return Stats{Connections: s.hub.count(), Opened: m.opened.Load(), Closed: m.closed.Load(),
		Received: m.received.Load(), Delivered: m.delivered.Load(), Errors: m.errors.Load(),
		RateLimited: m.rateLimited.Load(), SlowConsumers: m.slowConsumers.Load(), EngineErrors: m.engineErrors.Load()}
}

type metrics struct {
	opened, closed, received, delivered, errors, rateLimited, slowConsumers, engineErrors atomic.Int64
}

// checkOrigin allows requests without an Origin (non-browser clients),
// same-origin requests and loopback origins.
func (s *Server) checkOrigin(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		s.log.Warn("handshake refused: unparsable Origin header", "origin", origin, "remote", r.RemoteAddr)
		return false
	}
	if strings.EqualFold(u.Host, r.Host) || isLoopbackHost(u.Hostname()) {
		return true
	}
	s.log.Warn("handshake refused: origin not allowed", "origin", origin, "host", r.Host, "remote", r.RemoteAddr)
	return false
}

func isLoopbackHost(h string) bool {
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

func (s *Server) handshakeError(w http.ResponseWriter, r *http.Request, status int, reason error) {
	s.log.Info("handshake failed", "remote", r.RemoteAddr, "status", status, "err", reason)
	http.Error(w, reason.Error(), status)
}

// hijacker hands gorilla a rawConn instead of the bare socket.
type hijacker struct {
	http.ResponseWriter
	timeout time.Duration
	raw     *rawConn
}

func (h *hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	h.raw = &rawConn{Conn: conn, timeout: h.timeout}
	return h.raw, brw, nil
}

func randomID(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
