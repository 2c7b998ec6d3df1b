package server

import (
	"encoding/hex"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/tether-chat/tether/auth"
)

// Files are sent by clients in binary frames and stored by their sessions
// (server/session/files.go); the node serves them back over HTTP.

// serveFile answers GET /files/{id}. An image that is safe inline (PNG,
// JPEG, GIF, WebP) is served as itself; anything else only as a download.
// Nothing is sniffed by the browser, nothing served runs a script. In
// token mode the request carries a token (?token= or Authorization) of a
// user the file was for: one the room allows, or either end of a private
// conversation; in open mode the unguessable link is the key.
func (s *Server) serveFile(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := s.opContext(10 * time.Second)
	defer cancel()
	f, err := s.eng.GetFile(ctx, r.PathValue("id"))
	if err != nil {
		http.Error(w, "the file store did not answer; try again", http.StatusServiceUnavailable)
		return
	}
	if f == nil {
		http.Error(w, "no such file (files are kept as long as messages are)", http.StatusNotFound)
		return
	}
	if s.cfg.AuthSecret != "" {
		tok := r.URL.Query().Get("token")
		if h := r.Header.Get("Authorization"); tok == "" && len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
			tok = strings.TrimSpace(h[7:])
		}
		claims, err := auth.Verify([]byte(s.cfg.AuthSecret), tok, time.Now())
		if err != nil {
			http.Error(w, "a token is required: "+err.Error(), http.StatusUnauthorized)
			return
		}
		if !(f.Room != "" && claims.MayJoin(f.Room) || f.Room == "" && (claims.Subject == f.From || claims.Subject == f.To)) {
			http.Error(w, "this file is not yours to read", http.StatusForbidden)
			return
		}
	}
	hd := w.Header()
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Content-Security-Policy", "default-src 'none'; sandbox")
	hd.Set("Cache-Control", "private, max-age=600")
	if f.Image {
		hd.Set("Content-Type", f.Mime)
		hd.Set("Content-Disposition", "inline")
	} else {
		hd.Set("Content-Type", "application/octet-stream")
		hd.Set("Content-Disposition", "attachment; filename*=UTF-8''"+urlPathEscape(f.Name))
	}
	hd.Set("Content-Length", strconv.Itoa(len(f.Data)))
	w.Write(f.Data)
}

// urlPathEscape escapes a file name for Content-Disposition's filename*
// (RFC 5987): everything but unreserved characters is percent-encoded.
func urlPathEscape(name string) string {
	var b strings.Builder
	for i := 0; i < len(name); i++ {
		ch := name[i]
		if 'a' <= ch && ch <= 'z' || 'A' <= ch && ch <= 'Z' || '0' <= ch && ch <= '9' || strings.IndexByte("-._~", ch) >= 0 {
			b.WriteByte(ch)
		} else {
			b.WriteString("%" + strings.ToUpper(hex.EncodeToString([]byte{ch})))
		}
	}
	return b.String()
}
