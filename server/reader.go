package server

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/tether-chat/tether/engine"
	"github.com/tether-chat/tether/protocol"
)

// wsReader is the reading side of a connection's WebSocket state. It is
// owned by whichever goroutine is reading (see Conn) and takes no memory
// while the connection is idle between whole frames.
type wsReader struct {
	pending []byte  // the start of a frame whose end has not arrived yet
	msg     []byte  // a fragmented message being assembled
	msgOp   byte    // its opcode; 0 when no fragmented message is in progress
	done    bool    // a protocol error or a close frame ended reading: the rest is discarded
	later   []*Conn // holds this connection when send deferred starting its writer
}

// onData processes bytes read from the socket: every whole frame in
// them, and what is left over (part of a frame) is kept for the next read.
// p may be modified (frames are unmasked in place) and is not retained.
func (c *Conn) onData(p []byte) {
	rd := &c.rd
	if rd.done {
		return
	}
	defer c.flushLater() // one write for every reply to what p held
	carried := len(rd.pending) > 0
	if carried {
		rd.pending = append(rd.pending, p...)
		p = rd.pending
	}
	max := c.srv.cfg.MaxMessageSize
	for len(p) > 0 && !rd.done {
		h, perr := parseFrameHeader(p)
		if perr != nil {
			c.readFailed(*perr)
			return
		}
		if h.size == 0 {
			break // the rest of the header has not arrived
		}
		if h.op <= opBinary && int64(len(rd.msg))+h.length > max {
			// Refused from the header: the payload is never buffered.
			c.readFailed(protocol.DisconnectTooBig)
			return
		}
		end := int64(h.size) + h.length
		if int64(len(p)) < end {
			break // the rest of the payload has not arrived
		}
		payload := p[h.size:end]
		unmask(h.mask, payload)
		p = p[end:]
		c.onFrame(h, payload)
	}
	switch {
	case rd.done || len(p) == 0:
		rd.pending = nil
	case carried: // p is the tail of pending: move it to the front
		rd.pending = rd.pending[:copy(rd.pending, p)]
	default:
		rd.pending = append([]byte(nil), p...)
	}
}

// onFrame handles one whole frame; payload is valid only during the call.
func (c *Conn) onFrame(h frameHeader, payload []byte) {
	c.touch()
	rd := &c.rd
	switch h.op {
	case opPing:
		c.pong(payload)
	case opPong:
		// touch was all it was for
	case opClose:
		d, perr := parseClose(payload)
		if perr != nil {
			c.readFailed(*perr)
			return
		}
		rd.done = true
		c.peerClosed(d)
	case opContinuation:
		if rd.msgOp == 0 {
			c.readFailed(*protocolError("continuation frame without a message to continue"))
			return
		}
		rd.msg = append(rd.msg, payload...)
		if h.fin {
			op, msg := rd.msgOp, rd.msg
			rd.msg, rd.msgOp = nil, 0
			c.onMessage(op, msg)
		}
	default: // text or binary
		if rd.msgOp != 0 {
			c.readFailed(*protocolError("new message before the fragmented one was finished"))
			return
		}
		if !h.fin {
			rd.msgOp = h.op
			rd.msg = append(make([]byte, 0, 2*len(payload)), payload...)
			return
		}
		c.onMessage(h.op, payload)
	}
}

// readFailed ends reading after a protocol error: d is the close sent to
// the peer, whatever else was queued is dropped.
func (c *Conn) readFailed(d protocol.Disconnect) {
	c.rd.done = true
	c.rd.msg, c.rd.msgOp = nil, 0
	c.srv.log.Info("closing a connection that broke the protocol", "user", c.user, "remote", c.remote,
		"code", int(d.Code), "reason", d.Reason)
	c.close(d, closeDrain)
}

// onMessage handles one whole message; data is valid only during the call.
func (c *Conn) onMessage(op byte, data []byte) {
	if c.closeReason() != nil {
		return // closing: the rest is discarded until the peer answers
	}
	c.srv.metrics.received.Add(1)
	if op != opText {
		c.sendError(&protocol.Error{Code: protocol.ErrBadFrame,
			Message: "binary frames are not supported: send JSON text frames"})
		return
	}
	if !utf8.Valid(data) {
		c.close(protocol.DisconnectInvalidUTF8, closeDrain)
		return
	}
	if c.srv.shuttingDown.Load() {
		return // not processed, not acked: the client re-sends it after reconnecting
	}
	cmd, perr := protocol.Decode(data, protocol.Limits{MaxText: c.srv.cfg.MaxText})
	if perr != nil {
		c.srv.metrics.inByType.WithLabelValues("invalid").Inc()
	} else {
		c.srv.metrics.inByType.WithLabelValues(cmd.Type).Inc()
	}
	if !c.allow() {
		if c.closeReason() == nil {
			c.sendError(&protocol.Error{Code: protocol.ErrRateLimited, ID: cmd.ID,
				Message: "too many messages: this one was not processed; slow down"})
		}
		return
	}
	if perr != nil {
		c.sendError(perr)
		return
	}
	c.srv.processing.RLock()
	defer c.srv.processing.RUnlock()
	if c.srv.shuttingDown.Load() {
		return
	}
	c.handle(cmd)
}

func (c *Conn) touch() { c.lastSeen.Store(time.Now().UnixNano()) }

// allow applies the rate limit to one incoming message. A client that
// gets more than RateStrikes rejections within one second is not slowing
// down: it is closed with 4029.
func (c *Conn) allow() bool {
	now := time.Now()
	if c.limiter.take(now) {
		return true
	}
	c.srv.metrics.rateLimited.Add(1)
	if now.Sub(c.strikeWindow) > time.Second {
		c.strikeWindow, c.strikes = now, 0
	}
	c.strikes++
	if c.strikes >= c.srv.cfg.RateStrikes {
		c.close(protocol.DisconnectRateLimited, closeDrain)
	}
	return false
}

// handle carries out one valid command. Every command with an id is
// answered with exactly one ack (pong for ping) or error naming that id.
//
// join, leave, chat and direct are deduplicated by id within the session:
// a message re-sent after a reconnect (its ack was lost with the old
// connection) is acked again with the sequence it got the first time, and
// not processed twice.
func (c *Conn) handle(cmd protocol.Command) {
	if cmd.Type == protocol.TypePing {
		c.send(protocol.Encode(protocol.TypePong, cmd.ID, protocol.Pong{Echo: cmd.Echo}))
		return
	}
	ctx, cancel := c.srv.opContext(5 * time.Second)
	defer cancel()
	switch cmd.Type {
	case protocol.TypeWho:
		hist, err := c.srv.eng.History(ctx, engine.RoomStream(cmd.Room), engine.HistoryQuery{Latest: true, Limit: 1})
		if err != nil {
			c.fail(cmd.ID, unavailable(err))
			return
		}
		c.sendMembers(ctx, cmd.ID, cmd.Room, roomPos{epoch: hist.Epoch, top: hist.Top})
		return
	case protocol.TypeHistory:
		c.history(ctx, cmd)
		return
	}

	eng := c.srv.eng
	if cmd.ID != "" {
		st, seq, err := eng.ReserveID(ctx, c.session, cmd.ID)
		if err != nil {
			c.fail(cmd.ID, unavailable(err))
			return
		}
		switch st {
		case engine.IDDone:
			c.srv.metrics.duplicates.Add(1)
			c.ack(cmd.ID, seq)
			return
		case engine.IDInFlight:
			c.srv.metrics.duplicates.Add(1)
			return // the attempt in flight answers
		}
	}
	seq, pos, err := c.process(ctx, cmd)
	if err != nil {
		if cmd.ID != "" {
			eng.ReleaseID(ctx, c.session, cmd.ID)
		}
		c.fail(cmd.ID, err)
		return
	}
	if cmd.ID != "" {
		eng.CompleteID(ctx, c.session, cmd.ID, seq)
	}
	c.ack(cmd.ID, seq)
	if cmd.Type == protocol.TypeJoin {
		c.sendMembers(ctx, "", cmd.Room, pos)
	}
}

// process carries out join, leave, chat and direct. It returns the
// sequence a chat or direct message got, and for join the room's position.
func (c *Conn) process(ctx context.Context, cmd protocol.Command) (uint64, roomPos, error) {
	h := c.srv.hub
	switch cmd.Type {
	case protocol.TypeJoin:
		pos, err := h.join(ctx, c, cmd.Room)
		if err != nil {
			return 0, pos, err
		}
		c.srv.saveSession(ctx, c)
		return 0, pos, nil
	case protocol.TypeLeave:
		if err := h.leave(ctx, c, cmd.Room); err != nil {
			return 0, roomPos{}, err
		}
		c.srv.saveSession(ctx, c)
	case protocol.TypeChat:
		if !h.isMember(c, cmd.Room) {
			return 0, roomPos{}, notMember(cmd.Room)
		}
		p := &engine.Publication{Stream: engine.RoomStream(cmd.Room), Type: protocol.TypeChat,
			Room: cmd.Room, From: c.user, Text: cmd.Text, ClientID: cmd.ID, TS: time.Now().UnixMilli()}
		if err := c.srv.publish(ctx, p, engine.PublishOptions{}); err != nil {
			return 0, roomPos{}, err
		}
		return p.Seq, roomPos{}, nil
	case protocol.TypeDirect:
		seq, err := h.direct(ctx, c, cmd.To, cmd.Text, cmd.ID)
		return seq, roomPos{}, err
	}
	return 0, roomPos{}, nil
}

func (c *Conn) history(ctx context.Context, cmd protocol.Command) {
	if !c.srv.hub.isMember(c, cmd.Room) {
		c.fail(cmd.ID, notMember(cmd.Room))
		return
	}
	q := engine.HistoryQuery{After: cmd.After, Before: cmd.Before, Limit: cmd.Limit, Latest: cmd.After == 0}
	hist, err := c.srv.eng.History(ctx, engine.RoomStream(cmd.Room), q)
	if err != nil {
		c.fail(cmd.ID, unavailable(err))
		return
	}
	page := protocol.HistoryPage{Room: cmd.Room, Epoch: hist.Epoch, Top: hist.Top, Oldest: hist.Oldest,
		Messages: make([]protocol.Chat, 0, len(hist.Pubs))}
	for _, p := range hist.Pubs {
		page.Messages = append(page.Messages, chatOf(p))
	}
	c.send(protocol.Encode(protocol.TypeHistory, cmd.ID, page))
}

// sendMembers sends a room's members; id is the `who` it answers, if any.
//
// In a big room (more than PresenceEventsMax users, where presence is
// coalesced anyway) the listed users and the count come from a per-room
// cache refreshed at most once per PresenceInterval, encoded once: 10,000
// members joining do not each count, collect, sort and encode the same list.
func (c *Conn) sendMembers(ctx context.Context, id, room string, pos roomPos) {
	eng, cfg := c.srv.eng, &c.srv.cfg
	if m, fresh := c.srv.hub.cachedBigRoom(room); fresh {
		c.send(membersFrame(id, room, m, m.count, pos))
		return
	}
	n, err := eng.PresenceCount(ctx, room)
	if err != nil {
		c.fail(id, unavailable(err))
		return
	}
	if max := cfg.PresenceEventsMax; max < 0 || n <= max {
		users, err := eng.PresenceMembers(ctx, room, cfg.MembersMax)
		if err != nil {
			c.fail(id, unavailable(err))
			return
		}
		c.send(protocol.Encode(protocol.TypeMembers, id, protocol.Members{Room: room, Users: users, Count: max2(n, len(users)),
			Truncated: n > len(users), Epoch: pos.epoch, Top: pos.top}))
		return
	}
	listed, err := c.srv.hub.loadBigRoom(ctx, room, n)
	if err != nil {
		c.fail(id, unavailable(err))
		return
	}
	c.send(membersFrame(id, room, listed, n, pos))
}

func max2(a, b int) int {
	if a > b {
		return a
	}
	return b
}

// membersFrame builds a `members` frame around an already-encoded user list.
func membersFrame(id, room string, users cachedMembers, count int, pos roomPos) []byte {
	q := func(s string) []byte { b, _ := json.Marshal(s); return b }
	b := make([]byte, 0, 160+len(users.json))
	b = append(b, `{"type":"members"`...)
	if id != "" {
		b = append(append(b, `,"id":`...), q(id)...)
	}
	b = strconv.AppendInt(append(b, `,"ts":`...), time.Now().UnixMilli(), 10)
	b = append(append(b, `,"payload":{"room":`...), q(room)...)
	b = append(append(b, `,"users":`...), users.json...)
	b = strconv.AppendInt(append(b, `,"count":`...), int64(count), 10)
	if count > users.n {
		b = append(b, `,"truncated":true`...)
	}
	b = append(append(b, `,"epoch":`...), q(pos.epoch)...)
	b = strconv.AppendUint(append(b, `,"top":`...), pos.top, 10)
	return append(b, "}}"...)
}

// send queues one frame for this connection only.
// send queues a reply. It is called by the connection's reader (or, during
// the set-up, by the goroutine that sets the connection up): the writer is
// started by flushLater, once for everything the reader queued while
// handling what one read brought, so the replies to it share one write.
func (c *Conn) send(frame []byte) { c.enqueueTo(frame, &c.rd.later) }

// flushLater starts the writer if send deferred it.
func (c *Conn) flushLater() {
	if len(c.rd.later) > 0 {
		c.rd.later = c.rd.later[:0]
		c.startWriter()
	}
}

func (c *Conn) ack(id string, seq uint64) {
	if id != "" {
		c.send(protocol.Encode(protocol.TypeAck, id, protocol.Ack{ID: id, Seq: seq}))
	}
}

func (c *Conn) sendError(e *protocol.Error) {
	c.srv.metrics.errors.Add(1)
	c.send(protocol.Encode(protocol.TypeError, e.ID, e))
}

// fail answers message id with err, which is a *protocol.Error or becomes
// an internal error.
func (c *Conn) fail(id string, err error) {
	var pe *protocol.Error
	if !errors.As(err, &pe) {
		c.srv.log.Error("handling message failed", "user", c.user, "conn", c.id, "err", err)
		pe = &protocol.Error{Code: protocol.ErrInternal, Message: "internal error; the message was not processed"}
	}
	e := *pe
	e.ID = id
	c.sendError(&e)
}

func notMember(room string) *protocol.Error {
	return &protocol.Error{Code: protocol.ErrNotMember, Message: "join room " + room + " first"}
}

func unavailable(err error) *protocol.Error {
	return &protocol.Error{Code: protocol.ErrUnavailable, Message: "engine unavailable, try again: " + err.Error()}
}

// bucket is a token bucket; rate <= 0 means unlimited.
type bucket struct {
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
}

func (b *bucket) take(now time.Time) bool {
	if b.rate <= 0 {
		return true
	}
	if !b.last.IsZero() {
		b.tokens += now.Sub(b.last).Seconds() * b.rate
		if b.tokens > b.burst {
			b.tokens = b.burst
		}
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
