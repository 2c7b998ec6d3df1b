package server

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/tether-chat/tether/engine"
	"github.com/tether-chat/tether/protocol"
	"github.com/tether-chat/tether/server/hub"
)

// The server API (docs/api.md) lets the application's backend act on the
// cluster over HTTP with the API key: publish to rooms and users,
// broadcast, read presence, counts and history, list rooms, disconnect a
// user or take them out of a room, and read the node's and the cluster's
// state. Errors have the WebSocket protocol's shape: {"code", "message"}.
// Messages it publishes get sequence numbers and are retained and
// recoverable like any other. A disconnect or an unsubscribe reaches the
// user's connections on every node (a control message on the user's
// inbox stream, see control).

// API-only error codes (the others are the protocol's).
const (
	apiUnauthorized protocol.ErrorCode = "unauthorized" // no or a wrong API key
	apiDisabled     protocol.ErrorCode = "disabled"     // the server has no --api-key
)

func (s *Server) apiRoutes() {
	for _, r := range []struct {
		pattern string
		h       func(http.ResponseWriter, *http.Request)
	}{
		{"POST /api/publish", s.apiPublish},
		{"POST /api/broadcast", s.apiBroadcast},
		{"GET /api/presence", s.apiPresence},
		{"GET /api/online", s.apiOnline},
		{"GET /api/counts", s.apiCounts},
		{"GET /api/history", s.apiHistory},
		{"GET /api/rooms", s.apiRooms},
		{"POST /api/disconnect", s.apiDisconnect},
		{"POST /api/unsubscribe", s.apiUnsubscribe},
		{"GET /api/info", s.apiInfo},
	} {
		h := r.h
		s.mux.HandleFunc(r.pattern, func(w http.ResponseWriter, r *http.Request) {
			if s.apiAuthorized(w, r) {
				h(w, r)
			}
		})
	}
}

func apiError(w http.ResponseWriter, status int, code protocol.ErrorCode, format string, args ...any) {
	writeJSON(w, status, protocol.Error{Code: code, Message: fmt.Sprintf(format, args...)})
}

// apiFailed answers an engine failure: 503, retryable.
func (s *Server) apiFailed(w http.ResponseWriter, op string, err error) {
	var pe *protocol.Error
	if !errors.As(err, &pe) {
		pe = s.sess.EngineFailed("api "+op, err)
	}
	writeJSON(w, http.StatusServiceUnavailable, pe)
}

// apiAuthorized checks the API key in constant time. The key is never
// logged.
func (s *Server) apiAuthorized(w http.ResponseWriter, r *http.Request) bool {
	if s.cfg.APIKey == "" {
		apiError(w, http.StatusNotFound, apiDisabled, "the API is disabled: start the server with --api-key")
		return false
	}
	return s.bearerAuthorized(w, r, "API key", s.cfg.APIKey)
}

// bearerAuthorized answers 401 unless the request bears one of keys (the
// empty ones are never accepted) as "Authorization: Bearer KEY" or
// X-API-Key, compared in constant time. Keys are never logged.
func (s *Server) bearerAuthorized(w http.ResponseWriter, r *http.Request, what string, keys ...string) bool {
	got := r.Header.Get("X-API-Key")
	if h := r.Header.Get("Authorization"); got == "" && len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		got = strings.TrimSpace(h[7:])
	}
	ok := 0
	for _, k := range keys {
		if k != "" {
			ok |= subtle.ConstantTimeCompare([]byte(got), []byte(k))
		}
	}
	if ok != 1 {
		s.log.Warn("request refused: missing or wrong "+what, "remote", r.RemoteAddr, "path", r.URL.Path)
		apiError(w, http.StatusUnauthorized, apiUnauthorized, "missing or wrong %s (Authorization: Bearer KEY)", what)
		return false
	}
	return true
}

// apiBody decodes a request's JSON body into v.
func (s *Server) apiBody(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(io.LimitReader(r.Body, s.cfg.MaxMessageSize))
	if err := dec.Decode(v); err != nil {
		apiError(w, http.StatusBadRequest, protocol.ErrBadPayload, "the body must be a JSON object: %v", err)
		return false
	}
	return true
}

func (s *Server) apiContext(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), 5*time.Second)
}

// publishRequest is POST /api/publish (and, with Rooms, /api/broadcast).
type publishRequest struct {
	Room  string   `json:"room"`  // a room, or
	User  string   `json:"user"`  // a user's private inbox
	Rooms []string `json:"rooms"` // broadcast: several rooms
	Text  string   `json:"text"`
	From  string   `json:"from"` // shown as the sender; "system" by default
	// ID is an optional message id: passed to clients, and the publish's
	// idempotency key, so that a backend that retries a request whose
	// answer it did not get publishes the message once.
	ID string `json:"id"`
}

type publishResponse struct {
	Room  string          `json:"room,omitempty"`
	Seq   uint64          `json:"seq,omitempty"`
	Epoch string          `json:"epoch,omitempty"`
	Error *protocol.Error `json:"error,omitempty"`
}

// check validates what every publish shares: the sender, text and id.
func (s *Server) checkPublish(req *publishRequest) *protocol.Error {
	if req.From == "" {
		req.From = "system"
	}
	if msg := protocol.ValidateUser(req.From); msg != "" {
		return &protocol.Error{Code: protocol.ErrBadUser, Message: "from: " + msg}
	}
	if msg := protocol.ValidateText(req.Text, s.cfg.MaxText); msg != "" {
		return &protocol.Error{Code: protocol.ErrBadText, Message: msg}
	}
	if len(req.ID) > protocol.MaxIDLength {
		return &protocol.Error{Code: protocol.ErrBadEnvelope, Message: "id is too long"}
	}
	return nil
}

// apiKey is a publish's idempotency key: per stream, so a broadcast's one
// id makes each room's publish idempotent.
func apiKey(id string) string {
	if id == "" {
		return ""
	}
	return "api:" + id
}

func (s *Server) apiPublish(w http.ResponseWriter, r *http.Request) {
	var req publishRequest
	if !s.apiBody(w, r, &req) {
		return
	}
	if (req.Room == "") == (req.User == "") {
		apiError(w, http.StatusBadRequest, protocol.ErrBadPayload, `give exactly one of "room" and "user"`)
		return
	}
	if perr := s.checkPublish(&req); perr != nil {
		writeJSON(w, http.StatusBadRequest, perr)
		return
	}
	now := time.Now().UnixMilli()
	var p *engine.Publication
	if req.Room != "" {
		if msg := protocol.ValidateRoom(req.Room); msg != "" {
			apiError(w, http.StatusBadRequest, protocol.ErrBadRoom, "%s", msg)
			return
		}
		p = &engine.Publication{Stream: engine.RoomStream(req.Room), Type: protocol.TypeChat, Room: req.Room,
			From: req.From, Text: req.Text, ClientID: req.ID, TS: now}
	} else {
		if msg := protocol.ValidateUser(req.User); msg != "" {
			apiError(w, http.StatusBadRequest, protocol.ErrBadUser, "%s", msg)
			return
		}
		p = &engine.Publication{Stream: engine.UserStream(req.User), Type: protocol.TypeDirect, From: req.From,
			To: req.User, Text: req.Text, ClientID: req.ID, TS: now}
	}
	if s.sess.Stopping() {
		apiError(w, http.StatusServiceUnavailable, protocol.ErrUnavailable, "this node is shutting down; send it to another")
		return
	}
	ctx, cancel := s.apiContext(r)
	defer cancel()
	if err := s.sess.Publish(ctx, p, apiKey(req.ID)); err != nil {
		s.apiFailed(w, "publish", err)
		return
	}
	writeJSON(w, http.StatusOK, publishResponse{Room: req.Room, Seq: p.Seq, Epoch: p.Epoch})
}

// apiBroadcast publishes one message to several rooms (at most 1,000):
// each room gets it in its own order, and the answer says how each went.
func (s *Server) apiBroadcast(w http.ResponseWriter, r *http.Request) {
	var req publishRequest
	if !s.apiBody(w, r, &req) {
		return
	}
	if len(req.Rooms) == 0 || len(req.Rooms) > 1000 {
		apiError(w, http.StatusBadRequest, protocol.ErrBadPayload, `"rooms" must list 1 to 1000 rooms`)
		return
	}
	if perr := s.checkPublish(&req); perr != nil {
		writeJSON(w, http.StatusBadRequest, perr)
		return
	}
	for _, room := range req.Rooms {
		if msg := protocol.ValidateRoom(room); msg != "" {
			apiError(w, http.StatusBadRequest, protocol.ErrBadRoom, "%q: %s", room, msg)
			return
		}
	}
	ctx, cancel := s.apiContext(r)
	defer cancel()
	out := struct {
		Results []publishResponse `json:"results"`
	}{Results: make([]publishResponse, len(req.Rooms))}
	now := time.Now().UnixMilli()
	for i, room := range req.Rooms {
		p := &engine.Publication{Stream: engine.RoomStream(room), Type: protocol.TypeChat, Room: room,
			From: req.From, Text: req.Text, ClientID: req.ID, TS: now}
		res := publishResponse{Room: room}
		if err := s.sess.Publish(ctx, p, apiKey(req.ID)); err != nil {
			var pe *protocol.Error
			if !errors.As(err, &pe) {
				pe = s.sess.EngineFailed("api broadcast", err)
			}
			res.Error = pe
		} else {
			res.Seq, res.Epoch = p.Seq, p.Epoch
		}
		out.Results[i] = res
	}
	writeJSON(w, http.StatusOK, out)
}

// queryRoom reads and checks ?room=.
func queryRoom(w http.ResponseWriter, r *http.Request) (string, bool) {
	room := r.URL.Query().Get("room")
	if msg := protocol.ValidateRoom(room); msg != "" {
		apiError(w, http.StatusBadRequest, protocol.ErrBadRoom, "room: %s", msg)
		return "", false
	}
	return room, true
}

// apiPresence lists a room's users (at most ?limit=, 1000 by default).
func (s *Server) apiPresence(w http.ResponseWriter, r *http.Request) {
	room, ok := queryRoom(w, r)
	if !ok {
		return
	}
	limit := intParam(r, "limit", 1000)
	ctx, cancel := s.apiContext(r)
	defer cancel()
	n, err := s.eng.PresenceCount(ctx, room)
	if err != nil {
		s.apiFailed(w, "presence", err)
		return
	}
	users, err := s.eng.PresenceMembers(ctx, room, limit)
	if err != nil {
		s.apiFailed(w, "presence", err)
		return
	}
	writeJSON(w, http.StatusOK, protocol.Members{Room: room, Users: users, Count: max(n, len(users)), Truncated: n > len(users)})
}

// apiOnline says which of the users (?user=, repeated) are online, and
// how many users are online in all.
func (s *Server) apiOnline(w http.ResponseWriter, r *http.Request) {
	users := r.URL.Query()["user"]
	if len(users) > 1000 {
		apiError(w, http.StatusBadRequest, protocol.ErrBadPayload, "at most 1000 users")
		return
	}
	ctx, cancel := s.apiContext(r)
	defer cancel()
	out := struct {
		Online map[string]bool `json:"online"`
		Count  int             `json:"count"`
	}{Online: map[string]bool{}}
	for _, u := range users {
		if msg := protocol.ValidateUser(u); msg != "" {
			apiError(w, http.StatusBadRequest, protocol.ErrBadUser, "%q: %s", u, msg)
			return
		}
		has, err := s.eng.PresenceHas(ctx, "", u)
		if err != nil {
			s.apiFailed(w, "online", err)
			return
		}
		out.Online[u] = has
	}
	n, err := s.eng.PresenceCount(ctx, "")
	if err != nil {
		s.apiFailed(w, "online", err)
		return
	}
	out.Count = n
	writeJSON(w, http.StatusOK, out)
}

// apiCounts gives the number of users in each room (?room=, repeated).
func (s *Server) apiCounts(w http.ResponseWriter, r *http.Request) {
	rooms := r.URL.Query()["room"]
	if len(rooms) == 0 || len(rooms) > 1000 {
		apiError(w, http.StatusBadRequest, protocol.ErrBadPayload, "give 1 to 1000 rooms as ?room=")
		return
	}
	ctx, cancel := s.apiContext(r)
	defer cancel()
	out := struct {
		Rooms map[string]int `json:"rooms"`
	}{Rooms: map[string]int{}}
	for _, room := range rooms {
		if msg := protocol.ValidateRoom(room); msg != "" {
			apiError(w, http.StatusBadRequest, protocol.ErrBadRoom, "%q: %s", room, msg)
			return
		}
		n, err := s.eng.PresenceCount(ctx, room)
		if err != nil {
			s.apiFailed(w, "counts", err)
			return
		}
		out.Rooms[room] = n
	}
	writeJSON(w, http.StatusOK, out)
}

// apiHistory pages through a room's retained messages, with the room's
// position: ?after= (oldest first), ?before=, ?limit=; without after, the
// latest page.
func (s *Server) apiHistory(w http.ResponseWriter, r *http.Request) {
	room, ok := queryRoom(w, r)
	if !ok {
		return
	}
	after, before := uint64(intParam(r, "after", 0)), uint64(intParam(r, "before", 0))
	q := engine.HistoryQuery{After: after, Before: before, Limit: intParam(r, "limit", 100), Latest: after == 0}
	ctx, cancel := s.apiContext(r)
	defer cancel()
	hist, err := s.eng.History(ctx, engine.RoomStream(room), q)
	if err != nil {
		s.apiFailed(w, "history", err)
		return
	}
	page := protocol.HistoryPage{Room: room, Epoch: hist.Epoch, Top: hist.Top, Oldest: hist.Oldest,
		Messages: make([]protocol.Chat, 0, len(hist.Pubs))}
	for _, p := range hist.Pubs {
		page.Messages = append(page.Messages, hub.ChatOf(p))
	}
	writeJSON(w, http.StatusOK, page)
}

// apiRooms lists the rooms that have users, the fullest first (?limit=,
// 100 by default).
func (s *Server) apiRooms(w http.ResponseWriter, r *http.Request) {
	in, ok := s.eng.(engine.Inspector)
	if !ok {
		apiError(w, http.StatusNotImplemented, protocol.ErrInternal, "this engine cannot list rooms")
		return
	}
	ctx, cancel := s.apiContext(r)
	defer cancel()
	sets, err := in.Sets(ctx, intParam(r, "limit", 100))
	if err != nil {
		s.apiFailed(w, "rooms", err)
		return
	}
	writeJSON(w, http.StatusOK, struct {
		Rooms []engine.SetSize `json:"rooms"`
	}{sets})
}

// disconnectRequest is POST /api/disconnect and /api/unsubscribe.
type controlRequest struct {
	User   string             `json:"user"`
	Room   string             `json:"room"`   // unsubscribe
	Code   protocol.CloseCode `json:"code"`   // disconnect: the close code (4403 by default)
	Reason string             `json:"reason"` // disconnect: the close reason (at most 120 bytes)
}

// controlBody reads a disconnect's or an unsubscribe's body and checks
// its user.
func (s *Server) controlBody(w http.ResponseWriter, r *http.Request) (controlRequest, bool) {
	var req controlRequest
	if !s.apiBody(w, r, &req) {
		return req, false
	}
	if msg := protocol.ValidateUser(req.User); msg != "" {
		apiError(w, http.StatusBadRequest, protocol.ErrBadUser, "user: %s", msg)
		return req, false
	}
	return req, true
}

// apiDisconnect closes every connection of a user, on every node, with
// the code given: a terminal one (1000, 1008, 4401, 4403, …) ends the
// session and the client does not reconnect; a reconnecting one (1012,
// 4000–4999 otherwise) makes it reconnect and resume.
func (s *Server) apiDisconnect(w http.ResponseWriter, r *http.Request) {
	req, ok := s.controlBody(w, r)
	if !ok {
		return
	}
	if req.Code == 0 {
		req.Code = protocol.CloseForbidden
	}
	switch c := req.Code; {
	case c == protocol.CloseNormal, c == protocol.ClosePolicy, c == protocol.CloseRestart, c == protocol.CloseTryAgainLater:
	case c >= 4000 && c <= 4999:
	default:
		apiError(w, http.StatusBadRequest, protocol.ErrBadPayload, "code must be 1000, 1008, 1012, 1013 or 4000-4999")
		return
	}
	if req.Reason == "" {
		req.Reason = "disconnected by the application"
	}
	if len(req.Reason) > 120 {
		apiError(w, http.StatusBadRequest, protocol.ErrBadPayload, "reason is longer than 120 bytes")
		return
	}
	s.apiControl(w, r, &engine.Publication{Action: ctlDisconnect, User: req.User, Count: int(req.Code), Text: req.Reason})
}

// apiUnsubscribe takes every connection of a user out of a room, on every
// node; each is told with `unsubscribed` (so that its client does not join
// the room again when it reconnects).
func (s *Server) apiUnsubscribe(w http.ResponseWriter, r *http.Request) {
	req, ok := s.controlBody(w, r)
	if !ok {
		return
	}
	if msg := protocol.ValidateRoom(req.Room); msg != "" {
		apiError(w, http.StatusBadRequest, protocol.ErrBadRoom, "room: %s", msg)
		return
	}
	s.apiControl(w, r, &engine.Publication{Action: ctlUnsubscribe, User: req.User, Room: req.Room})
}

// apiControl sends a control message to the user's connections on every
// node, and answers whether the user was online.
func (s *Server) apiControl(w http.ResponseWriter, r *http.Request, p *engine.Publication) {
	p.Stream, p.Type, p.TS = engine.UserStream(p.User), hub.TypeControl, time.Now().UnixMilli()
	ctx, cancel := s.apiContext(r)
	defer cancel()
	online, err := s.eng.PresenceHas(ctx, "", p.User)
	if err != nil {
		s.apiFailed(w, "control", err)
		return
	}
	if _, err := s.eng.Publish(ctx, p, engine.PublishOptions{Ephemeral: true}); err != nil {
		s.apiFailed(w, "control", err)
		return
	}
	writeJSON(w, http.StatusOK, struct {
		User   string `json:"user"`
		Online bool   `json:"online"` // false: nothing to do (the user had no connection)
	}{p.User, online})
}

// apiInfo describes this node and the cluster.
func (s *Server) apiInfo(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.info(r.Context()))
}

// NodeInfo is what /api/info says of a node.
type NodeInfo struct {
	ID          string  `json:"id"`
	Version     string  `json:"version"`
	Engine      string  `json:"engine"`
	Ready       bool    `json:"ready"`
	Connections int     `json:"connections"`
	Users       int     `json:"users"` // users with a connection on this node
	Rooms       int     `json:"rooms"` // rooms with a member on this node
	Uptime      float64 `json:"uptime_seconds"`
}

// Info is what /api/info answers.
type Info struct {
	Node NodeInfo `json:"node"`
	// Instances are the nodes alive in the cluster (one per running node),
	// when the engine is shared.
	Instances []string `json:"instances,omitempty"`
	Online    int      `json:"online"` // users online in the whole cluster
}

func (s *Server) info(parent context.Context) Info {
	ctx, cancel := context.WithTimeout(parent, 3*time.Second)
	defer cancel()
	h := s.hub
	users, rooms := h.Sizes()
	engineName := "memory"
	if _, ok := s.eng.(engine.Immediate); !ok {
		engineName = "shared"
	}
	in := Info{Node: NodeInfo{ID: s.nodeID, Version: Version, Engine: engineName, Ready: s.eng.Ready(ctx) == nil && !s.sess.Stopping(),
		Connections: h.Count(), Users: users, Rooms: rooms, Uptime: time.Since(s.started).Seconds()}}
	if ins, ok := s.eng.(engine.Inspector); ok {
		in.Instances, _ = ins.Instances(ctx)
	}
	in.Online, _ = s.eng.PresenceCount(ctx, "")
	return in
}

// Version is the running build's version, set by the binary (tether
// version); "dev" otherwise.
var Version = "dev"

func intParam(r *http.Request, name string, def int) int {
	if v, err := strconv.Atoi(r.URL.Query().Get(name)); err == nil && v >= 0 {
		return v
	}
	return def
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
