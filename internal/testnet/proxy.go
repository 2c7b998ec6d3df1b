// Package testnet has network fixtures for tests: a TCP relay that can
// freeze (a pulled cable: both sockets stay open, nothing moves), cut (a
// network failure: connections reset) and count what it relays.
package testnet

import (
	"io"
	"net"
	"sync"
	"testing"
)

// Proxy relays TCP connections from its own loopback address to a target.
type Proxy struct {
	ln       net.Listener
	target   string
	mu       sync.Mutex
	frozen   bool
	conns    map[net.Conn]net.Conn // client side -> upstream side
	accepted int
}

// NewProxy starts a proxy to target; it stops when the test ends.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ln: ln, target: target, conns: map[net.Conn]net.Conn{}}
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.Cut()
	})
	return p
}

func (p *Proxy) accept() {
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", p.target)
		if err != nil {
			in.Close()
			continue
		}
		p.mu.Lock()
		p.conns[in] = out
		p.accepted++
		p.mu.Unlock()
		go p.pipe(in, out, in)
		go p.pipe(out, in, in)
	}
}

func (p *Proxy) pipe(dst, src, key net.Conn) {
	defer func() {
		p.mu.Lock()
		delete(p.conns, key)
		p.mu.Unlock()
		dst.Close()
		src.Close()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		p.mu.Lock()
		frozen := p.frozen
		p.mu.Unlock()
		if frozen {
			io.Copy(io.Discard, src) // swallow everything; the sockets stay open
			return
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}

// Addr is the proxy's address (host:port).
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Freeze stops forwarding on every connection, open or new, and keeps the
// sockets open: what a pulled cable or a suspended peer looks like.
func (p *Proxy) Freeze() {
	p.mu.Lock()
	p.frozen = true
	p.mu.Unlock()
}

// Thaw lets new connections through again (frozen ones stay dead).
func (p *Proxy) Thaw() {
	p.mu.Lock()
	p.frozen = false
	p.mu.Unlock()
}

// Cut resets every relayed connection at once.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for in, out := range p.conns {
		if tc, ok := in.(*net.TCPConn); ok {
			tc.SetLinger(0) // RST, like a dropped network
		}
		in.Close()
		out.Close()
		delete(p.conns, in)
	}
}

// Live is the number of connections being relayed.
func (p *Proxy) Live() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Accepted is the number of connections accepted so far.
func (p *Proxy) Accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

// FreeAddr returns a loopback address with a port nobody listens on now.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
