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

// Factory returns a fresh, empty engine whose history retains at least
// historySize publications per stream. The suite starts and closes it.
type Factory func(t *testing.T, historySize int) engine.Engine

// collector records deliveries per stream.
type collector struct {
	mu   sync.Mutex
	got  map[string][]*engine.Publication
	cond *sync.Cond
}

func newCollector() *collector {
	c := &collector{got: make(map[string][]*engine.Publication)}
	c.cond = sync.NewCond(&c.mu)
	return c
}

func (c *collector) handle(p *engine.Publication) {
	c.mu.Lock()
	c.got[p.Stream] = append(c.got[p.Stream], p)
	c.mu.Unlock()
	c.cond.Broadcast()
}

// wait returns the deliveries of stream once there are n of them, or fails.
func (c *collector) wait(t *testing.T, stream string, n int) []*engine.Publication {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
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

func (c *collector) count(stream string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.got[stream])
}

func start(t *testing.T, f Factory, size int) (engine.Engine, *collector) {
	t.Helper()
	e := f(t, size)
	c := newCollector()
	if err := e.Start(context.Background(), c.handle); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { e.Close() })
	return e, c
}

func publish(t *testing.T, e engine.Engine, stream, text string) *engine.Publication {
	t.Helper()
	p := &engine.Publication{Stream: stream, Type: "chat", Text: text, TS: time.Now().UnixMilli()}
	if err := e.Publish(context.Background(), p, engine.PublishOptions{}); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	return p
}

// Run runs the whole contract against engines made by f.
func Run(t *testing.T, f Factory) {
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
		if err := e.Subscribe(ctx, "room:on"); err != nil {
			t.Fatal(err)
		}
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
		got := c.wait(t, "room:on", 200)
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
		e.Subscribe(ctx, "room:p")
		publish(t, e, "room:p", "kept")
		p := &engine.Publication{Stream: "room:p", Type: "presence", User: "u", Action: "join", Count: 1}
		if err := e.Publish(ctx, p, engine.PublishOptions{Ephemeral: true}); err != nil {
			t.Fatal(err)
		}
		got := c.wait(t, "room:p", 2)
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
		empty, err := e.History(ctx, "room:none", engine.HistoryQuery{})
		if err != nil {
			t.Fatal(err)
		}
		if empty.Top != 0 || empty.Oldest != 1 || len(empty.Pubs) != 0 || empty.Epoch == "" {
			t.Fatalf("empty stream history = %+v", empty)
		}
	})

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
		// one of them replacing a saved session and keeping its ids.
		e.SaveSession(ctx, &engine.Session{ID: "b7", User: "old"}, time.Minute)
		if st, _, _ := e.ReserveID(ctx, "b7", "m1"); st != engine.IDNew {
			t.Fatalf("reserve = %v", st)
		}
		e.CompleteID(ctx, "b7", "m1", 9)
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
		if st, seq, _ := e.ReserveID(ctx, "b7", "m1"); st != engine.IDDone || seq != 9 {
			t.Fatalf("ids must survive SaveSessions; got %v, %d", st, seq)
		}
		e.SaveSessions(ctx, []*engine.Session{{ID: "brief", User: "x"}}, 50*time.Millisecond)
		time.Sleep(100 * time.Millisecond)
		if got, err := e.LoadSession(ctx, "brief"); err != nil || got != nil {
			t.Fatalf("expired session = %+v, %v", got, err)
		}
	})

	t.Run("MessageIDWindow", func(t *testing.T) {
		e, _ := start(t, f, 5)
		e.SaveSession(ctx, &engine.Session{ID: "s", User: "u"}, time.Minute)
		st, _, err := e.ReserveID(ctx, "s", "m1")
		if err != nil || st != engine.IDNew {
			t.Fatalf("first reserve = %v, %v", st, err)
		}
		if st, _, _ := e.ReserveID(ctx, "s", "m1"); st != engine.IDInFlight {
			t.Fatalf("reserve while in flight = %v", st)
		}
		e.CompleteID(ctx, "s", "m1", 42)
		if st, seq, _ := e.ReserveID(ctx, "s", "m1"); st != engine.IDDone || seq != 42 {
			t.Fatalf("reserve after complete = %v, %d; want done, 42", st, seq)
		}
		e.ReserveID(ctx, "s", "m2")
		e.ReleaseID(ctx, "s", "m2") // processing failed: a retry is new again
		if st, _, _ := e.ReserveID(ctx, "s", "m2"); st != engine.IDNew {
			t.Fatalf("reserve after release = %v", st)
		}
		if st, _, _ := e.ReserveID(ctx, "other", "m1"); st != engine.IDNew {
			t.Fatalf("ids are per session; got %v", st)
		}
		e.SaveSession(ctx, &engine.Session{ID: "s", User: "u", Rooms: []string{"r"}}, time.Minute)
		if st, _, _ := e.ReserveID(ctx, "s", "m1"); st != engine.IDDone {
			t.Fatalf("ids must survive a session save; got %v", st)
		}
		e.DeleteSession(ctx, "s")
		e.SaveSession(ctx, &engine.Session{ID: "s", User: "u"}, time.Minute)
		if st, _, _ := e.ReserveID(ctx, "s", "m1"); st != engine.IDNew {
			t.Fatalf("ids must go with the deleted session; got %v", st)
		}
	})

	t.Run("ReadyAndClose", func(t *testing.T) {
		e := f(t, 5)
		if err := e.Start(ctx, func(*engine.Publication) {}); err != nil {
			t.Fatal(err)
		}
		if err := e.Ready(ctx); err != nil {
			t.Fatalf("Ready = %v", err)
		}
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
		if err := e.Ready(ctx); err == nil {
			t.Fatal("Ready after Close = nil")
		}
		p := &engine.Publication{Stream: "room:x", Type: "chat"}
		if err := e.Publish(ctx, p, engine.PublishOptions{}); err == nil {
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
