// Package engine defines what the hub needs from the layer that orders,
// stores and fans out messages: sequence numbers and epochs per stream,
// bounded history, delivery to every node subscribed to a stream, and
// presence sets.
//
// It is a leaf package: implementations (engine/memory, later engine/redis)
// import it and protocol, never the server. Every method is safe for
// concurrent use.
package engine

import (
	"context"
	"errors"
	"strings"
	"time"
)

// Stream names. A stream is a room's message log or a user's private inbox;
// room and user names cannot contain ':' (see protocol.ValidateRoom), so the
// prefix is unambiguous.
const (
	roomPrefix = "room:"
	userPrefix = "user:"
)

// RoomStream is the stream of a room.
func RoomStream(room string) string { return roomPrefix + room }

// UserStream is a user's private inbox.
func UserStream(user string) string { return userPrefix + user }

// ParseStream splits a stream name into its kind ("room" or "user") and name.
func ParseStream(stream string) (kind, name string, ok bool) {
	if r, found := strings.CutPrefix(stream, roomPrefix); found {
		return "room", r, true
	}
	if u, found := strings.CutPrefix(stream, userPrefix); found {
		return "user", u, true
	}
	return "", "", false
}

// Publication is one message on a stream. The engine treats the content
// fields as opaque; it sets Seq and Epoch.
type Publication struct {
	Stream string `json:"s"`
	// Seq is the position in the stream, starting at 1 and increasing by one
	// per retained publication. Ephemeral publications have Seq 0.
	Seq uint64 `json:"q,omitempty"`
	// Epoch names one continuous history of the stream. It changes when the
	// stream's history is lost (a memory engine restarted, a Redis key
	// evicted), so a client holding (epoch, seq) from before can tell that
	// its position no longer means anything, instead of silently missing
	// messages or receiving unrelated ones under reused numbers.
	Epoch string `json:"e,omitempty"`

	Type     string `json:"t"`           // protocol message type: chat, direct, presence, left
	Room     string `json:"r,omitempty"` // chat, presence
	From     string `json:"f,omitempty"` // chat, direct
	To       string `json:"o,omitempty"` // direct
	Text     string `json:"x,omitempty"` // chat, direct
	ClientID string `json:"i,omitempty"` // the sender's message id
	User     string `json:"u,omitempty"` // presence, left
	Action   string `json:"a,omitempty"` // presence
	Count    int    `json:"c,omitempty"` // presence
	TS       int64  `json:"ts"`          // ms since the Unix epoch, set by the publisher

	// SkipConn, when not zero, is the one connection (on the publishing node)
	// that must not receive this publication: the tab that sent a direct
	// message gets an ack, its other tabs get the copy.
	SkipConn uint64 `json:"k,omitempty"`
	// Node is the publishing node's id; SkipConn applies only there.
	Node string `json:"n,omitempty"`
}

// Handler receives the publications of the streams a node subscribed to,
// in sequence order per stream. It must not block and must not call back
// into the engine: it runs on the engine's delivery path, possibly under the
// stream's lock.
type Handler func(p *Publication)

// PublishOptions tune one Publish.
type PublishOptions struct {
	// Ephemeral publications are delivered but not numbered or retained
	// (presence changes, "partner left" notices).
	Ephemeral bool
}

// HistoryQuery selects retained publications of one stream.
type HistoryQuery struct {
	After  uint64 // only Seq > After
	Before uint64 // only Seq < Before; 0 means no upper bound
	Limit  int    // at most this many; 0 means the engine's default
	// Latest returns the newest Limit publications of the range instead of
	// the oldest (paging back from the end of a chat).
	Latest bool
}

// History is a page of a stream's retained publications, oldest first.
type History struct {
	Pubs  []*Publication
	Epoch string
	// Top is the stream's latest sequence (0 for an empty stream).
	Top uint64
	// Oldest is the smallest retained sequence (Top+1 when nothing is
	// retained). A client that saw up to seq S has missed nothing it can
	// still get iff S+1 >= Oldest.
	Oldest uint64
}

// Engine is what the hub runs on.
type Engine interface {
	// Start begins delivering the publications of subscribed streams to h.
	// It is called once, before any other method.
	Start(ctx context.Context, h Handler) error

	// Publish assigns p the stream's next sequence and its epoch, retains it
	// in history (both unless opts.Ephemeral) and delivers it to every node
	// subscribed to p.Stream. Deliveries of one stream happen in sequence
	// order. On error nothing was published.
	Publish(ctx context.Context, p *Publication, opts PublishOptions) error

	// Subscribe and Unsubscribe start and stop delivery of a stream to this
	// node. The hub calls Subscribe when the first local connection needs the
	// stream and Unsubscribe when the last one is gone; calls are not
	// reference counted by the engine.
	Subscribe(ctx context.Context, stream string) error
	Unsubscribe(ctx context.Context, stream string) error

	// History returns retained publications of a stream.
	History(ctx context.Context, stream string, q HistoryQuery) (History, error)

	// PresenceAdd puts user in the named set (a room, or "" for the users
	// online anywhere) and reports whether they were newly added and the
	// set's size afterwards. The hub calls it when the user's first local
	// connection enters the set; PresenceRemove when the last one leaves.
	PresenceAdd(ctx context.Context, set, user string) (added bool, count int, err error)
	PresenceRemove(ctx context.Context, set, user string) (removed bool, count int, err error)
	// PresenceMembers lists up to limit members of a set, sorted (all of
	// them when limit <= 0). Which members make the cut in a larger set is
	// up to the engine.
	PresenceMembers(ctx context.Context, set string, limit int) ([]string, error)
	PresenceHas(ctx context.Context, set, user string) (bool, error)
	PresenceCount(ctx context.Context, set string) (int, error)

	// SaveSession stores a session's state for ttl (a resume can happen on
	// any node); saving again replaces it and its expiry. LoadSession returns
	// nil for an unknown or expired session. DeleteSession forgets the
	// session and its remembered message ids.
	SaveSession(ctx context.Context, s *Session, ttl time.Duration) error
	// SaveSessions saves each of ss as SaveSession would, in as few round
	// trips as the engine can: a node saves every session it holds when it
	// stops and when it refreshes them. On error some may have been saved.
	SaveSessions(ctx context.Context, ss []*Session, ttl time.Duration) error
	LoadSession(ctx context.Context, id string) (*Session, error)
	DeleteSession(ctx context.Context, id string) error

	// ReserveID starts processing the client message id of a session. It
	// returns IDNew the first time (the caller processes the message, then
	// calls CompleteID, or ReleaseID if it failed), IDDone with the
	// recorded sequence when the id was already processed (the caller acks
	// without processing again), or IDInFlight while another attempt is
	// processing it. A session remembers its most recent ids (a bounded
	// window) for as long as the session lives.
	ReserveID(ctx context.Context, session, id string) (IDState, uint64, error)
	CompleteID(ctx context.Context, session, id string, seq uint64) error
	ReleaseID(ctx context.Context, session, id string) error

	// Ready reports whether the engine can take traffic now.
	Ready(ctx context.Context) error

	// Close stops delivery and releases resources.
	Close() error
}

// Immediate is implemented by engines whose calls never wait for the
// network or a disk (the in-memory engine). Callers need not bound such
// calls with a deadline: a context.WithTimeout per call is a timer and a
// few allocations that buy nothing there.
type Immediate interface {
	Immediate()
}

// Session is what a client gets back when it resumes: who it is, the rooms
// it was in and the users it had private conversations with.
type Session struct {
	ID       string   `json:"id"`
	User     string   `json:"user"`
	Rooms    []string `json:"rooms"`
	Partners []string `json:"partners,omitempty"`
}

// IDState is the answer of ReserveID.
type IDState int

const (
	IDNew      IDState = iota // never seen: process it
	IDDone                    // processed before: ack again with the recorded seq
	IDInFlight                // being processed right now
)

// ErrClosed is returned by an engine after Close.
var ErrClosed = errors.New("engine: closed")
