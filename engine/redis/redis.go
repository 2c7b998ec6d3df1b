// Package redis is Tether's multi-node engine: nodes share nothing but a
// Redis server. Every stream's sequence, epoch and bounded history live in
// Redis and a publish is one Lua script (next sequence, retain, PUBLISH);
// a node subscribes to a stream's channel only while it has local members;
// presence is per (user, node) with expiry, so a node that dies takes its
// users offline; sessions and the per-session message-id window have TTLs,
// so a client resumes on any node.
//
// Keys (P is Config.Prefix, default "tether:"):
//
//	P{s}:meta        hash  seq, epoch of stream s          TTL MetaTTL (24h), refreshed by publishes
//	P{s}:hist        zset  retained messages, score = seq  TTL HistoryTTL, refreshed by publishes; at most HistorySize
//	P{s}:ch          channel of stream s (PUBLISH)
//	Ppr:{set}:holds  zset  "user\x00node" -> expiry        refreshed every PresenceTTL/3 by the holding node
//	Ppr:{set}:users  hash  user -> number of holds
//	Ppr:sets         set   every presence set (for the sweep)
//	Pse:{id}         string session JSON                   TTL = the resume window
//	Pse:{id}:ids     hash  client message id -> seq | "p"  TTL = the session's
//	Pse:{id}:order   list  the ids, oldest first (the window)
//	Phc:{node}       channel of the node's readiness probe
//
// Failure handling: the pub/sub connection reconnects by itself (go-redis);
// when it is back, every stream this node is subscribed to is compared with
// the last sequence the node delivered, and the gap is replayed from
// history before any newer message, so a Redis blip loses nothing. Ready
// reports unready until a probe published through Redis comes back through
// the node's own subscription.
package redis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/tether-chat/tether/engine"
	"github.com/tether-chat/tether/protocol"
)

// Config configures the engine. URL is required; zero values mean the
// stated defaults.
type Config struct {
	URL         string        // redis://host:port/db
	Prefix      string        // key prefix; "tether:"
	NodeID      string        // this node (presence holds); random
	HistorySize int           // retained messages per stream; 100
	HistoryTTL  time.Duration // retention; 10m
	MetaTTL     time.Duration // how long an idle stream keeps its seq and epoch; 24h
	PresenceTTL time.Duration // a dead node's users go offline after this; 30s
	IDWindow    int           // message ids remembered per session; 1000
	Logger      *slog.Logger
}

// Engine is the Redis engine.
type Engine struct {
	cfg  Config
	rdb  *goredis.Client
	pipe *autoPipe // every single command goes through it (pipeline.go)
	log  *slog.Logger

	ps      *goredis.PubSub
	handler engine.Handler
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	mu      sync.Mutex
	streams map[string]*subState // by channel
	holds   map[string]map[string]bool
	probe   map[string]chan struct{}
	readyAt time.Time
	closed  bool
}

// quiet routes go-redis's internal log lines (reconnect notices) to slog at
// debug level: the engine logs what matters itself.
type quiet struct{}

func (quiet) Printf(ctx context.Context, format string, v ...any) {
	slog.Debug("go-redis: " + fmt.Sprintf(format, v...))
}

var setLogger sync.Once

var _ engine.Engine = (*Engine)(nil)

// subState is what the receive loop knows about one subscribed stream.
type subState struct {
	stream  string
	epoch   string
	last    uint64 // last sequence delivered to the handler (0: none yet)
	known   bool   // epoch/last are meaningful
	suspect bool   // the pub/sub connection broke since: fill the gap on resubscribe
	fresh   bool   // subscribe confirmation not yet seen
	waiters []chan struct{}
}

// New connects to Redis (it does not wait for it: Ready tells).
func New(cfg Config) (*Engine, error) {
	opt, err := goredis.ParseURL(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("redis: %w", err)
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "tether:"
	}
	if cfg.NodeID == "" {
		var b [6]byte
		rand.Read(b[:])
		cfg.NodeID = hex.EncodeToString(b[:])
	}
	if cfg.HistorySize <= 0 {
		cfg.HistorySize = 100
	}
	if cfg.HistoryTTL <= 0 {
		cfg.HistoryTTL = 10 * time.Minute
	}
	if cfg.MetaTTL <= 0 {
		cfg.MetaTTL = 24 * time.Hour
	}
	if cfg.PresenceTTL <= 0 {
		cfg.PresenceTTL = 30 * time.Second
	}
	if cfg.IDWindow <= 0 {
		cfg.IDWindow = 1000
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	setLogger.Do(func() { goredis.SetLogger(quiet{}) })
	opt.MaxRetries = 1
	opt.DialTimeout = 2 * time.Second
	opt.ReadTimeout = 3 * time.Second
	opt.WriteTimeout = 3 * time.Second
	ctx, cancel := context.WithCancel(context.Background())
	e := &Engine{
		cfg: cfg, rdb: goredis.NewClient(opt), log: cfg.Logger, ctx: ctx, cancel: cancel,
		streams: map[string]*subState{}, holds: map[string]map[string]bool{}, probe: map[string]chan struct{}{},
	}
	e.pipe = newAutoPipe(ctx, e.rdb)
	e.pipe.start(&e.wg)
	return e, nil
}

func (e *Engine) key(parts ...string) string { return e.cfg.Prefix + strings.Join(parts, ":") }
func (e *Engine) meta(s string) string       { return e.key("{"+s+"}", "meta") }
func (e *Engine) hist(s string) string       { return e.key("{"+s+"}", "hist") }
func (e *Engine) channel(s string) string    { return e.key("{"+s+"}", "ch") }
func (e *Engine) probeChannel() string       { return e.key("hc", e.cfg.NodeID) }

// Start implements engine.Engine: it opens the pub/sub connection and
// starts the receive loop and the presence upkeep.
func (e *Engine) Start(ctx context.Context, h engine.Handler) error {
	e.handler = h
	e.ps = e.rdb.Subscribe(e.ctx, e.probeChannel())
	e.wg.Add(2)
	go e.receive()
	go e.upkeep()
	return nil
}

// receive is the only reader of the pub/sub connection. Deliveries of one
// stream happen here, in order; so do gap fills, before any newer message.
func (e *Engine) receive() {
	defer e.wg.Done()
	backoff := 50 * time.Millisecond
	for e.ctx.Err() == nil {
		msg, err := e.ps.ReceiveTimeout(e.ctx, 5*time.Second)
		if err != nil {
			if e.ctx.Err() != nil {
				return
			}
			var ne interface{ Timeout() bool }
			if errors.As(err, &ne) && ne.Timeout() {
				e.ps.Ping(e.ctx) // keeps the connection honest; a dead one errors next time
				continue
			}
			e.markSuspect(err)
			select {
			case <-time.After(backoff):
			case <-e.ctx.Done():
				return
			}
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		switch m := msg.(type) {
		case *goredis.Subscription:
			if m.Kind == "subscribe" {
				e.subscribed(m.Channel)
			}
		case *goredis.Message:
			if m.Channel == e.probeChannel() {
				e.mu.Lock()
				if ch := e.probe[m.Payload]; ch != nil {
					close(ch)
					delete(e.probe, m.Payload)
				}
				e.mu.Unlock()
				continue
			}
			e.deliver(m.Channel, m.Payload)
		}
	}
}

func (e *Engine) markSuspect(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.readyAt = time.Time{}
	for _, st := range e.streams {
		st.suspect = true
	}
	e.log.Warn("redis pub/sub connection lost; will resubscribe and fill gaps", "err", err)
}

// subscribed handles a subscribe confirmation: the first one for a stream
// wakes Subscribe; one after a reconnect replays what was missed.
func (e *Engine) subscribed(channel string) {
	e.mu.Lock()
	st := e.streams[channel]
	if st == nil {
		e.mu.Unlock()
		return
	}
	fresh, suspect := st.fresh, st.suspect
	st.fresh, st.suspect = false, false
	waiters := st.waiters
	st.waiters = nil
	e.mu.Unlock()
	for _, w := range waiters {
		close(w)
	}
	if suspect && !fresh {
		e.fill(st)
	}
}

// fill delivers, in order, what a stream published after the last message
// this node delivered (the pub/sub connection was down meanwhile).
func (e *Engine) fill(st *subState) {
	e.mu.Lock()
	from, epoch, known := st.last, st.epoch, st.known
	e.mu.Unlock()
	for {
		h, err := e.History(e.ctx, st.stream, engine.HistoryQuery{After: from, Limit: 1000})
		if err != nil {
			e.log.Warn("gap fill failed", "stream", st.stream, "err", err)
			return
		}
		if known && h.Epoch != epoch {
			// The history was lost (Redis restarted empty): everything
			// retained now is new to this node.
			known, from = true, 0
			epoch = h.Epoch
			continue
		}
		if len(h.Pubs) == 0 {
			return
		}
		e.log.Info("filling gap after pub/sub reconnect", "stream", st.stream, "from", from, "count", len(h.Pubs))
		for _, p := range h.Pubs {
			e.deliverPub(st, p)
			from = p.Seq
		}
		if from >= h.Top {
			return
		}
	}
}

func (e *Engine) deliver(channel, payload string) {
	e.mu.Lock()
	st := e.streams[channel]
	e.mu.Unlock()
	if st == nil {
		return // unsubscribed meanwhile
	}
	var p engine.Publication
	if err := json.Unmarshal([]byte(payload), &p); err != nil {
		e.log.Warn("undecodable publication", "channel", channel, "err", err)
		return
	}
	e.deliverPub(st, &p)
}

// deliverPub hands one publication to the handler unless it was delivered
// already (a gap fill and the live channel can overlap).
func (e *Engine) deliverPub(st *subState, p *engine.Publication) {
	if p.Seq > 0 {
		e.mu.Lock()
		if st.known && p.Epoch == st.epoch && p.Seq <= st.last {
			e.mu.Unlock()
			return
		}
		st.epoch, st.last, st.known = p.Epoch, p.Seq, true
		e.mu.Unlock()
	}
	if e.handler != nil {
		e.handler(p)
	}
}

// Publish implements engine.Engine.
func (e *Engine) Publish(ctx context.Context, p *engine.Publication, opts engine.PublishOptions) error {
	p.Seq, p.Epoch = 0, ""
	body, err := json.Marshal(p)
	if err != nil {
		return err
	}
	if opts.Ephemeral {
		return e.rdb.Publish(ctx, e.channel(p.Stream), body).Err()
	}
	var b [4]byte
	rand.Read(b[:])
	res, err := publishScript.Run(ctx, e.rdb, []string{e.meta(p.Stream), e.hist(p.Stream)},
		e.channel(p.Stream), body, hex.EncodeToString(b[:]), e.cfg.HistorySize,
		e.cfg.HistoryTTL.Milliseconds(), e.cfg.MetaTTL.Milliseconds()).Slice()
	if err != nil {
		return fmt.Errorf("redis publish: %w", err)
	}
	seq, _ := res[0].(int64)
	p.Seq, p.Epoch = uint64(seq), fmt.Sprint(res[1])
	return nil
}

// Subscribe implements engine.Engine. It returns once Redis confirmed the
// subscription, so that every later publish reaches this node.
func (e *Engine) Subscribe(ctx context.Context, stream string) error {
	ch := e.channel(stream)
	done := make(chan struct{})
	// Where the stream stands before the subscription: a gap after a later
	// pub/sub reconnect is measured from here if nothing was delivered
	// meanwhile. (Read here, not in the receive loop, which must never wait
	// on a round trip.)
	base, err := e.rdb.HMGet(ctx, e.meta(stream), "seq", "epoch").Result()
	if err != nil {
		return fmt.Errorf("redis subscribe: %w", err)
	}
	e.mu.Lock()
	st := e.streams[ch]
	if st == nil {
		st = &subState{stream: stream, fresh: true}
		e.streams[ch] = st
	}
	if ep, ok := base[1].(string); ok && !st.known {
		st.epoch, st.known = ep, true
		st.last, _ = strconv.ParseUint(fmt.Sprint(base[0]), 10, 64)
	}
	st.waiters = append(st.waiters, done)
	e.mu.Unlock()
	if err := e.ps.Subscribe(ctx, ch); err != nil {
		e.forget(ch)
		return fmt.Errorf("redis subscribe: %w", err)
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		e.forget(ch)
		e.ps.Unsubscribe(context.Background(), ch)
		return fmt.Errorf("redis subscribe: %w", ctx.Err())
	}
}

func (e *Engine) forget(ch string) {
	e.mu.Lock()
	delete(e.streams, ch)
	e.mu.Unlock()
}

// Unsubscribe implements engine.Engine.
func (e *Engine) Unsubscribe(ctx context.Context, stream string) error {
	ch := e.channel(stream)
	e.forget(ch)
	return e.ps.Unsubscribe(ctx, ch)
}

// History implements engine.Engine.
func (e *Engine) History(ctx context.Context, stream string, q engine.HistoryQuery) (engine.History, error) {
	limit := q.Limit
	if limit <= 0 || limit > e.cfg.HistorySize {
		limit = e.cfg.HistorySize
	}
	min, max := "("+strconv.FormatUint(q.After, 10), "+inf"
	if q.Before > 0 {
		max = "(" + strconv.FormatUint(q.Before, 10)
	}
	pipe := e.rdb.Pipeline()
	metaCmd := pipe.HMGet(ctx, e.meta(stream), "seq", "epoch")
	lowCmd := pipe.ZRangeWithScores(ctx, e.hist(stream), 0, 0)
	var rangeCmd *goredis.StringSliceCmd
	if q.Latest {
		rangeCmd = pipe.ZRevRangeByScore(ctx, e.hist(stream), &goredis.ZRangeBy{Min: min, Max: max, Count: int64(limit)})
	} else {
		rangeCmd = pipe.ZRangeByScore(ctx, e.hist(stream), &goredis.ZRangeBy{Min: min, Max: max, Count: int64(limit)})
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, goredis.Nil) {
		return engine.History{}, fmt.Errorf("redis history: %w", err)
	}
	var h engine.History
	m := metaCmd.Val()
	h.Top, _ = strconv.ParseUint(fmt.Sprint(m[0]), 10, 64)
	if ep, ok := m[1].(string); ok {
		h.Epoch = ep
	} else {
		// A stream that never published: give it its epoch now, so that
		// positions read before its first message stay valid after it.
		var b [4]byte
		rand.Read(b[:])
		fresh := hex.EncodeToString(b[:])
		if ok, err := e.rdb.HSetNX(ctx, e.meta(stream), "epoch", fresh).Result(); err == nil {
			e.rdb.PExpire(ctx, e.meta(stream), e.cfg.MetaTTL)
			if ok {
				h.Epoch = fresh
			} else {
				h.Epoch, _ = e.rdb.HGet(ctx, e.meta(stream), "epoch").Result()
			}
		}
	}
	h.Oldest = h.Top + 1
	if low := lowCmd.Val(); len(low) == 1 {
		h.Oldest = uint64(low[0].Score)
	}
	cut := time.Now().Add(-e.cfg.HistoryTTL).UnixMilli()
	for _, raw := range rangeCmd.Val() {
		var p engine.Publication
		if json.Unmarshal([]byte(raw), &p) != nil {
			continue
		}
		if p.TS < cut {
			if p.Seq >= h.Oldest {
				h.Oldest = p.Seq + 1 // expired by age: no longer retained
			}
			continue
		}
		h.Pubs = append(h.Pubs, &p)
	}
	if q.Latest {
		sort.Slice(h.Pubs, func(i, j int) bool { return h.Pubs[i].Seq < h.Pubs[j].Seq })
	}
	return h, nil
}

func (e *Engine) presenceKeys(set string) []string {
	return []string{e.key("pr", "{"+set+"}", "holds"), e.key("pr", "{"+set+"}", "users"), e.key("pr", "sets")}
}

func (e *Engine) member(user string) string { return user + "\x00" + e.cfg.NodeID }

// PresenceAdd implements engine.Engine: a hold by this node, refreshed
// while the node lives.
func (e *Engine) PresenceAdd(ctx context.Context, set, user string) (bool, int, error) {
	exp := time.Now().Add(e.cfg.PresenceTTL).UnixMilli()
	res, err := presenceAddScript.Run(ctx, e.rdb, e.presenceKeys(set), e.member(user), user, exp, set).Int64Slice()
	if err != nil {
		return false, 0, fmt.Errorf("redis presence: %w", err)
	}
	e.mu.Lock()
	if e.holds[set] == nil {
		e.holds[set] = map[string]bool{}
	}
	e.holds[set][user] = true
	e.mu.Unlock()
	return res[0] == 1, int(res[1]), nil
}

// PresenceRemove implements engine.Engine.
func (e *Engine) PresenceRemove(ctx context.Context, set, user string) (bool, int, error) {
	e.mu.Lock()
	delete(e.holds[set], user)
	if len(e.holds[set]) == 0 {
		delete(e.holds, set)
	}
	e.mu.Unlock()
	res, err := presenceRemoveScript.Run(ctx, e.rdb, e.presenceKeys(set), e.member(user), user).Int64Slice()
	if err != nil {
		return false, 0, fmt.Errorf("redis presence: %w", err)
	}
	return res[0] == 1, int(res[1]), nil
}

// PresenceMembers implements engine.Engine.
func (e *Engine) PresenceMembers(ctx context.Context, set string, limit int) ([]string, error) {
	users, err := e.rdb.HKeys(ctx, e.presenceKeys(set)[1]).Result()
	if err != nil {
		return nil, fmt.Errorf("redis presence: %w", err)
	}
	sort.Strings(users)
	if limit > 0 && len(users) > limit {
		users = users[:limit]
	}
	return users, nil
}

// PresenceHas implements engine.Engine.
func (e *Engine) PresenceHas(ctx context.Context, set, user string) (bool, error) {
	ok, err := e.rdb.HExists(ctx, e.presenceKeys(set)[1], user).Result()
	if err != nil {
		return false, fmt.Errorf("redis presence: %w", err)
	}
	return ok, nil
}

// PresenceCount implements engine.Engine.
func (e *Engine) PresenceCount(ctx context.Context, set string) (int, error) {
	n, err := e.rdb.HLen(ctx, e.presenceKeys(set)[1]).Result()
	if err != nil {
		return 0, fmt.Errorf("redis presence: %w", err)
	}
	return int(n), nil
}

// upkeep refreshes this node's presence holds and sweeps the holds of
// nodes that stopped refreshing theirs, publishing their users' leaves.
func (e *Engine) upkeep() {
	defer e.wg.Done()
	t := time.NewTicker(e.cfg.PresenceTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-e.ctx.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(e.ctx, e.cfg.PresenceTTL/3)
		e.refresh(ctx)
		e.sweep(ctx)
		cancel()
	}
}

func (e *Engine) refresh(ctx context.Context) {
	exp := time.Now().Add(e.cfg.PresenceTTL).UnixMilli()
	e.mu.Lock()
	pipe := e.rdb.Pipeline()
	for set, users := range e.holds {
		k := e.presenceKeys(set)
		for u := range users {
			pipe.ZAddXX(ctx, k[0], goredis.Z{Score: float64(exp), Member: e.member(u)})
		}
	}
	e.mu.Unlock()
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, goredis.Nil) {
		e.log.Warn("presence refresh failed", "err", err)
	}
}

func (e *Engine) sweep(ctx context.Context) {
	sets, err := e.rdb.SMembers(ctx, e.key("pr", "sets")).Result()
	if err != nil {
		return
	}
	now := time.Now().UnixMilli()
	for _, set := range sets {
		res, err := presenceSweepScript.Run(ctx, e.rdb, e.presenceKeys(set), now).StringSlice()
		if err != nil || len(res) < 2 || set == "" {
			continue
		}
		count, _ := strconv.Atoi(res[len(res)-1])
		for _, user := range res[:len(res)-1] {
			e.log.Info("presence expired (node gone)", "set", set, "user", user)
			p := &engine.Publication{Stream: engine.RoomStream(set), Type: protocol.TypePresence, Room: set,
				User: user, Action: protocol.PresenceLeave, Count: count, TS: time.Now().UnixMilli()}
			e.Publish(ctx, p, engine.PublishOptions{Ephemeral: true})
		}
	}
}

func (e *Engine) sessionKeys(id string) []string {
	return []string{e.key("se", "{"+id+"}"), e.key("se", "{"+id+"}", "ids"), e.key("se", "{"+id+"}", "order")}
}

// SaveSession implements engine.Engine.
func (e *Engine) SaveSession(ctx context.Context, s *engine.Session, ttl time.Duration) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return saveSessionScript.Run(ctx, e.rdb, e.sessionKeys(s.ID), b, max(ttl.Milliseconds(), 1)).Err()
}

// sessionBatch is how many sessions SaveSessions sends in one pipeline.
const sessionBatch = 512

// SaveSessions implements engine.Engine: the saves go in pipelines of
// sessionBatch, one round trip each instead of one per session.
func (e *Engine) SaveSessions(ctx context.Context, ss []*engine.Session, ttl time.Duration) error {
	ms := max(ttl.Milliseconds(), 1)
	args := make([][]byte, len(ss))
	for i, s := range ss {
		b, err := json.Marshal(s)
		if err != nil {
			return err
		}
		args[i] = b
	}
	for len(ss) > 0 {
		n := min(len(ss), sessionBatch)
		if err := e.saveBatch(ctx, ss[:n], args[:n], ms); err != nil {
			return fmt.Errorf("redis sessions: %w", err)
		}
		ss, args = ss[n:], args[n:]
	}
	return nil
}

// saveBatch runs saveSessionScript for each session in one pipeline. A
// Redis that has not seen the script yet (or lost it in a restart) answers
// NOSCRIPT: the script is loaded and the batch sent once more.
func (e *Engine) saveBatch(ctx context.Context, ss []*engine.Session, args [][]byte, ttlMs int64) error {
	for try := 0; ; try++ {
		pipe := e.rdb.Pipeline()
		for i, s := range ss {
			saveSessionScript.EvalSha(ctx, pipe, e.sessionKeys(s.ID), args[i], ttlMs)
		}
		_, err := pipe.Exec(ctx)
		if err == nil || try > 0 || !goredis.HasErrorPrefix(err, "NOSCRIPT") {
			return err
		}
		if err := saveSessionScript.Load(ctx, e.rdb).Err(); err != nil {
			return err
		}
	}
}

// LoadSession implements engine.Engine.
func (e *Engine) LoadSession(ctx context.Context, id string) (*engine.Session, error) {
	b, err := e.rdb.Get(ctx, e.sessionKeys(id)[0]).Bytes()
	if errors.Is(err, goredis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("redis session: %w", err)
	}
	var s engine.Session
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, nil // unreadable: treat as expired
	}
	return &s, nil
}

// DeleteSession implements engine.Engine.
func (e *Engine) DeleteSession(ctx context.Context, id string) error {
	return e.rdb.Del(ctx, e.sessionKeys(id)...).Err()
}

// ReserveID implements engine.Engine.
func (e *Engine) ReserveID(ctx context.Context, session, id string) (engine.IDState, uint64, error) {
	res, err := reserveScript.Run(ctx, e.rdb, e.sessionKeys(session), id, e.cfg.IDWindow).Int64Slice()
	if err != nil {
		return engine.IDNew, 0, fmt.Errorf("redis ids: %w", err)
	}
	return engine.IDState(res[0]), uint64(res[1]), nil
}

// CompleteID implements engine.Engine.
func (e *Engine) CompleteID(ctx context.Context, session, id string, seq uint64) error {
	return completeScript.Run(ctx, e.rdb, e.sessionKeys(session)[1:2], id, seq).Err()
}

// ReleaseID implements engine.Engine.
func (e *Engine) ReleaseID(ctx context.Context, session, id string) error {
	return releaseScript.Run(ctx, e.rdb, e.sessionKeys(session)[1:2], id).Err()
}

// Ready implements engine.Engine end to end: a probe published through
// Redis must come back through this node's own subscription. A success is
// trusted for a second.
func (e *Engine) Ready(ctx context.Context) error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return engine.ErrClosed
	}
	if time.Since(e.readyAt) < time.Second {
		e.mu.Unlock()
		return nil
	}
	var b [8]byte
	rand.Read(b[:])
	token := hex.EncodeToString(b[:])
	ch := make(chan struct{})
	e.probe[token] = ch
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		delete(e.probe, token)
		e.mu.Unlock()
	}()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := e.rdb.Publish(ctx, e.probeChannel(), token).Err(); err != nil {
		return fmt.Errorf("redis unreachable: %w", err)
	}
	select {
	case <-ch:
		e.mu.Lock()
		e.readyAt = time.Now()
		e.mu.Unlock()
		return nil
	case <-ctx.Done():
		return errors.New("redis pub/sub not delivering (probe did not come back)")
	}
}

// Close implements engine.Engine.
func (e *Engine) Close() error {
	e.mu.Lock()
	e.closed = true
	e.mu.Unlock()
	e.pipe.close()
	e.cancel()
	if e.ps != nil {
		e.ps.Close()
	}
	e.wg.Wait()
	return e.rdb.Close()
}
