package server

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/tether-chat/tether/engine"
	"github.com/tether-chat/tether/protocol"
)

// The backend API lets a service publish into rooms and private inboxes and
// read presence, over HTTP with an API key. Messages it publishes get
// sequence numbers, are retained and recoverable like any other.

type publishRequest struct {
	Room string `json:"room"` // a room, or
	User string `json:"user"` // a user's private inbox
	Text string `json:"text"`
	From string `json:"from"` // shown as the sender; "system" by default
	// ID is an optional message id: passed to clients, and the publish's
	// idempotency key, so that a backend that retries a request whose
	// answer it did not get publishes the message once.
	ID string `json:"id"`
}

type publishResponse struct {
	Seq   uint64 `json:"seq"`
	Epoch string `json:"epoch"`
}

type presenceResponse struct {
	Room  string   `json:"room"`
	Users []string `json:"users"`
	Count int      `json:"count"`
}

type apiError struct {
	Error string `json:"error"`
}

// apiAuthorized checks the API key in constant time. The key is never
// logged.
func (s *Server) apiAuthorized(w http.ResponseWriter, r *http.Request) bool {
	if s.cfg.APIKey == "" {
		writeJSON(w, http.StatusNotFound, apiError{"the API is disabled: start the server with --api-key"})
		return false
	}
	key := r.Header.Get("X-API-Key")
	if h := r.Header.Get("Authorization"); key == "" && len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		key = strings.TrimSpace(h[7:])
	}
	if subtle.ConstantTimeCompare([]byte(key), []byte(s.cfg.APIKey)) != 1 {
		s.log.Warn("api request refused: missing or wrong API key", "remote", r.RemoteAddr, "path", r.URL.Path)
		writeJSON(w, http.StatusUnauthorized, apiError{"missing or wrong API key (Authorization: Bearer KEY)"})
		return false
	}
	return true
}

func (s *Server) apiPublish(w http.ResponseWriter, r *http.Request) {
	if !s.apiAuthorized(w, r) {
		return
	}
	if s.shuttingDown.Load() {
		writeJSON(w, http.StatusServiceUnavailable, apiError{"shutting down"})
		return
	}
	var req publishRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, s.cfg.MaxMessageSize))
	if err := dec.Decode(&req); err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{"body must be a JSON object: " + err.Error()})
		return
	}
	if req.From == "" {
		req.From = "system"
	}
	var p *engine.Publication
	now := time.Now().UnixMilli()
	switch {
	case (req.Room == "") == (req.User == ""):
		writeJSON(w, http.StatusBadRequest, apiError{`give exactly one of "room" and "user"`})
		return
	case req.Room != "":
		if msg := protocol.ValidateRoom(req.Room); msg != "" {
			writeJSON(w, http.StatusBadRequest, apiError{msg})
			return
		}
		p = &engine.Publication{Stream: engine.RoomStream(req.Room), Type: protocol.TypeChat, Room: req.Room,
			From: req.From, Text: req.Text, ClientID: req.ID, TS: now}
	default:
		if msg := protocol.ValidateUser(req.User); msg != "" {
			writeJSON(w, http.StatusBadRequest, apiError{msg})
			return
		}
		p = &engine.Publication{Stream: engine.UserStream(req.User), Type: protocol.TypeDirect, From: req.From,
			To: req.User, Text: req.Text, ClientID: req.ID, TS: now}
	}
	for _, check := range []string{protocol.ValidateUser(req.From), protocol.ValidateText(req.Text, s.cfg.MaxText)} {
		if check != "" {
			writeJSON(w, http.StatusBadRequest, apiError{check})
			return
		}
	}
	if len(req.ID) > protocol.MaxIDLength {
		writeJSON(w, http.StatusBadRequest, apiError{"id is too long"})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	key := ""
	if req.ID != "" {
		key = "api:" + req.ID
	}
	if err := s.publish(ctx, p, key); err != nil {
		var pe *protocol.Error
		if errors.As(err, &pe) {
			err = errors.New(pe.Message)
		}
		writeJSON(w, http.StatusServiceUnavailable, apiError{err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, publishResponse{Seq: p.Seq, Epoch: p.Epoch})
}

func (s *Server) apiPresence(w http.ResponseWriter, r *http.Request) {
	if !s.apiAuthorized(w, r) {
		return
	}
	room := r.URL.Query().Get("room")
	if msg := protocol.ValidateRoom(room); msg != "" {
		writeJSON(w, http.StatusBadRequest, apiError{"room: " + msg})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	users, err := s.eng.PresenceMembers(ctx, room, 0)
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, apiError{s.engineFailed("api presence", err).Message})
		return
	}
	writeJSON(w, http.StatusOK, presenceResponse{Room: room, Users: users, Count: len(users)})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
