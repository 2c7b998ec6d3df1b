// Package memory is Tether's embedded single-node engine: streams, history
// and presence live in this process and are lost when it exits (every stream
// then starts a new epoch, which clients are told about when they resume).
package memory

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"sort"
	"sync"
	"time"

	"github.com/tether-chat/tether/engine"
)

// Config sizes the engine. The zero value is usable.
type Config struct {
	// HistorySize is how many publications each stream retains.
	// Zero means 100.
	HistorySize int
	// HistoryTTL is how long a publication is retained. Zero means 10 minutes.
	HistoryTTL time.Duration
	// DefaultLimit bounds a History page when the query gives none.
	// Zero means 100.
	DefaultLimit int
	// KeyTTL is how long an idempotent publish's result is remembered
	// (engine.PublishOptions.Key). Zero means 4 minutes.
	KeyTTL time.Duration
	// FileBytes bounds the bytes of the files kept (PutFile); the oldest
	// go first when it is reached. Zero means 256 MiB.
	FileBytes int64
}

func (c Config) withDefaults() Config {
	if c.HistorySize <= 0 {
		c.HistorySize = 100
	}
	if c.HistoryTTL <= 0 {
		c.HistoryTTL = 10 * time.Minute
	}
	if c.DefaultLimit <= 0 {
		c.DefaultLimit = 100
	}
	if c.KeyTTL <= 0 {
		c.KeyTTL = 4 * time.Minute
	}
	if c.FileBytes <= 0 {
		c.FileBytes = 256 << 20
	}
	return c
}

// Engine is the in-memory engine.
type Engine struct {
	cfg Config

	mu      sync.RWMutex
	handler engine.Handler // nil before Start
	streams map[string]*stream
	subs    map[string]bool
	sets    map[string]map[string]struct{}
	sess    map[string]*session
	files   fileStore
	started bool
	closed  bool

	stop chan struct{}
	done chan struct{}
}

var _ engine.Engine = (*Engine)(nil)

type session struct {
	s       engine.Session
	expires time.Time
}

type stream struct {
	mu    sync.Mutex
	epoch string
	top   uint64
	hist  window // retained, oldest first; at most HistorySize
	// keys are the results of idempotent publishes (PublishOptions.Key),
	// kept for KeyTTL; keyOrder lists them oldest first for expiry.
	keys     map[string]uint64
	keyOrder []keyed
}

type keyed struct {
	key     string
	expires time.Time
}

// New returns an engine; call Start before use.
func New(cfg Config) *Engine {
	return &Engine{
		cfg:     cfg.withDefaults(),
		streams: make(map[string]*stream),
		subs:    make(map[string]bool),
		sets:    make(map[string]map[string]struct{}),
		sess:    make(map[string]*session),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
}

// Start implements engine.Engine. It also starts the sweeper that drops
// expired history and forgets idle streams.
func (e *Engine) Start(ctx context.Context, h engine.Handler) error {
	e.mu.Lock()
	e.handler = h
	e.started = true
	e.mu.Unlock()
	go e.sweep()
	return nil
}

// PublishBatch implements engine.Engine: in memory there is no round trip
// to save.
func (e *Engine) PublishBatch(ctx context.Context, ps []*engine.Publication, opts []engine.PublishOptions) []engine.Published {
	return engine.PublishEach(ctx, e, ps, opts)
}

// Publish implements engine.Engine. The stream's lock is held while the
// handler runs, which is what orders deliveries by sequence: no gap is
// possible, so the handler's Lost is never called.
func (e *Engine) Publish(ctx context.Context, p *engine.Publication, opts engine.PublishOptions) (bool, error) {
	e.mu.RLock()
	if e.closed {
		e.mu.RUnlock()
		return false, engine.ErrClosed
	}
	h, subscribed := e.handler, e.subs[p.Stream]
	e.mu.RUnlock()

	if opts.Ephemeral {
		p.Seq, p.Epoch = 0, ""
		if subscribed && h != nil {
			h.Deliver(p)
		}
		return false, nil
	}
	s := e.stream(p.Stream)
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if opts.Key != "" {
		e.expireKeys(s, now)
		if seq, ok := s.keys[opts.Key]; ok {
			p.Seq, p.Epoch = seq, s.epoch
			return true, nil
		}
	}
	s.top++
	p.Seq, p.Epoch = s.top, s.epoch
	s.hist.push(p, e.cfg.HistorySize)
	if opts.Key != "" {
		if s.keys == nil {
			s.keys = make(map[string]uint64)
		}
		s.keys[opts.Key] = p.Seq
		s.keyOrder = append(s.keyOrder, keyed{opts.Key, now.Add(e.cfg.KeyTTL)})
	}
	if subscribed && h != nil {
		h.Deliver(p)
	}
	return false, nil
}

// expireKeys forgets idempotency records older than KeyTTL; s.mu must be
// held.
func (e *Engine) expireKeys(s *stream, now time.Time) {
	n := 0
	for n < len(s.keyOrder) && now.After(s.keyOrder[n].expires) {
		delete(s.keys, s.keyOrder[n].key)
		n++
	}
	if n > 0 {
		s.keyOrder = append(s.keyOrder[:0], s.keyOrder[n:]...)
	}
}

// Recorded implements engine.Engine.
func (e *Engine) Recorded(ctx context.Context, name, key string) (uint64, string, bool, error) {
	e.mu.RLock()
	s := e.streams[name]
	e.mu.RUnlock()
	if s == nil {
		return 0, "", false, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e.expireKeys(s, time.Now())
	seq, ok := s.keys[key]
	if !ok {
		return 0, "", false, nil
	}
	return seq, s.epoch, true, nil
}

// stream returns the named stream, creating it (with a new epoch) if it
// does not exist; only publishing creates a stream.
func (e *Engine) stream(name string) *stream {
	e.mu.RLock()
	s := e.streams[name]
	e.mu.RUnlock()
	if s != nil {
		return s
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if s = e.streams[name]; s == nil {
		s = &stream{epoch: newEpoch()}
		e.streams[name] = s
	}
	return s
}

// Subscribe implements engine.Engine.
func (e *Engine) Subscribe(ctx context.Context, name string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return engine.ErrClosed
	}
	e.subs[name] = true
	return nil
}

// Unsubscribe implements engine.Engine.
func (e *Engine) Unsubscribe(ctx context.Context, name string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.subs, name)
	return nil
}

// History implements engine.Engine. A stream that does not exist is not
// created: its position is ("", 0).
func (e *Engine) History(ctx context.Context, name string, q engine.HistoryQuery) (engine.History, error) {
	e.mu.RLock()
	s := e.streams[name]
	e.mu.RUnlock()
	if s == nil {
		return engine.History{Oldest: 1}, nil
	}
	limit := q.Limit
	if limit <= 0 || limit > e.cfg.DefaultLimit {
		limit = e.cfg.DefaultLimit
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e.expire(s, time.Now())
	retained := s.hist.all()
	h := engine.History{Epoch: s.epoch, Top: s.top, Oldest: s.top + 1 - uint64(len(retained))}
	var sel []*engine.Publication
	for _, p := range retained {
		if p.Seq > q.After && (q.Before == 0 || p.Seq < q.Before) {
			sel = append(sel, p)
		}
	}
	if len(sel) > limit {
		if q.Latest {
			sel = sel[len(sel)-limit:]
		} else {
			sel = sel[:limit]
		}
	}
	h.Pubs = sel
	return h, nil
}

// expire drops publications older than the TTL; s.mu must be held.
func (e *Engine) expire(s *stream, now time.Time) {
	cut := now.Add(-e.cfg.HistoryTTL).UnixMilli()
	s.hist.dropOlderThan(cut)
}

// sweep expires history and forgets streams that retain nothing and have no
// subscriber, so a server that saw a million rooms does not keep them all.
// A forgotten stream that is used again starts a new epoch.
func (e *Engine) sweep() {
	defer close(e.done)
	t := time.NewTicker(e.cfg.HistoryTTL / 4)
	defer t.Stop()
	for {
		select {
		case <-e.stop:
			return
		case now := <-t.C:
			e.mu.Lock()
			expired := 0
			for id, s := range e.sess {
				if now.After(s.expires) {
					delete(e.sess, id)
					expired++
				}
			}
			if expired > len(e.sess) {
				// Every connection adds a session and most leave: a Go map
				// keeps the table it once needed, so rebuild it at its
				// current size.
				fresh := make(map[string]*session, len(e.sess))
				for id, s := range e.sess {
					fresh[id] = s
				}
				e.sess = fresh
			}
			for name, s := range e.streams {
				s.mu.Lock()
				e.expire(s, now)
				e.expireKeys(s, now)
				idle := len(s.hist.all()) == 0 && len(s.keys) == 0 && !e.subs[name]
				s.mu.Unlock()
				if idle {
					delete(e.streams, name)
				}
			}
			e.mu.Unlock()
		}
	}
}

// SaveSession implements engine.Engine.
func (e *Engine) SaveSession(ctx context.Context, s *engine.Session, ttl time.Duration) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return engine.ErrClosed
	}
	e.saveLocked(s, time.Now(), ttl)
	return nil
}

// SaveSessions implements engine.Engine.
func (e *Engine) SaveSessions(ctx context.Context, ss []*engine.Session, ttl time.Duration) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return engine.ErrClosed
	}
	now := time.Now()
	for _, s := range ss {
		e.saveLocked(s, now, ttl)
	}
	return nil
}

// saveLocked stores a copy of s until now+ttl; e.mu must be held.
func (e *Engine) saveLocked(s *engine.Session, now time.Time, ttl time.Duration) {
	cur := e.live(s.ID, now)
	if cur == nil {
		cur = &session{}
		e.sess[s.ID] = cur
	}
	cur.s = *s
	cur.s.Rooms = append([]string(nil), s.Rooms...)
	cur.s.Partners = append([]string(nil), s.Partners...)
	cur.expires = now.Add(ttl)
}

// live returns the unexpired session id; e.mu must be held.
func (e *Engine) live(id string, now time.Time) *session {
	s := e.sess[id]
	if s == nil || now.After(s.expires) {
		return nil
	}
	return s
}

// LoadSession implements engine.Engine.
func (e *Engine) LoadSession(ctx context.Context, id string) (*engine.Session, error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	s := e.live(id, time.Now())
	if s == nil {
		return nil, nil
	}
	out := s.s
	out.Rooms = append([]string(nil), s.s.Rooms...)
	out.Partners = append([]string(nil), s.s.Partners...)
	return &out, nil
}

// DeleteSession implements engine.Engine.
func (e *Engine) DeleteSession(ctx context.Context, id string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.sess, id)
	return nil
}

// streamCount is the number of streams the engine keeps.
func (e *Engine) streamCount() int {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return len(e.streams)
}

// Retained is the number of messages in history, over all streams.
func (e *Engine) Retained() int {
	e.mu.RLock()
	streams := make([]*stream, 0, len(e.streams))
	for _, s := range e.streams {
		streams = append(streams, s)
	}
	e.mu.RUnlock()
	n := 0
	for _, s := range streams {
		s.mu.Lock()
		n += len(s.hist.all())
		s.mu.Unlock()
	}
	return n
}

// PresenceAdd implements engine.Engine.
func (e *Engine) PresenceAdd(ctx context.Context, set, user string) (bool, int, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	m := e.sets[set]
	if m == nil {
		m = make(map[string]struct{})
		e.sets[set] = m
	}
	_, had := m[user]
	m[user] = struct{}{}
	return !had, len(m), nil
}

// PresenceRemove implements engine.Engine.
func (e *Engine) PresenceRemove(ctx context.Context, set, user string) (bool, int, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	m := e.sets[set]
	_, had := m[user]
	delete(m, user)
	n := len(m)
	if n == 0 {
		delete(e.sets, set)
	}
	return had, n, nil
}

// PresenceMembers implements engine.Engine.
func (e *Engine) PresenceMembers(ctx context.Context, set string, limit int) ([]string, error) {
	e.mu.RLock()
	n := len(e.sets[set])
	if limit > 0 && limit < n {
		n = limit
	}
	users := make([]string, 0, n)
	for u := range e.sets[set] {
		if len(users) == n {
			break
		}
		users = append(users, u)
	}
	e.mu.RUnlock()
	sort.Strings(users)
	return users, nil
}

// PresenceHas implements engine.Engine.
func (e *Engine) PresenceHas(ctx context.Context, set, user string) (bool, error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	_, ok := e.sets[set][user]
	return ok, nil
}

// PresenceCount implements engine.Engine.
func (e *Engine) PresenceCount(ctx context.Context, set string) (int, error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return len(e.sets[set]), nil
}

// Enter implements engine.Engine, entry by entry (nothing here waits).
func (e *Engine) Enter(ctx context.Context, in engine.Entering) ([]engine.Entered, *engine.Session, error) {
	e.mu.RLock()
	closed := e.closed
	e.mu.RUnlock()
	if closed {
		return nil, nil, engine.ErrClosed
	}
	out := make([]engine.Entered, len(in.Entries))
	for i, en := range in.Entries {
		r := &out[i]
		if en.Add {
			r.Added, r.Count, _ = e.PresenceAdd(ctx, en.Set, en.User)
			if r.Added && en.Announce != nil && r.Count <= en.AnnounceMax {
				p := *en.Announce
				p.Count = r.Count
				e.Publish(ctx, &p, engine.PublishOptions{Ephemeral: true})
			}
		} else {
			r.Count, _ = e.PresenceCount(ctx, en.Set)
		}
		if en.List > 0 && r.Count <= en.List {
			r.Members, _ = e.PresenceMembers(ctx, en.Set, 0)
			r.Listed = true
		}
		if en.Stream != "" {
			q := engine.HistoryQuery{Latest: true, Limit: 1}
			if en.Replay {
				q = engine.HistoryQuery{After: en.After}
			}
			r.History, _ = e.History(ctx, en.Stream, q)
			if !en.Replay {
				r.History.Pubs, r.History.Oldest = nil, 0
			}
		}
	}
	var loaded *engine.Session
	if in.Load != "" {
		var err error
		if loaded, err = e.LoadSession(ctx, in.Load); err != nil {
			return nil, nil, err
		}
	}
	if in.Save != nil && loaded == nil {
		if err := e.SaveSession(ctx, in.Save, in.TTL); err != nil {
			return nil, nil, err
		}
	}
	return out, loaded, nil
}

// Immediate marks the engine as engine.Immediate: no call waits for I/O.
func (e *Engine) Immediate() {}

// Ready implements engine.Engine.
func (e *Engine) Ready(ctx context.Context) error {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.closed {
		return engine.ErrClosed
	}
	return nil
}

// Close implements engine.Engine.
func (e *Engine) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	started := e.started
	e.mu.Unlock()
	close(e.stop)
	if started {
		<-e.done
	}
	return nil
}

// window is a stream's retained publications: the newest at most max of
// them, oldest first. Pushing is amortized O(1): the slice grows to twice
// the window before the live part is moved back to the front.
type window struct {
	buf  []*engine.Publication
	head int // buf[head:] is the window
}

func (w *window) all() []*engine.Publication { return w.buf[w.head:] }

func (w *window) push(p *engine.Publication, max int) {
	w.buf = append(w.buf, p)
	if len(w.buf)-w.head > max {
		w.buf[w.head] = nil
		w.head++
	}
	if w.head >= max {
		w.compact()
	}
}

// dropOlderThan removes publications published before cut (ms).
func (w *window) dropOlderThan(cut int64) {
	for w.head < len(w.buf) && w.buf[w.head].TS < cut {
		w.buf[w.head] = nil
		w.head++
	}
	if w.head > 0 && w.head >= len(w.buf)/2 {
		w.compact()
	}
}

func (w *window) compact() {
	n := copy(w.buf, w.buf[w.head:])
	clear(w.buf[n:])
	w.buf, w.head = w.buf[:n], 0
}

func newEpoch() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
