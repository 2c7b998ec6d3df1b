package session

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/tether-chat/tether/protocol"
	"github.com/tether-chat/tether/server/transport"
)

// Dialects: the protocols of the FastAPI tutorials Tether grew from, so
// that their clients work unchanged (docs/protocol.md, Tutorial dialects).
// A dialect is chosen per endpoint (Config.WSDialect, WSIDDialect); a
// connection in one is translated at the edge and is otherwise a
// connection like any other, in the same hub: in the same rooms and
// private conversations as SDK and web-chat users.
//
// Translation is in two places only. A text frame from the client becomes
// commands (onText, on the reader). A frame queued for the client is
// rendered in the dialect when it is written (encode, on the writer), or
// dropped: what the dialect has no words for (acks, presence, recovery)
// never reaches it.
type dialect interface {
	// onText handles one text frame from the client: it calls c.handle
	// with the commands it stands for, or answers it with an error.
	onText(c *Conn, data []byte)
	// encode renders one frame of the tether protocol for the client, or
	// returns nil to leave it out.
	encode(c *Conn, frame []byte) []byte
	// deferSetUp: the connection is set up by its first join, not when it
	// opens (tutorial-001 names the user in its join).
	deferSetUp() bool
}

// Dialect names (Config.WSDialect): tether's own, and the tutorials'.
const (
	DialectTether = "tether"
	Dialect001    = "tutorial-001"
	Dialect003    = "tutorial-003"
)

// dialectNamed returns the dialect of a name; nil is tether's own
// protocol. withID says the endpoint names its user in the path
// (/ws/{client_id}), which tutorial-003 needs.
func dialectNamed(name string, withID bool) (dialect, error) {
	switch name {
	case "", DialectTether:
		return nil, nil
	case Dialect001:
		return tutorial001{}, nil
	case Dialect003:
		if !withID {
			return nil, fmt.Errorf("%s names its user in the path: it serves /ws/{client_id} only", name)
		}
		return tutorial003{}, nil
	}
	return nil, fmt.Errorf("unknown dialect %q (tether, %s or %s)", name, Dialect001, Dialect003)
}

// envelope is a tether frame read back for a dialect.
type envelope struct {
	Type    string          `json:"type"`
	ID      string          `json:"id"`
	Payload json.RawMessage `json:"payload"`
}

func readEnvelope(frame []byte) (envelope, bool) {
	var e envelope
	return e, json.Unmarshal(frame, &e) == nil
}

// tutorial001 is the protocol of tutorial 001, a connection pool with
// rooms: JSON {"type", "data"} both ways. The client joins with
// {"type":"join","data":{"room","user"}} and is answered {"type":
// "welcome","data":{"online"}}; chat is {"type":"chat","data":{"text"}}
// to the joined room, delivered as {"type":"chat","data":{"from","text",
// "ts"}} (ts in seconds); {"type":"ping"} is answered {"type":"pong"}.
// One room at a time: joining another leaves the first.
type tutorial001 struct{}

func (tutorial001) deferSetUp() bool { return true }

func (d tutorial001) onText(c *Conn, data []byte) {
	var m struct {
		Type string          `json:"type"`
		Data json.RawMessage `json:"data"`
	}
	if json.Unmarshal(data, &m) != nil || m.Type == "" {
		c.sendError(&protocol.Error{Code: protocol.ErrBadJSON, Message: `send JSON: {"type": "join" | "chat" | "ping", "data": {…}}`})
		return
	}
	var body struct {
		Room string `json:"room"`
		User string `json:"user"`
		Text string `json:"text"`
	}
	if len(m.Data) > 0 && json.Unmarshal(m.Data, &body) != nil {
		c.sendError(&protocol.Error{Code: protocol.ErrBadPayload, Message: `"data" must be an object of strings`})
		return
	}
	switch m.Type {
	case "ping":
		c.handle(protocol.Command{Type: protocol.TypePing})
	case "pong": // an answer to a ping: its arrival already counts
	case "join":
		d.join(c, body.Room, body.User)
	case "chat":
		room := body.Room
		if room == "" {
			room = d.room(c)
		}
		if !c.registered || room == "" {
			c.sendError(&protocol.Error{Code: protocol.ErrNotMember, Message: `join a room first: {"type": "join", "data": {"room": …, "user": …}}`})
			return
		}
		if msg := protocol.ValidateText(body.Text, c.m.cfg.MaxText); msg != "" {
			c.sendError(&protocol.Error{Code: protocol.ErrBadText, Message: msg})
			return
		}
		c.handle(protocol.Command{Type: protocol.TypeChat, Room: room, Text: body.Text})
	case "leave":
		if room := d.room(c); room != "" {
			c.handle(protocol.Command{Type: protocol.TypeLeave, Room: room})
		}
	default:
		c.sendError(&protocol.Error{Code: protocol.ErrUnknownType, Message: fmt.Sprintf("unknown type %q: join, chat, ping, leave", m.Type)})
	}
}

// room is the room the connection is in ("" before its first join).
func (tutorial001) room(c *Conn) string {
	if !c.registered {
		return ""
	}
	if rooms := c.m.hub.RoomsOf(c); len(rooms) > 0 {
		return rooms[0]
	}
	return ""
}

// join sets the connection up in room on its first join, as user (open
// mode only: a token names its user); later joins move it from its room
// to the new one. The room's `members` that follows is the welcome.
func (d tutorial001) join(c *Conn, room, user string) {
	if msg := protocol.ValidateRoom(room); msg != "" {
		c.sendError(&protocol.Error{Code: protocol.ErrBadRoom, Message: msg})
		return
	}
	if c.registered {
		if old := d.room(c); old != "" && old != room {
			c.handle(protocol.Command{Type: protocol.TypeLeave, Room: old})
		}
		c.handle(protocol.Command{Type: protocol.TypeJoin, Room: room})
		return
	}
	if user != "" && c.claims == nil && user != c.user {
		if msg := protocol.ValidateUser(user); msg != "" {
			c.sendError(&protocol.Error{Code: protocol.ErrBadUser, Message: msg})
			return
		}
		if refused := c.m.node.Rename(c.ip, c.user, user); refused != nil {
			c.Close(*refused, transport.CloseDrain)
			return
		}
		c.user = user
	}
	c.m.setUpLater(c, room)
}

func (tutorial001) encode(c *Conn, frame []byte) []byte {
	e, ok := readEnvelope(frame)
	if !ok {
		return nil
	}
	out := func(typ string, data any) []byte {
		b, _ := json.Marshal(struct {
			Type string `json:"type"`
			Data any    `json:"data,omitempty"`
		}{typ, data})
		return b
	}
	switch e.Type {
	case protocol.TypeChat:
		var m protocol.Chat
		json.Unmarshal(e.Payload, &m)
		return out("chat", withFile(map[string]any{"from": m.From, "text": m.Text, "ts": m.TS / 1000, "room": m.Room}, m.File))
	case protocol.TypeDirect:
		var m protocol.Direct
		json.Unmarshal(e.Payload, &m)
		return out("chat", withFile(map[string]any{"from": m.From, "to": m.To, "text": m.Text, "ts": m.TS / 1000}, m.File))
	case protocol.TypeMembers:
		var m protocol.Members
		json.Unmarshal(e.Payload, &m)
		return out("welcome", map[string]any{"online": m.Count, "room": m.Room, "users": m.Users})
	case protocol.TypePong:
		return out("pong", nil)
	case protocol.TypeError:
		var m protocol.Error
		json.Unmarshal(e.Payload, &m)
		return out("error", map[string]any{"code": m.Code, "message": m.Message})
	}
	return nil
}

// withFile adds a message's file, if it has one, to a tutorial-001 chat.
func withFile(data map[string]any, f *protocol.FileInfo) map[string]any {
	if f != nil {
		data["file"] = f
	}
	return data
}

// tutorial003 is the protocol of tutorial 003, private chat in plain
// text on /ws/{client_id}: the client sends "target:message"; the target
// receives "Client #{from} says: {message}" and the sender "You wrote:
// {message}"; when a user's last connection closes, the users they
// chatted with receive "Client #{id} left the chat". No JSON ever reaches
// such a connection.
type tutorial003 struct{}

func (tutorial003) deferSetUp() bool { return false }

// texts003 remembers, per connection, the text of each message in flight,
// for its "You wrote:" once it is acknowledged.
type texts003 struct {
	mu   sync.Mutex
	next uint64
	text map[string]string
}

func (t *texts003) remember(text string) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.text == nil {
		t.text = make(map[string]string)
	}
	t.next++
	id := "t" + strconv.FormatUint(t.next, 10)
	t.text[id] = text
	return id
}

func (t *texts003) take(id string) (string, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	text, ok := t.text[id]
	delete(t.text, id)
	return text, ok
}

func (tutorial003) onText(c *Conn, data []byte) {
	target, text, ok := strings.Cut(string(data), ":")
	target = strings.TrimSpace(target)
	if !ok || target == "" {
		c.sendError(&protocol.Error{Code: protocol.ErrBadPayload, Message: "write the recipient, a colon and the message, e.g. 1002:hello"})
		return
	}
	if msg := protocol.ValidateUser(target); msg != "" {
		c.sendError(&protocol.Error{Code: protocol.ErrBadUser, Message: msg})
		return
	}
	if msg := protocol.ValidateText(text, c.m.cfg.MaxText); msg != "" {
		c.sendError(&protocol.Error{Code: protocol.ErrBadText, Message: msg})
		return
	}
	c.handle(protocol.Command{Type: protocol.TypeDirect, ID: c.texts.remember(text), To: target, Text: text})
}

func (tutorial003) encode(c *Conn, frame []byte) []byte {
	e, ok := readEnvelope(frame)
	if !ok {
		return nil
	}
	switch e.Type {
	case protocol.TypeDirect:
		var m protocol.Direct
		json.Unmarshal(e.Payload, &m)
		text := m.Text
		if m.File != nil {
			text = strings.TrimSpace(text + " [file " + m.File.Name + ": " + m.File.URL + "]")
		}
		if m.From == c.user { // a copy of what another tab of this user sent
			return []byte("You wrote: " + text)
		}
		return []byte("Client #" + m.From + " says: " + text)
	case protocol.TypeAck:
		if text, ok := c.texts.take(e.ID); ok {
			return []byte("You wrote: " + text)
		}
	case protocol.TypeLeft:
		var m protocol.Left
		json.Unmarshal(e.Payload, &m)
		return []byte("Client #" + m.User + " left the chat")
	case protocol.TypeError:
		var m protocol.Error
		json.Unmarshal(e.Payload, &m)
		c.texts.take(e.ID)
		if m.Code == protocol.ErrUserOffline {
			return []byte("Error: that client is not connected; the message was not delivered")
		}
		return []byte("Error: " + m.Message)
	}
	return nil
}
