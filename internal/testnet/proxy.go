// Package testnet has network fixtures for tests: a TCP relay that injects
// the faults a deployment meets between two processes, and counts what it
// relays.
//
//   - Freeze: a pulled cable. Every connection, open or new, stays open and
//     nothing moves (what a frozen peer or a black-holed route looks like).
//   - HalfOpen: the connections open now go silent both ways and stay
//     open; new ones work. Only an end-to-end check can find such a
//     connection: TCP reports nothing for minutes.
//   - Stall: nothing moves for a while, then everything held goes through
//     (a peer paused, a congested link). Nothing is lost.
//   - LoseReplies: the next request that contains a pattern reaches the
//     server, which runs it, but every reply after it is swallowed for a
//     moment and then the connection is reset: "the command ran, its reply
//     never came".
//   - Cut: every connection is reset at once.
package testnet

import (
	"bytes"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// Proxy relays TCP connections from its own loopback address to a target.
type Proxy struct {
	ln     net.Listener
	target string

	mu       sync.Mutex
	frozen   bool
	stalled  chan struct{} // closed when a stall ends; nil when not stalled
	lose     []byte        // LoseReplies' pattern
	loseN    int           // requests still to lose the replies of
	lost     int           // replies lost so far
	links    map[*link]struct{}
	accepted int
}

// link is one relayed connection.
type link struct {
	in, out net.Conn // client side, server side
	silent  bool     // HalfOpen: dropped on the floor both ways
	// loseUntil: the server's replies are swallowed until then, and the
	// connection reset (LoseReplies).
	loseUntil time.Time
}

// NewProxy starts a proxy to target; it stops when the test ends.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	return NewProxyOn(t, "127.0.0.1:0", target)
}

// NewProxyOn starts a proxy listening on addr (which may be a fixed
// address, to replace a proxy that was closed).
func NewProxyOn(t testing.TB, addr, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ln: ln, target: target, links: map[*link]struct{}{}}
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// Close stops accepting and resets every connection.
func (p *Proxy) Close() {
	p.ln.Close()
	p.Cut()
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
		l := &link{in: in, out: out}
		p.mu.Lock()
		p.links[l] = struct{}{}
		p.accepted++
		p.mu.Unlock()
		go p.pipe(l, out, in, true)
		go p.pipe(l, in, out, false)
	}
}

// pipe relays src to dst; up says it carries requests (client to server).
func (p *Proxy) pipe(l *link, dst, src net.Conn, up bool) {
	defer func() {
		p.mu.Lock()
		delete(p.links, l)
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
		for {
			p.mu.Lock()
			wait := p.stalled
			p.mu.Unlock()
			if wait == nil {
				break
			}
			<-wait
		}
		p.mu.Lock()
		frozen := p.frozen || l.silent
		if up && !frozen && p.loseN > 0 && bytes.Contains(buf[:n], p.lose) {
			p.loseN--
			l.loseUntil = time.Now().Add(200 * time.Millisecond)
			go p.resetLater(l, 200*time.Millisecond)
		}
		swallow := !up && time.Now().Before(l.loseUntil)
		if swallow {
			p.lost++
		}
		p.mu.Unlock()
		if frozen {
			io.Copy(io.Discard, src) // swallow everything; the sockets stay open
			return
		}
		if swallow {
			continue
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}

func (p *Proxy) resetLater(l *link, d time.Duration) {
	time.Sleep(d)
	p.reset(l)
}

func (p *Proxy) reset(l *link) {
	if tc, ok := l.in.(*net.TCPConn); ok {
		tc.SetLinger(0) // RST, like a dropped network
	}
	if tc, ok := l.out.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	l.in.Close()
	l.out.Close()
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

// HalfOpen silences every connection open now, both ways, for good, and
// leaves its sockets open; connections made afterwards work. It returns
// how many connections it silenced.
func (p *Proxy) HalfOpen() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for l := range p.links {
		l.silent = true
	}
	return len(p.links)
}

// Stall holds everything for d, both ways, on every connection; then what
// was held goes through in order. It returns at once.
func (p *Proxy) Stall(d time.Duration) {
	p.mu.Lock()
	if p.stalled == nil {
		ch := make(chan struct{})
		p.stalled = ch
		time.AfterFunc(d, func() {
			p.mu.Lock()
			p.stalled = nil
			p.mu.Unlock()
			close(ch)
		})
	}
	p.mu.Unlock()
}

// LoseReplies makes the next n requests that contain pattern run on the
// server with their replies lost: what the server sends back on that
// connection for the next 200ms is swallowed, then the connection is
// reset.
func (p *Proxy) LoseReplies(pattern []byte, n int) {
	p.mu.Lock()
	p.lose, p.loseN = append([]byte(nil), pattern...), n
	p.mu.Unlock()
}

// Lost is the number of reply chunks swallowed by LoseReplies so far.
func (p *Proxy) Lost() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lost
}

// Cut resets every relayed connection at once.
func (p *Proxy) Cut() {
	p.mu.Lock()
	links := make([]*link, 0, len(p.links))
	for l := range p.links {
		links = append(links, l)
		delete(p.links, l)
	}
	p.mu.Unlock()
	for _, l := range links {
		p.reset(l)
	}
}

// Live is the number of connections being relayed.
func (p *Proxy) Live() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.links)
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
