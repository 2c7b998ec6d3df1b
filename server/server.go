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
	"errors"
	"io/fs"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/tether-chat/tether/engine"
	"github.com/tether-chat/tether/engine/memory"
	"github.com/tether-chat/tether/protocol"
	"github.com/tether-chat/tether/server/hub"
	"github.com/tether-chat/tether/server/session"
	"github.com/tether-chat/tether/server/transport"
	"github.com/tether-chat/tether/web"
)

// Server is one Tether node.
type Server struct {
	cfg Config
	// tp is what every connection's transport shares.
	tp     transport.Options
	log    *slog.Logger
	eng    engine.Engine
	hub    *hub.Hub
	sess   *session.Manager
	nodeID string

	ctx       context.Context // cancelled when Shutdown finishes
	cancel    context.CancelFunc
	upkeepOff chan struct{}

	mux *http.ServeMux

	started      time.Time
	heartbeatOff chan struct{}
	flusher      *transport.Flusher // nil without a write delay
	hooks        *hookSender        // nil without Config.HookURL

	httpMu  sync.Mutex
	httpSrv *http.Server

	limits *limiter

	metrics metrics
}

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
		upkeepOff: make(chan struct{})}
	if s.eng == nil {
		s.eng = memory.New(memory.Config{HistorySize: cfg.HistorySize, HistoryTTL: cfg.HistoryTTL, KeyTTL: KeyTTL(cfg.ResumeWindow)})
	}
	if s.nodeID == "" {
		s.nodeID = session.NewID(6)
	}
	s.started = time.Now()
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.limits = newLimiter()
	if cfg.WriteDelay > 0 {
		s.flusher = transport.NewFlusher(s.ctx, cfg.WriteDelay, &s.metrics.Delayed)
	}
	s.tp = transport.Options{QueueMessages: cfg.SendQueueMessages, QueueBytes: cfg.SendQueueBytes,
		WriteTimeout: cfg.WriteTimeout, ShutdownGrace: cfg.ShutdownTimeout, Flusher: s.flusher, Counters: &s.metrics.Counters}
	s.hub = hub.New(hub.Config{Engine: s.eng, NodeID: s.nodeID, Log: s.log, Flusher: s.flusher,
		PresenceEventsMax: cfg.PresenceEventsMax, MembersMax: cfg.MembersMax, MaxRoomsPerConn: cfg.MaxRoomsPerConn,
		PresenceInterval: cfg.PresenceInterval, ResumeWindow: cfg.ResumeWindow}, (*hubNode)(s))
	s.initMetrics()
	s.sess = session.New(sessionConfig(&cfg), session.Deps{Engine: s.eng, Hub: s.hub, Transport: &s.tp, NodeID: s.nodeID,
		Log: s.log, Metrics: &s.metrics.Metrics, Node: (*sessionNode)(s)})
	if err := s.eng.Start(s.ctx, s.hub); err != nil {
		return nil, err
	}
	s.routes()
	go s.heartbeat()
	go s.upkeep()
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
	if s.sess.Stopping() {
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	}
	if err := s.eng.Ready(r.Context()); err != nil {
		http.Error(w, "engine not ready: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.Write([]byte("ready\n"))
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
	var conns []*session.Conn
	for {
		select {
		case <-s.ctx.Done():
			return
		case now := <-t.C:
			conns = hub.Snapshot(s.hub, conns[:0])
			for _, c := range conns {
				c.Heartbeat(now, interval, timeout)
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
	var conns []*session.Conn
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-presence.C:
			ctx, cancel := s.opContext(s.cfg.PresenceInterval)
			s.hub.FlushPresence(ctx)
			cancel()
		case now := <-sessions.C:
			s.sweepRates(now)
			// Live sessions must not expire: refresh them well within the window.
			conns = hub.Snapshot(s.hub, conns[:0])
			ctx, cancel := s.opContext(s.cfg.ResumeWindow / 3)
			s.sess.SaveSessions(ctx, conns)
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
	if !s.sess.Stop() {
		return errors.New("server: Shutdown called twice")
	}
	s.httpMu.Lock()
	hs := s.httpSrv
	s.httpMu.Unlock()
	if hs != nil {
		hs.Shutdown(ctx) // closes the listeners; hijacked connections are ours
	}
	conns := hub.Snapshot[*session.Conn](s.hub, nil)
	s.log.Info("shutting down", "connections", len(conns))
	// Every session is saved before its client is told to reconnect, so
	// that a resume on another node finds it current, and in batches: one
	// engine call per connection made stopping a node with many clients
	// on Redis take seconds. No command is processed from here on, so
	// only a partner noted by a message from another node can still change
	// a session (disconnected saves again then).
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	s.sess.SaveAtStop(sctx, conns)
	cancel()
	for _, c := range conns {
		c.Close(protocol.DisconnectShutdown, transport.CloseShutdown)
	}
	done := make(chan struct{})
	go func() { s.sess.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
		for _, c := range hub.Snapshot[*session.Conn](s.hub, nil) {
			c.CloseSocket()
		}
		<-done
	}
	s.cancel()
	<-s.heartbeatOff
	<-s.upkeepOff
	if s.flusher != nil {
		<-s.flusher.Done()
	}
	s.hub.DropGhosts()
	if s.hooks != nil {
		<-s.hooks.done // the events of the last moments, for at most hookDrain
	}
	s.eng.Close()
	return err
}

// opContext bounds an engine call of the node's (see
// session.Manager.OpContext).
func (s *Server) opContext(d time.Duration) (context.Context, context.CancelFunc) {
	return s.sess.OpContext(d)
}

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
	return Stats{Connections: s.hub.Count(), Opened: m.Opened.Load(), Closed: m.Closed.Load(),
		Received: m.Received.Load(), Delivered: m.Delivered.Load(), Errors: m.Errors.Load(),
		RateLimited: m.RateLimited.Load(), SlowConsumers: m.SlowConsumers.Load(), EngineErrors: m.EngineErrors.Load(),
		Refused: m.Refused.Load(), Resumes: m.Resumes.Load(), Recoveries: m.Recoveries.Load(),
		RecoveriesFailed: m.RecoveriesFailed.Load(), Duplicates: m.Duplicates.Load(), SocketFull: m.SocketFull.Load(),
		Writes: m.Writes.Load(), Delayed: m.Delayed.Load()}
}

func (s *Server) handshakeError(h *handshake, status int, reason error, header ...string) {
	s.log.Info("handshake failed", "remote", h.req.remote, "status", status, "err", reason)
	h.fail(status, reason.Error(), header...)
}
