package transport

import (
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tether-chat/tether/internal/netpoll"
	"github.com/tether-chat/tether/internal/ws"
	"github.com/tether-chat/tether/protocol"
)

// Conn is one connection's socket, queue and roles; see the package
// comment. The zero value is not usable: Init it.
type Conn struct {
	opt *Options
	h   Handler
	raw *socket

	// Reading. sock is set when the poller drives reads; rstate is the
	// reader's state (readIdle, readBusy, ...).
	rd     ws.Reader
	sock   *netpoll.Socket
	rstate atomic.Int32
	idleAt time.Time // when the last reader returned; reader-owned
	// replying: a Reply took the writer role and left its start to
	// FlushReplies; reader-owned.
	replying bool
	// translate: text frames go through Handler.Encode (set before the
	// reader starts).
	translate bool

	// lastSeen is when the last bytes arrived (unix nanos).
	lastSeen atomic.Int64

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
	// queue once the write delay has passed (see Flusher); an enqueue that
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
}

// Init readies a connection on nc for h. head goes to the socket as it
// is, before any frame (the handshake's 101 response), in the first write.
// The connection starts corked: nothing is written until Uncork or
// SendFirst. Init the connection and Attach it before anything else can
// see it.
func (c *Conn) Init(opt *Options, nc net.Conn, h Handler, head []byte) {
	c.opt, c.h = opt, h
	c.raw = &socket{Conn: nc, timeout: opt.WriteTimeout}
	c.corked = true
	if len(head) > 0 {
		c.queue = []outFrame{{op: opRaw, data: head}}
		c.queued = len(head)
	}
	c.Touch()
}

// Translate sends every text frame through Handler.Encode at write time
// (a dialect's connection). Call it before StartReading.
func (c *Conn) Translate() { c.translate = true }

// Touch notes that the peer was heard from now.
func (c *Conn) Touch() { c.lastSeen.Store(time.Now().UnixNano()) }

// LastSeen is when the peer was last heard from (unix nanos).
func (c *Conn) LastSeen() int64 { return c.lastSeen.Load() }

type outFrame struct {
	op   byte // ws.OpText, ws.OpPing, ws.OpPong, ws.OpClose, or opRaw
	data []byte
}

// opRaw marks bytes that go to the socket as they are: the handshake
// response, or the rest of a write the kernel took only part of. Only the
// head of the queue can be raw, and nothing is ever put before it.
const opRaw byte = 0xff

var pingFrame = outFrame{op: ws.OpPing}

// Send queues a text frame (shared, never modified) and writes it at
// once if nobody holds the writer role. It never blocks. It reports false
// when the connection is closing or overflowed; an overflow starts the
// slow-consumer close (4008).
func (c *Conn) Send(data []byte) bool { return c.SendTo(data, nil) }

// SendTo is Send; when later is not nil and the writer must be started,
// the connection is added to later instead, for the caller to start
// (Batch.Start, Flusher.StartOrPark) after it has released its locks: a
// delivery to many connections.
func (c *Conn) SendTo(data []byte, later *Batch) bool {
	ok, start := c.queueText(data)
	switch {
	case !start:
	case later != nil:
		later.conns = append(later.conns, c)
	default:
		c.startWriter()
	}
	return ok
}

// queueText queues a text frame; start says that the caller took the
// writer role and must start the writer.
func (c *Conn) queueText(data []byte) (ok, start bool) {
	c.mu.Lock()
	if c.closing != nil {
		c.mu.Unlock()
		return false, false
	}
	if c.overflowsLocked(1, len(data)) {
		c.mu.Unlock()
		c.Overflowed()
		return false, false
	}
	c.queue = append(c.queue, outFrame{op: ws.OpText, data: data})
	c.queued += len(data)
	start = c.kickLocked()
	if c.parked && c.queueFull() {
		// Enough for one write already: a burst must not wait for the
		// delay and overflow the queue meanwhile.
		c.parked = false
		start = true
	}
	c.mu.Unlock()
	return true, start
}

// SendAll queues frames in order under one hold of the queue's lock, so
// that nothing sent meanwhile comes between them (the session's held
// deliveries when its replay ends). Past the queue's limits it stops and
// closes the connection as a slow consumer.
func (c *Conn) SendAll(frames [][]byte) {
	c.mu.Lock()
	if c.closing != nil {
		c.mu.Unlock()
		return
	}
	overflow := false
	for _, data := range frames {
		if c.overflowsLocked(1, len(data)) {
			overflow = true
			break
		}
		c.queue = append(c.queue, outFrame{op: ws.OpText, data: data})
		c.queued += len(data)
	}
	start := len(c.queue) > 0 && c.kickLocked()
	c.unlockAndStart(start)
	if overflow {
		c.Overflowed()
	}
}

// Reply queues a reply to what the reader is handling. It is called by
// the connection's reader (or, during the set-up, by the goroutine that
// sets the connection up): the writer is started by FlushReplies, once for
// everything the reader queued while handling what one read brought, so
// the replies to it share one write. (The reader calls FlushReplies itself
// after each read.)
func (c *Conn) Reply(frame []byte) {
	if _, start := c.queueText(frame); start {
		c.replying = true
	}
}

// FlushReplies starts the writer if a Reply deferred it.
func (c *Conn) FlushReplies() {
	if c.replying {
		c.replying = false
		c.startWriter()
	}
}

// SendReplay queues a replayed message. A replay can be longer than the
// send queue allows, and it is this connection's own backlog: instead of
// tripping the slow-consumer limit it waits for the writer to make room,
// as long as the writer keeps making progress within the write timeout.
// It reports false when the connection is closing or timed out.
func (c *Conn) SendReplay(data []byte) bool {
	c.FlushReplies() // the writer must run to make room
	deadline := time.Now().Add(c.opt.WriteTimeout)
	for {
		c.mu.Lock()
		if c.closing != nil {
			c.mu.Unlock()
			return false
		}
		if len(c.queue) < c.opt.QueueMessages/2 && c.queued+len(data) <= c.opt.QueueBytes/2 {
			c.queue = append(c.queue, outFrame{op: ws.OpText, data: data})
			c.queued += len(data)
			start := c.kickLocked()
			c.unlockAndStart(start)
			return true
		}
		c.mu.Unlock()
		if time.Now().After(deadline) {
			c.Overflowed()
			return false
		}
		time.Sleep(time.Millisecond)
	}
}

// overflowsLocked says whether that many more frames, of size bytes in all, would
// pass the queue's limits; c.mu must be held.
func (c *Conn) overflowsLocked(frames, size int) bool {
	return len(c.queue)+frames > c.opt.QueueMessages || c.queued+size > c.opt.QueueBytes
}

// Overflowed closes the connection as a slow consumer (4008): its queue
// (or the session's own backlog for it) would not take what it was sent.
func (c *Conn) Overflowed() {
	c.opt.Counters.SlowConsumers.Add(1)
	c.Close(protocol.DisconnectSlowConsumer, CloseDrop)
}

// Ping queues a WebSocket ping ahead of queued data, so a backlog never
// delays the heartbeat.
func (c *Conn) Ping() {
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
	if c.overflowsLocked(1, len(data)) {
		c.mu.Unlock()
		c.Overflowed()
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
		c.queue = append(c.queue, outFrame{op: ws.OpClose, data: ClosePayload(d)})
		c.corked = false
		start = c.kickLocked()
	}
	c.unlockAndStart(start)
	if sent {
		c.CloseSocket()
	}
}

// SendFirst queues frame ahead of all data (after the control frames
// waiting) and uncorks the writer: the welcome is always a connection's
// first message.
func (c *Conn) SendFirst(frame []byte) {
	c.mu.Lock()
	c.insertLocked(c.ctlStartLocked()+c.ctl, outFrame{op: ws.OpText, data: frame})
	c.queued += len(frame)
	c.mu.Unlock()
	c.Uncork()
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

// Uncork lets the writer run; a new connection starts corked so that
// nothing can be written before its welcome.
func (c *Conn) Uncork() {
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
	defer c.recoverWriting()
	c.startWriter()
}

// recoverWriting is deferred by whoever writes: a panic is the handler's
// to report, and the connection's to pay for.
func (c *Conn) recoverWriting() {
	if r := recover(); r != nil {
		c.h.OnPanic("writing", r)
	}
}

// DefaultCloseGrace is how long a close started by the server waits for the
// peer's close frame before it closes the socket anyway. A peer that
// answers gets its socket closed as soon as both close frames have
// crossed.
const DefaultCloseGrace = 2 * time.Second

// CloseMode says what happens to frames already queued when a close
// starts.
type CloseMode int

const (
	// CloseDrop drops them: the peer cannot take them (slow consumer) or is
	// gone (heartbeat timeout).
	CloseDrop CloseMode = iota
	// CloseDrain writes them first, so the client sees the error replies
	// that led to the close (rate limit, invalid UTF-8).
	CloseDrain
	// CloseShutdown drains too, and gives the peer the whole shutdown
	// timeout to take it all.
	CloseShutdown
)

// Close starts closing the connection with d. The close frame is written by
// the writer after whatever mode keeps of the queue; if the peer has not
// finished the closing handshake within the grace period, the socket is
// closed anyway. Safe to call from any goroutine, any number of times: the
// first call wins.
func (c *Conn) Close(d protocol.Disconnect, mode CloseMode) {
	c.mu.Lock()
	if c.closing != nil {
		c.mu.Unlock()
		return
	}
	c.closing = &d
	if mode == CloseDrop {
		c.opt.Counters.QueueDrops.Add(int64(c.dropQueueLocked()))
	}
	c.queue = append(c.queue, outFrame{op: ws.OpClose, data: ClosePayload(d)})
	start := c.kickLocked()
	c.unlockAndStart(start)

	// A peer that stopped reading (slow consumer) or answering (heartbeat)
	// will not complete the closing handshake: give the close frame a moment
	// to reach the socket, then close it. Closing the socket also ends a
	// write blocked on such a peer.
	grace := DefaultCloseGrace
	if g := c.opt.CloseGrace.Load(); g > 0 {
		grace = time.Duration(g) // a test's
	}
	switch mode {
	case CloseDrop:
		grace = 100 * time.Millisecond
	case CloseShutdown:
		grace = c.opt.ShutdownGrace
	}
	time.AfterFunc(grace, c.CloseSocket)
}

// Closing is the close the connection is closing with (the server's, or
// the echo of the peer's), nil while it is open.
func (c *Conn) Closing() *protocol.Disconnect {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing
}

// Closed says how the connection ended: peer is the peer's close when the
// peer closed first, closing the close the connection closed with (nil,
// nil: the socket just went).
func (c *Conn) Closed() (closing, peer *protocol.Disconnect) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing, c.peer
}

// flush is the writer: it drains the queue, coalescing every frame queued so
// far into as few write() calls as possible, and exits when the queue is
// empty.
func (c *Conn) flush() {
	defer c.recoverWriting()
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
			c.CloseSocket() // the reader sees the error and cleans up
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
			c.opt.Counters.Writes.Add(1)
			buf = buf[:0]
		}
	}
	c.opt.Counters.Delivered.Add(int64(delivered))
	if len(buf) > 0 {
		if err := c.raw.write(buf); err != nil {
			return err
		}
		c.opt.Counters.Writes.Add(1)
	}
	if closes {
		c.mu.Lock()
		c.closeSent = true
		recv := c.closeRecv
		c.mu.Unlock()
		if recv {
			c.CloseSocket() // both close frames have crossed
		}
	}
	return nil
}

// appendOut appends f as it goes on the wire: translated by the handler
// if the connection was opened so (a frame it has no words for is left
// out).
func (c *Conn) appendOut(buf []byte, f outFrame) []byte {
	if f.op == opRaw {
		return append(buf, f.data...)
	}
	if c.translate && f.op == ws.OpText {
		data := c.h.Encode(f.data)
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
	c.opt.Counters.Delivered.Add(int64(delivered))
	c.opt.Counters.Writes.Add(1)
	c.wrote()

	c.mu.Lock()
	c.spare = batch[:0]
	if err != nil && err != syscall.EAGAIN {
		c.queue, c.queued, c.ctl, c.pongs, c.writing = nil, 0, 0, 0, false
		c.mu.Unlock()
		c.CloseSocket() // the reader sees the error and cleans up
		return true
	}
	if n < len(buf) {
		c.opt.Counters.SocketFull.Add(1)
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
	if c.opt.Flusher != nil {
		c.lastWrite.Store(time.Now().UnixNano())
	}
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// socket is the connection's socket. Its blocking writes (the writer
// goroutine's) get a deadline; writeNow's non-blocking ones need none.
type socket struct {
	net.Conn
	mu       sync.Mutex
	timeout  time.Duration
	deadline time.Time // the write deadline set on Conn; guarded by mu
}

// Write writes p with a deadline at least timeout/2 away. Re-arming the
// deadline costs a runtime timer update, so it is refreshed only when more
// than half of it is spent, not on every write.
func (r *socket) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := time.Now(); r.deadline.Sub(now) < r.timeout/2 {
		r.deadline = now.Add(r.timeout)
		r.Conn.SetWriteDeadline(r.deadline)
	}
	return r.Conn.Write(p)
}

func (r *socket) write(p []byte) error {
	_, err := r.Write(p)
	return err
}

// ClosePayload is the payload of the close frame for d.
func ClosePayload(d protocol.Disconnect) []byte { return ws.ClosePayload(ws.Status(d.Code), d.Reason) }
