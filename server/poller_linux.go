//go:build linux

package server

import (
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// poller tells connections when their sockets become readable, with one
// epoll instance and one goroutine for the whole process, so that an idle
// connection needs no goroutine (and no goroutine stack) of its own.
// Sockets are registered one-shot: an event starts a reader and disarms the
// socket; the reader then waits for more with Go's own netpoller while the
// connection is busy, and re-arms the socket when it goes quiet (read.go).
// Re-arming a socket that is readable raises an event at once, so nothing
// that arrives in between is missed.
//
// The poller's goroutine does not block in epoll_wait(2): the epoll
// instance is itself a pollable descriptor, registered with Go's own
// netpoller, which wakes the goroutine when any socket has an event. The
// scheduler then runs it like any goroutine woken by the network, with no
// thread blocked in a system call and no hand-off between threads.
type poller struct {
	epfd  int
	ep    syscall.RawConn // epfd as Go's netpoller sees it
	mu    sync.RWMutex
	conns []*Conn // by file descriptor
}

var (
	pollerOnce sync.Once
	thePoller  *poller
	epollFile  *os.File
)

// getPoller returns the process's poller, started on first use; nil if
// epoll is unavailable.
func getPoller() *poller {
	pollerOnce.Do(func() {
		fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			return
		}
		if err := unix.SetNonblock(fd, true); err != nil {
			unix.Close(fd)
			return
		}
		// Non-blocking, so os.NewFile registers it with the netpoller.
		f := os.NewFile(uintptr(fd), "tether-epoll")
		ep, err := f.SyscallConn()
		if err != nil {
			f.Close()
			return
		}
		thePoller = &poller{epfd: fd, ep: ep}
		epollFile = f // kept alive: its finalizer would close epfd
		go thePoller.run()
	})
	return thePoller
}

// add registers c's socket (and sets c.rc and c.fd). It reports false
// when the socket cannot be polled (not a plain socket, or closed).
func (p *poller) add(c *Conn) bool {
	sc, ok := c.raw.Conn.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	added := false
	// Inside Control the descriptor cannot be closed (and reused) under us.
	// c is in the table before the socket is registered, so that no event
	// can be missed.
	cerr := rc.Control(func(fd uintptr) {
		c.fd, c.rc = int(fd), rc
		p.mu.Lock()
		if c.fd >= len(p.conns) {
			grown := make([]*Conn, max(2*len(p.conns), c.fd+1, 1024))
			copy(grown, p.conns)
			p.conns = grown
		}
		p.conns[c.fd] = c
		p.mu.Unlock()
		ev := unix.EpollEvent{Events: pollEvents, Fd: int32(fd)}
		if unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev) == nil {
			added = true
		} else {
			p.remove(c)
		}
	})
	return cerr == nil && added
}

const pollEvents = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT

// rearm lets the socket raise an event again. A closed socket is not
// re-armed: closeSocket has woken the connection itself.
func (p *poller) rearm(c *Conn) {
	op := getSysOp()
	op.epfd = p.epfd
	c.rc.Control(op.rearm)
	putSysOp(op)
}

// remove forgets c. The kernel drops the registration itself when the
// socket is closed; a descriptor number reused by a newer connection keeps
// that connection's entry.
func (p *poller) remove(c *Conn) {
	p.mu.Lock()
	if c.fd < len(p.conns) && p.conns[c.fd] == c {
		p.conns[c.fd] = nil
	}
	p.mu.Unlock()
}

func (p *poller) run() {
	events := make([]unix.EpollEvent, 512)
	for {
		var n int
		err := p.ep.Read(func(uintptr) bool {
			var err error
			n, err = unix.EpollWait(p.epfd, events, 0)
			return err == nil && n > 0 // nothing ready: wait in the netpoller
		})
		if err != nil {
			time.Sleep(10 * time.Millisecond) // cannot happen with a valid epfd; never spin
			continue
		}
		p.mu.RLock()
		for _, ev := range events[:n] {
			if fd := int(ev.Fd); fd < len(p.conns) {
				if c := p.conns[fd]; c != nil {
					c.wake()
				}
			}
		}
		p.mu.RUnlock()
	}
}

// sysOp carries one system call's arguments and results through
// syscall.RawConn, whose callbacks are closures: a closure made per call
// escapes (RawConn is an interface) and cost a few allocations on every
// read, write and re-arm. A sysOp's callbacks are bound once, when the pool
// makes it.
type sysOp struct {
	buf         []byte
	wait        bool
	epfd        int
	n           int
	err         error
	read, write func(fd uintptr) bool
	rearm       func(fd uintptr)
}

var sysOps = sync.Pool{New: func() any {
	op := new(sysOp)
	op.read, op.write, op.rearm = op.doRead, op.doWrite, op.doRearm
	return op
}}

func getSysOp() *sysOp { return sysOps.Get().(*sysOp) }

func putSysOp(op *sysOp) {
	op.buf, op.err, op.n = nil, nil, 0
	sysOps.Put(op)
}

func (op *sysOp) doRead(fd uintptr) bool {
	op.n, op.err = syscall.Read(int(fd), op.buf)
	return !op.wait || op.err != syscall.EAGAIN
}

func (op *sysOp) doWrite(fd uintptr) bool {
	for {
		op.n, op.err = syscall.Write(int(fd), op.buf)
		if op.err != syscall.EINTR {
			return true
		}
	}
}

func (op *sysOp) doRearm(fd uintptr) {
	ev := unix.EpollEvent{Events: pollEvents, Fd: int32(fd)}
	unix.EpollCtl(op.epfd, unix.EPOLL_CTL_MOD, int(fd), &ev)
}

// rawRead is one read(2). Without wait it returns EAGAIN when there is
// nothing to read (and clears the read deadline); with wait it waits, in
// Go's netpoller, for data or the connection's read deadline (readerHot
// after the last data), which it pushes back when half of it is spent.
func (c *Conn) rawRead(buf []byte, wait bool) (n int, err error) {
	if wait {
		if now := time.Now(); c.readDeadline.Sub(now) < readerHot/2 {
			c.readDeadline = now.Add(readerHot)
			c.raw.Conn.SetReadDeadline(c.readDeadline)
		}
	} else if !c.readDeadline.IsZero() {
		// A deadline left from waiting, once passed, would fail every read
		// before it is even tried.
		c.readDeadline = time.Time{}
		c.raw.Conn.SetReadDeadline(time.Time{})
	}
	op := getSysOp()
	op.buf, op.wait = buf, wait
	rerr := c.rc.Read(op.read)
	n, err = op.n, op.err
	putSysOp(op)
	if rerr != nil {
		return 0, rerr
	}
	if n <= 0 && err == nil {
		return 0, io.EOF
	}
	return max(n, 0), err
}

// rawWrite is one non-blocking write(2): it returns how much the kernel
// took, and EAGAIN when that was nothing, instead of waiting.
func (c *Conn) rawWrite(buf []byte) (n int, err error) {
	op := getSysOp()
	op.buf = buf
	werr := c.rc.Write(op.write)
	n, err = op.n, op.err
	putSysOp(op)
	if werr != nil {
		return 0, werr
	}
	return max(n, 0), err
}
