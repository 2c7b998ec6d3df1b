package redis

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tether-chat/tether/engine"
	"github.com/tether-chat/tether/engine/enginetest"
	"github.com/tether-chat/tether/internal/testredis"
)

var prefixes atomic.Int64

func newEngine(t *testing.T, url string, size int) *Engine {
	e, err := New(Config{URL: url, Prefix: fmt.Sprintf("t%d:", prefixes.Add(1)), HistorySize: size,
		PresenceTTL: 300 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// TestContract runs the same suite as the memory engine.
func TestContract(t *testing.T) {
	srv := testredis.Start(t)
	enginetest.Run(t, func(t *testing.T, size int) engine.Engine { return newEngine(t, srv.URL, size) })
}

func TestTwoNodesShareStreamsAndPresence(t *testing.T) {
	srv := testredis.Start(t)
	ctx := context.Background()
	a := newEngine(t, srv.URL, 50)
	b := newEngine(t, srv.URL, 50)
	b.cfg.Prefix = a.cfg.Prefix // one cluster
	b.cfg.NodeID = "b"
	got := make(chan *engine.Publication, 10)
	a.Start(ctx, nil)
	b.Start(ctx, func(p *engine.Publication) { got <- p })
	defer a.Close()
	defer b.Close()
	if err := b.Subscribe(ctx, "room:x"); err != nil {
		t.Fatal(err)
	}
	p := &engine.Publication{Stream: "room:x", Type: "chat", Text: "from a", TS: time.Now().UnixMilli()}
	if err := a.Publish(ctx, p, engine.PublishOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case q := <-got:
		if q.Text != "from a" || q.Seq != 1 || q.Epoch != p.Epoch {
			t.Fatalf("b got %+v", q)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("publication did not cross nodes")
	}
	// The same user on both nodes is one user.
	if added, n, _ := a.PresenceAdd(ctx, "x", "alice"); !added || n != 1 {
		t.Fatalf("a add: %v %d", added, n)
	}
	if added, n, _ := b.PresenceAdd(ctx, "x", "alice"); added || n != 1 {
		t.Fatalf("b add of a user present on a: %v %d", added, n)
	}
	if removed, _, _ := a.PresenceRemove(ctx, "x", "alice"); removed {
		t.Fatal("alice removed while b still holds her")
	}
	if removed, n, _ := b.PresenceRemove(ctx, "x", "alice"); !removed || n != 0 {
		t.Fatalf("b remove: %v %d", removed, n)
	}
}

// TestDeadNodeHoldsExpire: a node that stops refreshing (it died) has its
// users removed after the presence TTL, and the leave is published.
func TestDeadNodeHoldsExpire(t *testing.T) {
	srv := testredis.Start(t)
	ctx := context.Background()
	dead := newEngine(t, srv.URL, 10)
	live := newEngine(t, srv.URL, 10)
	live.cfg.Prefix = dead.cfg.Prefix
	dead.cfg.NodeID, live.cfg.NodeID = "dead", "live"
	events := make(chan *engine.Publication, 10)
	live.Start(ctx, func(p *engine.Publication) { events <- p })
	defer live.Close()
	live.Subscribe(ctx, "room:lobby")
	dead.PresenceAdd(ctx, "lobby", "ghost") // never started: never refreshes
	live.PresenceAdd(ctx, "lobby", "carol")
	select {
	case p := <-events:
		if p.Type != "presence" || p.User != "ghost" || p.Action != "leave" || p.Count != 1 {
			t.Fatalf("event = %+v", p)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no leave for the dead node's user")
	}
	if has, _ := live.PresenceHas(ctx, "lobby", "carol"); !has {
		t.Fatal("the live node's user expired: its refresh does not work")
	}
}

// TestGapFilledAfterRedisRestart: the pub/sub connection breaks (Redis
// restarts); what is published after it is back but before this node
// resubscribed is replayed from history, in order, without duplicates.
func TestPubSubReconnectFillsTheGap(t *testing.T) {
	srv := testredis.Start(t)
	ctx := context.Background()
	pub := newEngine(t, srv.URL, 100)
	sub := newEngine(t, srv.URL, 100)
	sub.cfg.Prefix = pub.cfg.Prefix
	got := make(chan uint64, 100)
	sub.Start(ctx, func(p *engine.Publication) { got <- p.Seq })
	pub.Start(ctx, nil)
	defer sub.Close()
	defer pub.Close()
	if err := sub.Subscribe(ctx, "room:g"); err != nil {
		t.Fatal(err)
	}
	send := func(n int) {
		for i := 0; i < n; i++ {
			p := &engine.Publication{Stream: "room:g", Type: "chat", TS: time.Now().UnixMilli()}
			if err := pub.Publish(ctx, p, engine.PublishOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	send(3)
	// Break only the subscriber's pub/sub connection: kill it from Redis.
	pub.rdb.ClientKillByFilter(ctx, "TYPE", "pubsub")
	send(5) // published while the subscriber is reconnecting
	want := uint64(1)
	deadline := time.After(10 * time.Second)
	for want <= 8 {
		select {
		case seq := <-got:
			if seq != want {
				t.Fatalf("got seq %d, want %d", seq, want)
			}
			want++
		case <-deadline:
			t.Fatalf("stopped at seq %d of 8", want-1)
		}
	}
	send(1)
	if seq := <-got; seq != 9 {
		t.Fatalf("live after the fill: seq %d", seq)
	}
	select {
	case seq := <-got:
		t.Fatalf("duplicate delivery of seq %d", seq)
	case <-time.After(200 * time.Millisecond):
	}
}

func TestReadyFollowsRedis(t *testing.T) {
	srv := testredis.Start(t)
	e := newEngine(t, srv.URL, 10)
	e.Start(context.Background(), nil)
	defer e.Close()
	ctx := context.Background()
	deadline := time.Now().Add(5 * time.Second)
	for e.Ready(ctx) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("not ready with Redis up: %v", e.Ready(ctx))
		}
		time.Sleep(50 * time.Millisecond)
	}
	srv.Stop()
	time.Sleep(1100 * time.Millisecond) // past the cached success
	if err := e.Ready(ctx); err == nil {
		t.Fatal("ready with Redis down")
	}
	srv.Restart(t, 0)
	deadline = time.Now().Add(10 * time.Second)
	for e.Ready(ctx) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("not ready again after Redis came back: %v", e.Ready(ctx))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// engineWithoutScripts is an engine on a fresh Redis that has just lost
// its scripts (as after a Redis restart): every script's first run is
// answered NOSCRIPT. It is closed at the end of the test.
func engineWithoutScripts(t *testing.T) (*Engine, context.Context) {
	srv := testredis.Start(t)
	ctx := context.Background()
	e := newEngine(t, srv.URL, 10)
	t.Cleanup(func() { e.Close() })
	if err := e.rdb.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	return e, ctx
}

// TestSaveSessionsLoadsItsScript: the pipelined saves run the script by
// its hash; a Redis that does not have it (new, restarted, flushed) gets it
// loaded and the batch sent again.
func TestSaveSessionsLoadsItsScript(t *testing.T) {
	e, ctx := engineWithoutScripts(t)
	ss := []*engine.Session{{ID: "a", User: "alice"}, {ID: "b", User: "bob", Rooms: []string{"x"}}}
	if err := e.SaveSessions(ctx, ss, time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, s := range ss {
		if got, err := e.LoadSession(ctx, s.ID); err != nil || got == nil || got.User != s.User {
			t.Fatalf("session %s = %+v, %v", s.ID, got, err)
		}
	}
	if ttl := e.rdb.PTTL(ctx, e.sessionKeys("b")[0]).Val(); ttl <= 50*time.Second || ttl > time.Minute {
		t.Fatalf("session TTL = %s, want about a minute", ttl)
	}
}

// TestConcurrentCommandsSharePipelines: commands of many callers at once
// go out together (automatic pipelining), and every caller still gets its
// own result: sessions, message ids, presence and scripts (with a Redis
// that has just lost its scripts, so that NOSCRIPT is answered in the
// middle of a pipeline and the script is loaded again).
func TestConcurrentCommandsSharePipelines(t *testing.T) {
	e, ctx := engineWithoutScripts(t)
	const n = 400
	start := make(chan struct{})
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			id, user := fmt.Sprint("s", i), fmt.Sprint("u", i)
			if err := e.SaveSession(ctx, &engine.Session{ID: id, User: user, Rooms: []string{fmt.Sprint("r", i)}}, time.Minute); err != nil {
				errs <- fmt.Errorf("save %s: %w", id, err)
				return
			}
			s, err := e.LoadSession(ctx, id)
			if err != nil || s == nil || s.User != user || len(s.Rooms) != 1 || s.Rooms[0] != fmt.Sprint("r", i) {
				errs <- fmt.Errorf("load %s = %+v, %v", id, s, err)
				return
			}
			if st, _, err := e.ReserveID(ctx, id, "m1"); err != nil || st != engine.IDNew {
				errs <- fmt.Errorf("reserve %s = %v, %v", id, st, err)
				return
			}
			if err := e.CompleteID(ctx, id, "m1", uint64(i+1)); err != nil {
				errs <- fmt.Errorf("complete %s: %w", id, err)
				return
			}
			if st, seq, err := e.ReserveID(ctx, id, "m1"); err != nil || st != engine.IDDone || seq != uint64(i+1) {
				errs <- fmt.Errorf("reserve again %s = %v %d, %v", id, st, seq, err)
				return
			}
			if added, _, err := e.PresenceAdd(ctx, "lobby", user); err != nil || !added {
				errs <- fmt.Errorf("presence %s = %v, %v", user, added, err)
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got, err := e.PresenceCount(ctx, "lobby"); err != nil || got != n {
		t.Fatalf("lobby count = %d, %v; want %d", got, err, n)
	}
	cmds, pipes := e.PipelineStats()
	t.Logf("%d commands in %d pipelines", cmds, pipes)
	if cmds < 6*n || pipes >= cmds/2 {
		t.Fatalf("%d commands in %d pipelines: concurrent commands did not share round trips", cmds, pipes)
	}
}

// TestClosedEngineAnswersEveryCaller: callers in flight when the engine
// closes and callers after it get an answer (an error or their result),
// none waits forever; a caller whose context has ended is not kept
// waiting for Redis either.
func TestClosedEngineAnswersEveryCaller(t *testing.T) {
	srv := testredis.Start(t)
	e := newEngine(t, srv.URL, 10)
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() { // until the engine refuses
			for j := 0; ; j++ {
				if _, err := e.LoadSession(context.Background(), fmt.Sprint("s", i, "-", j)); err != nil {
					return
				}
			}
		})
	}
	time.Sleep(100 * time.Millisecond)
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := e.LoadSession(cancelled, "x"); !errors.Is(err, context.Canceled) {
		t.Fatalf("load with an ended context: %v", err)
	}
	e.Close()
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(10 * time.Second):
		t.Fatal("callers still waiting 10 s after Close")
	}
	if _, err := e.LoadSession(context.Background(), "after"); !errors.Is(err, engine.ErrClosed) {
		t.Fatalf("load after Close: %v, want ErrClosed", err)
	}
}
