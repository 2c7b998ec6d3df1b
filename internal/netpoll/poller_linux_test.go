//go:build linux

package netpoll

import (
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tether-chat/tether/internal/testwait"
)

type countWaker struct{ n atomic.Int32 }

func (w *countWaker) Wake() { w.n.Add(1) }

// pair is a connected pair of loopback TCP sockets.
func pair(t *testing.T) (server, client net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		server, err = ln.Accept()
	}()
	client, cerr := net.Dial("tcp", ln.Addr().String())
	wg.Wait()
	if err != nil || cerr != nil {
		t.Fatal(err, cerr)
	}
	t.Cleanup(func() { server.Close(); client.Close() })
	return server, client
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testwait.Until(t, 5*time.Second, what, cond)
}

// TestPollerWakesOnceUntilRearmed: registration is one-shot. Data wakes
// the socket's Waker once; more data does not wake it again until it is
// re-armed, and re-arming a socket with unread data wakes it at once, so
// nothing is missed. Reads never wait unless asked to; a closed peer wakes
// the socket too.
func TestPollerWakesOnceUntilRearmed(t *testing.T) {
	p := Get()
	if p == nil {
		t.Skip("no poller on this platform: connections read with goroutines of their own")
	}
	srv, cli := pair(t)
	w := &countWaker{}
	s, ok := p.Add(srv, w)
	if !ok {
		t.Fatal("a TCP socket could not be added")
	}
	buf := make([]byte, 64)
	if _, err := s.Read(buf, 0); err != syscall.EAGAIN {
		t.Fatalf("an empty socket read: %v, want EAGAIN", err)
	}
	cli.Write([]byte("one"))
	waitFor(t, "the first wake", func() bool { return w.n.Load() == 1 })
	cli.Write([]byte("two"))
	time.Sleep(50 * time.Millisecond)
	if n := w.n.Load(); n != 1 {
		t.Fatalf("woken %d times before the re-arm", n)
	}
	p.Rearm(s) // unread data: woken at once
	waitFor(t, "the wake after re-arming", func() bool { return w.n.Load() == 2 })
	if n, err := s.Read(buf, 0); err != nil || string(buf[:n]) != "onetwo" {
		t.Fatalf("read %q %v", buf[:n], err)
	}
	// Waiting: data that comes while the reader holds is read.
	go func() { time.Sleep(20 * time.Millisecond); cli.Write([]byte("later")) }()
	if n, err := s.Read(buf, time.Second); err != nil || string(buf[:n]) != "later" {
		t.Fatalf("held read %q %v", buf[:n], err)
	}
	if n, err := s.Write([]byte("back")); n != 4 || err != nil {
		t.Fatalf("write %d %v", n, err)
	}
	got := make([]byte, 4)
	cli.Read(got)
	if string(got) != "back" {
		t.Fatalf("the peer read %q", got)
	}
	p.Rearm(s)
	cli.Close()
	waitFor(t, "the wake for the closed peer", func() bool { return w.n.Load() == 3 })
	if n, err := s.Read(buf, 0); n != 0 || err == nil {
		t.Fatalf("read after the peer closed: %d %v, want EOF", n, err)
	}
	p.Remove(s, w)
}

// TestRemoveKeepsANewerSocketsWaker: a descriptor number reused by a newer
// socket keeps the newer socket's Waker when the older one is removed.
func TestRemoveKeepsANewerSocketsWaker(t *testing.T) {
	p := Get()
	if p == nil {
		t.Skip("no poller on this platform")
	}
	srv, cli := pair(t)
	old := &countWaker{}
	s, _ := p.Add(srv, old)
	newer := &countWaker{}
	p.mu.Lock()
	p.wakers[s.fd] = newer // as if the descriptor had been reused
	p.mu.Unlock()
	p.Remove(s, old)
	p.mu.RLock()
	kept := p.wakers[s.fd] == Waker(newer)
	p.mu.RUnlock()
	if !kept {
		t.Fatal("the newer socket's Waker was removed")
	}
	cli.Write([]byte("x"))
	waitFor(t, "the newer waker woken", func() bool { return newer.n.Load() == 1 })
	p.Remove(s, newer)
}
