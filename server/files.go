package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/tether-chat/tether/auth"
	"github.com/tether-chat/tether/engine"
	"github.com/tether-chat/tether/protocol"
)

// Files: a client sends a file in one binary frame (protocol.EncodeFile);
// the node checks it (its bytes, not its name or declared type), stores it
// in the engine for as long as the history keeps messages (HistoryTTL),
// and publishes a chat or direct message that describes it, acked and
// recovered like any other. Clients fetch the bytes with GET /files/{id}.

// maxBinary is the largest binary frame a client may send: a file and its
// header, or MaxMessageSize when files are off.
func (s *Server) maxBinary() int64 {
	if s.cfg.MaxFileSize < 0 {
		return s.cfg.MaxMessageSize
	}
	return max(s.cfg.MaxMessageSize, int64(s.cfg.MaxFileSize)+2+protocol.MaxFileHeader)
}

// fileID names the file of a client's message: derived from the message's
// idempotency key, so that a re-sent upload stores the same file again
// instead of a second one; random without an id. The session in the key
// is a secret, so the name cannot be guessed.
func (c *Conn) fileID(id string) string {
	if id == "" {
		return randomID(16)
	}
	sum := sha256.Sum256([]byte(c.key(id)))
	return hex.EncodeToString(sum[:16])
}

// onFile handles one file frame.
func (c *Conn) onFile(data []byte) {
	s := c.srv
	h, body, mime, image, perr := protocol.DecodeFile(data, protocol.Limits{MaxText: s.cfg.MaxText}, s.cfg.MaxFileSize)
	if perr != nil {
		s.metrics.filesRefused.WithLabelValues(string(perr.Code)).Inc()
		c.sendError(perr)
		return
	}
	if s.cfg.ImagesOnly && !image {
		s.metrics.filesRefused.WithLabelValues(string(protocol.ErrBadFile)).Inc()
		c.sendError(&protocol.Error{Code: protocol.ErrBadFile, ID: h.ID,
			Message: `"` + h.Name + `" is not a picture; only PNG, JPEG, GIF and WebP pictures are taken here`})
		return
	}
	if !s.allowFile(c.user) {
		s.metrics.filesRefused.WithLabelValues(string(protocol.ErrRateLimited)).Inc()
		c.sendError(&protocol.Error{Code: protocol.ErrRateLimited, ID: h.ID,
			Message: "too many files: at most " + strconv.Itoa(s.cfg.FilesPerMinute) + " a minute; this one was not sent"})
		return
	}
	ctx, cancel := s.opContext(10 * time.Second)
	defer cancel()
	f := &engine.File{ID: c.fileID(h.ID), Name: h.Name, Mime: mime, Image: image, Room: h.Room, From: c.user, To: h.To, Data: body}
	ref := &engine.FileRef{ID: f.ID, Name: f.Name, Mime: f.Mime, Size: len(body), Image: image}
	if h.Room != "" {
		p := &engine.Publication{Stream: engine.RoomStream(h.Room), Type: protocol.TypeChat, Room: h.Room, From: c.user,
			Text: h.Text, ClientID: h.ID, TS: time.Now().UnixMilli(), File: ref}
		err := error(notMember(h.Room))
		if s.hub.IsMember(c, h.Room) {
			err = c.checkMessage(ctx, p)
			if err == nil {
				err = s.storeFile(ctx, f)
			}
			if err == nil {
				err = s.publish(ctx, p, c.key(h.ID))
			}
		}
		c.answer(ctx, h.ID, p, err)
		return
	}
	p, err := c.direct(ctx, h.To, h.Text, h.ID, ref, func() error { return s.storeFile(ctx, f) })
	c.answer(ctx, h.ID, p, err)
}

func (s *Server) storeFile(ctx context.Context, f *engine.File) error {
	if err := s.eng.PutFile(ctx, f, s.cfg.HistoryTTL); err != nil {
		return s.engineFailed("store file", err)
	}
	kind := "other"
	if f.Image {
		kind = "image"
	}
	s.metrics.files.WithLabelValues(kind).Inc()
	s.metrics.fileBytes.Add(float64(len(f.Data)))
	return nil
}

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
