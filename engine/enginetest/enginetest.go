// Package enginetest is the contract every engine.Engine implementation must
// meet, as one suite: the memory engine runs it in its own tests, and so
// will every other engine.
package enginetest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/tether-chat/tether/engine"
)

// Options size an engine made for one test.
type Options struct {
	// HistorySize: the engine retains at least this many publications per
	// stream.
	HistorySize int
	// KeyTTL: how long idempotent publishes are remembered; zero means the
	// engine's default.
	KeyTTL time.Duration
}

// Factory returns a fresh, empty engine made with o. The suite starts and
// closes it.
type Factory func(t *testing.T, o Options) engine.Engine

// Collector is an engine.Handler that records deliveries per stream and
// the streams reported lost. Engines' own fault tests use it too.
type Collector struct {
	mu    sync.Mutex
	got   map[string][]*engine.Publication
	lost  map[string]int
	swept []string
}

// NewCollector returns an empty Collector.
func NewCollector() *Collector {
	return &Collector{got: make(map[string][]*engine.Publication), lost: make(map[string]int)}
}

// Deliver implements engine.Handler.
func (c *Collector) Deliver(p *engine.Publication) {
	c.mu.Lock()
	c.got[p.Stream] = append(c.got[p.Stream], p)
	c.mu.Unlock()
}

// Lost implements engine.Handler.
func (c *Collector) Lost(stream string) {
	c.mu.Lock()
	c.lost[stream]++
	c.mu.Unlock()
}

// Swept implements engine.SweepHandler.
func (c *Collector) Swept(set, user string) {
	c.mu.Lock()
	c.swept = append(c.swept, set+"/"+user)
	c.mu.Unlock()
}

// SweptUsers lists what Swept was told, "set/user" each, in order.
func (c *Collector) SweptUsers() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.swept...)
}

// LostCount reports how often stream was reported lost.
func (c *Collector) LostCount(stream string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lost[stream]
}

// Got returns the deliveries of stream so far.
func (c *Collector) Got(stream string) []*engine.Publication {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*engine.Publication(nil), c.got[stream]...)
}

// Wait returns the deliveries of stream once there are n of them, or fails.
func (c *Collector) Wait(t testing.TB, stream string, n int) []*engine.Publication {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.got[stream]) < n {
		if time.Now().After(deadline) {
			t.Fatalf("stream %s: %d deliveries, want %d", stream, len(c.got[stream]), n)
		}
		c.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
		c.mu.Lock()
	}
	return append([]*engine.Publication(nil), c.got[stream]...)
}

func (c *Collector) count(stream string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.got[stream])
}

func start(t *testing.T, f Factory, size int) (engine.Engine, *Collector) {
	t.Helper()
	return startWith(t, f, Options{HistorySize: size})
}

func startWith(t *testing.T, f Factory, o Options) (engine.Engine, *Collector) {
	t.Helper()
	e := f(t, o)
	c := NewCollector()
	if err := e.Start(context.Background(), c); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { e.Close() })
	WaitReady(t, e)
	return e, c
}

// WaitReady waits until the engine reports ready, or fails.
func WaitReady(t testing.TB, e engine.Engine) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := e.Ready(context.Background())
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("engine not ready: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// subscribe subscribes e to stream and reads the stream's position, as
// the server does when a connection enters a room: the contract delivers
// every publication after a position read once Subscribe has returned,
// also across the engine's reconnections to its store.
func subscribe(t *testing.T, e engine.Engine, stream string) {
	t.Helper()
	if err := e.Subscribe(context.Background(), stream); err != nil {
		t.Fatal(err)
	}
	if _, err := e.History(context.Background(), stream, engine.HistoryQuery{Limit: 1, Latest: true}); err != nil {
		t.Fatal(err)
	}
}

func publish(t *testing.T, e engine.Engine, stream, text string) *engine.Publication {
	t.Helper()
	p := &engine.Publication{Stream: stream, Type: "chat", Text: text, TS: time.Now().UnixMilli()}
	if _, err := e.Publish(context.Background(), p, engine.PublishOptions{}); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	return p
}

// Run runs the whole contract against engines made by f, job by job
// (engine.Broker, engine.PresenceManager, engine.SessionStore,
// engine.FileStore, and what spans them).
func Run(t *testing.T, f Factory) {
	t.Run("Broker", func(t *testing.T) { RunBroker(t, f) })
	t.Run("Presence", func(t *testing.T) { RunPresence(t, f) })
	t.Run("Sessions", func(t *testing.T) { RunSessions(t, f) })
	t.Run("Files", func(t *testing.T) { RunFiles(t, f) })
	t.Run("Node", func(t *testing.T) { RunNode(t, f) })
}

// RunBroker runs the contract of the streams: sequences and epochs, delivery to subscribed nodes in order, ephemeral publications, history and its bounds, idempotent publishes, expiry.
func RunBroker(t *testing.T, f Factory) {
	ctx := context.Background()

	t.Run("SequenceAndEpoch", func(t *testing.T) {
		e, _ := start(t, f, 10)
		a1 := publish(t, e, "room:a", "1")
		a2 := publish(t, e, "room:a", "2")
		b1 := publish(t, e, "room:b", "1")
		if a1.Seq != 1 || a2.Seq != 2 || b1.Seq != 1 {
			t.Fatalf("seqs = %d %d %d, want 1 2 1", a1.Seq, a2.Seq, b1.Seq)
		}
		if a1.Epoch == "" || a1.Epoch != a2.Epoch {
			t.Fatalf("epochs %q %q: want one non-empty epoch per stream", a1.Epoch, a2.Epoch)
		}
	})

	t.Run("DeliversOnlySubscribedStreamsInOrder", func(t *testing.T) {
		e, c := start(t, f, 1000)
		subscribe(t, e, "room:on")
		var wg sync.WaitGroup
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 50; i++ {
					publish(t, e, "room:on", fmt.Sprint(i))
					publish(t, e, "room:off", fmt.Sprint(i))
				}
			}()
		}
		wg.Wait()
		got := c.Wait(t, "room:on", 200)
		for i, p := range got {
			if p.Seq != uint64(i+1) {
				t.Fatalf("delivery %d has seq %d: deliveries must be in sequence order", i, p.Seq)
			}
		}
		if n := c.count("room:off"); n != 0 {
			t.Fatalf("unsubscribed stream delivered %d publications", n)
		}
		if err := e.Unsubscribe(ctx, "room:on"); err != nil {
			t.Fatal(err)
		}
		publish(t, e, "room:on", "after")
		time.Sleep(50 * time.Millisecond)
		if n := c.count("room:on"); n != 200 {
			t.Fatalf("after Unsubscribe: %d deliveries, want 200", n)
		}
	})

	t.Run("EphemeralIsDeliveredNotRetained", func(t *testing.T) {
		e, c := start(t, f, 10)
		subscribe(t, e, "room:p")
		publish(t, e, "room:p", "kept")
		p := &engine.Publication{Stream: "room:p", Type: "presence", User: "u", Action: "join", Count: 1}
		if _, err := e.Publish(ctx, p, engine.PublishOptions{Ephemeral: true}); err != nil {
			t.Fatal(err)
		}
		got := c.Wait(t, "room:p", 2)
		if got[1].Type != "presence" || got[1].Seq != 0 {
			t.Fatalf("ephemeral delivery = %+v", got[1])
		}
		h, err := e.History(ctx, "room:p", engine.HistoryQuery{})
		if err != nil {
			t.Fatal(err)
		}
		if len(h.Pubs) != 1 || h.Top != 1 {
			t.Fatalf("history = %d pubs, top %d; want 1, 1", len(h.Pubs), h.Top)
		}
	})

	t.Run("HistoryBoundsAndPaging", func(t *testing.T) {
		e, _ := start(t, f, 5)
		for i := 1; i <= 8; i++ {
			publish(t, e, "room:h", fmt.Sprint(i))
		}
		h, err := e.History(ctx, "room:h", engine.HistoryQuery{})
		if err != nil {
			t.Fatal(err)
		}
		if h.Top != 8 || h.Oldest != 4 || len(h.Pubs) != 5 || h.Pubs[0].Seq != 4 || h.Pubs[4].Seq != 8 {
			t.Fatalf("history top=%d oldest=%d pubs=%v; want top 8, oldest 4, seqs 4..8", h.Top, h.Oldest, seqs(h.Pubs))
		}
		for _, tc := range []struct {
			q    engine.HistoryQuery
			want []uint64
		}{
			{engine.HistoryQuery{After: 5}, []uint64{6, 7, 8}},
			{engine.HistoryQuery{Before: 6}, []uint64{4, 5}},
			{engine.HistoryQuery{After: 4, Before: 8}, []uint64{5, 6, 7}},
			{engine.HistoryQuery{Limit: 2}, []uint64{4, 5}},
			{engine.HistoryQuery{Limit: 2, Latest: true}, []uint64{7, 8}},
			{engine.HistoryQuery{Before: 8, Limit: 2, Latest: true}, []uint64{6, 7}},
			{engine.HistoryQuery{After: 8}, nil},
		} {
			h, err := e.History(ctx, "room:h", tc.q)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(seqs(h.Pubs)) != fmt.Sprint(tc.want) {
				t.Errorf("History(%+v) = %v, want %v", tc.q, seqs(h.Pubs), tc.want)
			}
		}
	})

	t.Run("ReadingANewStreamCreatesNothing", func(t *testing.T) {
		e, c := start(t, f, 5)
		empty, err := e.History(ctx, "room:none", engine.HistoryQuery{})
		if err != nil {
			t.Fatal(err)
		}
		if empty.Top != 0 || empty.Oldest != 1 || len(empty.Pubs) != 0 || empty.Epoch != "" {
			t.Fatalf("a stream that never published reads as %+v; want epoch \"\", top 0, oldest 1", empty)
		}
		if seq, _, ok, err := e.Recorded(ctx, "room:none", "k"); err != nil || ok || seq != 0 {
			t.Fatalf("Recorded on a new stream = %d, %v, %v", seq, ok, err)
		}
		// A reader that saw nothing of it holds ("", 0): once the stream
		// publishes, that position is covered from seq 1 on.
		subscribe(t, e, "room:none")
		first := publish(t, e, "room:none", "first")
		if first.Seq != 1 || first.Epoch == "" {
			t.Fatalf("first publication = seq %d epoch %q", first.Seq, first.Epoch)
		}
		h, err := e.History(ctx, "room:none", engine.HistoryQuery{})
		if err != nil {
			t.Fatal(err)
		}
		if !h.Covers("", 0) || h.Covers("other", 0) || !h.Covers(first.Epoch, 0) || len(h.Pubs) != 1 {
			t.Fatalf("history %+v: must cover (\"\", 0) and (epoch, 0), not another epoch", h)
		}
		c.Wait(t, "room:none", 1)
	})

	t.Run("PublishBatch", func(t *testing.T) {
		e, c := start(t, f, 100)
		subscribe(t, e, "room:x")
		subscribe(t, e, "room:y")
		publish(t, e, "room:x", "before")
		var ps []*engine.Publication
		var opts []engine.PublishOptions
		add := func(stream, text, key string, ephemeral bool) {
			ps = append(ps, &engine.Publication{Stream: stream, Type: "chat", Text: text, TS: time.Now().UnixMilli()})
			opts = append(opts, engine.PublishOptions{Key: key, Ephemeral: ephemeral})
		}
		add("room:x", "x1", "s:1", false)
		add("room:y", "y1", "s:2", false)
		add("room:x", "x2", "", false)
		add("room:x", "x1 again", "s:1", false) // the same key: the first's result
		add("room:y", "y2", "s:3", false)
		res := e.PublishBatch(ctx, ps, opts)
		want := []struct {
			seq uint64
			dup bool
		}{{2, false}, {1, false}, {3, false}, {2, true}, {2, false}}
		for i, w := range want {
			if res[i].Err != nil || res[i].Dup != w.dup || ps[i].Seq != w.seq || ps[i].Epoch == "" {
				t.Fatalf("publication %d (%s): seq %d dup %v err %v; want seq %d dup %v", i, ps[i].Text, ps[i].Seq, res[i].Dup, res[i].Err, w.seq, w.dup)
			}
		}
		if seq, _, ok, _ := e.Recorded(ctx, "room:x", "s:1"); !ok || seq != 2 {
			t.Fatalf("the batch's key was not recorded: %d %v", seq, ok)
		}
		gotX := c.Wait(t, "room:x", 3)
		gotY := c.Wait(t, "room:y", 2)
		if fmt.Sprint(texts(gotX), texts(gotY)) != "[before x1 x2] [y1 y2]" {
			t.Fatalf("delivered %v %v: in order, a duplicate delivered once", texts(gotX), texts(gotY))
		}
		h, _ := e.History(ctx, "room:x", engine.HistoryQuery{})
		if fmt.Sprint(seqs(h.Pubs)) != "[1 2 3]" {
			t.Fatalf("history %v", seqs(h.Pubs))
		}
		// A batch with an ephemeral publication, and a batch of one.
		eph := []*engine.Publication{{Stream: "room:y", Type: "presence", User: "u", Action: "join", Count: 1},
			{Stream: "room:y", Type: "chat", Text: "y3", TS: time.Now().UnixMilli()}}
		res = e.PublishBatch(ctx, eph, []engine.PublishOptions{{Ephemeral: true}, {}})
		if res[0].Err != nil || res[1].Err != nil || eph[0].Seq != 0 || eph[1].Seq != 3 {
			t.Fatalf("ephemeral in a batch: %+v seqs %d %d", res, eph[0].Seq, eph[1].Seq)
		}
		one := []*engine.Publication{{Stream: "room:y", Type: "chat", Text: "y4", TS: time.Now().UnixMilli()}}
		if res := e.PublishBatch(ctx, one, []engine.PublishOptions{{}}); res[0].Err != nil || one[0].Seq != 4 {
			t.Fatalf("a batch of one: %+v seq %d", res, one[0].Seq)
		}
	})

	t.Run("IdempotentPublish", func(t *testing.T) {
		e, c := start(t, f, 10)
		subscribe(t, e, "room:i")
		subscribe(t, e, "user:bob")
		msg := func(stream, text string) *engine.Publication {
			return &engine.Publication{Stream: stream, Type: "chat", Text: text, ClientID: "m1", TS: time.Now().UnixMilli()}
		}
		publish(t, e, "room:i", "before")
		first := msg("room:i", "hello")
		dup, err := e.Publish(ctx, first, engine.PublishOptions{Key: "sess-1:m1"})
		if err != nil || dup || first.Seq != 2 {
			t.Fatalf("first publish with a key: dup=%v seq=%d err=%v; want a new publication at seq 2", dup, first.Seq, err)
		}
		publish(t, e, "room:i", "after")
		// The same key again (a retry, a re-send, another node): nothing
		// new, the first result back.
		for range 3 {
			again := msg("room:i", "hello")
			dup, err := e.Publish(ctx, again, engine.PublishOptions{Key: "sess-1:m1"})
			if err != nil || !dup || again.Seq != first.Seq || again.Epoch != first.Epoch {
				t.Fatalf("publish again with the key: dup=%v seq=%d epoch=%q err=%v; want dup of seq %d epoch %q",
					dup, again.Seq, again.Epoch, err, first.Seq, first.Epoch)
			}
		}
		if seq, epoch, ok, err := e.Recorded(ctx, "room:i", "sess-1:m1"); err != nil || !ok || seq != first.Seq || epoch != first.Epoch {
			t.Fatalf("Recorded = %d %q %v %v; want %d %q", seq, epoch, ok, err, first.Seq, first.Epoch)
		}
		if _, _, ok, _ := e.Recorded(ctx, "room:i", "sess-1:m2"); ok {
			t.Fatal("Recorded found a key never published")
		}
		// Keys are per stream: the same key on another stream is new there.
		other := msg("user:bob", "hello")
		if dup, err := e.Publish(ctx, other, engine.PublishOptions{Key: "sess-1:m1"}); err != nil || dup || other.Seq != 1 {
			t.Fatalf("the key on another stream: dup=%v seq=%d err=%v", dup, other.Seq, err)
		}
		h, _ := e.History(ctx, "room:i", engine.HistoryQuery{})
		if fmt.Sprint(seqs(h.Pubs)) != "[1 2 3]" || h.Top != 3 {
			t.Fatalf("history %v top %d: a duplicate must retain nothing", seqs(h.Pubs), h.Top)
		}
		got := c.Wait(t, "room:i", 3)
		time.Sleep(50 * time.Millisecond)
		if n := c.count("room:i"); n != 3 || got[1].Text != "hello" {
			t.Fatalf("%d deliveries: a duplicate must deliver nothing", n)
		}
	})

	t.Run("IdempotentPublishRacingAttempts", func(t *testing.T) {
		// Attempts of one message racing each other, as when a re-send
		// reaches another node while the first attempt is in flight: one
		// publishes, every other gets its result.
		e, c := start(t, f, 100)
		subscribe(t, e, "room:race")
		const keys, attempts = 20, 8
		var wg sync.WaitGroup
		type result struct {
			dup bool
			seq uint64
			err error
		}
		results := make([][]result, keys)
		for k := range keys {
			results[k] = make([]result, attempts)
			for a := range attempts {
				wg.Add(1)
				go func() {
					defer wg.Done()
					p := &engine.Publication{Stream: "room:race", Type: "chat", Text: fmt.Sprint(k), TS: time.Now().UnixMilli()}
					dup, err := e.Publish(ctx, p, engine.PublishOptions{Key: fmt.Sprint("s:", k)})
					results[k][a] = result{dup, p.Seq, err}
				}()
			}
		}
		wg.Wait()
		for k, rs := range results {
			fresh := 0
			for _, r := range rs {
				if r.err != nil {
					t.Fatal(r.err)
				}
				if !r.dup {
					fresh++
				}
				if r.seq != rs[0].seq {
					t.Fatalf("key %d: attempts got seqs %v; all must get the one recorded", k, rs)
				}
			}
			if fresh != 1 {
				t.Fatalf("key %d: %d attempts published; want exactly 1", k, fresh)
			}
		}
		c.Wait(t, "room:race", keys)
		time.Sleep(50 * time.Millisecond)
		if n := c.count("room:race"); n != keys {
			t.Fatalf("%d deliveries for %d keys", n, keys)
		}
	})

	t.Run("KeysExpire", func(t *testing.T) {
		e, _ := startWith(t, f, Options{HistorySize: 10, KeyTTL: 100 * time.Millisecond})
		p := &engine.Publication{Stream: "room:k", Type: "chat", TS: time.Now().UnixMilli()}
		e.Publish(ctx, p, engine.PublishOptions{Key: "s:1"})
		time.Sleep(250 * time.Millisecond)
		if _, _, ok, _ := e.Recorded(ctx, "room:k", "s:1"); ok {
			t.Fatal("a key is still recorded after KeyTTL")
		}
		again := &engine.Publication{Stream: "room:k", Type: "chat", TS: time.Now().UnixMilli()}
		if dup, err := e.Publish(ctx, again, engine.PublishOptions{Key: "s:1"}); err != nil || dup || again.Seq != 2 {
			t.Fatalf("after KeyTTL the key is new: dup=%v seq=%d err=%v", dup, again.Seq, err)
		}
	})
}

// RunPresence runs the contract of the presence sets.
func RunPresence(t *testing.T, f Factory) {
	ctx := context.Background()

	t.Run("Presence", func(t *testing.T) {
		e, _ := start(t, f, 5)
		check := func(gotAdded bool, gotN int, err error, wantAdded bool, wantN int) {
			t.Helper()
			if err != nil || gotAdded != wantAdded || gotN != wantN {
				t.Fatalf("got (%v, %d, %v), want (%v, %d)", gotAdded, gotN, err, wantAdded, wantN)
			}
		}
		a, n, err := e.PresenceAdd(ctx, "r", "alice")
		check(a, n, err, true, 1)
		a, n, err = e.PresenceAdd(ctx, "r", "bob")
		check(a, n, err, true, 2)
		a, n, err = e.PresenceAdd(ctx, "r", "alice")
		check(a, n, err, false, 2)
		a, n, err = e.PresenceAdd(ctx, "", "alice")
		check(a, n, err, true, 1)
		members, err := e.PresenceMembers(ctx, "r", 0)
		if err != nil || fmt.Sprint(members) != "[alice bob]" {
			t.Fatalf("members = %v, %v", members, err)
		}
		if few, err := e.PresenceMembers(ctx, "r", 1); err != nil || len(few) != 1 {
			t.Fatalf("members with limit 1 = %v, %v", few, err)
		}
		if has, err := e.PresenceHas(ctx, "r", "alice"); err != nil || !has {
			t.Fatalf("PresenceHas(r, alice) = %v, %v; want true", has, err)
		}
		if has, err := e.PresenceHas(ctx, "", "bob"); err != nil || has {
			t.Fatalf("PresenceHas(\"\", bob) = %v, %v; want false", has, err)
		}
		a, n, err = e.PresenceRemove(ctx, "r", "alice")
		check(a, n, err, true, 1)
		a, n, err = e.PresenceRemove(ctx, "r", "alice")
		check(a, n, err, false, 1)
		if n, err := e.PresenceCount(ctx, "r"); err != nil || n != 1 {
			t.Fatalf("count = %d, %v", n, err)
		}
		if n, err := e.PresenceCount(ctx, "nobody"); err != nil || n != 0 {
			t.Fatalf("count of empty set = %d, %v", n, err)
		}
	})
}

// RunSessions runs the contract of session storage.
func RunSessions(t *testing.T, f Factory) {
	ctx := context.Background()

	t.Run("Sessions", func(t *testing.T) {
		e, _ := start(t, f, 5)
		s := &engine.Session{ID: "s1", User: "alice", Rooms: []string{"general", "ops"}, Partners: []string{"bob"}}
		if err := e.SaveSession(ctx, s, time.Minute); err != nil {
			t.Fatal(err)
		}
		s.Rooms[0] = "mutated" // the engine keeps its own copy
		got, err := e.LoadSession(ctx, "s1")
		if err != nil || got == nil || got.User != "alice" || fmt.Sprint(got.Rooms) != "[general ops]" || fmt.Sprint(got.Partners) != "[bob]" {
			t.Fatalf("LoadSession = %+v, %v", got, err)
		}
		if got, err := e.LoadSession(ctx, "nope"); err != nil || got != nil {
			t.Fatalf("unknown session = %+v, %v", got, err)
		}
		if err := e.SaveSession(ctx, &engine.Session{ID: "short", User: "x"}, 50*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
		if got, err := e.LoadSession(ctx, "short"); err != nil || got != nil {
			t.Fatalf("expired session = %+v, %v", got, err)
		}
		if err := e.DeleteSession(ctx, "s1"); err != nil {
			t.Fatal(err)
		}
		if got, _ := e.LoadSession(ctx, "s1"); got != nil {
			t.Fatalf("deleted session = %+v", got)
		}
	})

	t.Run("SaveSessions", func(t *testing.T) {
		e, _ := start(t, f, 5)
		if err := e.SaveSessions(ctx, nil, time.Minute); err != nil {
			t.Fatalf("no sessions: %v", err)
		}
		// More than one batch of any engine that batches (Redis: 512),
		// one of them replacing a saved session.
		e.SaveSession(ctx, &engine.Session{ID: "b7", User: "old"}, time.Minute)
		ss := make([]*engine.Session, 1100)
		for i := range ss {
			ss[i] = &engine.Session{ID: fmt.Sprint("b", i), User: fmt.Sprint("u", i), Rooms: []string{"r", fmt.Sprint("r", i)}}
		}
		ss[7].Partners = []string{"p"}
		if err := e.SaveSessions(ctx, ss, time.Minute); err != nil {
			t.Fatal(err)
		}
		ss[0].Rooms[0] = "mutated" // the engine keeps its own copy
		for _, i := range []int{0, 7, 511, 512, 513, 1099} {
			got, err := e.LoadSession(ctx, fmt.Sprint("b", i))
			if err != nil || got == nil || got.User != fmt.Sprint("u", i) || fmt.Sprint(got.Rooms) != fmt.Sprintf("[r r%d]", i) {
				t.Fatalf("session b%d = %+v, %v", i, got, err)
			}
		}
		if got, _ := e.LoadSession(ctx, "b7"); fmt.Sprint(got.Partners) != "[p]" {
			t.Fatalf("b7's partners = %v", got.Partners)
		}
		e.SaveSessions(ctx, []*engine.Session{{ID: "brief", User: "x"}}, 50*time.Millisecond)
		time.Sleep(100 * time.Millisecond)
		if got, err := e.LoadSession(ctx, "brief"); err != nil || got != nil {
			t.Fatalf("expired session = %+v, %v", got, err)
		}
	})
}

// RunFiles runs the contract of file storage.
func RunFiles(t *testing.T, f Factory) {
	ctx := context.Background()

	t.Run("Files", func(t *testing.T) {
		e, _ := start(t, f, 10)
		data := []byte("\x89PNG\r\n\x1a\n and the rest")
		in := &engine.File{ID: "f1", Name: "cat.png", Mime: "image/png", Image: true, Room: "r", Data: data}
		if err := e.PutFile(ctx, in, time.Minute); err != nil {
			t.Fatal(err)
		}
		data[0] = 0 // the engine keeps its own copy
		got, err := e.GetFile(ctx, "f1")
		if err != nil || got == nil {
			t.Fatalf("GetFile = %v, %v", got, err)
		}
		if got.Name != "cat.png" || got.Mime != "image/png" || !got.Image || got.Room != "r" || string(got.Data) != "\x89PNG\r\n\x1a\n and the rest" {
			t.Fatalf("GetFile = %+v %q", got, got.Data)
		}
		if err := e.PutFile(ctx, in, time.Minute); err != nil { // a re-sent upload
			t.Fatal(err)
		}
		if missing, err := e.GetFile(ctx, "nope"); err != nil || missing != nil {
			t.Fatalf("an unknown file = %v, %v", missing, err)
		}
		if err := e.PutFile(ctx, &engine.File{ID: "short", Data: []byte("x")}, 50*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		time.Sleep(150 * time.Millisecond)
		if gone, err := e.GetFile(ctx, "short"); err != nil || gone != nil {
			t.Fatalf("an expired file = %v, %v", gone, err)
		}
	})
}

// RunNode runs the contract of what spans the jobs: a connection's set-up in one step (Enter), listing the cluster (Inspector), readiness and closing.
func RunNode(t *testing.T, f Factory) {
	ctx := context.Background()

	t.Run("Enter", func(t *testing.T) {
		e, c := start(t, f, 10)
		subscribe(t, e, "room:r")
		for i := 1; i <= 3; i++ {
			publish(t, e, "room:r", fmt.Sprint(i))
		}
		announce := func(user string) *engine.Publication {
			return &engine.Publication{Stream: "room:r", Type: "presence", Room: "r", User: user, Action: "join"}
		}
		sess := &engine.Session{ID: "s1", User: "alice", Rooms: []string{"r"}}
		got, loaded, err := e.Enter(ctx, engine.Entering{Entries: []engine.Entry{
			{Set: "", User: "alice", Add: true, Stream: "user:alice"},
			{Set: "r", User: "alice", Add: true, Announce: announce("alice"), AnnounceMax: 5, List: 5,
				Stream: "room:r", Replay: true, After: 1},
		}, Save: sess, TTL: time.Minute})
		if err != nil || len(got) != 2 || loaded != nil {
			t.Fatalf("Enter = %+v, %+v, %v", got, loaded, err)
		}
		online, room := got[0], got[1]
		if !online.Added || online.Count != 1 || online.History.Top != 0 || online.History.Epoch != "" || online.Listed {
			t.Fatalf("the online entry = %+v", online)
		}
		if !room.Added || room.Count != 1 || !room.Listed || fmt.Sprint(room.Members) != "[alice]" {
			t.Fatalf("the room entry = %+v", room)
		}
		if h := room.History; h.Top != 3 || h.Oldest != 1 || fmt.Sprint(seqs(h.Pubs)) != "[2 3]" || h.Epoch == "" {
			t.Fatalf("the room's position and replay after 1 = %+v %v", h, seqs(h.Pubs))
		}
		if s, _ := e.LoadSession(ctx, "s1"); s == nil || fmt.Sprint(s.Rooms) != "[r]" {
			t.Fatalf("the session was not saved along: %+v", s)
		}
		// The announcement went out once, with the count set.
		all := c.Wait(t, "room:r", 4)
		if p := all[3]; p.Type != "presence" || p.User != "alice" || p.Count != 1 || p.Seq != 0 {
			t.Fatalf("announcement = %+v", p)
		}
		// Entering again (a second tab, a retry) adds and announces nothing;
		// a set past AnnounceMax is not announced; List stops at its bound.
		again, _, err := e.Enter(ctx, engine.Entering{Entries: []engine.Entry{{Set: "r", User: "alice", Add: true, Announce: announce("alice"), AnnounceMax: 5, List: 5}}})
		if err != nil || again[0].Added || again[0].Count != 1 {
			t.Fatalf("entering again = %+v, %v", again, err)
		}
		for _, u := range []string{"b", "c", "d"} {
			e.PresenceAdd(ctx, "r", u)
		}
		big, _, err := e.Enter(ctx, engine.Entering{Entries: []engine.Entry{{Set: "r", User: "eve", Add: true, Announce: announce("eve"), AnnounceMax: 3, List: 3}}})
		if err != nil || !big[0].Added || big[0].Count != 5 || big[0].Listed || big[0].Members != nil {
			t.Fatalf("entering a set past the bounds = %+v, %v", big, err)
		}
		read, _, err := e.Enter(ctx, engine.Entering{Entries: []engine.Entry{{Set: "r", User: "zoe", List: 10}}})
		if err != nil || read[0].Added || read[0].Count != 5 || len(read[0].Members) != 5 {
			t.Fatalf("reading without adding = %+v, %v", read, err)
		}
		time.Sleep(50 * time.Millisecond)
		if n := c.count("room:r"); n != 4 {
			t.Fatalf("%d deliveries: only alice's first entry is announced", n)
		}

		// A resume reads its session in the same step; the session to
		// save instead is saved only when there is none to resume.
		fresh := &engine.Session{ID: "s2", User: "alice"}
		_, loaded, err = e.Enter(ctx, engine.Entering{Load: "s1", Save: fresh, TTL: time.Minute})
		if err != nil || loaded == nil || loaded.ID != "s1" || fmt.Sprint(loaded.Rooms) != "[r]" {
			t.Fatalf("loading s1 = %+v, %v", loaded, err)
		}
		if s, _ := e.LoadSession(ctx, "s2"); s != nil {
			t.Fatalf("the new session was saved although s1 resumed: %+v", s)
		}
		_, loaded, err = e.Enter(ctx, engine.Entering{Load: "expired", Save: fresh, TTL: time.Minute})
		if err != nil || loaded != nil {
			t.Fatalf("loading a missing session = %+v, %v", loaded, err)
		}
		if s, _ := e.LoadSession(ctx, "s2"); s == nil || s.User != "alice" {
			t.Fatalf("the new session was not saved in place of the missing one: %+v", s)
		}
	})

	t.Run("Inspector", func(t *testing.T) {
		e, _ := start(t, f, 10)
		in, ok := e.(engine.Inspector)
		if !ok {
			t.Skip("the engine lists nothing")
		}
		for _, m := range [][2]string{{"a", "u1"}, {"a", "u2"}, {"b", "u1"}, {"", "u1"}, {"c", "u3"}} {
			if _, _, err := e.PresenceAdd(ctx, m[0], m[1]); err != nil {
				t.Fatal(err)
			}
		}
		e.PresenceRemove(ctx, "c", "u3") // an empty room is not listed
		sets, err := in.Sets(ctx, 10)
		if err != nil || fmt.Sprint(sets) != "[{a 2} {b 1}]" {
			t.Fatalf("Sets = %v, %v", sets, err)
		}
		if top, _ := in.Sets(ctx, 1); fmt.Sprint(top) != "[{a 2}]" {
			t.Fatalf("Sets(1) = %v", top)
		}
		if _, err := in.Instances(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("ReadyAndClose", func(t *testing.T) {
		e := f(t, Options{HistorySize: 5})
		if err := e.Start(ctx, NewCollector()); err != nil {
			t.Fatal(err)
		}
		WaitReady(t, e)
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
		if err := e.Ready(ctx); err == nil {
			t.Fatal("Ready after Close = nil")
		}
		p := &engine.Publication{Stream: "room:x", Type: "chat"}
		if _, err := e.Publish(ctx, p, engine.PublishOptions{}); err == nil {
			t.Fatal("Publish after Close succeeded")
		}
	})
}

func seqs(ps []*engine.Publication) []uint64 {
	var out []uint64
	for _, p := range ps {
		out = append(out, p.Seq)
	}
	return out
}

// texts lists the publications' texts, in order.
func texts(ps []*engine.Publication) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.Text
	}
	return out
}
