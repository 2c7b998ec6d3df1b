package session

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/tether-chat/tether/auth"
	"github.com/tether-chat/tether/internal/bucket"
	"github.com/tether-chat/tether/internal/ws"
	"github.com/tether-chat/tether/protocol"
	"github.com/tether-chat/tether/server/hub"
	"github.com/tether-chat/tether/server/transport"
)

// Conn is one client connection as the session sees it: the transport's
// connection (its socket, send queue and roles, embedded so that an idle
// connection is one allocation) and what the session and the hub keep
// for it. It is the transport's Handler and the hub's Member.
type Conn struct {
	transport.Conn

	id     uint64
	user   string
	ip     string // remote address without port (limits)
	remote string
	opened time.Time
	m      *Manager

	// Reader-owned: the reader holds the role (transport) while it calls
	// OnMessage and OnRead.
	chats []pendingChat // chat messages of the current read, published together (commands.go)
	// batchOpen: the reader holds the node's processing lock for chats
	// (openBatch).
	batchOpen    bool
	limiter      bucket.Bucket
	strikes      int       // rate-limit rejections since strikeWindow
	strikeWindow time.Time // start of the current one-second window

	// pinged is when the heartbeat last queued a ping. busy is set while
	// the connection's reader (or its set-up) waits on the engine: the
	// client's pongs sit unread meanwhile, so the heartbeat does not hold
	// that silence against it (it closes the connection only once the
	// reader has caught up and still found nothing).
	pinged atomic.Int64
	busy   atomic.Bool

	// rooms is kept by the hub (hub.Member).
	rooms hub.Rooms

	session string // the session this connection holds
	// sessionSet is raised once the set-up has settled session: from then
	// on goroutines other than the connection's own (the upkeep, a stop,
	// the API's unsubscribe) may read it.
	sessionSet atomic.Bool
	// savedAtStop is set by Shutdown when it has saved the session.
	savedAtStop atomic.Bool
	registered  bool         // the hub knows it (set by the handshake goroutine before the reader starts, or by a dialect's deferred set-up on the reader)
	claims      *auth.Claims // token mode: what the token allows; nil in open mode
	// dialect is the tutorial protocol the connection speaks (dialect.go);
	// nil for tether's own. texts is tutorial-003's messages in flight.
	dialect dialect
	texts   texts003

	// The replay of a resume (see Deliver and goLive), guarded by pubMu.
	// resuming is set while a resumed connection replays what it missed;
	// deliveries meanwhile wait in held, so that nothing published during
	// the replay can arrive before the replayed messages or be lost
	// between the history read and the switch to live delivery. replayed
	// is the last sequence replayed per stream: with an engine whose
	// fan-out is asynchronous (Redis pub/sub), a message the replay read
	// from history can still arrive live afterwards; it is dropped. nil
	// for connections that replayed nothing. filtering says that either is
	// set, so that a delivery to any other connection takes no lock here.
	pubMu     sync.Mutex
	filtering atomic.Bool
	resuming  bool
	held      []heldFrame
	replayed  map[string]roomPos
}

type heldFrame struct {
	stream string
	epoch  string
	seq    uint64 // 0 for ephemeral publications
	data   []byte
}

// startResume holds deliveries until goLive: the connection's set-up is
// about to enter its rooms.
func (c *Conn) startResume() {
	c.pubMu.Lock()
	c.resuming = true
	c.filtering.Store(true)
	c.pubMu.Unlock()
}

// Heartbeat is the node's heartbeat for this connection at now: a ping
// once it has been silent for interval, a close (4000 heartbeat timeout)
// once silent for interval+timeout. A connection whose reader waits on the
// engine (busy) has not read its client's pongs: it is pinged but not
// closed until its reader has caught up.
func (c *Conn) Heartbeat(now time.Time, interval, timeout time.Duration) {
	seen := c.LastSeen()
	silent := time.Duration(now.UnixNano() - seen)
	switch {
	case silent >= interval+timeout && !c.busy.Load():
		c.Close(protocol.DisconnectHeartbeat, transport.CloseDrop)
	case silent >= interval && c.pinged.Load() < seen:
		c.pinged.Store(now.UnixNano())
		c.Ping()
	}
}

// Remote is the peer's host:port, IP its address (the limits' key), and
// Claims what its token allows (nil in open mode).
func (c *Conn) Remote() string       { return c.remote }
func (c *Conn) IP() string           { return c.ip }
func (c *Conn) Claims() *auth.Claims { return c.claims }

// The hub's Member.

func (c *Conn) ID() uint64        { return c.id }
func (c *Conn) User() string      { return c.user }
func (c *Conn) Rooms() *hub.Rooms { return &c.rooms }

// Deliver queues a delivery of a publication on stream, or holds it
// while the connection is replaying (see resuming). later is the
// delivery's batch of writers to start.
func (c *Conn) Deliver(data []byte, stream, epoch string, seq uint64, later *transport.Batch) bool {
	if !c.filtering.Load() {
		return c.SendTo(data, later)
	}
	c.pubMu.Lock()
	defer c.pubMu.Unlock()
	if r, ok := c.replayed[stream]; ok && seq != 0 && seq <= r.top && epoch == r.epoch {
		return true // already replayed
	}
	if c.resuming {
		if len(c.held) >= 4*c.m.cfg.SendQueueMessages {
			c.Overflowed()
			return false
		}
		c.held = append(c.held, heldFrame{stream: stream, epoch: epoch, seq: seq, data: data})
		return true
	}
	// Queued under pubMu: goLive cannot be between its held frames and
	// the switch.
	return c.SendTo(data, later)
}

// goLive ends the replay: held deliveries that the replay did not already
// cover (replayed[stream] is the last position replayed) are queued, in the
// order they arrived, and deliveries go straight to the queue again. Both
// happen under pubMu, so no live delivery can overtake a held one.
func (c *Conn) goLive(replayed map[string]roomPos) {
	c.pubMu.Lock()
	defer c.pubMu.Unlock()
	frames := make([][]byte, 0, len(c.held))
	for _, f := range c.held {
		if r, ok := replayed[f.stream]; ok && f.seq != 0 && f.seq <= r.top && f.epoch == r.epoch {
			continue
		}
		frames = append(frames, f.data)
	}
	c.held, c.resuming = nil, false
	if len(replayed) > 0 {
		c.replayed = replayed
	}
	c.filtering.Store(c.replayed != nil)
	if len(frames) > 0 {
		c.SendAll(frames)
	}
}

// The transport's Handler.

// Limit is the largest message of kind op.
func (c *Conn) Limit(op byte) int64 {
	if op == ws.OpBinary {
		return c.m.maxBinary() // a file
	}
	return c.m.cfg.MaxMessageSize
}

// OnMessage handles one whole message (commands.go).
func (c *Conn) OnMessage(op byte, data []byte) { c.onMessage(op, data) }

// OnRead publishes the chats of the read, as one batch.
func (c *Conn) OnRead() { c.flushChats() }

// OnFail logs a connection that broke the protocol; the transport closes
// it.
func (c *Conn) OnFail(d protocol.Disconnect) {
	c.m.log.Info("closing a connection that broke the protocol", "user", c.user, "remote", c.remote,
		"code", int(d.Code), "reason", d.Reason)
}

// OnGone cleans up after the socket (session.go).
func (c *Conn) OnGone() { c.m.disconnected(c) }

// OnPanic closes the connection with 1011; a panic while reading leaves
// the read's chats unanswered (its client sends them again).
func (c *Conn) OnPanic(where string, r any) {
	if where == "reading" {
		c.closeBatch()
	}
	c.m.node.Panicked(where, r, c)
}

// Encode translates a frame into the connection's dialect.
func (c *Conn) Encode(text []byte) []byte { return c.dialect.encode(c, text) }

// roomPos is a room's (epoch, top) at one moment.
type roomPos struct {
	epoch string
	top   uint64
}
