//go:build linux

package netpoll

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Poller tells connections when their sockets become readable, with one
// epoll instance and one goroutine for the whole process, so that an idle
// connection needs no goroutine (and no goroutine stack) of its own.
// Sockets are registered one-shot: an event wakes the socket's Waker and
// disarms the socket; the woken reader then waits for more with Go's own
// netpoller while the connection is busy (Socket.Read with a hold), and
// re-arms the socket when it goes quiet (Rearm).
// Re-arming a socket that is readable raises an event at once, so nothing
// that arrives in between is missed.
//
// The poller's goroutine does not block in epoll_wait(2): the epoll
// instance is itself a pollable descriptor, registered with Go's own
// netpoller, which wakes the goroutine when any socket has an event. The
// scheduler then runs it like any goroutine woken by the network, with no
// thread blocked in a system call and no hand-off between threads.
type Poller struct {
	epfd   int
	ep     syscall.RawConn // epfd as Go's netpoller sees it
	mu     sync.RWMutex
	wakers []Waker  // by file descriptor
	file   *os.File // epfd's: kept reachable, as its finalizer would close epfd
}

// Socket is a registered socket: its descriptor, for reads and writes that
// do not wait (Go's net.Conn always waits), and its read deadline.
type Socket struct {
	conn         net.Conn
	fd           int
	rc           syscall.RawConn
	readDeadline time.Time // owned by the socket's reader
}

var (
	pollerOnce sync.Once
	thePoller  *Poller
)

// Get returns the process's Poller, started on first use; nil if epoll is
// unavailable.
func Get() *Poller {
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
		thePoller = &Poller{epfd: fd, ep: ep, file: f}
		go thePoller.run()
	})
	return thePoller
}

// Add registers conn's socket, whose events wake w. It reports false
// when the socket cannot be polled (not a plain socket, or closed).
func (p *Poller) Add(conn net.Conn, w Waker) (*Socket, bool) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return nil, false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, false
	}
	s := &Socket{conn: conn, rc: rc}
	added := false
	// Inside Control the descriptor cannot be closed (and reused) under us.
	// w is in the table before the socket is registered, so that no event
	// can be missed.
	cerr := rc.Control(func(fd uintptr) {
		s.fd = int(fd)
		p.mu.Lock()
		if s.fd >= len(p.wakers) {
			grown := make([]Waker, max(2*len(p.wakers), s.fd+1, 1024))
			copy(grown, p.wakers)
			p.wakers = grown
		}
		p.wakers[s.fd] = w
		p.mu.Unlock()
		ev := unix.EpollEvent{Events: pollEvents, Fd: int32(fd)}
		if unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev) == nil {
			added = true
		} else {
			p.Remove(s, w)
		}
	})
	if cerr != nil || !added {
		return nil, false
	}
	return s, true
}

const pollEvents = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT

// Rearm lets the socket raise an event again. A closed socket is not
// re-armed: whoever closes it wakes its reader itself.
func (p *Poller) Rearm(s *Socket) {
	op := getSysOp()
	op.epfd = p.epfd
	s.rc.Control(op.rearm)
	putSysOp(op)
}

// Remove forgets the socket's Waker w. The kernel drops the registration
// itself when the socket is closed; a descriptor number reused by a newer
// socket keeps that socket's entry.
func (p *Poller) Remove(s *Socket, w Waker) {
	p.mu.Lock()
	if s.fd < len(p.wakers) && p.wakers[s.fd] == w {
		p.wakers[s.fd] = nil
	}
	p.mu.Unlock()
}

func (p *Poller) run() {
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
			if fd := int(ev.Fd); fd < len(p.wakers) {
				if w := p.wakers[fd]; w != nil {
					w.Wake()
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

// Read is one read(2). With hold 0 it returns EAGAIN when there is
// nothing to read (and clears the read deadline); otherwise it waits, in
// Go's netpoller, for data or the read deadline (hold after the last
// data), which it pushes back when half of it is spent. One reader at a
// time.
func (s *Socket) Read(buf []byte, hold time.Duration) (n int, err error) {
	wait := hold > 0
	if wait {
		if now := time.Now(); s.readDeadline.Sub(now) < hold/2 {
			s.readDeadline = now.Add(hold)
			s.conn.SetReadDeadline(s.readDeadline)
		}
	} else if !s.readDeadline.IsZero() {
		// A deadline left from waiting, once passed, would fail every read
		// before it is even tried.
		s.readDeadline = time.Time{}
		s.conn.SetReadDeadline(time.Time{})
	}
	op := getSysOp()
	op.buf, op.wait = buf, wait
	rerr := s.rc.Read(op.read)
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

// Write is one non-blocking write(2): it returns how much the kernel took,
// and EAGAIN when that was nothing, instead of waiting. One writer at a
// time.
func (s *Socket) Write(buf []byte) (n int, err error) {
	op := getSysOp()
	op.buf = buf
	werr := s.rc.Write(op.write)
	n, err = op.n, op.err
	putSysOp(op)
	if werr != nil {
		return 0, werr
	}
	return max(n, 0), err
}
