package session

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"time"

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
func (s *Manager) maxBinary() int64 {
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
		return NewID(16)
	}
	sum := sha256.Sum256([]byte(c.key(id)))
	return hex.EncodeToString(sum[:16])
}

// onFile handles one file frame.
func (c *Conn) onFile(data []byte) {
	s := c.m
	h, body, mime, image, perr := protocol.DecodeFile(data, protocol.Limits{MaxText: s.cfg.MaxText}, s.cfg.MaxFileSize)
	if perr != nil {
		s.metrics.FilesRefused.WithLabelValues(string(perr.Code)).Inc()
		c.sendError(perr)
		return
	}
	if s.cfg.ImagesOnly && !image {
		s.metrics.FilesRefused.WithLabelValues(string(protocol.ErrBadFile)).Inc()
		c.sendError(&protocol.Error{Code: protocol.ErrBadFile, ID: h.ID,
			Message: `"` + h.Name + `" is not a picture; only PNG, JPEG, GIF and WebP pictures are taken here`})
		return
	}
	if !s.node.AllowFile(c.user) {
		s.metrics.FilesRefused.WithLabelValues(string(protocol.ErrRateLimited)).Inc()
		c.sendError(&protocol.Error{Code: protocol.ErrRateLimited, ID: h.ID,
			Message: "too many files: at most " + strconv.Itoa(s.cfg.FilesPerMinute) + " a minute; this one was not sent"})
		return
	}
	ctx, cancel := s.OpContext(10 * time.Second)
	defer cancel()
	f := &engine.File{ID: c.fileID(h.ID), Name: h.Name, Mime: mime, Image: image, Room: h.Room, From: c.user, To: h.To, Data: body}
	ref := &engine.FileRef{ID: f.ID, Name: f.Name, Mime: f.Mime, Size: len(body), Image: image}
	if h.Room != "" {
		p := &engine.Publication{Stream: engine.RoomStream(h.Room), Type: protocol.TypeChat, Room: h.Room, From: c.user,
			Text: h.Text, ClientID: h.ID, TS: time.Now().UnixMilli(), File: ref}
		err := error(notMember(h.Room))
		if s.hub.IsMember(c, h.Room) {
			err = c.m.node.CheckMessage(ctx, c, p)
			if err == nil {
				err = s.storeFile(ctx, f)
			}
			if err == nil {
				err = s.Publish(ctx, p, c.key(h.ID))
			}
		}
		c.answer(ctx, h.ID, p, err)
		return
	}
	p, err := c.direct(ctx, h.To, h.Text, h.ID, ref, func() error { return s.storeFile(ctx, f) })
	c.answer(ctx, h.ID, p, err)
}

func (s *Manager) storeFile(ctx context.Context, f *engine.File) error {
	if err := s.eng.PutFile(ctx, f, s.cfg.HistoryTTL); err != nil {
		return s.EngineFailed("store file", err)
	}
	kind := "other"
	if f.Image {
		kind = "image"
	}
	s.metrics.Files.WithLabelValues(kind).Inc()
	s.metrics.FileBytes.Add(float64(len(f.Data)))
	return nil
}
