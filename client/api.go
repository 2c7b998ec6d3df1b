package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/tether-chat/tether/protocol"
)

// API is a client of a Tether server's HTTP API (docs/api.md), for the
// application's backend: publish, broadcast, presence, history, rooms,
// disconnect, unsubscribe and info, with the server's API key. Errors the
// server answers are *protocol.Error (Code, Message); a 503 means
// "retry": give a publish an ID and it is published once however often it
// is retried.
type API struct {
	base string
	key  string
	// HTTP is the client requests go through (http.DefaultClient if nil).
	HTTP *http.Client
}

// NewAPI returns a client of the API at baseURL (http://host:port) with
// the server's --api-key.
func NewAPI(baseURL, key string) *API {
	return &API{base: strings.TrimRight(baseURL, "/"), key: key}
}

// Publication is what Publish and Broadcast send.
type Publication struct {
	Room string `json:"room,omitempty"` // a room, or
	User string `json:"user,omitempty"` // a user's private inbox
	Text string `json:"text"`
	From string `json:"from,omitempty"` // shown as the sender ("system" by default)
	ID   string `json:"id,omitempty"`   // the idempotency key: a retry publishes once
}

// Published is where a publication landed, or why not (Error).
type Published struct {
	Room  string          `json:"room,omitempty"`
	Seq   uint64          `json:"seq"`
	Epoch string          `json:"epoch"`
	Error *protocol.Error `json:"error,omitempty"`
}

// RoomCount is a room and its number of users.
type RoomCount struct {
	Room  string `json:"room"`
	Count int    `json:"count"`
}

// ServerInfo is /api/info: the node answering and the cluster.
type ServerInfo struct {
	Node struct {
		ID          string  `json:"id"`
		Version     string  `json:"version"`
		Engine      string  `json:"engine"`
		Ready       bool    `json:"ready"`
		Connections int     `json:"connections"`
		Users       int     `json:"users"`
		Rooms       int     `json:"rooms"`
		Uptime      float64 `json:"uptime_seconds"`
	} `json:"node"`
	Instances []string `json:"instances"`
	Online    int      `json:"online"`
}

// Publish sends a message to a room or a user's inbox.
func (a *API) Publish(ctx context.Context, p Publication) (Published, error) {
	var out Published
	return out, a.do(ctx, "POST", "/api/publish", nil, p, &out)
}

// Broadcast sends one message to several rooms; each result says how it
// went in its room.
func (a *API) Broadcast(ctx context.Context, rooms []string, p Publication) ([]Published, error) {
	var out struct {
		Results []Published `json:"results"`
	}
	err := a.do(ctx, "POST", "/api/broadcast", nil, struct {
		Rooms []string `json:"rooms"`
		Publication
	}{rooms, p}, &out)
	return out.Results, err
}

// Presence lists a room's users (at most limit; 0 for the server's
// default of 1,000), with the room's size.
func (a *API) Presence(ctx context.Context, room string, limit int) (protocol.Members, error) {
	var out protocol.Members
	q := url.Values{"room": {room}}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	return out, a.do(ctx, "GET", "/api/presence", q, nil, &out)
}

// Online says which of users are online, and how many users are online
// in all.
func (a *API) Online(ctx context.Context, users ...string) (map[string]bool, int, error) {
	var out struct {
		Online map[string]bool `json:"online"`
		Count  int             `json:"count"`
	}
	err := a.do(ctx, "GET", "/api/online", url.Values{"user": users}, nil, &out)
	return out.Online, out.Count, err
}

// Counts gives each room's number of users.
func (a *API) Counts(ctx context.Context, rooms ...string) (map[string]int, error) {
	var out struct {
		Rooms map[string]int `json:"rooms"`
	}
	err := a.do(ctx, "GET", "/api/counts", url.Values{"room": rooms}, nil, &out)
	return out.Rooms, err
}

// History pages through a room's retained messages: after a seq (oldest
// first), before one, or (after 0) the latest page.
func (a *API) History(ctx context.Context, room string, after, before uint64, limit int) (protocol.HistoryPage, error) {
	var out protocol.HistoryPage
	q := url.Values{"room": {room}}
	for k, v := range map[string]uint64{"after": after, "before": before, "limit": uint64(limit)} {
		if v > 0 {
			q.Set(k, strconv.FormatUint(v, 10))
		}
	}
	return out, a.do(ctx, "GET", "/api/history", q, nil, &out)
}

// Rooms lists the rooms that have users, the fullest first.
func (a *API) Rooms(ctx context.Context, limit int) ([]RoomCount, error) {
	var out struct {
		Rooms []RoomCount `json:"rooms"`
	}
	q := url.Values{}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	return out.Rooms, a.do(ctx, "GET", "/api/rooms", q, nil, &out)
}

// Disconnect closes every connection of user, on every node, with code
// (0: 4403) and reason; it reports whether the user was online.
func (a *API) Disconnect(ctx context.Context, user string, code protocol.CloseCode, reason string) (bool, error) {
	var out struct {
		Online bool `json:"online"`
	}
	err := a.do(ctx, "POST", "/api/disconnect", nil, map[string]any{"user": user, "code": code, "reason": reason}, &out)
	return out.Online, err
}

// Unsubscribe takes every connection of user out of room, on every node;
// it reports whether the user was online.
func (a *API) Unsubscribe(ctx context.Context, user, room string) (bool, error) {
	var out struct {
		Online bool `json:"online"`
	}
	err := a.do(ctx, "POST", "/api/unsubscribe", nil, map[string]string{"user": user, "room": room}, &out)
	return out.Online, err
}

// Info describes the node that answers and the cluster.
func (a *API) Info(ctx context.Context) (ServerInfo, error) {
	var out ServerInfo
	return out, a.do(ctx, "GET", "/api/info", nil, nil, &out)
}

func (a *API) do(ctx context.Context, method, path string, q url.Values, body, out any) error {
	u := a.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	var rd *bytes.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	var req *http.Request
	var err error
	if rd != nil {
		req, err = http.NewRequestWithContext(ctx, method, u, rd)
	} else {
		req, err = http.NewRequestWithContext(ctx, method, u, nil)
	}
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+a.key)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	hc := a.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e protocol.Error
		if json.NewDecoder(resp.Body).Decode(&e) == nil && e.Code != "" {
			return &e
		}
		return fmt.Errorf("tether api: %s %s: %s", method, path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}
