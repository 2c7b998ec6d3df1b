package server

import (
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tether-chat/tether/auth"
	"github.com/tether-chat/tether/internal/netpoll"
	"github.com/tether-chat/tether/internal/ws"
	"github.com/tether-chat/tether/protocol"
)

// Conn is one client connection.
//
// Goroutines: an idle connection has none. The reader exists only while
// there is something to read: the node's poller (poller_linux.go) starts it
// when the socket becomes readable, and it returns when the socket is quiet
// (read.go), so at most one runs per connection and it owns rd, the rate
// limiter, and the clean-up when the socket is gone. (Where there is no
// poller, as with TLS, the reader is one goroutine for the life of the
// connection.) Writing is a role, not a goroutine: whoever queues a frame
// when nobody holds the role takes it (kickLocked) and writes the queue at
// once without blocking (writeNow); only if the socket cannot take it all
// does a writer goroutine (flush) finish, and it exits when the queue is
// empty. One role holder at a time, so writes never interleave.
type Conn struct {
	id     uint64
	user   string
	ip     string // remote address without port (limits)
	remote string
	opened time.Time
	srv    *Server
	raw    *rawConn

	// Reading. sock is set when the poller drives reads; rstate is the
	// reader's state (readIdle, readBusy, ...).
	rd    ws.Reader
	later []*Conn       // holds this connection when send deferred starting its writer; reader-owned
	chats []pendingChat // chat messages of the current read, published together (commands.go); reader-owned
	// batchOpen: the reader holds the node's processing lock for chats
	// (openBatch); reader-owned.
	batchOpen bool
	sock      *netpoll.Socket
	rstate    atomic.Int32
	idleAt    time.Time // when the last reader returned; reader-owned

	// lastSeen is when the last frame of any kind arrived (unix nanos);
	// pinged is when the heartbeat last queued a ping. Only the heartbeat
	// and the reader touch them.
	lastSeen atomic.Int64
	pinged   atomic.Int64
	// busy is set while the connection's reader (or its set-up) waits on
	// the engine: the client's pongs sit unread meanwhile, so the
	// heartbeat does not hold that silence against it (it closes the
	// connection only once the reader has caught up and still found
	// nothing).
	busy atomic.Bool

	mu     sync.Mutex
	queue  []outFrame
	spare  []outFrame
	queued int // bytes in queue
	// ctl is how many control frames (pings, pongs) lead the queue, after
	// a raw head: they go out ahead of queued data, in the order they were
	// queued. pongs is how many of them are pongs.
	ctl, pongs int
	writing    bool // the writer role is taken (a write, a writer goroutine, or parked for the write delay)
	corked     bool // no writer may start yet (before the welcome)
	// parked: the writer role is held by the flusher, which writes the
	// queue once the write delay has passed (see flusher); an enqueue that
	// makes the queue long takes the role back and writes at once.
	parked bool
	// lastWrite is when the last write to the socket finished (unix nanos;
	// kept only with a write delay).
	lastWrite atomic.Int64
	// closing is set once, by the first close; nothing is queued after it
	// but the close frame.
	closing *protocol.Disconnect
	// peer is the peer's close when the peer closed first (closing then
	// holds the echo); closeSent and closeRecv say which close frames have
	// been written and received: when both have, the socket is closed.
	peer      *protocol.Disconnect
	closeSent bool
	closeRecv bool

	// rooms is guarded by the hub's mutex.
	rooms map[string]struct{}

	session string // the session this connection holds
	// savedAtStop is set by Shutdown when it has saved the session.
	savedAtStop atomic.Bool
	registered  bool         // the hub knows it (set by the handshake goroutine before the reader starts, or by a dialect's deferred set-up on the reader)
	claims      *auth.Claims // token mode: what the token allows; nil in open mode
	// dialect is the tutorial protocol the connection speaks (dialect.go);
	// nil for tether's own. texts is tutorial-003's messages in flight.
	dialect dialect
	texts   texts003

	// resuming is set while a resumed connection replays what it missed;
	// deliveries meanwhile wait in held, so that nothing published during
	// the replay can arrive before the replayed messages or be lost
	// between the history read and the switch to live delivery. Guarded
	// by mu.
	resuming bool
	held     []heldFrame
	// replayed is the last sequence replayed per stream. With an engine
	// whose fan-out is asynchronous (Redis pub/sub), a message the replay
	// read from history can still arrive live afterwards; it is dropped.
	// Guarded by mu; nil for connections that replayed nothing.
	replayed map[string]roomPos

	// Reader-owned.
	limiter      bucket
	strikes      int       // rate-limit rejections since strikeWindow
	strikeWindow time.Time // start of the current one-second window
}

type heldFrame struct {
	stream string
	epoch  string
	seq    uint64 // 0 for ephemeral publications
	data   []byte
}

type outFrame struct {
	op   byte // ws.OpText, ws.OpPing, ws.OpPong, ws.OpClose, or opRaw
	data []byte
}

// opRaw marks bytes that go to the socket as they are: the handshake
// response, or the rest of a write the kernel took only part of. Only the
// head of the queue can be raw, and nothing is ever put before it.
const opRaw byte = 0xff

var pingFrame = outFrame{op: ws.OpPing}

// enqueue queues a frame (shared, never modified) for writing. It never
// blocks. It reports false when the connection is closing or overflowed; an
// overflow starts the slow-consumer close.
func (c *Conn) enqueue(data []byte) bool { return c.enqueueTo(data, nil) }

// enqueueTo is enqueue; when later is not nil and the writer must be
// started, the connection is added to later instead, for the caller to
// start after it has released its locks (hub.deliver).
func (c *Conn) enqueueTo(data []byte, later *[]*Conn) bool {
	c.mu.Lock()
	if c.closing != nil {
		c.mu.Unlock()
		return false
	}
	cfg := &c.srv.cfg
	if len(c.queue) >= cfg.SendQueueMessages || c.queued+len(data) > cfg.SendQueueBytes {
		c.mu.Unlock()
		c.srv.metrics.slowConsumers.Add(1)
		c.close(protocol.DisconnectSlowConsumer, closeDrop)
		return false
	}
	c.queue = append(c.queue, outFrame{op: ws.OpText, data: data})
	c.queued += len(data)
	start := c.kickLocked()
	if c.parked && c.queueFull() {
		// Enough for one write already: a burst must not wait for the
		// delay and overflow the queue meanwhile.
		c.parked = false
		start = true
	}
	c.mu.Unlock()
	switch {
	case !start:
	case later != nil:
		*later = append(*later, c)
	default:
		c.startWriter()
	}
	return true
}

// enqueueReplay queues a replayed message. A replay can be longer than
// the send queue allows, and it is this connection's own backlog: instead
// of tripping the slow-consumer limit it waits for the writer to make room,
// as long as the writer keeps making progress within the write timeout.
func (c *Conn) enqueueReplay(data []byte) bool {
	c.flushLater() // the writer must run to make room
	cfg := &c.srv.cfg
	deadline := time.Now().Add(cfg.WriteTimeout)
	for {
		c.mu.Lock()
		if c.closing != nil {
			c.mu.Unlock()
			return false
		}
		if len(c.queue) < cfg.SendQueueMessages/2 && c.queued+len(data) <= cfg.SendQueueBytes/2 {
			c.queue = append(c.queue, outFrame{op: ws.OpText, data: data})
			c.queued += len(data)
			start := c.kickLocked()
			c.unlockAndStart(start)
			return true
		}
		c.mu.Unlock()
		if time.Now().After(deadline) {
			c.srv.metrics.slowConsumers.Add(1)
			c.close(protocol.DisconnectSlowConsumer, closeDrop)
			return false
		}
		time.Sleep(time.Millisecond)
	}
}

// enqueuePub queues a delivery of a publication on stream, or holds it
// while the connection is replaying (see resuming).
func (c *Conn) enqueuePub(data []byte, stream, epoch string, seq uint64, later *[]*Conn) bool {
	c.mu.Lock()
	if r, ok := c.replayed[stream]; ok && seq != 0 && seq <= r.top && epoch == r.epoch {
		c.mu.Unlock()
		return true // already replayed
	}
	if c.resuming {
		if len(c.held) >= 4*c.srv.cfg.SendQueueMessages {
			c.mu.Unlock()
			c.srv.metrics.slowConsumers.Add(1)
			c.close(protocol.DisconnectSlowConsumer, closeDrop)
			return false
		}
		c.held = append(c.held, heldFrame{stream: stream, epoch: epoch, seq: seq, data: data})
		c.mu.Unlock()
		return true
	}
	c.mu.Unlock()
	return c.enqueueTo(data, later)
}

// goLive ends the replay: held deliveries that the replay did not already
// cover (replayed[stream] is the last position replayed) are queued, in the
// order they arrived, and deliveries go straight to the queue again. Both
// happen under one lock, so no live delivery can overtake a held one.
func (c *Conn) goLive(replayed map[string]roomPos) {
	cfg := &c.srv.cfg
	c.mu.Lock()
	overflow := false
	for _, f := range c.held {
		if r, ok := replayed[f.stream]; ok && f.seq != 0 && f.seq <= r.top && f.epoch == r.epoch {
			continue
		}
		if len(c.queue) >= cfg.SendQueueMessages || c.queued+len(f.data) > cfg.SendQueueBytes {
			overflow = true
			break
		}
		c.queue = append(c.queue, outFrame{op: ws.OpText, data: f.data})
		c.queued += len(f.data)
	}
	c.held, c.resuming = nil, false
	if len(replayed) > 0 {
		c.replayed = replayed
	}
	start := len(c.queue) > 0 && c.kickLocked()
	c.unlockAndStart(start)
	if overflow {
		c.srv.metrics.slowConsumers.Add(1)
		c.close(protocol.DisconnectSlowConsumer, closeDrop)
	}
}

// ping queues a WebSocket ping ahead of queued data, so a backlog never
// delays the heartbeat.
func (c *Conn) ping() {
	c.mu.Lock()
	start := false
	if c.closing == nil {
		c.insertCtlLocked(pingFrame)
		start = c.kickLocked()
	}
	c.unlockAndStart(start)
}

// maxPongs bounds the pongs waiting in a connection's queue. A peer that
// pings faster than it reads gets, past this many, its most recent ping
// answered in place of the last waiting pong (RFC 6455 section 5.5.3
// allows answering only the most recent ping), so a ping flood costs
// neither memory nor more than constant work per ping.
const maxPongs = 16

// pong answers a peer's ping ahead of queued data, after the control
// frames already waiting (first in, first out). The pong counts toward the
// send queue's limits like any frame.
func (c *Conn) pong(payload []byte) {
	c.mu.Lock()
	if c.closing != nil {
		c.mu.Unlock()
		return
	}
	data := append([]byte(nil), payload...)
	if c.pongs >= maxPongs {
		// Answer this ping instead of the previous one still waiting.
		last := c.ctlStartLocked() + c.ctl - 1
		for c.queue[last].op != ws.OpPong {
			last--
		}
		c.queued += len(data) - len(c.queue[last].data)
		c.queue[last].data = data
		c.mu.Unlock()
		return
	}
	cfg := &c.srv.cfg
	if len(c.queue) >= cfg.SendQueueMessages || c.queued+len(data) > cfg.SendQueueBytes {
		c.mu.Unlock()
		c.srv.metrics.slowConsumers.Add(1)
		c.close(protocol.DisconnectSlowConsumer, closeDrop)
		return
	}
	c.insertCtlLocked(outFrame{op: ws.OpPong, data: data})
	c.pongs++
	c.queued += len(data)
	c.unlockAndStart(c.kickLocked())
}

// ctlStartLocked is where the queue's control frames start: after a raw
// head (see opRaw).
func (c *Conn) ctlStartLocked() int {
	if len(c.queue) > 0 && c.queue[0].op == opRaw {
		return 1
	}
	return 0
}

// insertCtlLocked queues a control frame after the control frames already
// waiting, ahead of data; c.mu must be held.
func (c *Conn) insertCtlLocked(f outFrame) {
	c.insertLocked(c.ctlStartLocked()+c.ctl, f)
	c.ctl++
}

// insertLocked puts f at position at of the queue; c.mu must be held.
func (c *Conn) insertLocked(at int, f outFrame) {
	c.queue = append(c.queue, outFrame{})
	copy(c.queue[at+1:], c.queue[at:])
	c.queue[at] = f
}

// takeQueueLocked hands the queue to a writer and starts an empty one;
// c.mu must be held.
func (c *Conn) takeQueueLocked() []outFrame {
	batch := c.queue
	c.queue, c.spare = c.spare[:0], nil
	c.queued, c.ctl, c.pongs = 0, 0, 0
	return batch
}

// peerClosed handles the peer's close frame. If the peer closed first, the
// close is echoed (RFC 6455 section 5.5.1) and whatever was queued is
// dropped: the peer is leaving. The socket is closed once both close frames
// have crossed.
func (c *Conn) peerClosed(d protocol.Disconnect) {
	c.mu.Lock()
	c.closeRecv = true
	sent, start := c.closeSent, false
	if c.closing == nil {
		c.peer, c.closing = &d, &d
		c.dropQueueLocked()
		c.queue = append(c.queue, outFrame{op: ws.OpClose, data: closePayload(d)})
		c.corked = false
		start = c.kickLocked()
	}
	c.unlockAndStart(start)
	if sent {
		c.closeSocket()
	}
}

// sendFirst queues frame ahead of all data (after the control frames
// waiting) and uncorks the writer: the welcome is always a connection's
// first message.
func (c *Conn) sendFirst(frame []byte) {
	c.mu.Lock()
	c.insertLocked(c.ctlStartLocked()+c.ctl, outFrame{op: ws.OpText, data: frame})
	c.queued += len(frame)
	c.mu.Unlock()
	c.uncork()
}

// dropQueueLocked drops what is queued, except a raw head: those bytes
// finish a frame already partly written. It returns how many frames it
// dropped.
func (c *Conn) dropQueueLocked() int {
	keep := 0
	if len(c.queue) > 0 && c.queue[0].op == opRaw {
		keep = 1
	}
	dropped := len(c.queue) - keep
	clear(c.queue[keep:])
	c.queue = c.queue[:keep]
	c.queued, c.ctl, c.pongs = 0, 0, 0
	for _, f := range c.queue {
		c.queued += len(f.data)
	}
	return dropped
}

// uncork lets the writer run; a new connection starts corked so that
// nothing can be written before its welcome.
func (c *Conn) uncork() {
	c.mu.Lock()
	c.corked = false
	start := len(c.queue) > 0 && c.kickLocked()
	c.unlockAndStart(start)
}

// unlockAndStart releases c.mu, then starts the writer if kickLocked said
// so.
func (c *Conn) unlockAndStart(start bool) {
	c.mu.Unlock()
	if start {
		c.startWriter()
	}
}

// kickLocked claims the writer's role when nobody holds it; c.mu must be
// held. When it reports true the caller must call startWriter (after
// releasing its locks).
func (c *Conn) kickLocked() bool {
	if c.writing || c.corked {
		return false
	}
	c.writing = true
	return true
}

// startWriter writes what is queued: at once, in the caller's goroutine,
// when the socket takes it all without blocking (writeNow); otherwise a
// writer goroutine (flush) takes over, so no caller ever waits on a slow
// peer.
func (c *Conn) startWriter() {
	if !c.writeNow() {
		go c.flush()
	}
}

// startWriterSafely is startWriter for a goroutine that writes to many
// connections (a large fan-out's batch): a panic closes this connection
// only, and the batch goes on.
func (c *Conn) startWriterSafely() {
	defer c.srv.recoverPanic("writing", c)
	c.startWriter()
}

// closeGrace is how long a close started by the server waits for the
// peer's close frame before it closes the socket anyway. A peer that
// answers gets its socket closed as soon as both close frames have
// crossed.
const closeGrace = 2 * time.Second

// closeMode says what happens to frames already queued when a close starts.
type closeMode int

const (
	// closeDrop drops them: the peer cannot take them (slow consumer) or is
	// gone (heartbeat timeout).
	closeDrop closeMode = iota
	// closeDrain writes them first, so the client sees the error replies
	// that led to the close (rate limit, invalid UTF-8).
	closeDrain
	// closeShutdown drains too, and gives the peer the whole shutdown
	// timeout to take it all.
	closeShutdown
)

// close starts closing the connection with d. The close frame is written by
// the writer after whatever mode keeps of the queue; if the peer has not
// finished the closing handshake within the grace period, the socket is
// closed anyway. Safe to call from any goroutine, any number of times: the
// first call wins.
func (c *Conn) close(d protocol.Disconnect, mode closeMode) {
	c.mu.Lock()
	if c.closing != nil {
		c.mu.Unlock()
		return
	}
	c.closing = &d
	if mode == closeDrop {
		c.srv.metrics.queueDrops.Add(int64(c.dropQueueLocked()))
	}
	c.queue = append(c.queue, outFrame{op: ws.OpClose, data: closePayload(d)})
	start := c.kickLocked()
	c.unlockAndStart(start)

	// A peer that stopped reading (slow consumer) or answering (heartbeat)
	// will not complete the closing handshake: give the close frame a moment
	// to reach the socket, then close it. Closing the socket also ends a
	// write blocked on such a peer.
	grace := closeGrace
	if g := c.srv.closeGrace.Load(); g > 0 {
		grace = time.Duration(g) // a test's
	}
	switch mode {
	case closeDrop:
		grace = 100 * time.Millisecond
	case closeShutdown:
		grace = c.srv.cfg.ShutdownTimeout
	}
	time.AfterFunc(grace, c.closeSocket)
}

func (c *Conn) closeReason() *protocol.Disconnect {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing
}

// flush is the writer: it drains the queue, coalescing every frame queued so
// far into as few write() calls as possible, and exits when the queue is
// empty.
func (c *Conn) flush() {
	defer c.srv.recoverPanic("writing", c)
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	for {
		c.mu.Lock()
		if len(c.queue) == 0 {
			c.writing = false
			c.mu.Unlock()
			return
		}
		batch := c.takeQueueLocked()
		c.mu.Unlock()

		err := c.writeBatch(bp, batch)
		c.wrote()
		clear(batch)
		c.mu.Lock()
		c.spare = batch[:0]
		c.mu.Unlock()
		if err != nil {
			c.closeSocket() // the reader sees the error and cleans up
			c.mu.Lock()
			c.queue, c.queued, c.ctl, c.pongs, c.writing = nil, 0, 0, 0, false
			c.mu.Unlock()
			return
		}
	}
}

const maxBatchBytes = 64 << 10

func (c *Conn) writeBatch(bp *[]byte, batch []outFrame) error {
	buf := (*bp)[:0]
	defer func() { *bp = buf[:0] }()
	var delivered int
	closes := false
	for _, f := range batch {
		buf = c.appendOut(buf, f)
		switch f.op {
		case ws.OpText:
			delivered++
		case ws.OpClose:
			closes = true
		}
		if len(buf) >= maxBatchBytes {
			if err := c.raw.write(buf); err != nil {
				return err
			}
			c.srv.metrics.writes.Add(1)
			buf = buf[:0]
		}
	}
	c.srv.metrics.delivered.Add(int64(delivered))
	if len(buf) > 0 {
		if err := c.raw.write(buf); err != nil {
			return err
		}
		c.srv.metrics.writes.Add(1)
	}
	if closes {
		c.mu.Lock()
		c.closeSent = true
		recv := c.closeRecv
		c.mu.Unlock()
		if recv {
			c.closeSocket() // both close frames have crossed
		}
	}
	return nil
}

// appendOut appends f as it goes on the wire: in the connection's dialect,
// if it speaks one (a frame the dialect has no words for is left out).
func (c *Conn) appendOut(buf []byte, f outFrame) []byte {
	if f.op == opRaw {
		return append(buf, f.data...)
	}
	if c.dialect != nil && f.op == ws.OpText {
		data := c.dialect.encode(c, f.data)
		if data == nil {
			return buf
		}
		return ws.AppendFrame(buf, ws.OpText, data)
	}
	return ws.AppendFrame(buf, f.op, f.data)
}

// writeNow is the writer's fast path, run by whoever queued a frame: it
// writes the whole queue with one non-blocking write(2). It reports true
// when it is done with the writer's role (the queue was written, or the
// socket failed and is closed) and false when a writer goroutine must take
// over: the socket could not take everything (the rest is queued raw at the
// head), more was queued meanwhile, the queue holds a close frame (whose
// bookkeeping is the writer goroutine's), or the socket is not polled.
func (c *Conn) writeNow() bool {
	if c.sock == nil {
		return false
	}
	c.mu.Lock()
	batch := c.queue
	if c.queued > maxBatchBytes {
		c.mu.Unlock()
		return false
	}
	for _, f := range batch {
		if f.op == ws.OpClose {
			c.mu.Unlock()
			return false
		}
	}
	c.takeQueueLocked()
	c.mu.Unlock()

	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := (*bp)[:0]
	delivered := 0
	for _, f := range batch {
		buf = c.appendOut(buf, f)
		if f.op == ws.OpText {
			delivered++
		}
	}
	clear(batch)
	if !c.raw.deadline.IsZero() {
		// A writer goroutine left a deadline on the socket; it would fail
		// this write once it passes. (The writer's role is exclusive, so
		// no write is in progress.)
		c.raw.deadline = time.Time{}
		c.raw.Conn.SetWriteDeadline(time.Time{})
	}
	n, err := c.sock.Write(buf)
	*bp = buf[:0]
	c.srv.metrics.delivered.Add(int64(delivered))
	c.srv.metrics.writes.Add(1)
	c.wrote()

	c.mu.Lock()
	c.spare = batch[:0]
	if err != nil && err != syscall.EAGAIN {
		c.queue, c.queued, c.ctl, c.pongs, c.writing = nil, 0, 0, 0, false
		c.mu.Unlock()
		c.closeSocket() // the reader sees the error and cleans up
		return true
	}
	if n < len(buf) {
		c.srv.metrics.socketFull.Add(1)
		rest := outFrame{op: opRaw, data: append([]byte(nil), buf[n:]...)}
		c.insertLocked(0, rest)
		c.queued += len(rest.data)
		c.mu.Unlock()
		return false
	}
	if len(c.queue) == 0 {
		c.writing = false
		c.mu.Unlock()
		return true
	}
	c.mu.Unlock()
	return false
}

// wrote notes the time of a write for the write delay.
func (c *Conn) wrote() {
	if c.srv.flusher != nil {
		c.lastWrite.Store(time.Now().UnixNano())
	}
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// rawConn is the connection's socket. Its blocking writes (the writer
// goroutine's) get a deadline; writeNow's non-blocking ones need none.
type rawConn struct {
	net.Conn
	mu       sync.Mutex
	timeout  time.Duration
	deadline time.Time // the write deadline set on Conn; guarded by mu
}

// Write writes p with a deadline at least timeout/2 away. Re-arming the
// deadline costs a runtime timer update, so it is refreshed only when more
// than half of it is spent, not on every write.
func (r *rawConn) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := time.Now(); r.deadline.Sub(now) < r.timeout/2 {
		r.deadline = now.Add(r.timeout)
		r.Conn.SetWriteDeadline(r.deadline)
	}
	return r.Conn.Write(p)
}

func (r *rawConn) write(p []byte) error {
	_, err := r.Write(p)
	return err
}

// closePayload is the payload of the close frame for d.
func closePayload(d protocol.Disconnect) []byte { return ws.ClosePayload(ws.Status(d.Code), d.Reason) }
