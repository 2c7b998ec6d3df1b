package transport

import (
	"errors"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/tether-chat/tether/internal/netpoll"
	"github.com/tether-chat/tether/internal/ws"
	"github.com/tether-chat/tether/protocol"
)

// The reader's states. A connection driven by the poller has a reader
// goroutine only while its socket has something to read.
const (
	readIdle  int32 = iota // no reader: the poller starts one when the socket becomes readable
	readBusy               // a reader is running
	readAgain              // a reader is running and was woken again meanwhile (by a close)
	readDone               // the reader has cleaned up: the connection is gone
	readOwn                // not polled: the connection has a reader goroutine of its own
)

// Attach hands a new connection's socket to the poller, before anything
// else can see the connection; where the poller cannot drive the socket
// (TLS, or no poller on this platform) StartReading gives the connection a
// reader goroutine of its own. Until StartReading, the
// goroutine that sets the connection up counts as its reader (rstate starts
// as readBusy), so no reader runs during the set-up; a wake meanwhile is
// remembered (readAgain).
func (c *Conn) Attach() {
	c.rstate.Store(readBusy)
	p := netpoll.Get()
	if p == nil {
		c.rstate.Store(readOwn)
		return
	}
	sock, ok := p.Add(c.raw.Conn, (*connWaker)(c))
	if !ok {
		c.rstate.Store(readOwn)
		return
	}
	c.sock = sock
}

// connWaker is a connection as the poller sees it (netpoll.Waker).
type connWaker Conn

func (w *connWaker) Wake() { (*Conn)(w).wake() }

// StartReading starts reading a set-up connection. early is what the
// client sent right after its handshake request, read with it.
func (c *Conn) StartReading(early []byte) {
	switch {
	case c.rstate.Load() == readOwn:
		go c.readBlocking(early)
	case early != nil:
		go c.readReady(early)
	case !c.rstate.CompareAndSwap(readBusy, readIdle):
		// Woken during the set-up (data came, or the socket was closed).
		c.rstate.Store(readBusy)
		dispatchRead(c)
	}
}

// wake is called by the poller when the socket is readable or closed, and
// after the server closes the socket: it starts a reader unless one is
// running, and tells a running one to read again before it stops.
func (c *Conn) wake() {
	for {
		switch st := c.rstate.Load(); st {
		case readIdle:
			if c.rstate.CompareAndSwap(readIdle, readBusy) {
				dispatchRead(c)
				return
			}
		case readBusy:
			if c.rstate.CompareAndSwap(readBusy, readAgain) {
				return
			}
		default: // readAgain, readDone; readOwn sees a close by itself
			return
		}
	}
}

// CloseSocket closes the connection's socket at once; its reader then
// cleans up.
func (c *Conn) CloseSocket() {
	c.raw.Conn.Close()
	c.wake()
}

// readers run readReady for connections the poller found readable. (Set
// in init: readReady itself dispatches.)
var readers *netpoll.Pool[*Conn]

func init() { readers = netpoll.NewPool(func(c *Conn) { c.readReady(nil) }) }

func dispatchRead(c *Conn) { readers.Dispatch(c) }

// Readers is how many pooled reader goroutines the process has, running
// or waiting for work (a test's check that nothing leaks).
func Readers() int { return readers.Workers() }

var readBufPool = sync.Pool{New: func() any { b := make([]byte, 8192); return &b }}

// ReaderHot is how long a busy connection's reader waits for more once
// the socket is quiet, before it gives the socket back to the poller and
// itself up. A connection is busy when it becomes readable again within
// ReaderHot of its reader's last return: then its reader stays and Go's own
// netpoller wakes it, with no hand-off from the poller (request/reply
// traffic). A connection that sends now and then (a chat user, pongs, the
// set-up's join) has a reader only while it reads.
const ReaderHot = 100 * time.Millisecond

// readReady is the poller-driven reader: it reads and handles what
// arrives until a read would block (or, on a busy connection, until the
// socket has been quiet for ReaderHot), then re-arms the socket with the
// poller and returns; the buffer goes back to the pool, so nothing stays
// allocated for an idle connection. When the socket is gone it cleans up.
func (c *Conn) readReady(early []byte) {
	if early != nil {
		c.onData(early)
	}
	bp := readBufPool.Get().(*[]byte)
	var hold time.Duration // 0: do not wait; ReaderHot once busy
	for {
		n, err := c.sock.Read(*bp, hold)
		switch {
		case n > 0:
			c.onData((*bp)[:n])
			continue
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN && time.Since(c.idleAt) < ReaderHot:
			hold = ReaderHot // busy: wait here for more
			continue
		case err == syscall.EAGAIN, errors.Is(err, os.ErrDeadlineExceeded):
			c.idleAt = time.Now()
			if !c.rstate.CompareAndSwap(readBusy, readIdle) {
				c.rstate.Store(readBusy) // woken meanwhile (a close): read again
				continue
			}
			readBufPool.Put(bp)
			netpoll.Get().Rearm(c.sock)
			return
		}
		readBufPool.Put(bp)
		c.rstate.Store(readDone)
		netpoll.Get().Remove(c.sock, (*connWaker)(c))
		c.h.OnGone()
		return
	}
}

// readBlocking is the reader of a connection the poller cannot drive: one
// goroutine for the life of the connection.
func (c *Conn) readBlocking(early []byte) {
	if early != nil {
		c.onData(early)
	}
	buf := make([]byte, 4096)
	for {
		n, err := c.raw.Conn.Read(buf)
		if n > 0 {
			c.onData(buf[:n])
		}
		if err != nil {
			c.rstate.Store(readDone)
			c.h.OnGone()
			return
		}
	}
}

// onData processes bytes read from the socket (see ws.Reader.Feed): the
// frames in them are handled through wsHandler, then the handler's OnRead,
// and one write carries every reply to them. p may be modified and is not
// retained.
func (c *Conn) onData(p []byte) {
	if c.rd.Done() {
		return
	}
	c.Touch()
	defer func() {
		if r := recover(); r != nil {
			c.rd.Stop() // the rest is discarded until the socket closes
			c.h.OnPanic("reading", r)
		}
	}()
	defer c.FlushReplies() // one write for every reply to what p held
	c.rd.Feed(p, (*wsHandler)(c))
	c.h.OnRead()
}

// wsHandler is a connection as the WebSocket reader sees it
// (ws.Handler).
type wsHandler Conn

func (h *wsHandler) Limit(op byte) int64            { return h.h.Limit(op) }
func (h *wsHandler) OnMessage(op byte, data []byte) { h.h.OnMessage(op, data) }
func (h *wsHandler) OnPing(payload []byte)          { (*Conn)(h).pong(payload) }
func (h *wsHandler) OnPong([]byte)                  {} // onData's Touch was all it was for

func (h *wsHandler) OnClose(code ws.Status, reason string) {
	(*Conn)(h).peerClosed(protocol.Disconnect{Code: protocol.CloseCode(code), Reason: reason})
}

// OnFail closes a connection that broke the protocol, after what is
// queued (the replies to what came before).
func (h *wsHandler) OnFail(e *ws.Error) {
	d := protocol.Disconnect{Code: protocol.CloseCode(e.Code), Reason: e.Reason}
	h.h.OnFail(d)
	(*Conn)(h).Close(d, CloseDrain)
}
