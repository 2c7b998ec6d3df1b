package server

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/tether-chat/tether/internal/ws"
)

// handshake is one WebSocket opening request and the way to answer it:
// through net/http (w; the connection is hijacked once the handshake is
// accepted) or, on Serve's fast path, on the connection itself (nc, with
// early: what the client sent after its request head).
type handshake struct {
	req          wsRequest
	w            http.ResponseWriter
	nc           net.Conn
	early        []byte
	writeTimeout time.Duration // for an error answered on nc
}

// fail answers the request with an HTTP error (and the extra header
// name/value pairs) and ends it.
func (h *handshake) fail(status int, msg string, header ...string) {
	if h.w != nil {
		for i := 0; i+1 < len(header); i += 2 {
			h.w.Header().Set(header[i], header[i+1])
		}
		http.Error(h.w, msg, status)
		return
	}
	b := fmt.Appendf(nil, "HTTP/1.1 %d %s\r\n", status, http.StatusText(status))
	for i := 0; i+1 < len(header); i += 2 {
		b = fmt.Appendf(b, "%s: %s\r\n", header[i], header[i+1])
	}
	b = fmt.Appendf(b, "Content-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\n"+
		"Connection: close\r\nContent-Length: %d\r\n\r\n%s\n", len(msg)+1, msg)
	h.nc.SetWriteDeadline(time.Now().Add(h.writeTimeout))
	h.nc.Write(b)
	h.nc.Close()
}

// take takes the connection over from net/http (on the fast path it is
// ours already) and returns what the client sent after its request.
func (h *handshake) take() (net.Conn, []byte, error) {
	if h.w == nil {
		return h.nc, h.early, nil
	}
	conn, brw, err := http.NewResponseController(h.w).Hijack()
	if err != nil {
		return nil, nil, err
	}
	var early []byte
	if n := brw.Reader.Buffered(); n > 0 {
		early, _ = brw.Reader.Peek(n)
		early = append([]byte(nil), early...)
	}
	conn.SetDeadline(time.Time{}) // net/http's read deadline no longer applies
	return conn, early, nil
}

// upgrade does the server's side of the opening handshake (RFC 6455
// section 4.2) and takes the connection. It answers a bad request itself
// and returns an error. It does not write the 101 response but returns it
// (resp), so that the caller can send it in the same write(2) as the first
// frames. early holds bytes the client sent right after its request,
// already read from the socket.
//
// No subprotocol and no extension (compression) is negotiated: Tether's
// messages are small JSON texts, and per-message deflate would cost every
// connection a compressor's memory.
func (s *Server) upgrade(h *handshake) (nc net.Conn, resp, early []byte, err error) {
	r := &h.req
	fail := func(status int, msg string, header ...string) (net.Conn, []byte, []byte, error) {
		err := errors.New(msg)
		s.handshakeError(h, status, err, header...)
		return nil, nil, nil, err
	}
	if !r.connectionUpgrade {
		return fail(http.StatusBadRequest, "not a WebSocket handshake: the Connection header does not contain 'upgrade'")
	}
	if !r.upgradeWebSocket {
		return fail(http.StatusBadRequest, "not a WebSocket handshake: the Upgrade header does not contain 'websocket'")
	}
	if r.version != "13" {
		return fail(http.StatusUpgradeRequired, "unsupported WebSocket version "+quoteOrNone(r.version)+": this server speaks 13",
			"Sec-WebSocket-Version", "13")
	}
	key := r.key
	if !ws.ValidKey(key) {
		return fail(http.StatusBadRequest, "Sec-WebSocket-Key is not 16 bytes in base64")
	}
	if !s.checkOrigin(r) {
		return fail(http.StatusForbidden, "origin not allowed")
	}
	conn, early, err := h.take()
	if err != nil {
		return fail(http.StatusInternalServerError, "cannot take over the connection: "+err.Error())
	}
	resp = make([]byte, 0, 160)
	resp = append(resp, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "...)
	resp = ws.AppendAcceptKey(resp, key)
	resp = append(resp, "\r\n\r\n"...)
	return conn, resp, early, nil
}

// wsRequest is what the handshake reads from a WebSocket opening request,
// whether net/http parsed it (Handler(), TLS; requestFromHTTP) or Serve's
// fast path did (parseUpgrade, with no http.Request, header map or parsed
// query: a few substrings of one copy of the head).
type wsRequest struct {
	clientID          string // {client_id} of /ws/{client_id}; "" for /ws
	withID            bool   // the path was /ws/{client_id}
	tether            bool   // the path was under /tether/: tether's protocol whatever the dialects
	rawQuery          string
	host              string
	remote            string // the peer's host:port
	connectionUpgrade bool   // Connection lists "upgrade"
	upgradeWebSocket  bool   // Upgrade lists "websocket"
	// The first value of each header.
	version, key, origin, authorization, cookie string
}

func requestFromHTTP(r *http.Request) wsRequest {
	return wsRequest{
		clientID: r.PathValue("client_id"), withID: r.PathValue("client_id") != "",
		tether:   strings.HasPrefix(r.URL.Path, "/tether/"),
		rawQuery: r.URL.RawQuery, host: r.Host, remote: r.RemoteAddr,
		connectionUpgrade: headerHasToken(r.Header, "Connection", "upgrade"),
		upgradeWebSocket:  headerHasToken(r.Header, "Upgrade", "websocket"),
		version:           r.Header.Get("Sec-Websocket-Version"), key: r.Header.Get("Sec-Websocket-Key"),
		origin: r.Header.Get("Origin"), authorization: r.Header.Get("Authorization"), cookie: r.Header.Get("Cookie"),
	}
}

// query returns the first value of the query parameter name, as
// url.ParseQuery(rawQuery).Get(name) does (pairs with a semicolon or a bad
// escape are skipped), without building the map.
func (r *wsRequest) query(name string) string {
	q := r.rawQuery
	for q != "" {
		var pair string
		pair, q, _ = strings.Cut(q, "&")
		if pair == "" || strings.Contains(pair, ";") {
			continue
		}
		key, value, _ := strings.Cut(pair, "=")
		key, err := url.QueryUnescape(key)
		if err != nil || key != name {
			continue
		}
		if value, err = url.QueryUnescape(value); err != nil {
			continue
		}
		return value
	}
	return ""
}

// headerHasToken says whether a comma-separated header (any of its lines)
// contains token, case-insensitively.
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		if hasToken(v, token) {
			return true
		}
	}
	return false
}

func quoteOrNone(v string) string {
	if v == "" {
		return "(none)"
	}
	return "'" + v + "'"
}
