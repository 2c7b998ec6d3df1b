package server

import (
	"bytes"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/tether-chat/tether/internal/netpoll"
)

// Serve's own accept loop. A WebSocket connection is one HTTP request and
// then the socket is ours, so net/http's per-connection machinery (its
// goroutine, buffers, header map, background read, and the hijack that
// undoes it) was a quarter of the CPU of a connection set-up. On a plain
// TCP listener Serve reads each new connection's first request itself:
// a WebSocket handshake for /ws is parsed here and set up directly;
// anything else (the chat page, the API, /metrics, a malformed or unusual
// request) is handed to net/http untouched, with the bytes already read.

// headMax is the largest request head the fast path parses; a bigger one
// (many cookies) is handed to net/http, whose limit is 1 MiB.
const headMax = 8 << 10

var headPool = sync.Pool{New: func() any { b := make([]byte, headMax); return &b }}

// Serve accepts connections on ln until Shutdown. It returns
// http.ErrServerClosed after a shutdown. On a *net.TCPListener WebSocket
// handshakes take the fast path; any other listener (TLS) is served by
// net/http alone.
func (s *Server) Serve(ln net.Listener) error {
	hs := &http.Server{Handler: s.mux, ReadHeaderTimeout: s.cfg.HeaderTimeout, IdleTimeout: httpIdleTimeout,
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)}
	s.httpMu.Lock()
	s.httpSrv = hs
	s.httpMu.Unlock()
	if s.sess.Stopping() {
		return http.ErrServerClosed
	}
	if _, plain := ln.(*net.TCPListener); !plain {
		return hs.Serve(ln)
	}
	h := &handoff{ln: ln, conns: make(chan net.Conn), done: make(chan struct{})}
	defer h.Close()
	go hs.Serve(h) // hs.Shutdown closes h, which closes ln
	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if s.sess.Stopping() {
				return http.ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// Out of file descriptors, typically: wait and retry, as
			// net/http does, rather than spin or give up.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("accept failed; retrying", "err", err, "in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		handshakers.Dispatch(newConn{s, nc, h})
	}
}

// httpIdleTimeout ends a kept-alive HTTP connection (chat page, API) that
// has been idle this long.
const httpIdleTimeout = 2 * time.Minute

// handshakers read new connections' first requests and set them up, on
// reused goroutines: a fresh goroutine per connection grew its stack
// several times during a set-up (7% of its CPU).
var handshakers = netpoll.NewPool(func(n newConn) { n.s.firstRequest(n.nc, n.h) })

type newConn struct {
	s  *Server
	nc net.Conn
	h  *handoff
}

// firstRequest reads a new connection's request head. A WebSocket
// handshake for /ws is set up here; anything else goes to net/http.
func (s *Server) firstRequest(nc net.Conn, h *handoff) {
	bp := headPool.Get().(*[]byte)
	buf := *bp
	defer headPool.Put(bp)
	nc.SetReadDeadline(time.Now().Add(s.cfg.HeaderTimeout))
	n := 0
	for {
		m, err := nc.Read(buf[n:])
		n += m
		if !maybeWebSocket(buf[:n]) || n == len(buf) {
			nc.SetReadDeadline(time.Time{})
			h.pass(&prefixConn{Conn: nc, head: bytes.Clone(buf[:n])})
			return
		}
		if end := bytes.Index(buf[:n], crlfcrlf); end >= 0 {
			req, ok := parseUpgrade(buf[:end+2])
			nc.SetReadDeadline(time.Time{})
			if !ok {
				h.pass(&prefixConn{Conn: nc, head: bytes.Clone(buf[:n])})
				return
			}
			req.remote = nc.RemoteAddr().String()
			var early []byte
			if rest := buf[end+4 : n]; len(rest) > 0 {
				early = bytes.Clone(rest)
			}
			s.openWS(&handshake{req: req, nc: nc, early: early, writeTimeout: s.cfg.WriteTimeout})
			return
		}
		if err != nil {
			nc.Close() // closed, or no complete head in time
			return
		}
	}
}

var (
	crlfcrlf = []byte("\r\n\r\n")
	wsPrefix = []byte("GET /ws")
)

// maybeWebSocket says whether b (the start of a request) may still be a
// handshake for /ws or /ws/{client_id}.
func maybeWebSocket(b []byte) bool {
	if len(b) <= len(wsPrefix) {
		return bytes.HasPrefix(wsPrefix, b)
	}
	if !bytes.HasPrefix(b, wsPrefix) {
		return false
	}
	c := b[len(wsPrefix)]
	return c == ' ' || c == '?' || c == '/'
}

// parseUpgrade parses the head of a GET /ws request (request line and
// header lines, each ending in CRLF, without the blank line) into the
// fields the handshake uses: the path's client_id, the query, Host and the
// headers of the handshake, all substrings of one copy of the head. It
// reports false for anything it does not take: another path, an escaped or
// dot path segment, HTTP/1.0, a folded header, no Upgrade: websocket or no
// Host. net/http then serves the request with its own rules (a redirect, a
// 404, a 400), so the fast path never answers differently from it.
func parseUpgrade(head []byte) (req wsRequest, ok bool) {
	s := string(head)
	line, rest, _ := strings.Cut(s, "\r\n")
	const proto = " HTTP/1.1"
	if !strings.HasPrefix(line, "GET ") || !strings.HasSuffix(line, proto) {
		return req, false
	}
	target := line[4 : len(line)-len(proto)]
	for i := 0; i < len(target); i++ {
		if c := target[i]; c <= ' ' || c == 0x7f || c == '#' {
			return req, false
		}
	}
	path, query, _ := strings.Cut(target, "?")
	if strings.IndexByte(path, '%') >= 0 {
		return req, false // escaped path: net/http unescapes {client_id}
	}
	if rest, ok := strings.CutPrefix(path, "/tether"); ok {
		path, req.tether = rest, true
	}
	switch {
	case path == "/ws":
	case strings.HasPrefix(path, "/ws/"):
		id := path[len("/ws/"):]
		if id == "" || id == "." || id == ".." || strings.Contains(id, "/") {
			return req, false
		}
		req.clientID, req.withID = id, true
	default:
		return req, false
	}
	req.rawQuery = query
	hosts := 0
	for len(rest) > 0 {
		line, rest, _ = strings.Cut(rest, "\r\n")
		name, value, ok := strings.Cut(line, ":")
		if !ok || len(name) == 0 || name[0] == ' ' || name[0] == '\t' || name[len(name)-1] == ' ' {
			return req, false // folded or malformed: net/http decides
		}
		value = strings.Trim(value, " \t")
		switch {
		case asciiEqualFold(name, "Host"):
			req.host = value
			hosts++
		case asciiEqualFold(name, "Upgrade"):
			req.upgradeWebSocket = req.upgradeWebSocket || hasToken(value, "websocket")
		case asciiEqualFold(name, "Connection"):
			req.connectionUpgrade = req.connectionUpgrade || hasToken(value, "upgrade")
		case asciiEqualFold(name, "Sec-WebSocket-Version"):
			req.version = firstValue(req.version, value)
		case asciiEqualFold(name, "Sec-WebSocket-Key"):
			req.key = firstValue(req.key, value)
		case asciiEqualFold(name, "Origin"):
			req.origin = firstValue(req.origin, value)
		case asciiEqualFold(name, "Authorization"):
			req.authorization = firstValue(req.authorization, value)
		case asciiEqualFold(name, "Cookie"):
			req.cookie = firstValue(req.cookie, value)
		}
	}
	if !req.upgradeWebSocket || hosts != 1 || req.host == "" {
		return req, false
	}
	return req, true
}

// firstValue keeps a header's first value, as http.Header.Get does.
func firstValue(first, v string) string {
	if first != "" {
		return first
	}
	return v
}

func asciiEqualFold(b, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range b {
		x, y := b[i], s[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// hasToken says whether a comma-separated header value contains token,
// case-insensitively.
func hasToken(v, token string) bool {
	for len(v) > 0 {
		var part string
		part, v, _ = strings.Cut(v, ",")
		if asciiEqualFold(strings.Trim(part, " \t"), token) {
			return true
		}
	}
	return false
}

// handoff is the listener net/http serves on Serve's fast path: the
// connections whose first request is not a WebSocket handshake.
type handoff struct {
	ln    net.Listener
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (h *handoff) Accept() (net.Conn, error) {
	select {
	case c := <-h.conns:
		return c, nil
	case <-h.done:
		return nil, net.ErrClosed
	}
}

// Close closes the real listener too: net/http's Shutdown closes its
// listeners, and that is how Serve's accept loop learns of it.
func (h *handoff) Close() error {
	h.once.Do(func() {
		close(h.done)
		h.ln.Close()
	})
	return nil
}

func (h *handoff) Addr() net.Addr { return h.ln.Addr() }

func (h *handoff) pass(c net.Conn) {
	select {
	case h.conns <- c:
	case <-h.done:
		c.Close()
	}
}

// prefixConn is a connection whose first bytes were already read.
type prefixConn struct {
	net.Conn
	head []byte
}

func (p *prefixConn) Read(b []byte) (int, error) {
	if len(p.head) > 0 {
		n := copy(b, p.head)
		p.head = p.head[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}
