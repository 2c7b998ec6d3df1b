package server

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/tether-chat/tether/engine"
	"github.com/tether-chat/tether/protocol"
	"github.com/tether-chat/tether/server/hub"
	"github.com/tether-chat/tether/server/session"
)

// Hooks bring the application's backend into the loop (docs/api.md,
// Hooks):
//
//   - Events (Config.HookURL): the node posts what happens on it — room
//     and private messages, joins and leaves, connects and disconnects —
//     to the application, in batches signed with HMAC-SHA256, retried
//     with backoff until the application answers 2xx: at least once, in
//     the order they happened on the node, from a bounded queue. A
//     message carries its stream, epoch and seq, every event an id, so
//     that the receiver can drop what a retry sends twice. Nothing on a
//     client's path waits for the application.
//   - Checks (Config.CheckURL): the node asks the application before it
//     sets up a connection (which may name the user, e.g. from the
//     application's own session cookie) and before it publishes a client's
//     message (allow, deny, or rewrite the text), within CheckTimeout.
//     When the application does not answer, the node refuses (fail
//     closed) unless CheckFailOpen.

// HookEvent is one event posted to Config.HookURL.
type HookEvent struct {
	ID   string `json:"id"`   // unique per event: the receiver's key for retries
	Type string `json:"type"` // message, direct, join, leave, connect, disconnect
	Node string `json:"node"`
	TS   int64  `json:"ts"` // ms since the epoch

	User string `json:"user,omitempty"` // who: the sender, the joiner, the one connecting
	Room string `json:"room,omitempty"`
	To   string `json:"to,omitempty"` // direct: the recipient

	// Messages: what was published and where, so that the receiver can
	// store a room's history in order and drop duplicates by
	// (stream, epoch, seq).
	Text     string             `json:"text,omitempty"`
	File     *protocol.FileInfo `json:"file,omitempty"`
	ClientID string             `json:"client_id,omitempty"` // the sender's message id
	Stream   string             `json:"stream,omitempty"`
	Epoch    string             `json:"epoch,omitempty"`
	Seq      uint64             `json:"seq,omitempty"`

	// connect, disconnect
	Conn    uint64 `json:"conn,omitempty"`
	Remote  string `json:"remote,omitempty"`
	Resumed bool   `json:"resumed,omitempty"`
	Code    int    `json:"code,omitempty"` // disconnect: the close code (1006: no close frame)
}

// hookBatch is the body of one POST.
type hookBatch struct {
	Events []HookEvent `json:"events"`
}

// hookSender delivers events to Config.HookURL.
type hookSender struct {
	s       *Server
	queue   chan HookEvent
	next    atomic.Uint64
	dropped atomic.Int64 // since the last log line about it
	done    chan struct{}

	sent, failures, lost atomic.Int64
}

const (
	hookBatchMax   = 100
	hookBatchWait  = 50 * time.Millisecond
	hookBackoff    = 200 * time.Millisecond
	hookBackoffCap = 10 * time.Second
	hookDrain      = 3 * time.Second // how long a stopping node tries to deliver what is left
)

func newHookSender(s *Server) *hookSender {
	h := &hookSender{s: s, queue: make(chan HookEvent, s.cfg.HookQueue), done: make(chan struct{})}
	go h.run()
	return h
}

// emit queues an event; it never blocks. A full queue (the application
// has been down for a while) drops the event, counts it and says so.
func (h *hookSender) emit(e HookEvent) {
	e.ID = h.s.nodeID + "-" + strconv.FormatUint(h.next.Add(1), 10)
	e.Node = h.s.nodeID
	if e.TS == 0 {
		e.TS = time.Now().UnixMilli()
	}
	select {
	case h.queue <- e:
	default:
		h.lost.Add(1)
		if h.dropped.Add(1) == 1 {
			h.s.log.Error("hook queue full: events are being dropped (the application at --hook-url is not taking them)",
				"queue", cap(h.queue), "url", h.s.cfg.HookURL)
		}
	}
}

// run sends batches until the node stops; then it tries for a moment to
// deliver what is still queued.
func (h *hookSender) run() {
	defer close(h.done)
	var batch []HookEvent
	for {
		select {
		case e := <-h.queue:
			batch = append(batch[:0], e)
		case <-h.s.ctx.Done():
			h.drain(nil)
			return
		}
		timer := time.NewTimer(hookBatchWait)
	gather:
		for len(batch) < hookBatchMax {
			select {
			case e := <-h.queue:
				batch = append(batch, e)
			case <-timer.C:
				break gather
			}
		}
		timer.Stop()
		if !h.deliver(h.s.ctx, batch) {
			h.drain(batch) // the node is stopping: this batch first
			return
		}
	}
}

// drain delivers first (a batch the stop interrupted) and what is queued
// when the node stops, for at most hookDrain. Shutdown waits for it.
func (h *hookSender) drain(first []HookEvent) {
	ctx, cancel := context.WithTimeout(context.Background(), hookDrain)
	defer cancel()
	for ctx.Err() == nil {
		batch := first
		first = nil
		for len(batch) < hookBatchMax {
			select {
			case e := <-h.queue:
				batch = append(batch, e)
				continue
			default:
			}
			break
		}
		if len(batch) == 0 {
			return
		}
		h.deliver(ctx, batch)
	}
}

// deliver posts one batch until the application takes it (or ctx ends:
// the node is stopping).
// deliver posts batch until the application takes it, and reports
// whether it did (false: ctx ended first).
func (h *hookSender) deliver(ctx context.Context, batch []HookEvent) bool {
	body, err := json.Marshal(hookBatch{Events: batch})
	if err != nil {
		h.s.log.Error("hook batch not encodable", "err", err)
		return true // never deliverable: not retried
	}
	for attempt := 0; ; attempt++ {
		err := h.post(ctx, body)
		if err == nil {
			h.sent.Add(int64(len(batch)))
			if n := h.dropped.Swap(0); n > 0 {
				h.s.log.Warn("hook queue drained again", "dropped", n)
			}
			return true
		}
		h.failures.Add(1)
		if attempt == 0 || attempt%10 == 0 {
			h.s.log.Warn("hook delivery failed; retrying", "url", h.s.cfg.HookURL, "events", len(batch), "attempt", attempt+1, "err", err)
		}
		d := min(hookBackoffCap, hookBackoff<<min(attempt, 10))
		d = d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return false
		}
	}
}

func (h *hookSender) post(ctx context.Context, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.s.cfg.HookURL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	signRequest(req, h.s.cfg.HookSecret, body)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("the application answered %s", resp.Status)
	}
	return nil
}

// signRequest sets the request's JSON type, its time and its signature:
// X-Tether-Signature is "v1=" and the hex HMAC-SHA256, under secret, of
// the X-Tether-Timestamp value, a dot and the body.
func signRequest(req *http.Request, secret string, body []byte) {
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Tether-Timestamp", ts)
	if secret != "" {
		req.Header.Set("X-Tether-Signature", "v1="+Signature(secret, ts, body))
	}
}

// Signature is the hex HMAC-SHA256, under secret, of timestamp "." body:
// what a receiver computes to check X-Tether-Signature.
func Signature(secret, timestamp string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(timestamp))
	m.Write([]byte{'.'})
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

// hook emits an event if hooks are on.
func (s *Server) hook(e HookEvent) {
	if s.hooks != nil {
		s.hooks.emit(e)
	}
}

// hookPublished emits the event of a client's or the API's message once
// it is published: the recipient's stream of a private message (not the
// sender's copy).
func (s *Server) hookPublished(p *engine.Publication) {
	if s.hooks == nil || p.Seq == 0 {
		return
	}
	e := HookEvent{User: p.From, Text: p.Text, File: hub.FileInfo(p.File), ClientID: p.ClientID,
		Stream: p.Stream, Epoch: p.Epoch, Seq: p.Seq, TS: p.TS}
	switch p.Type {
	case protocol.TypeChat:
		e.Type, e.Room = "message", p.Room
	case protocol.TypeDirect:
		if p.Stream != engine.UserStream(p.To) {
			return // the copy to the sender's other tabs
		}
		e.Type, e.To = "direct", p.To
	default:
		return
	}
	s.hooks.emit(e)
}

// CheckRequest is what Config.CheckURL is asked.
type CheckRequest struct {
	Type string `json:"type"` // connect, publish
	User string `json:"user"` // the user the client says it is (open mode) or its token names

	// connect
	Remote string   `json:"remote,omitempty"`
	Cookie string   `json:"cookie,omitempty"` // the WebSocket request's Cookie header: the application's own session
	Origin string   `json:"origin,omitempty"`
	Resume bool     `json:"resume,omitempty"` // the client presents a session to resume
	Rooms  []string `json:"rooms,omitempty"`  // token mode: the rooms its token allows

	// publish
	Room string             `json:"room,omitempty"`
	To   string             `json:"to,omitempty"`
	Text string             `json:"text,omitempty"`
	File *protocol.FileInfo `json:"file,omitempty"`
	ID   string             `json:"id,omitempty"`
}

// CheckResult is what the application answers.
type CheckResult struct {
	Result string `json:"result"` // allow, deny, rewrite (publish)
	Reason string `json:"reason,omitempty"`
	User   string `json:"user,omitempty"` // connect: the user to set the connection up as
	Text   string `json:"text,omitempty"` // rewrite: the text to publish instead
}

// errCheckDown is a check the application did not answer.
var errCheckDown = errors.New("the application did not answer the check")

// check asks Config.CheckURL. With the checks off it allows everything.
func (s *Server) check(ctx context.Context, req CheckRequest) (CheckResult, error) {
	if s.cfg.CheckURL == "" {
		return CheckResult{Result: "allow"}, nil
	}
	res, err := s.askCheck(ctx, req)
	result := res.Result
	if err != nil {
		s.log.Warn("check failed", "type", req.Type, "user", req.User, "err", err, "fail_open", s.cfg.CheckFailOpen)
		result = "down"
		if s.cfg.CheckFailOpen {
			res, err = CheckResult{Result: "allow"}, nil
		} else {
			err = errCheckDown
		}
	}
	s.metrics.checks.WithLabelValues(req.Type, result).Inc()
	return res, err
}

func (s *Server) askCheck(ctx context.Context, cr CheckRequest) (CheckResult, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.CheckTimeout)
	defer cancel()
	body, _ := json.Marshal(cr)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.cfg.CheckURL, bytes.NewReader(body))
	if err != nil {
		return CheckResult{}, err
	}
	signRequest(req, s.cfg.HookSecret, body)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return CheckResult{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return CheckResult{}, fmt.Errorf("the application answered %s", resp.Status)
	}
	var res CheckResult
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&res); err != nil {
		return CheckResult{}, fmt.Errorf("the application's answer is not JSON: %w", err)
	}
	switch res.Result {
	case "allow", "deny":
	case "rewrite":
		if cr.Type != "publish" {
			return CheckResult{}, fmt.Errorf("the application answered rewrite to a %s check", cr.Type)
		}
	default:
		return CheckResult{}, fmt.Errorf("the application answered result %q (allow, deny or rewrite)", res.Result)
	}
	return res, nil
}

// checkMessage asks the application about a client's message before it is
// published: nil to go on (p.Text rewritten if asked), else the error the
// client gets.
func (s *Server) checkMessage(ctx context.Context, c *session.Conn, p *engine.Publication) error {
	if s.cfg.CheckURL == "" {
		return nil
	}
	res, err := s.check(ctx, CheckRequest{Type: "publish", User: c.User(), Room: p.Room, To: p.To, Text: p.Text,
		File: hub.FileInfo(p.File), ID: p.ClientID})
	switch {
	case err != nil:
		return &protocol.Error{Code: protocol.ErrUnavailable, Message: "the application did not answer in time; the message was not sent: send it again"}
	case res.Result == "deny":
		reason := res.Reason
		if reason == "" {
			reason = "the application rejected this message"
		}
		return &protocol.Error{Code: protocol.ErrRejected, Message: reason}
	case res.Result == "rewrite":
		if msg := protocol.ValidateText(res.Text, s.cfg.MaxText); msg != "" && p.File == nil {
			return &protocol.Error{Code: protocol.ErrRejected, Message: "the application's rewrite is not a valid text: " + msg}
		}
		p.Text = res.Text
	}
	return nil
}

// checkConnect asks the application whether c may be set up, with what
// the client's request carries (its cookie: the application's own
// session); the application may name the user (named, moved to under the
// connection limits). It returns the Disconnect that refuses the
// connection, or nil.
func (s *Server) checkConnect(c *session.Conn, cookie, origin string, resume bool) (named string, err error) {
	if s.cfg.CheckURL == "" {
		return "", nil
	}
	req := CheckRequest{Type: "connect", User: c.User(), Remote: c.Remote(), Cookie: cookie, Origin: origin, Resume: resume}
	if cl := c.Claims(); cl != nil {
		req.Rooms = cl.Rooms
	}
	ctx, cancel := s.opContext(s.cfg.CheckTimeout + time.Second)
	defer cancel()
	res, err := s.check(ctx, req)
	switch {
	case err != nil:
		return "", protocol.Disconnect{Code: protocol.CloseTryAgainLater, Reason: "the application did not answer; try again later"}
	case res.Result == "deny":
		reason := res.Reason
		if reason == "" {
			reason = "refused by the application"
		}
		if len(reason) > 120 {
			reason = reason[:120]
		}
		return "", protocol.Disconnect{Code: protocol.CloseForbidden, Reason: reason}
	case res.User != "" && res.User != c.User():
		if msg := protocol.ValidateUser(res.User); msg != "" {
			s.log.Warn("check named an invalid user", "user", res.User, "why", msg)
			return "", protocol.Disconnect{Code: protocol.CloseForbidden, Reason: "the application named an invalid user"}
		}
		if refused := s.rename(c.IP(), c.User(), res.User); refused != nil {
			return "", *refused
		}
		return res.User, nil
	}
	return "", nil
}
