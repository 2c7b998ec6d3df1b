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
//   - DropFrames (a WebSocket proxy, NewWSProxy): the next server frames
//     that contain a pattern never reach the client, the connection stays
//     up: a gap in what the client receives, for testing that a client
//     notices one.
package testnet

import (
	"bytes"
	"encoding/binary"
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
	ws       bool   // relays WebSocket: server frames are parsed (DropFrames)
	drop     []byte // DropFrames' pattern
	dropN    int    // frames still to drop
	dropped  int
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

// NewWSProxy starts a proxy to a WebSocket server at target that can drop
// server frames (DropFrames).
func NewWSProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	p := NewProxy(t, target)
	p.mu.Lock()
	p.ws = true
	p.mu.Unlock()
	return p
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
		p.mu.Lock()
		target := p.target
		p.mu.Unlock()
		out, err := net.Dial("tcp", target)
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
	p.mu.Lock()
	ws := p.ws
	p.mu.Unlock()
	var frames *frameFilter
	if ws && !up {
		frames = &frameFilter{p: p}
	}
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
		out := buf[:n]
		if frames != nil {
			out = frames.filter(out)
		}
		if _, err := dst.Write(out); err != nil {
			return
		}
	}
}

// frameFilter passes a WebSocket server's bytes through whole frames at a
// time (after the HTTP response head), leaving out those DropFrames asks
// for.
type frameFilter struct {
	p      *Proxy
	headed bool   // the HTTP response head has gone through
	buf    []byte // bytes not yet passed on (an incomplete frame)
}

func (f *frameFilter) filter(in []byte) []byte {
	f.buf = append(f.buf, in...)
	var out []byte
	if !f.headed {
		i := bytes.Index(f.buf, []byte("\r\n\r\n"))
		if i < 0 {
			return nil
		}
		out = append(out, f.buf[:i+4]...)
		f.buf = f.buf[i+4:]
		f.headed = true
	}
	for {
		size, ok := frameSize(f.buf)
		if !ok {
			break
		}
		frame := f.buf[:size]
		f.p.mu.Lock()
		drop := f.p.dropN > 0 && frame[0]&0x0f == 1 && bytes.Contains(frame, f.p.drop)
		if drop {
			f.p.dropN--
			f.p.dropped++
		}
		f.p.mu.Unlock()
		if !drop {
			out = append(out, frame...)
		}
		f.buf = f.buf[size:]
	}
	f.buf = append([]byte(nil), f.buf...)
	return out
}

// frameSize is the size of the WebSocket frame at the start of b, if it
// is all there.
func frameSize(b []byte) (int, bool) {
	if len(b) < 2 {
		return 0, false
	}
	head, n := 2, uint64(b[1]&0x7f)
	switch n {
	case 126:
		if len(b) < 4 {
			return 0, false
		}
		head, n = 4, uint64(binary.BigEndian.Uint16(b[2:4]))
	case 127:
		if len(b) < 10 {
			return 0, false
		}
		head, n = 10, binary.BigEndian.Uint64(b[2:10])
	}
	if b[1]&0x80 != 0 {
		head += 4 // masked (a server's frames are not)
	}
	if uint64(len(b)-head) < n {
		return 0, false
	}
	return head + int(n), true
}

// DropFrames makes a WebSocket proxy leave out the next n text frames from
// the server that contain pattern; the connections stay up.
func (p *Proxy) DropFrames(pattern []byte, n int) {
	p.mu.Lock()
	p.drop, p.dropN = append([]byte(nil), pattern...), n
	p.mu.Unlock()
}

// Dropped is the number of frames DropFrames left out so far.
func (p *Proxy) Dropped() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.dropped
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

// SetTarget sends the connections made from now on to addr (a client
// behind the proxy fails over to another node).
func (p *Proxy) SetTarget(addr string) {
	p.mu.Lock()
	p.target = addr
	p.mu.Unlock()
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
