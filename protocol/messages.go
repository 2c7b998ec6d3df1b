package protocol

import (
	"encoding/json"
	"strconv"
	"time"
)

// Envelope is the frame every message travels in, in both directions:
//
//	{"type": "chat", "id": "c7", "ts": 1718234567000, "payload": {...}}
//
// On input `data` is accepted as an alias of `payload`. On output the server
// always writes `payload`. `id` is the client's message id; the server echoes
// it in the `ack` or `error` that answers the message.
type Envelope struct {
	Type    string          `json:"type"`
	ID      string          `json:"id,omitempty"`
	TS      int64           `json:"ts,omitempty"`
	Payload json.RawMessage `json:"payload,omitempty"`
}

// Heartbeat tells the client the server's heartbeat settings, in
// milliseconds, so it can size its own timeout.
type Heartbeat struct {
	Interval int64 `json:"interval"` // the server pings a silent connection this often
	Timeout  int64 `json:"timeout"`  // and drops it after interval+timeout of silence
}

// Welcome is the first message on every connection.
type Welcome struct {
	Protocol int    `json:"protocol"`
	User     string `json:"user"`
	// Session identifies this connection's session; present it as
	// ?session= when reconnecting to resume. Resumed says that this
	// connection resumed the session it presented: rooms and private
	// conversations are back, and missed messages follow.
	Session string   `json:"session"`
	Resumed bool     `json:"resumed"`
	Online  int      `json:"online"` // users online on the server (not sockets)
	Rooms   []string `json:"rooms"`  // rooms the connection is in (the auto-joined room)
	// Inbox is the position of the user's private inbox, read once this
	// connection receives the inbox's messages: a client that has
	// received no private message yet resumes the inbox from here, so a
	// first private message sent while it is away is recovered too.
	Inbox     Position  `json:"inbox"`
	Heartbeat Heartbeat `json:"heartbeat"`
	MaxText   int       `json:"max_text"` // longest text accepted, in characters
	// MaxFile is the largest file accepted, in bytes; 0 when files are off.
	MaxFile int `json:"max_file"`
}

// Position is where a stream stands: its epoch and latest sequence. A
// stream that never published is at ("", 0).
type Position struct {
	Epoch string `json:"epoch"`
	Top   uint64 `json:"top"`
}

// Chat is a room message as delivered.
type Chat struct {
	Room  string `json:"room"`
	From  string `json:"from"`
	Text  string `json:"text"`
	Seq   uint64 `json:"seq"`
	Epoch string `json:"epoch"`
	ID    string `json:"id,omitempty"` // the sender's client message id
	TS    int64  `json:"ts"`           // server time of publication, ms since the epoch
	// File is the file this message carries (its Text is then a caption,
	// possibly empty).
	File *FileInfo `json:"file,omitempty"`
}

// Direct is a private message as delivered to the recipient's connections
// and to the sender's other connections. Seq and Epoch are those of the
// receiving user's inbox.
type Direct struct {
	From  string    `json:"from"`
	To    string    `json:"to"`
	Text  string    `json:"text"`
	Seq   uint64    `json:"seq"`
	Epoch string    `json:"epoch"`
	ID    string    `json:"id,omitempty"`
	TS    int64     `json:"ts"`
	File  *FileInfo `json:"file,omitempty"`
}

// Presence actions.
const (
	PresenceJoin  = "join"
	PresenceLeave = "leave"
	// PresenceCount replaces join and leave in big rooms: at most one per
	// room per presence interval, carrying only the new count.
	PresenceCount = "count"
)

// Presence is a room membership change. Presence is per user: a user's
// second tab joining is not an event, their last tab leaving is. In a room
// of more than the server's presence-events limit, per-user events stop and
// a periodic "count" event (User empty) reports the size instead, so
// 10,000 members joining cost 10,000 events, not 10,000².
type Presence struct {
	Room   string `json:"room"`
	User   string `json:"user,omitempty"`
	Action string `json:"action"`
	Count  int    `json:"count"` // users in the room after the change
}

// Members answers `join` and `who`: who is in the room now.
type Members struct {
	Room  string   `json:"room"`
	Users []string `json:"users"`
	Count int      `json:"count"`
	// Truncated is set when Users lists only some of Count members (big
	// rooms).
	Truncated bool `json:"truncated,omitempty"`
	// Epoch and Top are the room's position: after a join, read once this
	// connection was a member (every later message reaches it, and every
	// message up to it that it is sent comes before this reply); after who,
	// the current one. A client that has received nothing from the room
	// yet resumes from here.
	Epoch string `json:"epoch"`
	Top   uint64 `json:"top"`
}

// Left tells a user that a private-conversation partner's last connection
// went away.
type Left struct {
	User string `json:"user"`
}

// Unsubscribed says the connection is no longer in Room: the application
// took the user out of it.
type Unsubscribed struct {
	Room string `json:"room"`
}

// Ack confirms that the message with this id was processed. For chat and
// direct it carries the sequence the message got.
type Ack struct {
	ID  string `json:"id"`
	Seq uint64 `json:"seq,omitempty"`
}

// Error answers a message that was not processed. The connection stays open.
type Error struct {
	Code    ErrorCode `json:"code"`
	Message string    `json:"message"`
	ID      string    `json:"id,omitempty"`
}

func (e *Error) Error() string { return string(e.Code) + ": " + e.Message }

// Pong answers `ping`; Echo carries the ping's payload back unchanged so a
// client can measure its round trip.
type Pong struct {
	Echo json.RawMessage `json:"echo,omitempty"`
}

// Encode builds one server → client frame. It is called once per message,
// never once per recipient: the bytes it returns are shared by every
// connection's send queue and must not be modified.
func Encode(typ, id string, payload any) []byte {
	p, err := json.Marshal(payload)
	if err != nil {
		// Every payload type above marshals; reaching this is a bug.
		panic("protocol: cannot encode " + typ + ": " + err.Error())
	}
	return appendEnvelope(make([]byte, 0, len(p)+len(typ)+len(id)+48), typ, id, time.Now().UnixMilli(), p)
}

// appendEnvelope appends the JSON of Envelope{typ, id, ts, payload} (what
// json.Marshal writes for it) without marshalling the payload a second
// time: marshalling a json.RawMessage field re-scans and compacts it.
func appendEnvelope(b []byte, typ, id string, ts int64, payload []byte) []byte {
	b = appendString(append(b, `{"type":`...), typ)
	if id != "" {
		b = appendString(append(b, `,"id":`...), id)
	}
	if ts != 0 {
		b = strconv.AppendInt(append(b, `,"ts":`...), ts, 10)
	}
	if len(payload) > 0 {
		b = append(append(b, `,"payload":`...), payload...)
	}
	return append(b, '}')
}

// appendString appends s as a JSON string, escaped as json.Marshal does.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // the rare string that needs escaping
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// Recovered follows the replay of one stream after a (re)connect that gave
// a position for it. Recovered true: every message after the position was
// replayed (Count of them), in order, before any newer one. False: the
// position is older than the retained history or from another epoch;
// nothing was replayed, and the client can page back with `history`.
type Recovered struct {
	Room      string `json:"room,omitempty"`  // the room, or
	Inbox     bool   `json:"inbox,omitempty"` // the user's private inbox
	Recovered bool   `json:"recovered"`
	Count     int    `json:"count"`
	Epoch     string `json:"epoch"` // the stream's current epoch
	Top       uint64 `json:"top"`   // the stream's latest sequence
}

// HistoryPage answers `history`: retained messages of a room, oldest first.
type HistoryPage struct {
	Room     string `json:"room"`
	Epoch    string `json:"epoch"`
	Top      uint64 `json:"top"`    // the room's latest sequence
	Oldest   uint64 `json:"oldest"` // the oldest retained sequence (top+1 when none)
	Messages []Chat `json:"messages"`
}
