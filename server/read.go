package server

import (
	"sync"
	"syscall"
)

// The reader's states. A connection driven by the poller has a reader
// goroutine only while its socket has something to read.
const (
	readIdle  int32 = iota // no reader: the poller starts one when the socket becomes readable
	readBusy               // a reader is running
	readAgain              // a reader is running and the socket became readable again meanwhile
	readDone               // the reader has cleaned up: the connection is gone
	readOwn                // not polled: the connection has a reader goroutine of its own
)

// attach hands a new connection's socket to the poller, before anything
// else can see the connection; where the poller cannot drive the socket
// (TLS, or no poller on this platform) startReading gives the connection a
// reader goroutine of its own. Until startReading, the
// goroutine that sets the connection up counts as its reader (rstate starts
// as readBusy), so no reader runs during the set-up; a wake meanwhile is
// remembered (readAgain).
func (c *Conn) attach() {
	c.rstate.Store(readBusy)
	if p := getPoller(); p == nil || !p.add(c) {
		c.rstate.Store(readOwn)
	}
}

// startReading starts reading a set-up connection. early is what the
// client sent right after its handshake request, read with it.
func (c *Conn) startReading(early []byte) {
	switch {
	case c.rstate.Load() == readOwn:
		go c.readBlocking(early)
	case early != nil:
		go c.readReady(early)
	case !c.rstate.CompareAndSwap(readBusy, readIdle):
		// Woken during the set-up (data came, or the socket was closed).
		c.rstate.Store(readBusy)
		go c.readReady(nil)
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
				go c.readReady(nil)
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

// closeSocket closes the connection's socket; its reader then cleans up.
func (c *Conn) closeSocket() {
	c.raw.Conn.Close()
	c.wake()
}

var readBufPool = sync.Pool{New: func() any { b := make([]byte, 8192); return &b }}

// readReady is the poller-driven reader: it reads until a read would block,
// then returns (the buffer goes back to the pool, nothing stays allocated
// for an idle connection), or until the socket is gone, then cleans up.
func (c *Conn) readReady(early []byte) {
	if early != nil {
		c.onData(early)
	}
	bp := readBufPool.Get().(*[]byte)
	for {
		n, err := c.rawRead(*bp)
		switch {
		case n > 0:
			c.onData((*bp)[:n])
			continue
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			if c.rstate.CompareAndSwap(readBusy, readIdle) {
				readBufPool.Put(bp)
				return
			}
			c.rstate.Store(readBusy) // readable again meanwhile: read again
			continue
		}
		readBufPool.Put(bp)
		c.rstate.Store(readDone)
		getPoller().remove(c)
		c.srv.disconnected(c)
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
			c.srv.disconnected(c)
			return
		}
	}
}
