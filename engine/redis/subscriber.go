package redis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"

	"github.com/tether-chat/tether/engine"
)

// The subscriber owns the node's pub/sub connection and turns what it
// brings into gap-free deliveries.
//
//   - One dedicated connection carries one pattern subscription to every
//     stream's channel (P{*}:ch) and the probe's channel. A stream is
//     "subscribed" locally: Subscribe and Unsubscribe only add and drop the
//     stream's state, with no round trip to Redis, so setting up a
//     connection never waits for a SUBSCRIBE, and a replaced pub/sub
//     connection resubscribes two channels, not one per stream. What a
//     node receives for streams it does not serve is dropped on arrival
//     (one map lookup). The cost: every node receives every publication of
//     the cluster (docs/operations.md, Capacity).
//   - When the connection breaks, or when the end-to-end probe finds it
//     silent (a half-open connection that TCP would not report for
//     minutes), it is replaced and every stream is checked for a gap.
//   - Each stream has its own queue and, while the queue is not empty, a
//     goroutine that delivers it (drain): a stream that is being filled
//     from history holds up only itself, and a quiet stream costs nothing.
//   - Deliveries of a stream are checked for continuity: after (epoch, n)
//     comes (epoch, n+1). A message further ahead means a gap, which is
//     filled from history first (fill), retrying while Redis is
//     unreachable; a gap history no longer covers, or a new epoch, is
//     reported to the node (Handler.Lost), never skipped in silence.

const (
	maxQueued = 100000 // messages a stream may queue while it is being filled
	maxFills  = 64     // gap fills running at once (after a reconnect, every stream checks)
)

type subscriber struct {
	e *Engine

	mu      sync.RWMutex
	streams map[string]*subStream   // by channel
	dc      rueidis.DedicatedClient // the current pub/sub connection; nil while there is none
	closed  bool

	reset chan struct{} // the probe asks run to replace the connection

	probeMu sync.Mutex
	probes  map[string]chan struct{}
	lastOK  atomic.Int64 // unix nanos of the last probe that came back

	fills chan struct{} // semaphore of running fills
	up    chan struct{} // closed once the first connection is subscribed
	upOne sync.Once
}

// subStream is one subscribed stream.
type subStream struct {
	s       *subscriber
	name    string
	channel string

	mu      sync.Mutex
	q       []qItem
	running bool // a drain goroutine owns delivery
	gone    bool // unsubscribed: deliver nothing more
	// (epoch, last) is the position delivered so far; known says there is
	// one. Before the first delivery it is the lowest position of the
	// stream this node has read since Subscribe (noteBase): every reader
	// on the node read its own position after Subscribe, so nothing after
	// the lowest of them may be missed; the first publication delivered
	// then takes over (delivered).
	epoch     string
	last      uint64
	known     bool
	delivered bool
}

// qItem is a raw publication from the channel, or a request to check the
// stream for a gap (after the connection was replaced).
type qItem struct {
	raw  string
	fill bool
}

func newSubscriber(e *Engine) *subscriber {
	return &subscriber{e: e, streams: map[string]*subStream{}, reset: make(chan struct{}, 1),
		probes: map[string]chan struct{}{}, fills: make(chan struct{}, maxFills), up: make(chan struct{})}
}

// run keeps one pub/sub connection up, subscribed to every stream's
// channel (a pattern) and the probe's.
func (s *subscriber) run() {
	e := s.e
	defer e.wg.Done()
	first := true
	for attempt := 0; e.ctx.Err() == nil; attempt++ {
		select { // a reset asked for the connection before this one is stale
		case <-s.reset:
		default:
		}
		dc, release := e.client.Dedicate()
		wait := dc.SetPubSubHooks(rueidis.PubSubHooks{OnMessage: s.onMessage})
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			dc.Close()
			release()
			return
		}
		s.dc = dc
		s.mu.Unlock()

		ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
		e.stats.commands.Add(2)
		err := dc.Do(ctx, dc.B().Subscribe().Channel(e.probeChannel()).Build()).Error()
		if err == nil {
			err = dc.Do(ctx, dc.B().Psubscribe().Pattern(e.streamPattern()).Build()).Error()
		}
		cancel()
		if err == nil {
			if !first {
				e.stats.reconnects.Add(1)
				s.mu.RLock()
				all := make([]*subStream, 0, len(s.streams))
				for _, st := range s.streams {
					all = append(all, st)
				}
				s.mu.RUnlock()
				e.log.Info("redis pub/sub subscribed again; checking every stream for a gap", "streams", len(all))
				for _, st := range all {
					st.push(qItem{fill: true})
				}
			}
			first, attempt = false, 0
			s.upOne.Do(func() { close(s.up) })
			select {
			case err = <-wait:
			case <-s.reset:
				err = errors.New("the end-to-end probe did not come back through the subscription")
			case <-e.ctx.Done():
			}
		}
		s.mu.Lock()
		if s.dc == dc {
			s.dc = nil
		}
		s.mu.Unlock()
		dc.Close()
		release()
		if e.ctx.Err() != nil {
			return
		}
		switch {
		case first && attempt%25 == 0: // never connected yet: say so now and then, not every 400 ms
			e.log.Warn("cannot reach redis for the pub/sub connection; retrying", "err", err, "attempts", attempt+1)
		case !first && attempt == 0:
			e.log.Warn("redis pub/sub connection lost; subscribing again and filling gaps", "err", err)
		case !first && attempt%25 == 0:
			e.log.Warn("redis pub/sub connection still down; retrying", "err", err, "attempts", attempt+1)
		}
		sleepCtx(e.ctx, backoff(attempt))
	}
}

// streamPattern matches every stream's channel of this engine's prefix,
// with the prefix's own glob characters escaped.
func (e *Engine) streamPattern() string { return e.globPrefix() + "{*}:ch" }

// globPrefix is the key prefix with glob characters escaped, for patterns.
func (e *Engine) globPrefix() string {
	var b strings.Builder
	for _, r := range e.cfg.Prefix {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// onMessage is rueidis's hook: called for each message, one at a time, in
// the order they arrived. It only queues.
func (s *subscriber) onMessage(m rueidis.PubSubMessage) {
	if m.Channel == s.e.probeChannel() {
		s.probeMu.Lock()
		if ch := s.probes[m.Message]; ch != nil {
			close(ch)
			delete(s.probes, m.Message)
		}
		s.probeMu.Unlock()
		return
	}
	s.mu.RLock()
	st := s.streams[m.Channel]
	s.mu.RUnlock()
	if st != nil {
		st.push(qItem{raw: m.Message})
	}
}

// Subscribe implements engine.Engine. It only starts keeping the
// stream's state: the pattern subscription already brings its channel.
func (e *Engine) Subscribe(ctx context.Context, stream string) error {
	s := e.sub
	ch := e.channel(stream)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return engine.ErrClosed
	}
	if s.streams[ch] == nil {
		s.streams[ch] = &subStream{s: s, name: stream, channel: ch}
	}
	return nil
}

// Unsubscribe implements engine.Engine: the stream's state is dropped, and
// what arrives for it afterwards with it.
func (e *Engine) Unsubscribe(ctx context.Context, stream string) error {
	s := e.sub
	ch := e.channel(stream)
	s.mu.Lock()
	st := s.streams[ch]
	delete(s.streams, ch)
	s.mu.Unlock()
	if st != nil {
		st.stop()
	}
	return nil
}

// noteBase records a position of stream that this node read: before the
// stream's first delivery, the lowest one is where deliveries must start.
func (s *subscriber) noteBase(stream, epoch string, top uint64) {
	s.mu.RLock()
	st := s.streams[s.e.channel(stream)]
	s.mu.RUnlock()
	if st == nil {
		return
	}
	st.mu.Lock()
	if !st.delivered && (!st.known || epoch == st.epoch && top < st.last) {
		st.epoch, st.last, st.known = epoch, top, true
	}
	st.mu.Unlock()
}

func (s *subscriber) close() {
	s.mu.Lock()
	s.closed = true
	dc := s.dc
	s.mu.Unlock()
	if dc != nil {
		dc.Close()
	}
}

// push queues an item and starts the stream's drain goroutine if none runs.
func (st *subStream) push(it qItem) {
	st.mu.Lock()
	if st.gone {
		st.mu.Unlock()
		return
	}
	if len(st.q) >= maxQueued {
		// Held up far too long (Redis unreachable during a fill, in a busy
		// room): what was queued is in history; fetch it from there.
		clear(st.q)
		st.q = append(st.q[:0], qItem{fill: true})
	}
	st.q = append(st.q, it)
	start := !st.running
	st.running = true
	st.mu.Unlock()
	if start && !st.s.track() {
		st.mu.Lock()
		st.running = false // closing: nobody delivers any more
		st.mu.Unlock()
		return
	}
	if start {
		go st.drain()
	}
}

// track counts a new drain goroutine in the engine's wait group, unless
// the engine is closing (Close waits for the group: no goroutine may join
// it then).
func (s *subscriber) track() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return false
	}
	s.e.wg.Add(1)
	return true
}

func (st *subStream) stop() {
	st.mu.Lock()
	st.gone = true
	clear(st.q)
	st.q = nil
	st.mu.Unlock()
}

// drain delivers the stream's queue, in order, until it is empty.
func (st *subStream) drain() {
	e := st.s.e
	defer e.wg.Done()
	for {
		st.mu.Lock()
		if len(st.q) == 0 || st.gone || e.ctx.Err() != nil {
			st.q, st.running = nil, false
			st.mu.Unlock()
			return
		}
		it := st.q[0]
		st.q[0] = qItem{}
		st.q = st.q[1:]
		st.mu.Unlock()
		if it.fill {
			st.fill(0)
			continue
		}
		var p engine.Publication
		if err := json.Unmarshal([]byte(it.raw), &p); err != nil {
			e.log.Warn("undecodable publication", "stream", st.name, "err", err)
			continue
		}
		st.accept(&p)
	}
}

// position returns what has been delivered so far (or the base), and
// whether there is one.
func (st *subStream) position() (string, uint64, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.epoch, st.last, st.known
}

func (st *subStream) advance(epoch string, seq uint64) {
	st.mu.Lock()
	st.epoch, st.last, st.known, st.delivered = epoch, seq, true, true
	st.mu.Unlock()
}

// follows reports whether p is the next publication after (epoch, last).
// After ("", 0) — nothing published yet — the next is seq 1 of any epoch.
func follows(p *engine.Publication, epoch string, last uint64) bool {
	if epoch == "" && last == 0 {
		return p.Seq == 1
	}
	return p.Epoch == epoch && p.Seq == last+1
}

// accept delivers p if it is the next of its stream; one already
// delivered (a fill and the channel overlap) is dropped; one further
// ahead is delivered after the gap is filled.
func (st *subStream) accept(p *engine.Publication) {
	h := st.s.e.handler
	if p.Seq == 0 { // ephemeral
		h.Deliver(p)
		return
	}
	epoch, last, known := st.position()
	switch {
	case !known: // no reader has read a position yet: the first one delivered is where we are
	case follows(p, epoch, last):
	case p.Epoch == epoch && p.Seq <= last:
		return // delivered already
	case p.Epoch == epoch || epoch == "" && last == 0:
		st.fill(p.Seq - 1)
		epoch, last, _ = st.position()
		if !follows(p, epoch, last) && !(p.Epoch == epoch && p.Seq > last) {
			return // the fill delivered it, or history was lost and p is behind the new position
		}
	default: // a new epoch: the stream's history was lost in Redis
		st.lost(p.Epoch, p.Seq, "the stream's epoch changed")
	}
	st.advance(p.Epoch, p.Seq)
	h.Deliver(p)
}

// fill delivers, in order, what the stream published after the position
// delivered so far, up to upTo (0: up to the stream's top), from history.
// It retries while Redis is unreachable; when history no longer covers the
// position it reports the stream lost.
func (st *subStream) fill(upTo uint64) {
	s, e := st.s, st.s.e
	select {
	case s.fills <- struct{}{}:
	case <-e.ctx.Done():
		return
	}
	defer func() { <-s.fills }()
	filled := 0
	defer func() {
		if filled > 0 {
			e.stats.fills.Add(1)
			e.log.Info("gap filled from history", "stream", st.name, "messages", filled)
		}
	}()
	for attempt := 0; e.ctx.Err() == nil; attempt++ {
		st.mu.Lock()
		gone := st.gone
		st.mu.Unlock()
		if gone {
			return
		}
		epoch, last, known := st.position()
		if !known {
			return // nothing read nor delivered yet: nothing can have been missed
		}
		ctx, cancel := context.WithTimeout(e.ctx, 5*time.Second)
		h, err := e.History(ctx, st.name, engine.HistoryQuery{After: last, Limit: e.cfg.HistorySize})
		cancel()
		if err != nil {
			if attempt == 0 || attempt%20 == 0 {
				e.log.Warn("gap fill failed; retrying", "stream", st.name, "after", last, "attempt", attempt+1, "err", err)
			}
			sleepCtx(e.ctx, min(backoff(attempt), time.Second))
			continue
		}
		if !h.Covers(epoch, last) {
			st.lost(h.Epoch, h.Top, "history no longer reaches back to the last delivered message")
			return
		}
		for _, p := range h.Pubs {
			if ep, l, _ := st.position(); !follows(p, ep, l) {
				continue
			}
			st.advance(p.Epoch, p.Seq)
			e.handler.Deliver(p)
			filled++
		}
		_, last, _ = st.position()
		if last >= h.Top || upTo > 0 && last >= upTo {
			return
		}
		if len(h.Pubs) == 0 {
			st.lost(h.Epoch, h.Top, "messages expired from history before they could be filled")
			return
		}
	}
}

// lost moves the stream to (epoch, top) and tells the node that its
// readers may have missed messages.
func (st *subStream) lost(epoch string, top uint64, why string) {
	e := st.s.e
	e.stats.lost.Add(1)
	from, last, _ := st.position()
	e.log.Warn("stream deliveries lost: its readers must recover", "stream", st.name, "why", why,
		"from_epoch", from, "from_seq", last, "epoch", epoch, "top", top)
	st.advance(epoch, top)
	e.handler.Lost(st.name)
}

// probe checks the engine end to end every ProbeInterval: a token
// published through Redis must come back through this node's own
// subscription within ProbeTimeout. Two misses in a row while Redis
// answers the PUBLISH mean the subscription is dead: it is replaced.
func (s *subscriber) probe() {
	e := s.e
	defer e.wg.Done()
	select { // a probe before the first subscription could only fail
	case <-s.up:
	case <-e.ctx.Done():
		return
	}
	t := time.NewTicker(e.cfg.ProbeInterval)
	defer t.Stop()
	misses := 0
	for {
		token := randomHex(8)
		came := make(chan struct{})
		s.probeMu.Lock()
		s.probes[token] = came
		s.probeMu.Unlock()
		ctx, cancel := context.WithTimeout(e.ctx, e.cfg.ProbeTimeout)
		e.stats.commands.Add(1)
		err := e.client.Do(ctx, e.client.B().Publish().Channel(e.probeChannel()).Message(token).Build()).Error()
		ok := false
		if err == nil {
			select {
			case <-came:
				ok = true
			case <-ctx.Done():
			}
		}
		cancel()
		s.probeMu.Lock()
		delete(s.probes, token)
		s.probeMu.Unlock()
		switch {
		case e.ctx.Err() != nil:
			return
		case ok:
			s.lastOK.Store(time.Now().UnixNano())
			misses = 0
		default:
			e.stats.probeFailures.Add(1)
			misses++
			if err == nil && misses >= 2 {
				e.log.Warn("redis answers but this node's subscription delivers nothing: replacing it")
				select {
				case s.reset <- struct{}{}:
				default:
				}
				misses = 0
			} else if misses == 1 || misses%20 == 0 {
				e.log.Warn("redis end-to-end probe failed", "err", err)
			}
		}
		select {
		case <-e.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// ready reports the probe's verdict.
func (s *subscriber) ready() error {
	last := s.lastOK.Load()
	if last == 0 {
		return errors.New("redis: not reached yet")
	}
	if ago := time.Since(time.Unix(0, last)); ago > s.e.cfg.ProbeInterval+s.e.cfg.ProbeTimeout {
		return fmt.Errorf("redis: no end-to-end probe has come back for %s", ago.Round(100*time.Millisecond))
	}
	return nil
}
