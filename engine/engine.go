// Package engine defines what the hub needs from the layer that orders,
// stores and fans out messages: sequence numbers and epochs per stream,
// bounded history, idempotent publishing, delivery to every node
// subscribed to a stream without gaps, presence sets and sessions.
//
// It is a leaf package: implementations (engine/memory, engine/redis)
// import it and protocol, never the server. Every method is safe for
// concurrent use.
package engine

import (
	"context"
	"errors"
	"sort"
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
	// messages or receiving unrelated ones under reused numbers. A stream
	// that never published has no epoch yet: its position is ("", 0).
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

	// File describes the file this message carries (stored with PutFile).
	File *FileRef `json:"fl,omitempty"`

	// SkipConn, when not zero, is the one connection (on the publishing node)
	// that must not receive this publication: the tab that sent a direct
	// message gets an ack, its other tabs get the copy.
	SkipConn uint64 `json:"k,omitempty"`
	// Node is the publishing node's id; SkipConn applies only there.
	Node string `json:"n,omitempty"`
}

// Partner is the other party of a private message in user's inbox: its
// sender, or, in the sender's own copy, its recipient ("" for a note to
// oneself).
func (p *Publication) Partner(user string) string {
	other := p.From
	if other == user {
		other = p.To
	}
	if other == user {
		return ""
	}
	return other
}

// Handler receives what an engine delivers to this node.
type Handler interface {
	// Deliver hands over one publication of a subscribed stream. For each
	// stream the calls come one at a time and, within an epoch, in
	// sequence order without a gap: after seq n comes n+1 (ephemeral
	// publications, Seq 0, come anywhere in between). When the engine
	// cannot keep that promise for a stream it calls Lost instead of
	// skipping. Deliver must not block and must not call back into the
	// engine.
	Deliver(p *Publication)
	// Lost says that this node may have missed publications of a
	// subscribed stream that the engine could not fill in from history
	// (the history no longer reaches back, or the stream's epoch
	// changed). Deliveries go on from the stream's current position; the
	// node's readers of the stream must recover what they missed on their
	// own (a client resumes from its position and is told whether the
	// history still covered it). Lost must not block.
	Lost(stream string)
}

// SweepHandler is what a Handler may also be, on an engine whose nodes
// can die (Redis): told of each user that a sweep of a dead node's
// presence took out of a set (a room, or "" for online anywhere) — the
// leave the dead node could not report. Exactly one live node is told of
// each. Swept must not block and must not call back into the engine.
type SweepHandler interface {
	Swept(set, user string)
}

// PublishOptions tune one Publish.
type PublishOptions struct {
	// Ephemeral publications are delivered but not numbered or retained
	// (presence changes, "partner left" notices).
	Ephemeral bool
	// Key makes a retained publish idempotent. The first Publish of a
	// stream with a Key records its result (seq, epoch) in the same atomic
	// step that assigns the sequence and retains the message; for KeyTTL
	// afterwards every Publish to that stream with that Key publishes
	// nothing and returns the recorded result — whether it is a retry of a
	// call whose reply was lost, a client's re-send, or the same message
	// arriving on another node while the first attempt is in flight. No
	// mark is left between attempts, so none can outlive its owner.
	Key string
}

// Published is the result of one publication of a PublishBatch: as
// Publish's dup and err.
type Published struct {
	Dup bool
	Err error
}

// PublishEach is PublishBatch for an engine whose store is in the process:
// Publish, one after the other.
func PublishEach(ctx context.Context, b Broker, ps []*Publication, opts []PublishOptions) []Published {
	out := make([]Published, len(ps))
	for i, p := range ps {
		out[i].Dup, out[i].Err = b.Publish(ctx, p, opts[i])
	}
	return out
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
	Pubs []*Publication
	// Epoch is the stream's epoch; "" for a stream that never published
	// (or whose history and position expired).
	Epoch string
	// Top is the stream's latest sequence (0 for an empty stream).
	Top uint64
	// Oldest is the smallest retained sequence (Top+1 when nothing is
	// retained). A client that saw up to seq S has missed nothing it can
	// still get iff S+1 >= Oldest.
	Oldest uint64
}

// Covers reports whether the history still holds every publication after
// position (epoch, seq): the same epoch and nothing trimmed past it. The
// position ("", 0) — nothing seen of a stream that had not published yet —
// is covered by any epoch whose history still starts at seq 1.
func (h History) Covers(epoch string, seq uint64) bool {
	if epoch == "" && seq == 0 {
		return h.Oldest <= 1
	}
	return epoch == h.Epoch && seq+1 >= h.Oldest && seq <= h.Top
}

// Engine is what the hub runs on: the store behind a node, in memory for
// one node or shared (Redis) by several. Its jobs are separate interfaces,
// each with its own contract suite (enginetest.RunBroker, RunPresence,
// RunSessions, RunFiles) run against both engines; Enter spans them so
// that a connection's set-up costs one round trip to the store.
type Engine interface {
	// Start begins delivering the publications of subscribed streams to h.
	// It is called once, before any other method.
	Start(ctx context.Context, h Handler) error

	Broker
	PresenceManager
	SessionStore
	FileStore

	// Enter does, in one step (one round trip to a store), what a
	// connection needs when it is set up, resumes or joins: for each
	// entry, add the user to the set if asked (and announce them), count
	// the set and list it when small, and read the position of a stream
	// (and replay it after a given seq); read the session being resumed;
	// and save a session. Entries are independent: an error fails the
	// call, and then some entries may have been carried out (each is
	// idempotent). loaded is the session in.Load (nil when it does not
	// exist or none was asked for).
	Enter(ctx context.Context, in Entering) (entered []Entered, loaded *Session, err error)

	// Ready reports whether the engine can take traffic now. It answers
	// from what the engine already knows (its own end-to-end checks) and
	// never waits on the store: readiness must not stall with it.
	Ready(ctx context.Context) error

	// Close stops delivery and releases resources.
	Close() error
}

// Broker is the engine's job for streams (a room's messages, a user's
// private inbox): idempotent publishing with sequence numbers and epochs,
// retained history, and fan-out to every node subscribed to a stream.
type Broker interface {
	// Publish assigns p the stream's next sequence and its epoch, retains it
	// in history (both unless opts.Ephemeral) and delivers it to every node
	// subscribed to p.Stream. With opts.Key it is idempotent (see
	// PublishOptions.Key): dup reports that the key was recorded before,
	// nothing was published and p carries the recorded Seq and Epoch.
	//
	// An error that wraps ErrUnavailable means the outcome is unknown: the
	// store may have run the publish before its reply was lost. Publishing
	// again with the same Key tells which, and publishes at most once.
	// Without a Key such a publish is never retried by the engine.
	Publish(ctx context.Context, p *Publication, opts PublishOptions) (dup bool, err error)

	// PublishBatch publishes ps[i] with opts[i] as Publish would, in order
	// (of the publications to one stream, a later one never gets a lower
	// sequence), in as few round trips to the store as the engine can: a
	// connection's consecutive messages go out together instead of one
	// round trip each. Each publication has its own result; a failed one
	// does not stop the others.
	PublishBatch(ctx context.Context, ps []*Publication, opts []PublishOptions) []Published

	// Recorded returns what an earlier Publish with key recorded for
	// stream, while the record is kept (ok false otherwise). The server
	// asks it when a re-sent message is refused (the recipient went
	// offline, the sender left the room) to tell whether its first attempt
	// got through.
	Recorded(ctx context.Context, stream, key string) (seq uint64, epoch string, ok bool, err error)

	// Subscribe and Unsubscribe start and stop delivery of a stream to this
	// node. The hub calls Subscribe when the first local connection needs the
	// stream and Unsubscribe when the last one is gone; calls are not
	// reference counted by the engine. Neither waits for the store: every
	// publication after a position of the stream that this node reads
	// (History, Enter) once Subscribe has returned is delivered.
	Subscribe(ctx context.Context, stream string) error
	Unsubscribe(ctx context.Context, stream string) error

	// History returns retained publications of a stream. It never creates
	// anything: reading a stream that does not exist returns its empty
	// position ("", 0).
	History(ctx context.Context, stream string, q HistoryQuery) (History, error)
}

// PresenceManager is the engine's job for presence: who is in each room,
// and who is online anywhere, counted across nodes.
type PresenceManager interface {
	// PresenceAdd puts user in the named set (a room, or "" for the users
	// online anywhere) and reports whether they were newly added and the
	// set's size afterwards. The hub calls it when the user's first local
	// connection enters the set; PresenceRemove when the last one leaves.
	// A user held by several nodes stays in the set until the last of them
	// removes them (removed reports that), so a leave is announced only
	// when the user is gone from every node.
	PresenceAdd(ctx context.Context, set, user string) (added bool, count int, err error)
	PresenceRemove(ctx context.Context, set, user string) (removed bool, count int, err error)
	// PresenceMembers lists up to limit members of a set, sorted (all of
	// them when limit <= 0). Which members make the cut in a larger set is
	// up to the engine.
	PresenceMembers(ctx context.Context, set string, limit int) ([]string, error)
	PresenceHas(ctx context.Context, set, user string) (bool, error)
	PresenceCount(ctx context.Context, set string) (int, error)
}

// SessionStore is the engine's job for sessions: what a reconnecting
// client resumes, on any node.
type SessionStore interface {
	// SaveSession stores a session's state for ttl (a resume can happen on
	// any node); saving again replaces it and its expiry. LoadSession returns
	// nil for an unknown or expired session. DeleteSession forgets the
	// session.
	SaveSession(ctx context.Context, s *Session, ttl time.Duration) error
	// SaveSessions saves each of ss as SaveSession would, in as few round
	// trips as the engine can: a node saves every session it holds when it
	// stops and when it refreshes them. On error some may have been saved.
	SaveSessions(ctx context.Context, ss []*Session, ttl time.Duration) error
	LoadSession(ctx context.Context, id string) (*Session, error)
	DeleteSession(ctx context.Context, id string) error
}

// FileStore is the engine's job for the files clients send.
type FileStore interface {
	// PutFile stores a file for ttl. Storing an id again stores the same
	// file (a re-sent upload): it is idempotent. GetFile returns a stored
	// file, or nil when it is unknown or expired.
	PutFile(ctx context.Context, f *File, ttl time.Duration) error
	GetFile(ctx context.Context, id string) (*File, error)
}

// FileRef is what a message says of the file it carries.
type FileRef struct {
	ID    string `json:"id"`
	Name  string `json:"n"`
	Mime  string `json:"m"`
	Size  int    `json:"z"`
	Image bool   `json:"i,omitempty"`
}

// File is a stored file: its bytes, and who may read it (the members of
// Room, or the two users of a private conversation).
type File struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	Mime  string `json:"mime"`
	Image bool   `json:"image,omitempty"`
	Room  string `json:"room,omitempty"`
	From  string `json:"from,omitempty"`
	To    string `json:"to,omitempty"`
	Data  []byte `json:"-"`
}

// Entering is one Engine.Enter call.
type Entering struct {
	Entries []Entry
	// Load is the id of a session to read in the same step ("" none).
	Load string
	// Save, when not nil, is stored for TTL as SaveSession would — when
	// Load is empty, or when the session Load names does not exist: a
	// resume whose session expired starts this one instead, and one that
	// finds its session leaves it as it was.
	Save *Session
	TTL  time.Duration
}

// Entry is one presence set (and one stream) a connection enters: see
// Engine.Enter.
type Entry struct {
	Set  string // a room, or "" for the users online anywhere
	User string
	// Add adds the user to the set, as PresenceAdd does (the user's first
	// connection in it on this node); otherwise the set is only read.
	Add bool
	// Announce, when the user was newly added and the set then has at
	// most AnnounceMax members, is published (ephemerally) with its Count
	// set to the set's size: the presence join event, in the same step.
	Announce    *Publication
	AnnounceMax int
	// List: the set's members are listed (sorted) when it has at most List
	// of them; 0 never lists.
	List int
	// Stream, when not empty, is read: its position, and with Replay its
	// publications after seq After (at most one history page).
	Stream string
	Replay bool
	After  uint64
}

// Entered is what Enter found for one Entry.
type Entered struct {
	// Added: the user was newly added to the set (and announced). A retry
	// after a lost reply finds them added by its first attempt, which
	// announced them: false then.
	Added   bool
	Count   int      // the set's size afterwards
	Members []string // the set's members, when Listed
	Listed  bool
	// History is the stream's position (Epoch, Top) and, with Replay, its
	// oldest retained seq (Oldest; 0 without Replay) and the publications
	// after After, oldest first.
	History History
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

// Errors an engine returns.
var (
	// ErrClosed is returned by an engine after Close.
	ErrClosed = errors.New("engine: closed")
	// ErrUnavailable is wrapped by every error that comes from the store
	// not answering (down, stalled, a connection reset): a retry later
	// may succeed. The error's text says what happened, for the log; it
	// is not for clients.
	ErrUnavailable = errors.New("engine: store unavailable")
)

// Stats are an engine's counters of its own work and fault handling, for
// the node's metrics; engines that keep them implement StatsReporter.
type Stats struct {
	Commands           uint64 // commands sent to the store
	PublishRetries     uint64 // idempotent publishes run again after the store did not answer
	SubscriptionResets uint64 // pub/sub connections replaced (broken, or found dead by the end-to-end probe)
	ProbeFailures      uint64 // end-to-end probes that did not come back in time
	GapFills           uint64 // gaps in a stream's deliveries filled from history
	StreamsLost        uint64 // gaps that history no longer covered (Handler.Lost)
}

// StatsReporter is implemented by engines that keep Stats.
type StatsReporter interface{ Stats() Stats }

// Inspector is implemented by engines that can list what the cluster
// holds, for the server API and the admin page. Listing is not on any
// message's path; it may cost the store time proportional to what it
// lists.
type Inspector interface {
	// Sets lists the presence sets (rooms; not the online set "") with
	// their sizes, the largest first, at most limit of them.
	Sets(ctx context.Context, limit int) ([]SetSize, error)
	// Instances lists the node instances alive now (one per running node),
	// or nil when the engine serves one node only.
	Instances(ctx context.Context) ([]string, error)
}

// SetSize is a presence set and its number of users.
type SetSize struct {
	Set   string `json:"room"`
	Count int    `json:"count"`
}

// TopSets sorts sets by size, largest first (then by name), and keeps at
// most limit (all when limit <= 0).
func TopSets(sets []SetSize, limit int) []SetSize {
	sort.Slice(sets, func(i, j int) bool {
		if sets[i].Count != sets[j].Count {
			return sets[i].Count > sets[j].Count
		}
		return sets[i].Set < sets[j].Set
	})
	if limit > 0 && len(sets) > limit {
		sets = sets[:limit]
	}
	return sets
}
