// Package client is Tether's Go SDK: a connection to a Tether server that
// survives real networks. It reconnects by itself with backoff and jitter,
// obeys the server's close codes, detects dead sockets with a heartbeat,
// keeps every message in an outbox until the server acknowledged it,
// resumes its session after a drop and receives what it missed, in order,
// exactly once. The behaviour is specified in docs/clients.md, shared with
// the browser SDK.
//
// Concurrency: a Client is safe for concurrent use. Incoming messages,
// presence and state changes arrive on one channel, Events(), which the
// application must keep reading (a client that stops reading stalls, and
// the server eventually disconnects it as a slow consumer, which it then
// recovers from). Every goroutine the client starts has ended when Close
// returns, and Events() is closed.
package client

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tether-chat/tether/protocol"
)

// State is the client's connection state (docs/clients.md). OFFLINE is
// part of the shared state machine but is never entered by the Go SDK:
// an operating system has no "browser is offline" signal.
type State string

const (
	StateIdle         State = "IDLE"
	StateConnecting   State = "CONNECTING"
	StateOpen         State = "OPEN"
	StateReconnecting State = "RECONNECTING"
	StateOffline      State = "OFFLINE"
	StateClosed       State = "CLOSED"
	StateError        State = "ERROR"
)

// Errors returned by the client's methods.
var (
	ErrClosed     = errors.New("client: closed")
	ErrOutboxFull = errors.New("client: outbox full")
)

// CloseInfo describes how a connection ended.
type CloseInfo struct {
	Code     protocol.CloseCode
	Reason   string
	WasClean bool // a close frame was received
	At       time.Time
}

// CloseError is returned by Dial when the server refused the connection
// with a terminal close code (e.g. 4401 for a bad token).
type CloseError struct{ CloseInfo }

func (e *CloseError) Error() string {
	return fmt.Sprintf("client: connection closed with %d: %s", e.Code, e.Reason)
}

// StateChange is one transition of the state machine.
type StateChange struct {
	State, Prev State
	Reason      string
}

// Reconnect announces the next attempt: its number, how long until it
// starts, and the close that led to it (for "attempt 3, next try in
// 2.4 s").
type Reconnect struct {
	Attempt int
	Delay   time.Duration
	At      time.Time
	Code    protocol.CloseCode
	Reason  string // the close's reason, or why the attempt failed (connection refused, …)
}

// Event is one thing that happened. Type is a protocol message type
// (chat, direct, presence, members, left, recovered, history, error,
// welcome), "state" or "reconnect"; exactly the matching field is set.
type Event struct {
	Type      string
	State     *StateChange
	Reconnect *Reconnect
	Welcome   *protocol.Welcome
	Chat      *protocol.Chat
	Direct    *protocol.Direct
	Presence  *protocol.Presence
	Members   *protocol.Members
	Left      *protocol.Left
	// Unsubscribed: the application took the user out of a room (the
	// client no longer asks for it).
	Unsubscribed *protocol.Unsubscribed
	Recovered    *protocol.Recovered
	History      *protocol.HistoryPage
	Error        *protocol.Error // an error reply not answering a pending call
}

// Ack is the server's confirmation of a message.
type Ack = protocol.Ack

// Info is a snapshot of the client's state, for a status line.
type Info struct {
	State     State
	User      string
	Session   string
	Attempt   int       // reconnect attempts since the last stable connection
	NextRetry time.Time // zero unless a retry is scheduled
	// LastClose is how the last connection ended, or what the server said
	// to refuse one; LastFailure the last attempt that failed without a
	// word from it (1006 before any welcome: a server that is not up).
	LastClose   *CloseInfo
	LastFailure *CloseInfo
	LastMessage time.Time
	Pending     int // messages waiting for an ack
}

type pos struct {
	Epoch string
	Seq   uint64
}

// item is one outbox entry or pending request.
type item struct {
	id      string
	typ     string
	payload any
	sent    bool        // written on the current connection; guarded by Client.mu
	done    chan result // buffered, 1
}

type result struct {
	ack  Ack
	page json.RawMessage // members/history replies
	err  error
}

// Client is a reconnecting connection to a Tether server.
type Client struct {
	url  string
	opts Options

	events chan Event
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once

	writeMu sync.Mutex // gorilla allows one writer at a time; also orders outbox flushes

	evMu   sync.Mutex
	evCond *sync.Cond
	evq    []Event // events waiting for the dispatcher, in order

	mu          sync.Mutex
	state       State
	attempt     int
	nextRetry   time.Time
	lastClose   *CloseInfo
	lastFailure *CloseInfo
	lastMsg     time.Time // wall clock (monotonic reading stripped)
	user        string
	session     string
	rooms       []string
	asked       []string        // the rooms the current attempt asked for in its URL (?rooms=)
	positions   map[string]pos  // "room:NAME" / "inbox" -> last received
	joinedAt    map[string]pos  // room -> position from the join reply
	seenIDs     *idSet          // (stream, from, client id) of recent messages: the third line of defence
	conn        *websocket.Conn // the OPEN connection, nil otherwise
	dialing     *websocket.Conn // a connection not yet welcomed (so Close can end it)
	running     bool            // the connection loop is running
	outbox      []*item
	requests    map[string]*item
	opened      chan struct{} // closed at the first OPEN or at a terminal end
	openErr     error
	nextID      uint64
	prefix      string
}

// Dial connects to a Tether server at url (ws:// or wss://, path /ws) and
// returns once the connection is OPEN. While the server is unreachable it
// keeps retrying with backoff until ctx is done; a terminal close (bad
// token, …) returns a *CloseError at once. After Dial the client keeps
// itself connected until Close.
func Dial(ctx context.Context, rawURL string, opts *Options) (*Client, error) {
	c, err := New(rawURL, opts)
	if err != nil {
		return nil, err
	}
	if err := c.Connect(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// New validates the options and returns a client in state IDLE; Connect
// starts it.
func New(rawURL string, opts *Options) (*Client, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "ws" && u.Scheme != "wss") || u.Host == "" {
		return nil, fmt.Errorf("%w: url must be ws:// or wss:// with a host (got %q)", ErrInvalidOptions, rawURL)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var b [4]byte
	rand.Read(b[:])
	c := &Client{
		url: rawURL, opts: o, events: make(chan Event, o.EventBuffer), ctx: ctx, cancel: cancel,
		state: StateIdle, user: o.User, positions: map[string]pos{}, joinedAt: map[string]pos{},
		seenIDs: newIDSet(4096), requests: map[string]*item{}, opened: make(chan struct{}), prefix: hex.EncodeToString(b[:]),
	}
	c.evCond = sync.NewCond(&c.evMu)
	c.wg.Add(1)
	go c.dispatch()
	return c, nil
}

// maxQueuedEvents bounds the events waiting for the application; past it
// the reader waits (so a client that stops reading stops reading from the
// server too, and the server's slow-consumer policy applies).
const maxQueuedEvents = 65536

// emit queues an event for the application, in order. It never blocks for
// state events (emitted with mu held); message events wait while the queue
// is full.
func (c *Client) emit(ev Event) {
	c.evMu.Lock()
	for ev.Type != "state" && len(c.evq) >= maxQueuedEvents && c.ctx.Err() == nil {
		c.evCond.Wait()
	}
	c.evq = append(c.evq, ev)
	c.evMu.Unlock()
	c.evCond.Broadcast()
}

// dispatch forwards queued events to the Events channel until Close.
func (c *Client) dispatch() {
	defer c.wg.Done()
	for {
		c.evMu.Lock()
		for len(c.evq) == 0 && c.ctx.Err() == nil {
			c.evCond.Wait()
		}
		if c.ctx.Err() != nil {
			c.evMu.Unlock()
			return
		}
		ev := c.evq[0]
		c.evq[0] = Event{}
		c.evq = c.evq[1:]
		c.evMu.Unlock()
		c.evCond.Broadcast()
		select {
		case c.events <- ev:
		case <-c.ctx.Done():
			return
		}
	}
}

// Connect starts the connection loop (once) and waits until the client is
// OPEN, a terminal close happens, or ctx is done. Cancelling ctx does not
// stop the client: Close does.
func (c *Client) Connect(ctx context.Context) error {
	c.mu.Lock()
	if c.ctx.Err() != nil {
		c.mu.Unlock()
		return ErrClosed
	}
	start := !c.running && (c.state == StateIdle || c.state == StateClosed)
	if start {
		// First start, or a restart after a terminal close or the retry
		// limit: a fresh attempt counter.
		if c.state == StateClosed {
			c.opened, c.openErr = make(chan struct{}), nil
		}
		c.attempt = 0
		c.running = true
		c.setStateLocked(StateConnecting, "Connect called")
		c.wg.Add(1)
		go c.run()
	}
	opened := c.opened
	c.mu.Unlock()
	select {
	case <-opened:
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.openErr
	case <-ctx.Done():
		return ctx.Err()
	case <-c.ctx.Done():
		return ErrClosed
	}
}

// Events is the channel of everything that happens: messages, presence,
// state changes. It is closed after Close.
func (c *Client) Events() <-chan Event { return c.events }

// Info returns a snapshot of the client's state.
func (c *Client) Info() Info {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Info{State: c.state, User: c.user, Session: c.session, Attempt: c.attempt, NextRetry: c.nextRetry,
		LastClose: c.lastClose, LastFailure: c.lastFailure, LastMessage: c.lastMsg, Pending: len(c.outbox)}
}

// State returns the current state.
func (c *Client) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// Join joins a room; it returns when the server acknowledged it. The room
// is rejoined after every reconnect.
func (c *Client) Join(ctx context.Context, room string) error {
	c.mu.Lock()
	if !contains(c.rooms, room) {
		c.rooms = append(c.rooms, room)
	}
	c.mu.Unlock()
	_, err := c.call(ctx, protocol.TypeJoin, map[string]any{"room": room}, true)
	return err
}

// JoinAsync puts a join in the outbox and returns at once, like SendAsync:
// a message sent to the room afterwards from the same goroutine is sent
// after it.
func (c *Client) JoinAsync(room string) (*Pending, error) {
	c.mu.Lock()
	if !contains(c.rooms, room) {
		c.rooms = append(c.rooms, room)
	}
	c.mu.Unlock()
	it, err := c.enqueue(protocol.TypeJoin, map[string]any{"room": room}, true)
	if err != nil {
		return nil, err
	}
	return &Pending{c: c, it: it}, nil
}

// Leave leaves a room; it returns when the server acknowledged it.
func (c *Client) Leave(ctx context.Context, room string) error {
	c.mu.Lock()
	c.rooms = remove(c.rooms, room)
	delete(c.joinedAt, room)
	delete(c.positions, "room:"+room)
	c.mu.Unlock()
	_, err := c.call(ctx, protocol.TypeLeave, map[string]any{"room": room}, true)
	return err
}

// Send sends a chat message to a room and returns the server's ack (with
// the message's sequence). While disconnected the message waits in the
// outbox and is sent after the reconnect, exactly once. If ctx ends first,
// Send returns ctx.Err() and the message is withdrawn if it had not been
// written yet (if it had, the server may still process it).
func (c *Client) Send(ctx context.Context, room, text string) (Ack, error) {
	r, err := c.call(ctx, protocol.TypeChat, map[string]any{"room": room, "text": text}, true)
	return r.ack, err
}

// Direct sends a private message to a user, like Send.
func (c *Client) Direct(ctx context.Context, user, text string) (Ack, error) {
	r, err := c.call(ctx, protocol.TypeDirect, map[string]any{"to": user, "text": text}, true)
	return r.ack, err
}

// File is a file to send: its name (shown to the receivers), the type
// its sender says it is (checked by the server against the bytes; may be
// empty), its bytes, and a caption.
type File struct {
	Name string
	Mime string
	Data []byte
	Text string
}

// SendFile sends a file (a picture, or any other file) to a room, like
// Send: it waits in the outbox while disconnected, is delivered exactly
// once, and arrives as a chat message whose File says where to fetch it
// (FileURL). Files larger than the server's limit (Welcome.MaxFile) are
// refused with file_too_large; a picture whose bytes are not what its
// Mime says, with bad_file.
func (c *Client) SendFile(ctx context.Context, room string, f File) (Ack, error) {
	r, err := c.call(ctx, protocol.TypeFile, protocol.FileHeader{Room: room, Name: f.Name, Mime: f.Mime, Text: f.Text, Data: f.Data}, true)
	return r.ack, err
}

// DirectFile sends a file to a user, like SendFile.
func (c *Client) DirectFile(ctx context.Context, user string, f File) (Ack, error) {
	r, err := c.call(ctx, protocol.TypeFile, protocol.FileHeader{To: user, Name: f.Name, Mime: f.Mime, Text: f.Text, Data: f.Data}, true)
	return r.ack, err
}

// FileURL is where to fetch a message's file: the server's URL for it
// (with the client's token, in token mode).
func (c *Client) FileURL(f *protocol.FileInfo) string {
	u, err := url.Parse(c.url)
	if err != nil || f == nil {
		return ""
	}
	u.Scheme = map[string]string{"ws": "http", "wss": "https"}[u.Scheme]
	u.Path, u.RawQuery = f.URL, ""
	tok := c.opts.Token
	if c.opts.TokenFunc != nil {
		tok = c.opts.TokenFunc()
	}
	if tok != "" {
		u.RawQuery = url.Values{"token": {tok}}.Encode()
	}
	return u.String()
}

// Pending is a message in the outbox, waiting for the server's ack.
type Pending struct {
	c  *Client
	it *item
}

// ID is the client message id the message travels with.
func (p *Pending) ID() string { return p.it.id }

// Wait returns the server's ack (or error reply). If ctx ends first the
// message stays in the outbox and will still be delivered.
func (p *Pending) Wait(ctx context.Context) (Ack, error) {
	select {
	case r := <-p.it.done:
		p.it.done <- r // let Wait be called again
		return r.ack, r.err
	case <-ctx.Done():
		return Ack{}, ctx.Err()
	}
}

// SendAsync puts a chat message in the outbox and returns at once: calls
// from one goroutine are delivered in the order they were made, each
// exactly once. Use it to send without waiting for each ack.
func (c *Client) SendAsync(room, text string) (*Pending, error) {
	it, err := c.enqueue(protocol.TypeChat, map[string]any{"room": room, "text": text}, true)
	if err != nil {
		return nil, err
	}
	return &Pending{c: c, it: it}, nil
}

// DirectAsync is SendAsync for a private message.
func (c *Client) DirectAsync(user, text string) (*Pending, error) {
	it, err := c.enqueue(protocol.TypeDirect, map[string]any{"to": user, "text": text}, true)
	if err != nil {
		return nil, err
	}
	return &Pending{c: c, it: it}, nil
}

// Who asks who is in a room. It needs an open connection (it is not
// queued).
func (c *Client) Who(ctx context.Context, room string) (protocol.Members, error) {
	var m protocol.Members
	r, err := c.call(ctx, protocol.TypeWho, map[string]any{"room": room}, false)
	if err == nil {
		err = json.Unmarshal(r.page, &m)
	}
	return m, err
}

// History pages through a room's retained messages (see the protocol's
// `history`). It needs an open connection.
func (c *Client) History(ctx context.Context, room string, before, after uint64, limit int) (protocol.HistoryPage, error) {
	var p protocol.HistoryPage
	r, err := c.call(ctx, protocol.TypeHistory, map[string]any{"room": room, "before": before, "after": after, "limit": limit}, false)
	if err == nil {
		err = json.Unmarshal(r.page, &p)
	}
	return p, err
}

// Close ends the connection with 1000 (no reconnect), fails what is still
// in the outbox with ErrClosed, waits for every goroutine of the client and
// closes Events(). It is safe to call more than once.
func (c *Client) Close() error {
	c.once.Do(func() {
		c.mu.Lock()
		conn := c.conn
		if conn == nil {
			conn = c.dialing
		}
		c.mu.Unlock()
		c.cancel()
		c.evMu.Lock()
		c.evCond.Broadcast()
		c.evMu.Unlock()
		if conn != nil {
			c.writeMu.Lock()
			conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, "client closed"), time.Now().Add(time.Second))
			c.writeMu.Unlock()
			conn.Close()
		}
		c.wg.Wait()
		c.mu.Lock()
		c.lastClose = &CloseInfo{Code: protocol.CloseNormal, Reason: "client closed", WasClean: true, At: time.Now()}
		c.setStateLocked(StateClosed, "Close called")
		pending := append(c.outbox, valuesOf(c.requests)...)
		c.outbox, c.requests = nil, map[string]*item{}
		c.finishOpenLocked(ErrClosed)
		c.mu.Unlock()
		for _, it := range pending {
			it.done <- result{err: ErrClosed}
		}
		close(c.events)
	})
	return nil
}

// call sends a message and waits for its answer. Queued calls (join,
// leave, chat, direct) live in the outbox until acked and survive
// reconnects; the others need an open connection. If ctx ends first the
// call is withdrawn (if it was already written, the server may still
// process it).
func (c *Client) call(ctx context.Context, typ string, payload any, queued bool) (result, error) {
	it, err := c.enqueue(typ, payload, queued)
	if err != nil {
		return result{}, err
	}
	select {
	case r := <-it.done:
		return r, r.err
	case <-ctx.Done():
		c.mu.Lock()
		c.outbox = removeItem(c.outbox, it)
		delete(c.requests, it.id)
		c.mu.Unlock()
		return result{}, ctx.Err()
	}
}

// enqueue puts a message in the outbox (queued) or the pending requests
// and writes it if the connection is open.
func (c *Client) enqueue(typ string, payload any, queued bool) (*item, error) {
	c.mu.Lock()
	if c.ctx.Err() != nil {
		c.mu.Unlock()
		return nil, ErrClosed
	}
	c.nextID++
	it := &item{id: fmt.Sprintf("%s-%d", c.prefix, c.nextID), typ: typ, payload: payload, done: make(chan result, 1)}
	conn := c.conn
	if queued {
		if len(c.outbox) >= c.opts.OutboxLimit {
			c.mu.Unlock()
			return nil, fmt.Errorf("%w (%d messages waiting for the server)", ErrOutboxFull, c.opts.OutboxLimit)
		}
		c.outbox = append(c.outbox, it)
		c.mu.Unlock()
		if conn != nil {
			c.flush(conn)
		}
	} else {
		if conn == nil || c.state != StateOpen {
			st := c.state
			c.mu.Unlock()
			return nil, fmt.Errorf("client: not connected (%s)", st)
		}
		c.requests[it.id] = it
		c.mu.Unlock()
		c.writeMu.Lock()
		c.writeItemLocked(conn, it)
		c.writeMu.Unlock()
	}
	return it, nil
}

// flush writes every outbox message not yet written on conn, in outbox
// order. Holding writeMu from collecting to writing is what keeps the
// order when several goroutines send while a reconnect re-sends.
func (c *Client) flush(conn *websocket.Conn) {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	c.mu.Lock()
	if c.conn != conn {
		c.mu.Unlock()
		return // that connection is gone; the next one flushes everything
	}
	var batch []*item
	for _, it := range c.outbox {
		if !it.sent {
			it.sent = true
			batch = append(batch, it)
		}
	}
	c.mu.Unlock()
	for _, it := range batch {
		c.writeItemLocked(conn, it)
	}
}

// writeItemLocked sends one item; writeMu must be held. A failed write
// closes conn, and the reader then starts the reconnect.
func (c *Client) writeItemLocked(conn *websocket.Conn, it *item) {
	if h, ok := it.payload.(protocol.FileHeader); ok {
		data := h.Data
		h.ID, h.Data = it.id, nil
		conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if err := conn.WriteMessage(websocket.BinaryMessage, protocol.EncodeFile(h, data)); err != nil {
			conn.Close()
		}
		return
	}
	b, _ := json.Marshal(map[string]any{"type": it.typ, "id": it.id, "payload": it.payload, "ts": time.Now().UnixMilli()})
	c.writeRawLocked(conn, b)
}

func (c *Client) writeRaw(conn *websocket.Conn, b []byte) {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	c.writeRawLocked(conn, b)
}

func (c *Client) writeRawLocked(conn *websocket.Conn, b []byte) {
	conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if err := conn.WriteMessage(websocket.TextMessage, b); err != nil {
		conn.Close()
	}
}

func (c *Client) logf(format string, args ...any) {
	if c.opts.Logf != nil {
		c.opts.Logf(format, args...)
	}
}

func (c *Client) setStateLocked(s State, reason string) {
	if s == c.state {
		return
	}
	prev := c.state
	c.state = s
	c.logf("[state] %s -> %s (%s)", prev, s, reason)
	c.emit(Event{Type: "state", State: &StateChange{State: s, Prev: prev, Reason: reason}})
}

func (c *Client) finishOpenLocked(err error) {
	select {
	case <-c.opened:
	default:
		c.openErr = err
		close(c.opened)
	}
}

// run is the connection loop: one attempt at a time, then the close-code
// policy and the backoff, until Close or a terminal end.
func (c *Client) run() {
	defer c.wg.Done()
	defer func() {
		c.mu.Lock()
		c.running = false
		c.mu.Unlock()
	}()
	for {
		info, opened := c.connectOnce()
		if c.ctx.Err() != nil {
			return
		}
		c.mu.Lock()
		if opened || info.Code != protocol.CloseAbnormal {
			c.lastClose = &info
		} else {
			c.lastFailure = &info
		}
		c.logf("[close] code=%d reason=%q wasClean=%v", info.Code, info.Reason, info.WasClean)
		if info.Code == protocol.CloseSessionInvalid {
			c.session = ""
		}
		policy := protocol.PolicyFor(info.Code)
		if policy == protocol.Terminal {
			c.setStateLocked(StateClosed, fmt.Sprintf("terminal close %d", info.Code))
			c.finishOpenLocked(&CloseError{info})
			c.mu.Unlock()
			return
		}
		c.attempt++
		if c.opts.MaxRetries > 0 && c.attempt > c.opts.MaxRetries {
			c.setStateLocked(StateClosed, "retry limit reached")
			c.finishOpenLocked(fmt.Errorf("client: gave up after %d attempts: %w", c.opts.MaxRetries, &CloseError{info}))
			c.mu.Unlock()
			return
		}
		delay := c.opts.Backoff(c.attempt, mrand.Float64())
		if policy == protocol.ReconnectLater {
			delay = max(delay, c.opts.LaterDelay)
		}
		c.nextRetry = time.Now().Add(delay)
		c.setStateLocked(StateReconnecting, fmt.Sprintf("closed with %d", info.Code))
		c.logf("[reconnect] attempt=%d in %s", c.attempt, delay.Round(time.Millisecond))
		c.emit(Event{Type: "reconnect", Reconnect: &Reconnect{Attempt: c.attempt, Delay: delay, At: c.nextRetry, Code: info.Code, Reason: info.Reason}})
		c.mu.Unlock()
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-c.ctx.Done():
			t.Stop()
			return
		}
		c.mu.Lock()
		c.nextRetry = time.Time{}
		c.mu.Unlock()
	}
}

// attemptURL is the URL of the next attempt: the user, the token, the
// session and positions to resume from, and the rooms to be in (joined in
// the same step as the connection, with what was missed in each replayed:
// this also brings back the rooms of a session that expired).
func (c *Client) attemptURL() string {
	u, _ := url.Parse(c.url)
	q := u.Query()
	c.mu.Lock()
	if c.opts.User != "" && q.Get("user") == "" {
		q.Set("user", c.opts.User)
	}
	if c.session != "" {
		q.Set("session", c.session)
	}
	since := map[string][2]any{}
	for room, p := range c.joinedAt {
		since[room] = [2]any{p.Epoch, p.Seq}
	}
	for stream, p := range c.positions {
		key := protocol.InboxKey
		if stream != "inbox" {
			key = stream[len("room:"):]
		}
		since[key] = [2]any{p.Epoch, p.Seq}
	}
	c.asked = append(c.asked[:0], c.rooms...)
	if len(c.asked) > 0 {
		q.Set("rooms", strings.Join(c.asked, ","))
	}
	c.mu.Unlock()
	if len(since) > 0 {
		b, _ := json.Marshal(since)
		q.Set("since", string(b))
	}
	tok := c.opts.Token
	if c.opts.TokenFunc != nil {
		tok = c.opts.TokenFunc()
	}
	if tok != "" {
		q.Set("token", tok)
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// wallNow is the wall-clock time without Go's monotonic reading: the
// monotonic clock stops while a machine sleeps, the wall clock does not, so
// silence measured with it counts the sleep too.
func wallNow() time.Time { return time.Now().Round(0) }

// connectOnce makes one attempt and, if it opens, serves the connection
// until it ends. It returns how it ended, and whether it was welcomed.
func (c *Client) connectOnce() (CloseInfo, bool) {
	conn, end, ok := c.dial()
	if !ok {
		return end, false
	}
	defer func() {
		c.mu.Lock()
		c.dialing = nil
		c.mu.Unlock()
	}()
	w, end, ok := awaitWelcome(conn, c.opts.ConnectTimeout)
	if !ok {
		return end, false
	}
	if !c.goOpen(conn, w) {
		conn.Close()
		return CloseInfo{Code: protocol.CloseNormal, Reason: "client closed"}, false
	}
	return c.serve(conn), true
}

// dial opens one WebSocket connection within the connect timeout and
// notes it (c.dialing) so that Close can end it; the caller clears the
// note. It reports false, with why, when there is no connection to use.
func (c *Client) dial() (*websocket.Conn, CloseInfo, bool) {
	dctx, cancel := context.WithTimeout(c.ctx, c.opts.ConnectTimeout)
	defer cancel()
	target := c.attemptURL()
	c.logf("[connect] attempt=%d", c.Info().Attempt)
	conn, resp, err := c.opts.Dialer.DialContext(dctx, target, c.opts.Header)
	if err != nil {
		return nil, refusal(resp, err), false
	}
	c.mu.Lock()
	c.dialing = conn
	closing := c.ctx.Err() != nil
	c.mu.Unlock()
	if closing {
		conn.Close()
		c.mu.Lock()
		c.dialing = nil
		c.mu.Unlock()
		return nil, CloseInfo{Code: protocol.CloseNormal, Reason: "client closed"}, false
	}
	return conn, CloseInfo{}, true
}

// awaitWelcome reads the connection's first message, which must be a
// welcome and must come within timeout. It closes conn when it reports
// false.
func awaitWelcome(conn *websocket.Conn, timeout time.Duration) (protocol.Welcome, CloseInfo, bool) {
	var w protocol.Welcome
	conn.SetReadDeadline(time.Now().Add(timeout))
	_, first, err := conn.ReadMessage()
	if err != nil {
		conn.Close()
		return w, closeInfoOf(err), false
	}
	var env protocol.Envelope
	if json.Unmarshal(first, &env) != nil || env.Type != protocol.TypeWelcome || json.Unmarshal(env.Payload, &w) != nil {
		conn.Close()
		return w, CloseInfo{Code: protocol.CloseProtocolError, Reason: "first message was not a welcome", At: time.Now()}, false
	}
	conn.SetReadDeadline(time.Time{})
	return w, CloseInfo{}, true
}

// goOpen takes the welcomed connection into use: state OPEN, the rooms the
// server did not give back joined again, and every unacknowledged message
// of the outbox sent again in order with its original id (the server acks
// duplicates without processing them). All of it happens with writeMu
// held, so that no new message can be written before older ones. It
// reports false when the client was closed meanwhile.
func (c *Client) goOpen(conn *websocket.Conn, w protocol.Welcome) bool {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	c.mu.Lock()
	if c.ctx.Err() != nil {
		c.mu.Unlock()
		return false
	}
	c.conn = conn
	c.user, c.session = w.User, w.Session
	c.lastMsg = wallNow()
	if _, ok := c.positions["inbox"]; !ok {
		// The inbox's position at this connection's start: a first
		// private message sent while the client is away is recovered from
		// it. (A client that has a position keeps it: the welcome of a
		// resume is already past what the replay brings.)
		c.positions["inbox"] = pos{w.Inbox.Epoch, w.Inbox.Top}
	}
	for _, r := range w.Rooms {
		if !contains(c.rooms, r) {
			c.rooms = append(c.rooms, r)
		}
	}
	var rejoin []string
	for _, r := range c.rooms {
		// A room this attempt asked for and did not get was refused (an
		// error event says why): asking again by command would only
		// repeat the refusal.
		if !contains(w.Rooms, r) && !c.outboxJoinsLocked(r) && !contains(c.asked, r) {
			rejoin = append(rejoin, r)
		}
	}
	outbox := append([]*item(nil), c.outbox...)
	for _, it := range outbox {
		it.sent = true
	}
	c.setStateLocked(StateOpen, "welcome received")
	c.emit(Event{Type: protocol.TypeWelcome, Welcome: &w})
	c.finishOpenLocked(nil)
	c.mu.Unlock()
	c.logf("[open] user=%s resumed=%v", w.User, w.Resumed) // the session id is a secret: not logged

	for _, r := range rejoin {
		b, _ := json.Marshal(map[string]any{"type": protocol.TypeJoin, "payload": map[string]any{"room": r}})
		c.writeRawLocked(conn, b)
	}
	for _, it := range outbox {
		c.writeItemLocked(conn, it)
	}
	return true
}

// serve reads an open connection until it ends, with the heartbeat
// watching it, and returns how it ended: a heartbeat timeout or a gap in
// a stream's deliveries (resync) overrides what the socket said.
func (c *Client) serve(conn *websocket.Conn) CloseInfo {
	hbDone := make(chan struct{})
	var timedOut bool
	var hbMu sync.Mutex
	gap := &gapState{}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.heartbeat(conn, c.opts.HeartbeatTimeout, hbDone, func() { hbMu.Lock(); timedOut = true; hbMu.Unlock() })
	}()
	stable := time.AfterFunc(c.opts.StableAfter, func() {
		c.mu.Lock()
		if c.conn == conn && c.attempt > 0 {
			c.logf("[stable] open for %s: retry counter reset", c.opts.StableAfter)
			c.attempt = 0
		}
		c.mu.Unlock()
	})
	conn.SetPingHandler(func(data string) error {
		c.touch()
		c.writeMu.Lock()
		defer c.writeMu.Unlock()
		conn.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
		return nil
	})

	var end CloseInfo
	for {
		_, b, err := conn.ReadMessage()
		if err != nil {
			end = closeInfoOf(err)
			break
		}
		c.touch()
		c.handle(conn, b, gap)
	}
	stable.Stop()
	close(hbDone)
	conn.Close()
	c.mu.Lock()
	c.conn = nil
	for _, it := range c.outbox {
		it.sent = false // the next connection sends them again
	}
	c.mu.Unlock()
	hbMu.Lock()
	if timedOut {
		end = CloseInfo{Code: protocol.CloseHeartbeat, Reason: "heartbeat timeout", At: time.Now()}
	}
	hbMu.Unlock()
	if gap.found {
		end = CloseInfo{Code: protocol.CloseResync, Reason: gap.why, At: time.Now()}
	}
	return end
}

func (c *Client) touch() {
	c.mu.Lock()
	c.lastMsg = wallNow()
	c.mu.Unlock()
}

// heartbeat pings every interval and closes the connection with 4000 at
// the moment nothing has arrived for timeout, without waiting for a
// closing handshake that a dead peer would never complete. The silence is
// checked when it would reach the timeout (and again later if something
// arrived meanwhile), not on the ping ticks.
func (c *Client) heartbeat(conn *websocket.Conn, timeout time.Duration, done <-chan struct{}, timedOut func()) {
	t := time.NewTicker(c.opts.HeartbeatInterval)
	defer t.Stop()
	silence := time.NewTimer(timeout)
	defer silence.Stop()
	for {
		select {
		case <-done:
			return
		case <-c.ctx.Done():
			return
		case <-t.C:
			b, _ := json.Marshal(map[string]any{"type": protocol.TypePing, "payload": map[string]any{"ts": time.Now().UnixMilli()}})
			c.writeRaw(conn, b)
			continue
		case <-silence.C:
		}
		c.mu.Lock()
		silent := wallNow().Sub(c.lastMsg)
		c.mu.Unlock()
		if silent < timeout {
			silence.Reset(timeout - silent)
			continue
		}
		c.logf("[heartbeat] silent for %s (>= %s): closing with 4000", silent.Round(time.Millisecond), timeout)
		timedOut()
		c.writeMu.Lock()
		conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(int(protocol.CloseHeartbeat), "heartbeat timeout"), time.Now().Add(100*time.Millisecond))
		c.writeMu.Unlock()
		conn.Close()
		return
	}
}

func (c *Client) outboxJoinsLocked(room string) bool {
	for _, it := range c.outbox {
		if it.typ == protocol.TypeJoin {
			if p, ok := it.payload.(map[string]any); ok && p["room"] == room {
				return true
			}
		}
	}
	return false
}

// gapState is set by the reader when a stream's sequence skipped: the
// connection is being closed (4010) to resume, and nothing after the gap
// is delivered from it.
type gapState struct {
	found, closed bool
	why           string
}

// handle dispatches one server message.
func (c *Client) handle(conn *websocket.Conn, b []byte, gap *gapState) {
	defer func() {
		if gap.found && !gap.closed {
			gap.closed = true
			c.writeMu.Lock()
			conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(int(protocol.CloseResync), "missed messages"), time.Now().Add(time.Second))
			c.writeMu.Unlock()
			conn.Close()
		}
	}()
	var env protocol.Envelope
	if json.Unmarshal(b, &env) != nil {
		c.logf("[error] server sent a frame that is not JSON")
		return
	}
	switch env.Type {
	case protocol.TypePong:
	case protocol.TypeAck:
		var a Ack
		json.Unmarshal(env.Payload, &a)
		c.settle(env.ID, result{ack: a})
	case protocol.TypeError:
		var e protocol.Error
		json.Unmarshal(env.Payload, &e)
		if !c.settleError(conn, env.ID, &e) {
			c.emit(Event{Type: protocol.TypeError, Error: &e})
		}
	case protocol.TypeChat:
		var m protocol.Chat
		if json.Unmarshal(env.Payload, &m) == nil && c.accept(gap, "room:"+m.Room, m.From, m.ID, m.Seq, m.Epoch) {
			c.emit(Event{Type: env.Type, Chat: &m})
		}
	case protocol.TypeDirect:
		var m protocol.Direct
		if json.Unmarshal(env.Payload, &m) == nil && c.accept(gap, "inbox", m.From, m.ID, m.Seq, m.Epoch) {
			c.emit(Event{Type: env.Type, Direct: &m})
		}
	case protocol.TypeMembers:
		var m protocol.Members
		json.Unmarshal(env.Payload, &m)
		c.mu.Lock()
		if contains(c.rooms, m.Room) { // ("", 0), a room that has not published yet, is a position too
			if _, seen := c.positions["room:"+m.Room]; !seen {
				c.joinedAt[m.Room] = pos{m.Epoch, m.Top}
			}
		}
		c.mu.Unlock()
		if !c.settleRequest(env.ID, env.Payload) {
			c.emit(Event{Type: env.Type, Members: &m})
		}
	case protocol.TypeHistory:
		if !c.settleRequest(env.ID, env.Payload) {
			var p protocol.HistoryPage
			json.Unmarshal(env.Payload, &p)
			c.emit(Event{Type: env.Type, History: &p})
		}
	case protocol.TypeRecovered:
		var r protocol.Recovered
		json.Unmarshal(env.Payload, &r)
		c.mu.Lock()
		stream := "inbox"
		if !r.Inbox {
			stream = "room:" + r.Room
		}
		if !r.Recovered {
			if r.Epoch != "" {
				c.positions[stream] = pos{r.Epoch, r.Top}
			} else {
				delete(c.positions, stream)
			}
		}
		delete(c.joinedAt, r.Room)
		c.mu.Unlock()
		c.logf("[recovered] %s recovered=%v count=%d", stream, r.Recovered, r.Count)
		c.emit(Event{Type: env.Type, Recovered: &r})
	case protocol.TypePresence:
		var p protocol.Presence
		json.Unmarshal(env.Payload, &p)
		c.emit(Event{Type: env.Type, Presence: &p})
	case protocol.TypeLeft:
		var l protocol.Left
		json.Unmarshal(env.Payload, &l)
		c.emit(Event{Type: env.Type, Left: &l})
	case protocol.TypeUnsubscribed:
		var u protocol.Unsubscribed
		json.Unmarshal(env.Payload, &u)
		c.mu.Lock()
		c.rooms = remove(c.rooms, u.Room)
		delete(c.joinedAt, u.Room)
		delete(c.positions, "room:"+u.Room)
		c.mu.Unlock()
		c.emit(Event{Type: env.Type, Unsubscribed: &u})
	}
}

// accept decides whether a message is delivered to the application. Each
// stream's messages must come in sequence: after (epoch, n) comes
// (epoch, n+1). One already delivered (a replay overlapping a live
// delivery) is dropped. One further ahead, or of another epoch, means a
// gap: nothing from this connection is delivered any more, and the
// connection is closed with 4010 to resume from the last position, whose
// replay fills the gap (or says recovered: false). Messages are also
// deduplicated by (stream, sender, client id): the last line of defence.
func (c *Client) accept(gap *gapState, stream, from, id string, seq uint64, epoch string) bool {
	if gap.found {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p, known := c.positions[stream]
	if !known && len(stream) > 5 {
		p, known = c.joinedAt[stream[len("room:"):]]
	}
	if seq > 0 && known {
		switch {
		case p.Epoch == epoch && seq <= p.Seq:
			c.logf("[dedupe] dropped %s seq=%d", stream, seq)
			return false
		case p.Epoch == epoch && seq == p.Seq+1, p.Epoch == "" && p.Seq == 0 && seq == 1:
		default:
			gap.found = true
			gap.why = fmt.Sprintf("missed messages on %s: at %s/%d, got %s/%d", stream, p.Epoch, p.Seq, epoch, seq)
			c.logf("[gap] %s: resuming to recover them", gap.why)
			return false
		}
	}
	if seq > 0 {
		c.positions[stream] = pos{epoch, seq}
		if len(stream) > 5 {
			delete(c.joinedAt, stream[len("room:"):])
		}
	}
	if id != "" && !c.seenIDs.add(stream+"\x00"+from+"\x00"+id) {
		c.logf("[dedupe] dropped %s message %s from %s seen before", stream, id, from)
		return false
	}
	return true
}

func (c *Client) settle(id string, r result) bool {
	c.mu.Lock()
	var it *item
	for i, x := range c.outbox {
		if x.id == id {
			it = x
			c.outbox = append(c.outbox[:i], c.outbox[i+1:]...)
			break
		}
	}
	if it == nil {
		if it = c.requests[id]; it != nil {
			delete(c.requests, id)
		}
	}
	c.mu.Unlock()
	if it == nil {
		return false
	}
	it.done <- r
	return true
}

func (c *Client) settleRequest(id string, payload json.RawMessage) bool {
	c.mu.Lock()
	it := c.requests[id]
	delete(c.requests, id)
	c.mu.Unlock()
	if it == nil || id == "" {
		return false
	}
	it.done <- result{page: payload}
	return true
}

// settleError fails the call the error names, except for retryable errors
// on queued messages, which stay in the outbox and are sent again shortly.
func (c *Client) settleError(conn *websocket.Conn, id string, e *protocol.Error) bool {
	if id == "" {
		return false
	}
	if e.Code.Retryable() {
		c.mu.Lock()
		var it *item
		for _, x := range c.outbox {
			if x.id == id {
				it = x
				x.sent = false
			}
		}
		c.mu.Unlock()
		if it != nil {
			c.logf("[outbox] %s refused with %s; sending again in %s", id, e.Code, 2*c.opts.BaseDelay)
			c.wg.Add(1)
			go func() {
				defer c.wg.Done()
				select {
				case <-time.After(2 * c.opts.BaseDelay):
					c.flush(conn) // a gone conn is skipped; the reconnect re-sends
				case <-c.ctx.Done():
				}
			}()
			return true
		}
	}
	return c.settle(id, result{err: e})
}

// refusal describes a failed handshake. A server that answered the HTTP
// request with a client error (400 a bad user name, 403 an origin or a
// forbidden path, 404 no WebSocket here, 426 a protocol version) will
// answer it the same way every time: that is terminal (reported as 1008,
// policy), with the server's own words as the reason. Anything else — no
// answer, a connection refused, a 5xx — is worth retrying (1006).
func refusal(resp *http.Response, err error) CloseInfo {
	info := CloseInfo{Code: protocol.CloseAbnormal, Reason: err.Error(), At: time.Now()}
	if resp == nil {
		return info
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	resp.Body.Close()
	why := strings.TrimSpace(string(body))
	if why == "" {
		why = http.StatusText(resp.StatusCode)
	}
	info.Reason = fmt.Sprintf("handshake refused: HTTP %d: %s", resp.StatusCode, why)
	if resp.StatusCode >= 400 && resp.StatusCode < 500 && resp.StatusCode != http.StatusTooManyRequests &&
		resp.StatusCode != http.StatusRequestTimeout {
		info.Code = protocol.ClosePolicy
	}
	return info
}

func closeInfoOf(err error) CloseInfo {
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		return CloseInfo{Code: protocol.CloseCode(ce.Code), Reason: ce.Text, WasClean: true, At: time.Now()}
	}
	return CloseInfo{Code: protocol.CloseAbnormal, Reason: err.Error(), At: time.Now()}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func remove(list []string, s string) []string {
	out := list[:0]
	for _, x := range list {
		if x != s {
			out = append(out, x)
		}
	}
	return out
}

func removeItem(list []*item, it *item) []*item {
	for i, x := range list {
		if x == it {
			return append(list[:i], list[i+1:]...)
		}
	}
	return list
}

func valuesOf(m map[string]*item) []*item {
	out := make([]*item, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

// idSet remembers the most recent n keys.
type idSet struct {
	n    int
	keys map[string]struct{}
	ring []string
	next int
}

func newIDSet(n int) *idSet {
	return &idSet{n: n, keys: make(map[string]struct{}, n), ring: make([]string, n)}
}

// add records key and reports whether it was new.
func (s *idSet) add(key string) bool {
	if _, ok := s.keys[key]; ok {
		return false
	}
	if old := s.ring[s.next]; old != "" {
		delete(s.keys, old)
	}
	s.ring[s.next] = key
	s.next = (s.next + 1) % s.n
	s.keys[key] = struct{}{}
	return true
}
