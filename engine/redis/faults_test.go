package redis

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/tether-chat/tether/engine"
	"github.com/tether-chat/tether/engine/enginetest"
	"github.com/tether-chat/tether/internal/testnet"
	"github.com/tether-chat/tether/internal/testredis"
	"github.com/tether-chat/tether/internal/testwait"
)

// Faults between a node and Redis, injected by a TCP proxy on the node's
// side (internal/testnet) and counted from what an observer on a clean
// connection sees: every publication once, in order, or a Lost report.

// viaProxy is a node of e's cluster whose every connection to Redis goes
// through a fault-injecting proxy.
func viaProxy(t *testing.T, srv *testredis.Server, size int) (*Engine, *testnet.Proxy) {
	t.Helper()
	p := testnet.NewProxy(t, srv.Addr)
	return newEngine(t, "redis://"+p.Addr()+"/0", size), p
}

// watchedViaProxy starts a redis-server and a node whose connections to
// it go through a fault-injecting proxy, with an observer node on a clean
// connection subscribed to stream: what the observer receives is what the
// clients of the cluster would.
func watchedViaProxy(t *testing.T, historySize int, stream string) (*Engine, *testnet.Proxy, *enginetest.Collector) {
	t.Helper()
	srv := testredis.Start(t)
	e, proxy := viaProxy(t, srv, historySize)
	observer := peer(t, e, srv.URL)
	started(t, e)
	seen := started(t, observer)
	observer.Subscribe(context.Background(), stream)
	return e, proxy, seen
}

// TestLostReplyPublishesOnce: Redis runs the publish script but its reply
// never comes back (the connection is reset after it). The engine runs
// the script again, which finds the key recorded and publishes nothing:
// one message in history, one delivery, the first attempt's seq. Without
// a key the engine does not retry: the caller is told `unavailable`
// although the message went out, which is why the server always gives a
// key for client messages.
func TestLostReplyPublishesOnce(t *testing.T) {
	ctx := context.Background()
	e, proxy, seen := watchedViaProxy(t, 100, "room:l")
	// Redis must know the script: a reply lost to NOSCRIPT would be a
	// command that did not run.
	if _, err := e.Publish(ctx, chat("room:warm", ""), engine.PublishOptions{}); err != nil {
		t.Fatal(err)
	}

	proxy.LoseReplies([]byte("sess-1:m1"), 1)
	p := chat("room:l", "hello")
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	dup, err := e.Publish(cctx, p, engine.PublishOptions{Key: "sess-1:m1"})
	if proxy.Lost() == 0 {
		t.Fatal("the proxy lost no reply: the fault was not injected")
	}
	if err != nil || !dup || p.Seq != 1 {
		t.Fatalf("publish whose first reply was lost: dup=%v seq=%d err=%v; want the recorded seq 1", dup, p.Seq, err)
	}
	if s := e.Stats(); s.PublishRetries == 0 {
		t.Fatalf("stats %+v: no retry counted", s)
	}

	proxy.LoseReplies([]byte("no key here"), 1)
	_, err = e.Publish(cctx, chat("room:l", "no key here"), engine.PublishOptions{})
	if !errors.Is(err, engine.ErrUnavailable) {
		t.Fatalf("publish without a key whose reply was lost: err=%v; want ErrUnavailable", err)
	}
	seen.Wait(t, "room:l", 2)
	time.Sleep(300 * time.Millisecond) // a duplicate would come now
	if got := seen.Got("room:l"); len(got) != 2 || got[0].Text != "hello" || got[1].Text != "no key here" {
		t.Fatalf("observer saw %d publications; want hello once and the unkeyed one (it ran) once", len(got))
	}
}

// TestLostReplyInABatchPublishesOnceInOrder: a batch's pipeline loses its
// replies (the connection is reset after Redis ran the commands). The
// engine runs the unanswered ones again, in order, each by its key: every
// publication once, in the batch's order, with the seq of its one run;
// the one without a key is reported unavailable, never run twice.
func TestLostReplyInABatchPublishesOnceInOrder(t *testing.T) {
	ctx := context.Background()
	e, proxy, seen := watchedViaProxy(t, 100, "room:b")

	var ps []*engine.Publication
	var opts []engine.PublishOptions
	for i := 1; i <= 5; i++ {
		ps = append(ps, chat("room:b", fmt.Sprint("m", i)))
		key := fmt.Sprint("sess-b:m", i)
		if i == 5 {
			key = "" // no key: may not run twice
		}
		opts = append(opts, engine.PublishOptions{Key: key})
	}
	proxy.LoseReplies([]byte("sess-b:m2"), 1)
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	res := e.PublishBatch(cctx, ps, opts)
	if proxy.Lost() == 0 {
		t.Fatal("the proxy lost no reply: the fault was not injected")
	}
	for i := range 4 {
		if res[i].Err != nil || ps[i].Seq != uint64(i+1) {
			t.Fatalf("m%d: seq %d err %v; want seq %d", i+1, ps[i].Seq, res[i].Err, i+1)
		}
	}
	seen.Wait(t, "room:b", 4)
	time.Sleep(300 * time.Millisecond) // a duplicate would come now
	got := seen.Got("room:b")
	var texts []string
	for _, p := range got {
		texts = append(texts, p.Text)
	}
	switch {
	case res[4].Err == nil && fmt.Sprint(texts) == "[m1 m2 m3 m4 m5]":
		// m5's reply came back before the reset.
	case errors.Is(res[4].Err, engine.ErrUnavailable) && (fmt.Sprint(texts) == "[m1 m2 m3 m4 m5]" || fmt.Sprint(texts) == "[m1 m2 m3 m4]"):
		// m5 ran or not; either way once, and its caller was told.
	default:
		t.Fatalf("observer saw %v, m5 %v; want m1..m4 once each in order, m5 at most once", texts, res[4].Err)
	}
}

// TestStallIsUnavailableThenRecovers: Redis stalls for longer than the
// caller will wait. The caller gets ErrUnavailable (not silence) by its
// deadline, the node turns unready within about two seconds, and after
// the stall the client's re-send with the same key publishes the message
// exactly once whichever way the stalled attempt went.
func TestStallIsUnavailableThenRecovers(t *testing.T) {
	srv := testredis.Start(t)
	ctx := context.Background()
	e, proxy := viaProxy(t, srv, 100)
	started(t, e)
	proxy.Stall(4 * time.Second)
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	_, err := e.Publish(cctx, chat("room:s", "stalled"), engine.PublishOptions{Key: "s:1"})
	cancel()
	if !errors.Is(err, engine.ErrUnavailable) {
		t.Fatalf("publish during a stall: %v; want ErrUnavailable", err)
	}
	deadline := time.Now().Add(3 * time.Second)
	for e.Ready(ctx) == nil {
		if time.Now().After(deadline) {
			t.Fatal("still ready 4 s into a Redis stall")
		}
		time.Sleep(50 * time.Millisecond)
	}
	resend := func() (bool, *engine.Publication, error) {
		p := chat("room:s", "stalled")
		c, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		dup, err := e.Publish(c, p, engine.PublishOptions{Key: "s:1"})
		return dup, p, err
	}
	time.Sleep(4 * time.Second)
	if _, p, err := resend(); err != nil || p.Seq != 1 {
		t.Fatalf("re-send after the stall: seq %d, %v", p.Seq, err)
	}
	if h, _ := e.History(ctx, "room:s", engine.HistoryQuery{}); h.Top != 1 || len(h.Pubs) != 1 {
		t.Fatalf("history top %d, %d messages: the message must be there once", h.Top, len(h.Pubs))
	}
	enginetest.WaitReady(t, e)
}

// TestResetsMidPipelineLoseNothing: connections to Redis are reset every
// 15ms while 100 senders publish 5 messages each concurrently (so resets
// hit pipelines of many callers), again until a reset has hit a publish
// in flight. Each sender, like a client, re-sends
// with the same key until it gets an answer. In the end every message is
// in history exactly once, and an observer received each exactly once, in
// order.
func TestResetsMidPipelineLoseNothing(t *testing.T) {
	ctx := context.Background()
	e, proxy, seen := watchedViaProxy(t, 2000, "room:r")

	const senders, each = 100, 5
	stop := make(chan struct{})
	var cuts sync.WaitGroup
	cuts.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(15 * time.Millisecond):
				proxy.Cut()
			}
		}
	})
	// Rounds until a reset has hit a publish in flight (a retry), at most
	// four: a fast machine can finish a round between two resets.
	sent := 0
	for round := 0; round < 4 && (round == 0 || e.Stats().PublishRetries == 0); round++ {
		var wg sync.WaitGroup
		errs := make(chan error, senders)
		for i := range senders {
			wg.Go(func() {
				for m := range each {
					text := fmt.Sprint(round, "-", i, "-", m)
					deadline := time.Now().Add(20 * time.Second)
					for attempt := 0; ; attempt++ {
						c, cancel := context.WithTimeout(ctx, 2*time.Second)
						_, err := e.Publish(c, chat("room:r", text), engine.PublishOptions{Key: text})
						cancel()
						if err == nil {
							break
						}
						if time.Now().After(deadline) {
							errs <- fmt.Errorf("message %s: no answer after %d attempts: %v", text, attempt+1, err)
							return
						}
						time.Sleep(10 * time.Millisecond)
					}
					time.Sleep(20 * time.Millisecond)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		sent += senders * each
	}
	close(stop)
	cuts.Wait()
	h, err := e.History(ctx, "room:r", engine.HistoryQuery{Limit: sent})
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, p := range h.Pubs {
		count[p.Text]++
	}
	if h.Top != uint64(sent) || len(count) != sent {
		t.Fatalf("history top %d with %d distinct messages; want %d, each once", h.Top, len(count), sent)
	}
	seen.Wait(t, "room:r", sent)
	time.Sleep(200 * time.Millisecond) // a duplicate would come now
	got := seen.Got("room:r")
	for i, p := range got {
		if p.Seq != uint64(i+1) {
			t.Fatalf("observer delivery %d has seq %d; want every seq once, in order (%d deliveries)", i, p.Seq, len(got))
		}
	}
	retries := e.Stats().PublishRetries
	t.Logf("%d connections accepted by the proxy, %d publish retries", proxy.Accepted(), retries)
	if proxy.Accepted() < 10 || retries == 0 {
		t.Fatalf("%d connections, %d retries: the resets did not hit the publishes", proxy.Accepted(), retries)
	}
}

// TestHalfOpenSubscriptionIsFoundAndFilled: the node's connections to
// Redis go silent and stay open (a black hole): TCP would say nothing for
// minutes. The end-to-end probe finds the subscription dead, the node
// subscribes again on a new connection and fills in from history what was
// published meanwhile: every message, once, in order.
func TestHalfOpenSubscriptionIsFoundAndFilled(t *testing.T) {
	srv := testredis.Start(t)
	ctx := context.Background()
	sub, proxy := viaProxy(t, srv, 100)
	pub := peer(t, sub, srv.URL)
	got := started(t, sub)
	started(t, pub)
	sub.Subscribe(ctx, "room:h")
	pub.Publish(ctx, chat("room:h", "before"), engine.PublishOptions{})
	got.Wait(t, "room:h", 1)
	if n := proxy.HalfOpen(); n == 0 {
		t.Fatal("no connection to silence")
	}
	for i := range 30 {
		pub.Publish(ctx, chat("room:h", fmt.Sprint(i)), engine.PublishOptions{})
	}
	got.Wait(t, "room:h", 31)
	time.Sleep(200 * time.Millisecond) // a duplicate would come now
	all := got.Got("room:h")
	if seqsOf(all) != seqsOf(seqRange(1, 31)) {
		t.Fatalf("deliveries %s; want 1..31 once each, in order", seqsOf(all))
	}
	if s := sub.Stats(); s.SubscriptionResets == 0 || s.ProbeFailures == 0 || s.GapFills == 0 {
		t.Fatalf("stats %+v: the probe must have found the dead subscription and a fill run", s)
	}
}

func seqRange(from, to uint64) []*engine.Publication {
	var ps []*engine.Publication
	for s := from; s <= to; s++ {
		ps = append(ps, &engine.Publication{Seq: s})
	}
	return ps
}

// TestLostHistoryIsReported: a gap that history no longer covers (more was
// published while the node was cut off than history retains), or a new
// epoch (Redis lost the stream), is reported as Lost, never skipped in
// silence; deliveries go on afterwards.
func TestLostHistoryIsReported(t *testing.T) {
	srv := testredis.Start(t)
	ctx := context.Background()
	sub, proxy := viaProxy(t, srv, 5)
	pub := peer(t, sub, srv.URL)
	got := started(t, sub)
	started(t, pub)
	sub.Subscribe(ctx, "room:x")
	pub.Publish(ctx, chat("room:x", ""), engine.PublishOptions{})
	got.Wait(t, "room:x", 1)
	proxy.HalfOpen()
	for range 20 {
		pub.Publish(ctx, chat("room:x", ""), engine.PublishOptions{})
	}
	waitFor(t, "a Lost report for the trimmed gap", func() bool { return got.LostCount("room:x") == 1 })
	pub.Publish(ctx, chat("room:x", "after"), engine.PublishOptions{})
	waitFor(t, "seq 22 delivered after the loss", func() bool {
		all := got.Got("room:x")
		return all[len(all)-1].Seq == 22
	})

	// Redis loses the stream (a flush, an eviction): a new epoch.
	if err := pub.client.Do(ctx, pub.client.B().Del().Key(pub.meta("room:x"), pub.hist("room:x")).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	fresh := chat("room:x", "new epoch")
	pub.Publish(ctx, fresh, engine.PublishOptions{})
	waitFor(t, "a Lost report for the new epoch", func() bool { return got.LostCount("room:x") == 2 })
	waitFor(t, "the new epoch's first message delivered", func() bool {
		all := got.Got("room:x")
		return all[len(all)-1].Epoch == fresh.Epoch && all[len(all)-1].Seq == 1
	})
}

// TestSweptWhileAliveAssertsAgain: Redis is out of a node's reach for
// longer than the presence TTL, so another node sweeps its users as gone.
// When it is reachable again the node finds its liveness entry missing,
// puts every hold back and announces its users again.
func TestSweptWhileAliveAssertsAgain(t *testing.T) {
	srv := testredis.Start(t)
	ctx := context.Background()
	a, proxy := viaProxy(t, srv, 10)
	b := peer(t, a, srv.URL)
	started(t, a)
	events := started(t, b)
	b.Subscribe(ctx, "room:p")
	if _, _, err := a.PresenceAdd(ctx, "p", "alice"); err != nil {
		t.Fatal(err)
	}
	proxy.Stall(1500 * time.Millisecond) // 5 presence TTLs
	waitFor(t, "alice's leave once a's liveness ran out", func() bool { return len(events.Got("room:p")) >= 1 })
	waitFor(t, "alice's join when a asserts again", func() bool { return len(events.Got("room:p")) >= 2 })
	evs := events.Got("room:p")
	if evs[0].Action != "leave" || evs[1].Action != "join" || evs[1].User != "alice" {
		t.Fatalf("events %+v %+v; want alice's leave then join", evs[0], evs[1])
	}
	// Eventually present: on a loaded machine a's renewals can run late by
	// more than this test's tiny TTL again, and b then rightly sweeps a
	// once more (and a asserts its holds once more).
	waitFor(t, "alice present again after a asserted its holds", func() bool {
		has, _ := b.PresenceHas(ctx, "p", "alice")
		return has
	})
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	testwait.Until(t, 15*time.Second, what, ok)
}

// TestLostReplyEntersOnce: the reply to an Enter (a presence add with its
// join announcement, a replay and a session save) is lost after Redis ran
// it. The retry finds the user added: the caller gets the set's state and
// the replay, the join is announced once, and the hold is the instance's
// own (a removal takes the user out).
func TestLostReplyEntersOnce(t *testing.T) {
	ctx := context.Background()
	e, proxy, seen := watchedViaProxy(t, 100, "room:q")
	publish := chat("room:q", "before")
	if _, err := e.Publish(ctx, publish, engine.PublishOptions{}); err != nil { // Redis knows the scripts now
		t.Fatal(err)
	}
	if _, _, err := e.Enter(ctx, engine.Entering{Entries: []engine.Entry{{Set: "warm", User: "w", Add: true}}}); err != nil {
		t.Fatal(err)
	}

	proxy.LoseReplies([]byte("lost-enter-user"), 1)
	ann := &engine.Publication{Stream: "room:q", Type: "presence", Room: "q", User: "lost-enter-user", Action: "join"}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	got, _, err := e.Enter(cctx, engine.Entering{Entries: []engine.Entry{{Set: "q", User: "lost-enter-user", Add: true, Announce: ann,
		AnnounceMax: 10, List: 10, Stream: "room:q", Replay: true}}, Save: &engine.Session{ID: "s-lost", User: "lost-enter-user"}, TTL: time.Minute})
	if proxy.Lost() == 0 {
		t.Fatal("the proxy lost no reply: the fault was not injected")
	}
	if err != nil || len(got) != 1 {
		t.Fatalf("Enter whose first reply was lost = %+v, %v", got, err)
	}
	if r := got[0]; r.Count != 1 || fmt.Sprint(r.Members) != "[lost-enter-user]" || len(r.History.Pubs) != 1 || r.History.Top != 1 {
		t.Fatalf("the retry's result = %+v", r)
	}
	if s, _ := e.LoadSession(ctx, "s-lost"); s == nil {
		t.Fatal("the session was not saved")
	}
	time.Sleep(300 * time.Millisecond) // a second announcement would come now
	var joins int
	for _, p := range seen.Got("room:q") {
		if p.Type == "presence" && p.User == "lost-enter-user" {
			joins++
		}
	}
	if joins != 1 {
		t.Fatalf("%d join announcements; want 1", joins)
	}
	if removed, n, err := e.PresenceRemove(ctx, "q", "lost-enter-user"); err != nil || !removed || n != 0 {
		t.Fatalf("removing the user entered through a lost reply = %v %d %v", removed, n, err)
	}
}
