package session

// A connection's commands, once it is set up (session.go): each whole
// message from the transport (server/transport, OnMessage) is rate-limited, decoded and
// handled here — ping, who, history, join, leave, chat, direct, and files
// (files.go) — and answered with an ack or an error. A new command is a
// type in protocol/ and a case in handle.

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"time"

	"github.com/tether-chat/tether/engine"
	"github.com/tether-chat/tether/internal/ws"
	"github.com/tether-chat/tether/protocol"
	"github.com/tether-chat/tether/server/hub"
	"github.com/tether-chat/tether/server/transport"
)

// onMessage handles one whole message; data is valid only during the call.
func (c *Conn) onMessage(op byte, data []byte) {
	if c.Closing() != nil {
		return // closing: the rest is discarded until the peer answers
	}
	c.m.metrics.Received.Add(1)
	if op != ws.OpText {
		c.flushChats()
		if c.dialect != nil || c.m.cfg.MaxFileSize < 0 {
			c.sendError(&protocol.Error{Code: protocol.ErrBadFrame,
				Message: "binary frames are not taken here: send text frames"})
			return
		}
		if !c.allow() {
			c.sendError(&protocol.Error{Code: protocol.ErrRateLimited, Message: "too many messages: this file was not processed; slow down"})
			return
		}
		c.m.metrics.InByType.WithLabelValues(protocol.TypeFile).Inc()
		c.processing(func() { c.onFile(data) }, "")
		return
	}
	var cmd protocol.Command
	var perr *protocol.Error
	if c.dialect != nil {
		c.m.metrics.InByType.WithLabelValues("dialect").Inc()
	} else {
		cmd, perr = protocol.Decode(data, protocol.Limits{MaxText: c.m.cfg.MaxText})
		if perr != nil {
			c.m.metrics.InByType.WithLabelValues("invalid").Inc()
		} else {
			c.m.metrics.InByType.WithLabelValues(cmd.Type).Inc()
		}
	}
	if cmd.Type != protocol.TypeChat || perr != nil {
		c.flushChats() // every earlier chat is answered before anything else is
	}
	if !c.allow() {
		if c.Closing() == nil {
			c.sendError(&protocol.Error{Code: protocol.ErrRateLimited, ID: cmd.ID,
				Message: "too many messages: this one was not processed; slow down"})
		}
		return
	}
	if perr != nil {
		c.sendError(perr)
		return
	}
	if c.dialect != nil {
		c.processing(func() { c.dialect.onText(c, data) }, "") // its commands go through handle
		return
	}
	if cmd.Type == protocol.TypeChat {
		if c.openBatch() {
			c.queueChat(cmd)
		} else {
			c.refuseRestarting(cmd.ID)
		}
		return
	}
	c.processing(func() { c.handle(cmd) }, cmd.ID)
}

// A connection's chat messages are published together when they arrive
// together: the chats of one read wait in Conn.chats (reader-owned) until
// the read is handled, or until a message of another kind comes, and then
// go to the engine as one batch (engine.PublishBatch: one round trip to
// Redis instead of one each), in order, each answered as before. A client
// that sends faster than one round trip per message is then not held to
// one message per round trip.

// pendingChat is a chat message accepted and waiting for its batch.
type pendingChat struct {
	id  string
	key string
	p   *engine.Publication
}

// queueChat checks one chat message (membership, the application's check)
// and queues it for the batch; one that cannot be sent is answered at
// once, after the chats before it. Called with the batch open.
func (c *Conn) queueChat(cmd protocol.Command) {
	if h := c.m.handleHook; h != nil {
		h(c, cmd)
	}
	ctx, cancel := c.m.OpContext(5 * time.Second)
	defer cancel()
	p, err := c.chatPublication(ctx, cmd)
	if err != nil {
		c.publishChats()
		c.answer(ctx, cmd.ID, p, err)
		return
	}
	c.chats = append(c.chats, pendingChat{id: cmd.ID, key: c.key(cmd.ID), p: p})
}

// chatPublication is a chat command as it is published, once it has passed
// the checks: the sender is in the room, and the application (if it asks
// to, hooks.go) allows it or rewrites it. On an error p is still the
// message, for answer.
func (c *Conn) chatPublication(ctx context.Context, cmd protocol.Command) (p *engine.Publication, err error) {
	p = &engine.Publication{Stream: engine.RoomStream(cmd.Room), Type: protocol.TypeChat,
		Room: cmd.Room, From: c.user, Text: cmd.Text, ClientID: cmd.ID, TS: time.Now().UnixMilli()}
	if !c.m.hub.IsMember(c, cmd.Room) {
		return p, notMember(cmd.Room)
	}
	return p, c.m.node.CheckMessage(ctx, c, p)
}

// openBatch makes sure the connection is processing for its batch of
// chats, as processing does for one message: a batch holds the node's
// processing lock from its first chat until it is published, so that a
// stop waits for it (and its messages are acked) or refuses its messages
// before any is accepted. It reports false when the node is stopping.
func (c *Conn) openBatch() bool {
	if c.batchOpen {
		return true
	}
	if c.m.shuttingDown.Load() {
		return false
	}
	c.m.processing.RLock()
	if c.m.shuttingDown.Load() {
		c.m.processing.RUnlock()
		return false
	}
	c.batchOpen = true
	c.busy.Store(true)
	return true
}

// flushChats publishes the waiting chats and ends the batch.
func (c *Conn) flushChats() {
	if !c.batchOpen {
		return
	}
	defer c.closeBatch()
	c.publishChats()
}

// closeBatch ends the batch's processing (also after a panic).
func (c *Conn) closeBatch() {
	if c.batchOpen {
		c.batchOpen = false
		c.busy.Store(false)
		c.m.processing.RUnlock()
	}
	clear(c.chats)
	c.chats = c.chats[:0]
}

// publishChats publishes the waiting chats as one batch and answers each;
// the batch is open.
func (c *Conn) publishChats() {
	if len(c.chats) == 0 {
		return
	}
	ctx, cancel := c.m.OpContext(5 * time.Second)
	defer cancel()
	ps := make([]*engine.Publication, len(c.chats))
	keys := make([]string, len(c.chats))
	for i, ch := range c.chats {
		ps[i], keys[i] = ch.p, ch.key
	}
	errs := c.m.publishBatch(ctx, ps, keys)
	for i, ch := range c.chats {
		c.answer(ctx, ch.id, ch.p, errs[i])
	}
	clear(c.chats)
	c.chats = c.chats[:0]
}

// processing runs f, the handling of one client message, unless the node
// is stopping (the message with this id is then refused as not
// processed); see Manager.processing.
func (c *Conn) processing(f func(), id string) {
	if c.m.shuttingDown.Load() {
		c.refuseRestarting(id)
		return
	}
	c.m.processing.RLock()
	defer c.m.processing.RUnlock()
	if c.m.shuttingDown.Load() {
		c.refuseRestarting(id)
		return
	}
	c.busy.Store(true)
	defer c.busy.Store(false)
	f()
}

// refuseRestarting answers a message that arrived once the node began to
// stop: not processed, and said so, so that its id is answered; the
// client re-sends it after reconnecting (the close, 1012, follows).
func (c *Conn) refuseRestarting(id string) {
	if id != "" {
		c.sendError(&protocol.Error{Code: protocol.ErrUnavailable, ID: id,
			Message: "this node is restarting; the message was not processed: send it again after reconnecting"})
	}
}

// allow applies the rate limit to one incoming message. A client that
// gets more than RateStrikes rejections within one second is not slowing
// down: it is closed with 4029.
func (c *Conn) allow() bool {
	now := time.Now()
	if c.limiter.Take(now) {
		return true
	}
	c.m.metrics.RateLimited.Add(1)
	if now.Sub(c.strikeWindow) > time.Second {
		c.strikeWindow, c.strikes = now, 0
	}
	c.strikes++
	if c.strikes >= c.m.cfg.RateStrikes {
		c.Close(protocol.DisconnectRateLimited, transport.CloseDrain)
	}
	return false
}

// SetHandleHook makes f run first in the handling of every command of
// this node's connections: the way a test makes a command's handling fail
// (panic) or hold on purpose. For tests only; set it before the first
// connection.
func (s *Manager) SetHandleHook(f func(c *Conn, cmd protocol.Command)) { s.handleHook = f }

// handle carries out one valid command. Every command with an id is
// answered with exactly one reply naming it: an ack (pong for ping,
// members for who, history for history) or an error.
//
// chat and direct are idempotent by id within the session: the engine
// records (session, id) → result in the same atomic step that publishes
// (engine.PublishOptions.Key), so a re-send — after a lost ack, on any
// node, even while the first attempt is still in flight elsewhere — is
// acked with the first attempt's seq and publishes nothing. join and
// leave are idempotent by nature: joining a room twice or leaving a room
// one is not in changes nothing and is acked.
func (c *Conn) handle(cmd protocol.Command) {
	if h := c.m.handleHook; h != nil {
		h(c, cmd)
	}
	if cmd.Type == protocol.TypePing {
		c.Reply(protocol.Encode(protocol.TypePong, cmd.ID, protocol.Pong{Echo: cmd.Echo}))
		return
	}
	ctx, cancel := c.m.OpContext(5 * time.Second)
	defer cancel()
	h := c.m.hub
	switch cmd.Type {
	case protocol.TypeWho:
		c.who(ctx, cmd)
	case protocol.TypeHistory:
		c.history(ctx, cmd)
	case protocol.TypeJoin:
		en, err := c.join(ctx, cmd.Room)
		if err != nil {
			c.fail(cmd.ID, err)
			return
		}
		c.ack(cmd.ID, 0)
		c.sendMembers(ctx, "", cmd.Room, en)
	case protocol.TypeLeave:
		if err := h.Leave(ctx, c, cmd.Room); err != nil {
			c.fail(cmd.ID, err)
			return
		}
		c.m.saveSession(ctx, c)
		c.ack(cmd.ID, 0)
	case protocol.TypeChat: // a dialect's; tether's own go through queueChat
		p, err := c.chatPublication(ctx, cmd)
		if err == nil {
			err = c.m.Publish(ctx, p, c.key(cmd.ID))
		}
		c.answer(ctx, cmd.ID, p, err)
	case protocol.TypeDirect:
		p, err := c.direct(ctx, cmd.To, cmd.Text, cmd.ID, nil, nil)
		c.answer(ctx, cmd.ID, p, err)
	}
}

// mayJoin says whether c's token allows room (open mode allows any).
func (c *Conn) mayJoin(room string) error {
	if c.claims != nil && !c.claims.MayJoin(room) {
		return &protocol.Error{Code: protocol.ErrForbiddenRoom, Message: "your token does not allow room " + room}
	}
	return nil
}

// join puts c in room, if its token allows, saving the session in the
// same engine call (hub.Join).
func (c *Conn) join(ctx context.Context, room string) (*engine.Entered, error) {
	if err := c.mayJoin(room); err != nil {
		return nil, err
	}
	return c.m.hub.Join(ctx, c, room, func() *engine.Session { return c.m.sessionOf(c) })
}

// key is the idempotency key of a client message: its id within the
// session. A message without an id cannot be re-sent, so it needs none.
func (c *Conn) key(id string) string {
	if id == "" {
		return ""
	}
	return c.session + ":" + id
}

// answer acks a chat or direct message with the seq p got, or fails it.
// A refusal that a re-send can meet after its first attempt got through
// (the sender left the room meanwhile, the recipient went offline) is
// checked against the engine's record of the id first: if the first
// attempt was published, the re-send is acked with its seq, not told
// something that is no longer true.
func (c *Conn) answer(ctx context.Context, id string, p *engine.Publication, err error) {
	var pe *protocol.Error
	if err != nil && id != "" && errors.As(err, &pe) && (pe.Code == protocol.ErrNotMember || pe.Code == protocol.ErrUserOffline) {
		if seq, _, ok, rerr := c.m.eng.Recorded(ctx, p.Stream, c.key(id)); rerr == nil && ok {
			c.m.metrics.Duplicates.Add(1)
			c.ack(id, seq)
			return
		}
	}
	if err != nil {
		c.fail(id, err)
		return
	}
	c.ack(id, p.Seq)
}

// who answers a `who` with the room's members; like history, it is for
// members of the room.
func (c *Conn) who(ctx context.Context, cmd protocol.Command) {
	if !c.m.hub.IsMember(c, cmd.Room) {
		c.fail(cmd.ID, notMember(cmd.Room))
		return
	}
	en, err := c.m.hub.Look(ctx, c, cmd.Room)
	if err != nil {
		c.fail(cmd.ID, err)
		return
	}
	c.sendMembers(ctx, cmd.ID, cmd.Room, en)
}

func (c *Conn) history(ctx context.Context, cmd protocol.Command) {
	if !c.m.hub.IsMember(c, cmd.Room) {
		c.fail(cmd.ID, notMember(cmd.Room))
		return
	}
	q := engine.HistoryQuery{After: cmd.After, Before: cmd.Before, Limit: cmd.Limit, Latest: cmd.After == 0}
	hist, err := c.m.eng.History(ctx, engine.RoomStream(cmd.Room), q)
	if err != nil {
		c.fail(cmd.ID, c.m.EngineFailed("history", err))
		return
	}
	page := protocol.HistoryPage{Room: cmd.Room, Epoch: hist.Epoch, Top: hist.Top, Oldest: hist.Oldest,
		Messages: make([]protocol.Chat, 0, len(hist.Pubs))}
	for _, p := range hist.Pubs {
		page.Messages = append(page.Messages, hub.ChatOf(p))
	}
	c.Reply(protocol.Encode(protocol.TypeHistory, cmd.ID, page))
}

// membersFrame builds a `members` frame around an already-encoded user list.
func membersFrame(id, room string, users hub.Listing, count int, pos roomPos) []byte {
	q := func(s string) []byte { b, _ := json.Marshal(s); return b }
	b := make([]byte, 0, 160+len(users.JSON))
	b = append(b, `{"type":"members"`...)
	if id != "" {
		b = append(append(b, `,"id":`...), q(id)...)
	}
	b = strconv.AppendInt(append(b, `,"ts":`...), time.Now().UnixMilli(), 10)
	b = append(append(b, `,"payload":{"room":`...), q(room)...)
	b = append(append(b, `,"users":`...), users.JSON...)
	b = strconv.AppendInt(append(b, `,"count":`...), int64(count), 10)
	if count > users.Listed {
		b = append(b, `,"truncated":true`...)
	}
	b = append(append(b, `,"epoch":`...), q(pos.epoch)...)
	b = strconv.AppendUint(append(b, `,"top":`...), pos.top, 10)
	return append(b, "}}"...)
}

func (c *Conn) ack(id string, seq uint64) {
	if id != "" {
		c.Reply(protocol.Encode(protocol.TypeAck, id, protocol.Ack{ID: id, Seq: seq}))
	}
}

func (c *Conn) sendError(e *protocol.Error) {
	c.m.metrics.Errors.Add(1)
	c.Reply(protocol.Encode(protocol.TypeError, e.ID, e))
}

// fail answers message id with err: a *protocol.Error as it is, an
// engine's ErrUnavailable as `unavailable`, anything else as an internal
// error. The client never sees the engine's own words (they are logged).
func (c *Conn) fail(id string, err error) {
	var pe *protocol.Error
	if !errors.As(err, &pe) {
		pe = c.m.EngineFailed("", err)
	}
	e := *pe
	e.ID = id
	c.sendError(&e)
}

func notMember(room string) *protocol.Error {
	return &protocol.Error{Code: protocol.ErrNotMember, Message: "join room " + room + " first"}
}

// errUnavailable is what a client is told when the engine did not answer
// in time. It is retryable, and honest about what is known: a message may
// have gone out before the answer was lost, and sending it again with the
// same id delivers it once either way.
var errUnavailable = protocol.Error{Code: protocol.ErrUnavailable,
	Message: "the message store did not answer in time, so this was not confirmed: send it again with the same id (it will be delivered once)"}

// errInternal answers a message whose handling failed for a reason that
// is not the store's.
var errInternal = protocol.Error{Code: protocol.ErrInternal, Message: "internal error; the message was not processed"}

// EngineFailed logs an engine error (what for: "history", "publish", …)
// and returns the protocol error a client gets for it.
func (s *Manager) EngineFailed(what string, err error) *protocol.Error {
	if errors.Is(err, engine.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) {
		s.metrics.EngineErrors.Add(1)
		s.log.Warn("engine unavailable", "op", what, "err", err)
		e := errUnavailable
		return &e
	}
	s.log.Error("handling a message failed", "op", what, "err", err)
	e := errInternal
	return &e
}

// sendMembers sends a room's members after a join or for a `who` (id):
// the list Enter read for a small room, the node's cached listing for a
// big one (read once for all joiners per PresenceInterval, see
// loadBigRoom), with the room's position as Enter read it.
func (c *Conn) sendMembers(ctx context.Context, id, room string, en *engine.Entered) {
	pos := roomPos{epoch: en.History.Epoch, top: en.History.Top}
	if en.Listed {
		if en.Members == nil {
			en.Members = []string{}
		}
		c.Reply(protocol.Encode(protocol.TypeMembers, id, protocol.Members{Room: room, Users: en.Members,
			Count: max(en.Count, len(en.Members)), Epoch: pos.epoch, Top: pos.top}))
		return
	}
	if m, fresh := c.m.hub.CachedBigRoom(room); fresh {
		c.Reply(membersFrame(id, room, m, m.Count, pos))
		return
	}
	cfg := &c.m.cfg
	if limit := cfg.PresenceEventsMax; limit < 0 || en.Count <= limit {
		// A small room with more members than a reply lists.
		users, err := c.m.eng.PresenceMembers(ctx, room, cfg.MembersMax)
		if err != nil {
			c.fail(id, c.m.EngineFailed("members", err))
			return
		}
		c.Reply(protocol.Encode(protocol.TypeMembers, id, protocol.Members{Room: room, Users: users,
			Count: max(en.Count, len(users)), Truncated: en.Count > len(users), Epoch: pos.epoch, Top: pos.top}))
		return
	}
	listed, err := c.m.hub.LoadBigRoom(ctx, room, en.Count)
	if err != nil {
		c.fail(id, c.m.EngineFailed("members", err))
		return
	}
	c.Reply(membersFrame(id, room, listed, en.Count, pos))
}

// direct publishes a private message to the recipient's inbox and a copy to
// the sender's inbox for their other tabs, both idempotent by the
// message's id. It returns the publication in the recipient's inbox (with
// its seq), also when refusing it (the caller checks a refused re-send
// against the record of its first attempt).
//
// file, when not nil, is the file the message carries; store is called to
// store it once the recipient is known to be online, before anything is
// published.
func (c *Conn) direct(ctx context.Context, to, text, id string, file *engine.FileRef, store func() error) (*engine.Publication, error) {
	s := c.m
	eng := s.eng
	p := &engine.Publication{Stream: engine.UserStream(to), Type: protocol.TypeDirect, From: c.user, To: to,
		Text: text, ClientID: id, TS: time.Now().UnixMilli(), SkipConn: c.id, Node: s.nodeID, File: file}
	online, err := eng.PresenceHas(ctx, "", to)
	if err != nil {
		return p, s.EngineFailed("presence", err)
	}
	if !online {
		return p, &protocol.Error{Code: protocol.ErrUserOffline, Message: "user " + to + " is not online"}
	}
	if err := c.m.node.CheckMessage(ctx, c, p); err != nil {
		return p, err
	}
	if store != nil {
		if err := store(); err != nil {
			return p, err
		}
	}
	if err := s.Publish(ctx, p, c.key(id)); err != nil {
		return p, err
	}
	if to != c.user {
		cp := *p
		cp.Stream, cp.Seq, cp.Epoch = engine.UserStream(c.user), 0, ""
		if err := s.Publish(ctx, &cp, c.key(id)); err != nil {
			// The recipient has it; only the sender's other tabs miss the
			// copy (a re-send of the message would publish it).
			s.log.Warn("direct copy to sender not published", "user", c.user, "err", err)
		}
	}
	return p, nil
}
