package server

import (
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"net/http"
	"strings"
	"time"
)

// upgrade does the server's side of the opening handshake (RFC 6455
// section 4.2) and hijacks the connection. It answers a bad request itself
// (handshakeError) and returns an error. It does not write the 101
// response but returns it (resp), so that the caller can send it in the
// same write(2) as the first frames. early holds bytes the client sent
// right after its request, already read from the socket.
//
// No subprotocol and no extension (compression) is negotiated: Tether's
// messages are small JSON texts, and per-message deflate would cost every
// connection a compressor's memory.
func (s *Server) upgrade(w http.ResponseWriter, r *http.Request) (raw *rawConn, resp, early []byte, err error) {
	fail := func(status int, msg string) (*rawConn, []byte, []byte, error) {
		err := errors.New(msg)
		s.handshakeError(w, r, status, err)
		return nil, nil, nil, err
	}
	if !headerHasToken(r.Header, "Connection", "upgrade") {
		return fail(http.StatusBadRequest, "not a WebSocket handshake: the Connection header does not contain 'upgrade'")
	}
	if !headerHasToken(r.Header, "Upgrade", "websocket") {
		return fail(http.StatusBadRequest, "not a WebSocket handshake: the Upgrade header does not contain 'websocket'")
	}
	if v := r.Header.Get("Sec-Websocket-Version"); v != "13" {
		w.Header().Set("Sec-WebSocket-Version", "13")
		return fail(http.StatusUpgradeRequired, "unsupported WebSocket version "+quoteOrNone(v)+": this server speaks 13")
	}
	key := r.Header.Get("Sec-Websocket-Key")
	if k, err := base64.StdEncoding.DecodeString(key); err != nil || len(k) != 16 {
		return fail(http.StatusBadRequest, "Sec-WebSocket-Key is not 16 bytes in base64")
	}
	if !s.checkOrigin(r) {
		return fail(http.StatusForbidden, "origin not allowed")
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return fail(http.StatusInternalServerError, "cannot take over the connection: "+err.Error())
	}
	if n := brw.Reader.Buffered(); n > 0 {
		early, _ = brw.Reader.Peek(n)
		early = append([]byte(nil), early...)
	}
	raw = &rawConn{Conn: conn, timeout: s.cfg.WriteTimeout}
	conn.SetDeadline(time.Time{}) // net/http's read deadline no longer applies
	resp = make([]byte, 0, 160)
	resp = append(resp, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "...)
	resp = appendAcceptKey(resp, key)
	resp = append(resp, "\r\n\r\n"...)
	return raw, resp, early, nil
}

const acceptGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// appendAcceptKey appends Sec-WebSocket-Accept for the client's key.
func appendAcceptKey(b []byte, key string) []byte {
	h := sha1.New()
	h.Write([]byte(key))
	h.Write([]byte(acceptGUID))
	var sum [sha1.Size]byte
	return base64.StdEncoding.AppendEncode(b, h.Sum(sum[:0]))
}

// headerHasToken says whether a comma-separated header (any of its lines)
// contains token, case-insensitively.
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for part := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(part), token) {
				return true
			}
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
