// Package session is a client's connection above its socket: its
// set-up (authentication, the engine call that enters it, the welcome),
// resume and replay, the decoding, rate limits and id dedupe of what it
// sends, its commands and their answers, the tutorials' dialects and
// files. It reads and writes through server/transport, enters rooms
// through server/hub, stores through the engine, and asks the node it
// runs in (Node) for what is the node's: connection limits, the
// application's checks and hooks, panics.
package session

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tether-chat/tether/auth"
	"github.com/tether-chat/tether/engine"
	"github.com/tether-chat/tether/internal/netpoll"
	"github.com/tether-chat/tether/protocol"
	"github.com/tether-chat/tether/server/hub"
	"github.com/tether-chat/tether/server/transport"
)

// Config is what the sessions need of the node's configuration; see
// server.Config for each field.
type Config struct {
	AuthSecret        string
	AutoJoin          string
	MaxMessageSize    int64
	MaxText           int
	MaxFileSize       int
	FilesPerMinute    int
	ImagesOnly        bool
	HistoryTTL        time.Duration
	MembersMax        int
	PresenceEventsMax int
	PresenceGrace     time.Duration
	PresenceGraceAway time.Duration
	ResumeWindow      time.Duration
	RateLimit         float64
	RateBurst         int
	RateStrikes       int
	SendQueueMessages int
	WriteTimeout      time.Duration
	PingInterval      time.Duration
	PongTimeout       time.Duration
	WSDialect         string // the dialect of /ws (see ValidDialect)
	WSIDDialect       string // the dialect of /ws/{client_id}
}

// Node is what a session needs from the node it runs in.
type Node interface {
	// Admit applies the connection limits to a new connection of user
	// from ip (nil: admitted); Release gives its place back; Rename moves
	// it to another user (a dialect's join names the user late).
	Admit(ip, user string) *protocol.Disconnect
	Rename(ip, from, to string) *protocol.Disconnect
	Release(ip, user string)
	// AllowFile applies the per-user file rate.
	AllowFile(user string) bool
	// CheckConnect and CheckMessage ask the application (--check-url); an
	// error is what the client is refused with. CheckConnect may name the
	// user (named, already moved under the limits); CheckMessage may
	// rewrite p.
	CheckConnect(c *Conn, cookie, origin string, resume bool) (named string, err error)
	CheckMessage(ctx context.Context, c *Conn, p *engine.Publication) error
	// Connected, Disconnected and Published tell the application (hooks).
	Connected(c *Conn, resumed bool)
	Disconnected(c *Conn, code protocol.CloseCode)
	Published(p *engine.Publication)
	// Panicked is told of a panic recovered while working for c (nil:
	// for no connection); it logs and counts it, and closes c with 1011.
	Panicked(where string, r any, c *Conn)
}

// Request is a connection's opening request, as the session reads it.
type Request interface {
	// Query is the first value of a query parameter ("" when absent).
	Query(name string) string
	// ClientID is {client_id} of /ws/{client_id}; withID says the path
	// had one.
	ClientID() (id string, withID bool)
	// Tether says the path asked for tether's own protocol whatever the
	// dialects (/tether/ws).
	Tether() bool
	Remote() string // the peer's host:port
	Cookie() string
	Origin() string
	Authorization() string
}

// Metrics are what the sessions count. The node reads the counters and
// registers the vectors, which it makes.
type Metrics struct {
	Opened, Closed, Refused, Received, Errors, RateLimited, EngineErrors atomic.Int64
	Resumes, Recoveries, RecoveriesFailed, Duplicates                    atomic.Int64

	ClosedBy     *prometheus.CounterVec // by close code
	InByType     *prometheus.CounterVec // client messages by type
	Files        *prometheus.CounterVec // files stored, by kind (image, other)
	FileBytes    prometheus.Counter
	FilesRefused *prometheus.CounterVec // by error code
}

func (m *Metrics) closedWith(code int) { m.ClosedBy.WithLabelValues(strconv.Itoa(code)).Inc() }

// MaxSetups is how many connection set-ups (session, presence, joins,
// replay: with Redis, several round trips each) run at once; past it, new
// connections wait their turn in arrival order, each already accepted and
// holding only its socket. When 19,000 clients come back at once, running
// all their set-ups together made each of them finish late, kept tens of
// thousands of goroutines runnable, and left the accept loop so far
// behind that the kernel's listen queue overflowed (and dropped clients
// retried a second or three later). 256 keeps Redis busy: a set-up is
// mostly waiting for its replies.
const MaxSetups = 256

// SetupsWaiting is how many new connections wait for their set-up's turn.
func (s *Manager) SetupsWaiting() int64 { return s.setupsWaiting.Load() }

// NewID is a random identifier of n bytes, in hex.
func NewID(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Manager runs the sessions of one node.
type Manager struct {
	cfg     Config
	node    Node
	log     *slog.Logger
	eng     engine.Engine
	hub     *hub.Hub
	tp      *transport.Options
	nodeID  string
	metrics *Metrics
	// immediate: eng is an engine.Immediate, whose calls need no deadline.
	immediate bool

	wsDialect, wsIDDialect dialect

	nextID atomic.Uint64
	// conns counts the connections whose clean-up has not run.
	conns sync.WaitGroup
	// setups bounds the set-ups running at once (MaxSetups);
	// setupsWaiting counts those waiting for their turn; setUpWorkers run
	// those that waited (runSetUp), MaxSetups reusable workers at most.
	setups        chan struct{}
	setupsWaiting atomic.Int64
	setUpWorkers  *netpoll.Pool[setUpJob]
	// processing is held (read) while a command is handled; Stop takes it
	// (write) to wait for those in progress.
	processing   sync.RWMutex
	shuttingDown atomic.Bool
	// stopSaveGen is the hub's PartnerAdds when Stop saved every session.
	stopSaveGen atomic.Uint64
	// handleHook is a test's (SetHandleHook); nil otherwise.
	handleHook func(c *Conn, cmd protocol.Command)
}

// Deps are what a Manager works with.
type Deps struct {
	Engine    engine.Engine
	Hub       *hub.Hub
	Transport *transport.Options
	NodeID    string
	Log       *slog.Logger
	Metrics   *Metrics
	Node      Node
}

// ValidDialect says whether name is a dialect /ws may speak ("" is
// tether's own).
func ValidDialect(name string, withID bool) error {
	_, err := dialectNamed(name, withID)
	return err
}

// New makes the sessions' manager of a node. The dialects must be valid
// (ValidDialect).
func New(cfg Config, d Deps) *Manager {
	s := &Manager{cfg: cfg, node: d.Node, log: d.Log, eng: d.Engine, hub: d.Hub, tp: d.Transport, nodeID: d.NodeID,
		metrics: d.Metrics, setups: make(chan struct{}, MaxSetups),
		setUpWorkers: netpoll.NewPoolOf(MaxSetups, func(j setUpJob) { j.done <- j.run() })}
	_, s.immediate = s.eng.(engine.Immediate)
	s.wsDialect, _ = dialectNamed(cfg.WSDialect, false)
	s.wsIDDialect, _ = dialectNamed(cfg.WSIDDialect, true)
	return s
}

// OpContext bounds one connection's set-up or one command's engine calls.
// It does not derive from the node's context: a node stopping ends its
// connections (and waits for the commands in progress) before it cancels
// that one, so a child of it would never see that cancellation, and
// registering every child with one shared context cost a lock and a map
// entry per command.
//
// An engine.Immediate engine's calls are not bounded at all.
func (s *Manager) OpContext(d time.Duration) (context.Context, context.CancelFunc) {
	if s.immediate {
		return context.Background(), noCancel
	}
	return context.WithTimeout(context.Background(), d)
}

func noCancel() {}

// Stopping says whether the node has begun to stop (Stop).
func (s *Manager) Stopping() bool { return s.shuttingDown.Load() }

// Stop begins a node's stop: no connection is set up and no command
// processed from here on. It returns when the commands in progress are
// done, false if the stop had begun already.
func (s *Manager) Stop() bool {
	if !s.shuttingDown.CompareAndSwap(false, true) {
		return false
	}
	// Wait for the messages being processed; none starts after. Twice:
	// readers that were waiting for the lock while the first Lock was
	// pending see shuttingDown once they have it and answer `unavailable`;
	// the second Lock waits for those answers to be queued, so that they
	// go out before the close frames the node sends next.
	for range 2 {
		s.processing.Lock()
		s.processing.Unlock() //lint:ignore SA2001 the Lock is the wait: for the readers holding the lock to finish
	}
	return true
}

// SaveAtStop saves the sessions of a stopping node's connections in one
// batch, before their clients are told to reconnect, so that a resume on
// another node finds them current; a connection whose session changes
// after (a partner noted by a message from another node) saves its own
// when it ends.
func (s *Manager) SaveAtStop(ctx context.Context, conns []*Conn) {
	s.stopSaveGen.Store(s.hub.PartnerAdds())
	if s.SaveSessions(ctx, conns) {
		for _, c := range conns {
			c.savedAtStop.Store(true)
		}
	}
}

// Wait returns when every connection's clean-up has run.
func (s *Manager) Wait() { s.conns.Wait() }

// SaveSession saves c's session, unless c is still being set up (its
// set-up saves it).
func (s *Manager) SaveSession(ctx context.Context, c *Conn) {
	if c.sessionSet.Load() {
		s.saveSession(ctx, c)
	}
}

// Open sets up a connection whose opening handshake is done: nc is its
// socket, resp the 101 response (written with the welcome), early what
// the client sent right after its request. user and claims are what
// Identify found; the node has admitted the connection.
func (s *Manager) Open(nc net.Conn, resp, early []byte, r Request, user, ip string, claims *auth.Claims) {
	c := s.newConn(nc, resp, r, user, ip, claims)
	if c.dialect != nil && c.dialect.deferSetUp() {
		// Set up by its first join (dialect.go); until then the heartbeat
		// and a shutdown know it, nothing else does.
		s.hub.Track(c)
		c.Uncork()
	} else if err := s.setUp(c, r); err != nil {
		s.setUpFailed(c, err)
	}
	c.FlushReplies()
	// Reading is driven by the poller (or a goroutine of its own) and the
	// caller returns, so net/http's per-request state (buffers, request,
	// response writer) is garbage as soon as the set-up is done instead of
	// living as long as the connection.
	c.StartReading(early)
}

// Publish hands a retained publication (a client's, or the server API's)
// to the engine, idempotent by key (see Conn.key), mapping a failure to
// the error the client sees.
func (s *Manager) Publish(ctx context.Context, p *engine.Publication, key string) error {
	dup, err := s.eng.Publish(ctx, p, engine.PublishOptions{Key: key})
	return s.published(p, dup, err)
}

// published is what follows a publish: the engine's failure as the
// client sees it, or the hook event and the count of duplicates.
func (s *Manager) published(p *engine.Publication, dup bool, err error) error {
	if err != nil {
		return s.EngineFailed("publish", err)
	}
	s.node.Published(p) // a duplicate too: at least once, the receiver drops it by (stream, seq)
	if dup {
		s.metrics.Duplicates.Add(1) // a re-send, or a retry that found its first attempt done
	}
	return nil
}

// publishBatch is publish for several publications at once, in order (see
// engine.PublishBatch), each with its own key and its own error.
func (s *Manager) publishBatch(ctx context.Context, ps []*engine.Publication, keys []string) []error {
	opts := make([]engine.PublishOptions, len(ps))
	for i, k := range keys {
		opts[i].Key = k
	}
	errs := make([]error, len(ps))
	for i, r := range s.eng.PublishBatch(ctx, ps, opts) {
		errs[i] = s.published(ps[i], r.Dup, r.Err)
	}
	return errs
}
