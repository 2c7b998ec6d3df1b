package redis

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tether-chat/tether/engine"
	"github.com/tether-chat/tether/engine/enginetest"
	"github.com/tether-chat/tether/internal/testredis"
	"github.com/tether-chat/tether/protocol"
)

var prefixes atomic.Int64

// cfgFor is a test engine's configuration: its own key prefix (several
// tests share one redis-server), a short presence TTL and quiet logs
// (TETHER_TEST_LOG=1 shows them).
func cfgFor(url string, size int) Config {
	log := slog.New(slog.DiscardHandler)
	if os.Getenv("TETHER_TEST_LOG") != "" {
		log = slog.Default()
	}
	return Config{URL: url, Prefix: fmt.Sprintf("t%d:", prefixes.Add(1)), HistorySize: size,
		PresenceTTL: 300 * time.Millisecond, Logger: log}
}

func newEngineWith(t *testing.T, cfg Config) *Engine {
	t.Helper()
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func newEngine(t *testing.T, url string, size int) *Engine {
	return newEngineWith(t, cfgFor(url, size))
}

// started starts e with a Collector and waits until it is ready.
func started(t *testing.T, e *Engine) *enginetest.Collector {
	t.Helper()
	c := enginetest.NewCollector()
	if err := e.Start(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	enginetest.WaitReady(t, e)
	return c
}

// peer is a second node of e's cluster (same prefix).
func peer(t *testing.T, e *Engine, url string) *Engine {
	cfg := e.cfg
	cfg.URL, cfg.NodeID = url, ""
	return newEngineWith(t, cfg)
}

// twoNodes starts a redis-server and two started nodes of one cluster on
// it (history retained per stream); got collects what the second one is
// handed.
func twoNodes(t *testing.T, history int) (srv *testredis.Server, a, b *Engine, got *enginetest.Collector) {
	t.Helper()
	srv = testredis.Start(t)
	a = newEngine(t, srv.URL, history)
	b = peer(t, a, srv.URL)
	started(t, a)
	return srv, a, b, started(t, b)
}

func chat(stream, text string) *engine.Publication {
	return &engine.Publication{Stream: stream, Type: "chat", Text: text, TS: time.Now().UnixMilli()}
}

// TestContract runs the same suite as the memory engine.
func TestContract(t *testing.T) {
	srv := testredis.Start(t)
	enginetest.Run(t, func(t *testing.T, o enginetest.Options) engine.Engine {
		cfg := cfgFor(srv.URL, o.HistorySize)
		cfg.KeyTTL = o.KeyTTL
		return newEngineWith(t, cfg)
	})
}

func TestTwoNodesShareStreamsAndPresence(t *testing.T) {
	_, a, b, got := twoNodes(t, 50)
	ctx := context.Background()
	if err := b.Subscribe(ctx, "room:x"); err != nil {
		t.Fatal(err)
	}
	p := chat("room:x", "from a")
	if _, err := a.Publish(ctx, p, engine.PublishOptions{}); err != nil {
		t.Fatal(err)
	}
	if q := got.Wait(t, "room:x", 1)[0]; q.Text != "from a" || q.Seq != 1 || q.Epoch != p.Epoch {
		t.Fatalf("b got %+v", q)
	}
	// The same user on both nodes is one user: a leave only when both let go.
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

// TestDeadNodeHoldsExpire: a node that stops renewing its liveness (it
// died, or was stopped) has its users removed after the presence TTL, and
// the leave is published, and reported to one live node's handler of the
// two that sweep; a user the live node holds too stays.
func TestDeadNodeHoldsExpire(t *testing.T) {
	srv, dead, live, events := twoNodes(t, 10)
	ctx := context.Background()
	third := started(t, peer(t, dead, srv.URL)) // sweeps too
	live.Subscribe(ctx, "room:lobby")
	dead.PresenceAdd(ctx, "lobby", "ghost")
	dead.PresenceAdd(ctx, "lobby", "both")
	live.PresenceAdd(ctx, "lobby", "both")
	live.PresenceAdd(ctx, "lobby", "carol")
	dead.Close() // stops renewing; its holds stay in Redis until swept
	p := events.Wait(t, "room:lobby", 1)[0]
	if p.Type != "presence" || p.User != "ghost" || p.Action != "leave" || p.Count != 2 {
		t.Fatalf("event = %+v; want ghost's leave, 2 left", p)
	}
	time.Sleep(time.Second) // several sweeps
	if n := len(events.Got("room:lobby")); n != 1 {
		t.Fatalf("%d presence events; only ghost left", n)
	}
	if got := fmt.Sprint(append(events.SweptUsers(), third.SweptUsers()...)); got != "[lobby/ghost]" {
		t.Fatalf("the live nodes' handlers were told of %s; want ghost leaving lobby, once in the cluster", got)
	}
	for _, u := range []string{"carol", "both"} {
		if has, _ := live.PresenceHas(ctx, "lobby", u); !has {
			t.Fatalf("%s expired with the dead node though the live one holds them", u)
		}
	}
}

// TestPubSubReconnectFillsTheGap: the pub/sub connection breaks; what is
// published while this node resubscribes is filled in from history, in
// order, without duplicates.
func TestPubSubReconnectFillsTheGap(t *testing.T) {
	_, pub, sub, got := twoNodes(t, 100)
	ctx := context.Background()
	if err := sub.Subscribe(ctx, "room:g"); err != nil {
		t.Fatal(err)
	}
	send := func(n int) {
		for range n {
			if _, err := pub.Publish(ctx, chat("room:g", ""), engine.PublishOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	send(3)
	got.Wait(t, "room:g", 3)
	// Break only the pub/sub connections: kill them from Redis.
	kill := pub.client.B().Arbitrary("CLIENT", "KILL", "TYPE", "pubsub").Build()
	if err := pub.client.Do(ctx, kill).Error(); err != nil {
		t.Fatal(err)
	}
	send(5) // published while the subscriber is reconnecting
	got.Wait(t, "room:g", 8)
	send(1)
	got.Wait(t, "room:g", 9)
	time.Sleep(200 * time.Millisecond) // a duplicate would come now
	all := got.Got("room:g")
	if seqsOf(all) != "[1 2 3 4 5 6 7 8 9]" {
		t.Fatalf("deliveries %v: want 1..9, each once, in order", seqsOf(all))
	}
	if s := sub.Stats(); s.SubscriptionResets == 0 {
		t.Fatalf("stats %+v: the reconnect was not counted", s)
	}
}

func seqsOf(ps []*engine.Publication) string {
	seqs := make([]uint64, len(ps))
	for i, p := range ps {
		seqs[i] = p.Seq
	}
	return fmt.Sprint(seqs)
}

func TestReadyFollowsRedis(t *testing.T) {
	srv := testredis.Start(t)
	e := newEngine(t, srv.URL, 10)
	started(t, e)
	ctx := context.Background()
	srv.Stop()
	deadline := time.Now().Add(5 * time.Second)
	for e.Ready(ctx) == nil {
		if time.Now().After(deadline) {
			t.Fatal("still ready 5 s after Redis went down")
		}
		time.Sleep(50 * time.Millisecond)
	}
	srv.Restart(t, 0)
	enginetest.WaitReady(t, e)
}

// TestRedisDownAtStart: a node whose Redis is not up yet starts, is not
// ready, and becomes ready when Redis comes up.
func TestRedisDownAtStart(t *testing.T) {
	srv := testredis.Start(t)
	srv.Stop()
	e := newEngine(t, srv.URL, 10)
	e.Start(context.Background(), enginetest.NewCollector())
	time.Sleep(300 * time.Millisecond)
	if err := e.Ready(context.Background()); err == nil {
		t.Fatal("ready with Redis down")
	}
	srv.Restart(t, 0)
	enginetest.WaitReady(t, e)
}

// TestConcurrentCallersAndScriptFlush: many callers at once, each with its
// own result, while Redis loses its scripts (as after a restart) in the
// middle: rueidis runs EVAL when EVALSHA is answered NOSCRIPT.
func TestConcurrentCallersAndScriptFlush(t *testing.T) {
	srv := testredis.Start(t)
	ctx := context.Background()
	e := newEngine(t, srv.URL, 1000)
	started(t, e)
	const n = 400
	startGate := make(chan struct{})
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-startGate
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
			p := chat("room:busy", user)
			if dup, err := e.Publish(ctx, p, engine.PublishOptions{Key: id}); err != nil || dup || p.Seq == 0 {
				errs <- fmt.Errorf("publish %s = %v %d, %v", id, dup, p.Seq, err)
				return
			}
			q := chat("room:busy", user)
			if dup, err := e.Publish(ctx, q, engine.PublishOptions{Key: id}); err != nil || !dup || q.Seq != p.Seq {
				errs <- fmt.Errorf("publish %s again = %v %d, %v; want dup of %d", id, dup, q.Seq, err, p.Seq)
				return
			}
			if added, _, err := e.PresenceAdd(ctx, "lobby", user); err != nil || !added {
				errs <- fmt.Errorf("presence %s = %v, %v", user, added, err)
			}
		})
	}
	close(startGate)
	time.Sleep(2 * time.Millisecond)
	e.client.Do(ctx, e.client.B().ScriptFlush().Build())
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got, err := e.PresenceCount(ctx, "lobby"); err != nil || got != n {
		t.Fatalf("lobby count = %d, %v; want %d", got, err, n)
	}
	if h, _ := e.History(ctx, "room:busy", engine.HistoryQuery{Limit: 1}); h.Top != n {
		t.Fatalf("room top = %d; want %d (one per key)", h.Top, n)
	}
}

// TestClosedEngineAnswersEveryCaller: callers in flight when the engine
// closes and callers after it get an answer, none waits forever; a caller
// whose context has ended is not kept waiting for Redis either.
func TestClosedEngineAnswersEveryCaller(t *testing.T) {
	srv := testredis.Start(t)
	e := newEngine(t, srv.URL, 10)
	started(t, e)
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
	if _, err := e.LoadSession(cancelled, "x"); !errors.Is(err, context.Canceled) && !errors.Is(err, engine.ErrUnavailable) {
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

// TestReadsCreateNoKeys: reading streams, records, presence and sessions
// that do not exist writes nothing to Redis.
func TestReadsCreateNoKeys(t *testing.T) {
	srv := testredis.Start(t)
	ctx := context.Background()
	e := newEngine(t, srv.URL, 10)
	started(t, e)
	before := dbsize(t, e)
	for i := range 200 {
		name := fmt.Sprint("r", i)
		e.History(ctx, engine.RoomStream(name), engine.HistoryQuery{})
		e.History(ctx, engine.UserStream(name), engine.HistoryQuery{Latest: true, Limit: 1})
		e.Recorded(ctx, engine.RoomStream(name), "k")
		e.PresenceMembers(ctx, name, 10)
		e.PresenceCount(ctx, name)
		e.PresenceHas(ctx, name, "u")
		e.LoadSession(ctx, name)
	}
	if after := dbsize(t, e); after != before {
		t.Fatalf("%d keys before reading 200 unknown rooms, %d after: reads must create nothing", before, after)
	}
}

func dbsize(t *testing.T, e *Engine) int64 {
	t.Helper()
	n, err := e.client.Do(context.Background(), e.client.B().Dbsize().Build()).AsInt64()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestEveryKeyIsBounded: after a workload of every kind (publishes with
// and without keys, private messages, presence on several nodes, one of which dies,
// sessions), every key left in Redis either has a TTL or is presence that
// a live node holds; once the live node's users leave and the dead one is
// swept, no presence key is left at all.
func TestEveryKeyIsBounded(t *testing.T) {
	srv, a, b, _ := twoNodes(t, 5)
	ctx := context.Background()
	for i := range 20 {
		a.Publish(ctx, chat("room:r", ""), engine.PublishOptions{Key: fmt.Sprint("s:", i)})
		a.Publish(ctx, chat(engine.UserStream("bob"), ""), engine.PublishOptions{})
		a.Publish(ctx, chat("room:r", ""), engine.PublishOptions{Ephemeral: true})
		a.Publish(ctx, &engine.Publication{Stream: engine.UserStream("bob"), Type: protocol.TypeDirect, From: "alice", To: "bob"}, engine.PublishOptions{}) // notes a partner
	}
	a.SaveSession(ctx, &engine.Session{ID: "s1", User: "alice"}, time.Minute)
	for _, u := range []string{"alice", "bob"} {
		a.PresenceAdd(ctx, "", u)
		a.PresenceAdd(ctx, "r", u)
		b.PresenceAdd(ctx, "r", u)
	}
	b.Close() // dies holding alice and bob in r
	time.Sleep(time.Second)
	keys := scanKeys(t, a)
	unbounded := map[string]bool{}
	for _, k := range keys {
		ttl, err := a.client.Do(ctx, a.client.B().Pttl().Key(k).Build()).AsInt64()
		if err != nil {
			t.Fatal(err)
		}
		if ttl <= 0 {
			unbounded[k] = true
		}
	}
	p := a.cfg.Prefix
	want := map[string]bool{p + "pr:{}:users": true, p + "pr:{r}:users": true, p + "pr:node:" + a.instance: true, p + "pr:nodes": true}
	if fmt.Sprint(unbounded) != fmt.Sprint(want) {
		t.Fatalf("keys without a TTL: %v; want only the live node's presence %v", unbounded, want)
	}
	for _, u := range []string{"alice", "bob"} {
		a.PresenceRemove(ctx, "", u)
		a.PresenceRemove(ctx, "r", u)
	}
	a.Close()
	c := peer(t, a, srv.URL)
	started(t, c) // sweeps a once its liveness runs out
	time.Sleep(time.Second)
	for _, k := range scanKeys(t, c) {
		ttl, _ := c.client.Do(ctx, c.client.B().Pttl().Key(k).Build()).AsInt64()
		if ttl <= 0 && k != p+"pr:nodes" {
			t.Errorf("key %s has no TTL after every user left", k)
		}
	}
}

func scanKeys(t *testing.T, e *Engine) []string {
	t.Helper()
	keys, err := e.client.Do(context.Background(), e.client.B().Keys().Pattern(e.cfg.Prefix+"*").Build()).AsStrSlice()
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// TestDeadNodesUsersLeftToTheirPartners: a user whose node died and who is
// held by no other node is swept offline, and their private-conversation
// partners are told `left` by the node that swept them (the dead node's
// memory of who they talked to is gone with it); a user another node
// still holds, or one who talked to nobody, sends nothing.
func TestDeadNodesUsersLeftToTheirPartners(t *testing.T) {
	_, dead, live, events := twoNodes(t, 10)
	ctx := context.Background()
	live.Subscribe(ctx, engine.UserStream("ben"))
	direct := func(from, to, text string) {
		for _, inbox := range []string{to, from} { // the recipient's, the sender's copy
			p := &engine.Publication{Stream: engine.UserStream(inbox), Type: protocol.TypeDirect, From: from, To: to, Text: text, TS: time.Now().UnixMilli()}
			if _, err := dead.Publish(ctx, p, engine.PublishOptions{Key: inbox + ":" + text}); err != nil {
				t.Fatal(err)
			}
		}
	}
	direct("ann", "ben", "hi ben")
	direct("dan", "ben", "hi from dan")
	direct("cid", "cid", "a note to myself")
	for user, want := range map[string]string{"ben": "[ann dan]", "ann": "[ben]", "dan": "[ben]", "cid": "[]"} {
		got, err := dead.client.Do(ctx, dead.client.B().Smembers().Key(dead.partnersKey(user)).Build()).AsStrSlice()
		if err != nil {
			t.Fatal(err)
		}
		sort.Strings(got)
		if fmt.Sprint(got) != want {
			t.Fatalf("%s's partners: %v, want %s", user, got, want)
		}
	}
	if ttl, _ := dead.client.Do(ctx, dead.client.B().Pttl().Key(dead.partnersKey("ben")).Build()).AsInt64(); ttl <= 0 || ttl > partnersTTL.Milliseconds() {
		t.Fatalf("ben's partners set expires in %d ms, want within %s", ttl, partnersTTL)
	}
	for _, u := range []string{"ann", "cid", "dan"} {
		dead.PresenceAdd(ctx, "", u)
	}
	live.PresenceAdd(ctx, "", "dan") // dan is also on the live node
	live.PresenceAdd(ctx, "", "ben")
	events.Wait(t, engine.UserStream("ben"), 2) // the two private messages
	dead.Close()                                // stops renewing; its holds stay in Redis until swept
	got := events.Wait(t, engine.UserStream("ben"), 3)
	if p := got[2]; p.Type != protocol.TypeLeft || p.User != "ann" {
		t.Fatalf("ben got %+v; want ann's left", p)
	}
	time.Sleep(time.Second) // several sweeps: nothing more (dan is still online, cid talked to nobody)
	if n := len(events.Got(engine.UserStream("ben"))); n != 3 {
		t.Fatalf("ben got %d publications; want two messages and one left", n)
	}
	swept := events.SweptUsers()
	sort.Strings(swept)
	if fmt.Sprint(swept) != "[/ann /cid]" {
		t.Fatalf("the live node's handler was told of %v going offline; want ann and cid", swept)
	}
	for _, u := range []string{"dan", "ben"} {
		if has, _ := live.PresenceHas(ctx, "", u); !has {
			t.Fatalf("%s went offline with the dead node though the live one holds them", u)
		}
	}
}
