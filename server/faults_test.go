package server

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tether-chat/tether/engine"
	"github.com/tether-chat/tether/engine/memory"
	"github.com/tether-chat/tether/engine/redis"
	"github.com/tether-chat/tether/internal/testnet"
	"github.com/tether-chat/tether/internal/testredis"
	"github.com/tether-chat/tether/protocol"
	"github.com/tether-chat/tether/server/session"
)

// Faults at the node: what clients see when a message is re-sent after its
// first attempt got through, when a handler panics, when Redis stalls, and
// when a node misses messages that history no longer holds.

// TestResentMessagesAreAnsweredTruthfully: a re-sent message whose first
// attempt was processed is acked with its original seq even when the
// check that would refuse it now fails (the recipient went offline, the
// sender left the room): it was delivered, so saying otherwise would
// be false.
func TestResentMessagesAreAnsweredTruthfully(t *testing.T) {
	bothEngines(t, func(t *testing.T, eng engineCase) {
		ts := newTestServer(t, eng.with(Config{ResumeWindow: time.Minute}))
		alice, bob := connect(t, ts, "alice"), connect(t, ts, "bob")
		alice.send(protocol.TypeJoin, "j", inRoom("r"))
		alice.expect(protocol.TypeAck, isAck("j"))
		alice.send(protocol.TypeDirect, "d1", map[string]any{"to": "bob", "text": "psst"})
		dm := payloadOf[protocol.Direct](t, bob.expect(protocol.TypeDirect, nil))
		alice.send(protocol.TypeChat, "c1", map[string]any{"room": "r", "text": "hi"})
		chat := payloadOf[protocol.Chat](t, alice.expect(protocol.TypeChat, nil))
		alice.send(protocol.TypeLeave, "l1", inRoom("r"))
		alice.expect(protocol.TypeAck, isAck("l1"))
		session := alice.welcome.Session
		alice.cut() // as if none of the acks had arrived
		bob.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(time.Second))
		waitUntil(t, "bob offline", func() bool {
			again := dial(t, ts.ws+"/ws/probe")
			defer again.ws.Close()
			again.expectWelcome()
			again.send(protocol.TypeDirect, "p", map[string]any{"to": "bob", "text": "?"})
			e := again.expect(protocol.TypeError, isAck("p"))
			return payloadOf[protocol.Error](t, e).Code == protocol.ErrUserOffline
		})

		again := dial(t, resumeURL(ts.ws, "alice", session, nil))
		again.expectWelcome()
		again.send(protocol.TypeDirect, "d1", map[string]any{"to": "bob", "text": "psst"})
		again.send(protocol.TypeChat, "c1", map[string]any{"room": "r", "text": "hi"})
		again.send(protocol.TypeLeave, "l1", inRoom("r"))
		if a := payloadOf[protocol.Ack](t, again.expect(protocol.TypeAck, isAck("d1"))); a.Seq != dm.Seq {
			t.Fatalf("re-sent direct to a user now offline: ack seq %d, want the original %d", a.Seq, dm.Seq)
		}
		if a := payloadOf[protocol.Ack](t, again.expect(protocol.TypeAck, isAck("c1"))); a.Seq != chat.Seq {
			t.Fatalf("re-sent chat to a room since left: ack seq %d, want the original %d", a.Seq, chat.Seq)
		}
		again.expect(protocol.TypeAck, isAck("l1"))
		// A new message to the offline user is refused, as before.
		again.send(protocol.TypeDirect, "d2", map[string]any{"to": "bob", "text": "new"})
		if e := payloadOf[protocol.Error](t, again.expect(protocol.TypeError, isAck("d2"))); e.Code != protocol.ErrUserOffline {
			t.Fatalf("new direct to an offline user: %+v", e)
		}
	})
}

// TestFirstPrivateMessageWhileAwayIsRecovered: the welcome carries the
// inbox's position, so a client that has never received a private
// message still has one to present; a message sent while it was dropped
// comes with the resume, then `recovered` for the inbox.
func TestFirstPrivateMessageWhileAwayIsRecovered(t *testing.T) {
	bothEngines(t, func(t *testing.T, eng engineCase) {
		ts := newTestServer(t, eng.with(Config{ResumeWindow: time.Minute}))
		alice, bob := connect(t, ts, "alice"), connect(t, ts, "bob")
		w := bob.welcome
		if w.Inbox.Top != 0 {
			t.Fatalf("a new user's inbox is at %+v; want top 0", w.Inbox)
		}
		bob.cut() // dropped: present for the grace period, reachable
		alice.send(protocol.TypeDirect, "d", map[string]any{"to": "bob", "text": "first"})
		alice.expect(protocol.TypeAck, isAck("d"))
		again := dial(t, resumeURL(ts.ws, "bob", w.Session, map[string][2]any{protocol.InboxKey: {w.Inbox.Epoch, w.Inbox.Top}}))
		if !again.expectWelcome().Resumed {
			t.Fatal("not resumed")
		}
		if m := payloadOf[protocol.Direct](t, again.expect(protocol.TypeDirect, nil)); m.Text != "first" || m.Seq != 1 {
			t.Fatalf("replayed %+v", m)
		}
		r := payloadOf[protocol.Recovered](t, again.expect(protocol.TypeRecovered, isRecovered("", true)))
		if !r.Recovered || r.Count != 1 {
			t.Fatalf("recovered = %+v; want the inbox, 1 message", r)
		}
	})
}

// TestPanicClosesOnlyItsConnection: a handler that panics (a bug) closes
// the connection it served with 1011 and is counted; everyone else goes
// on, and the node keeps accepting.
func TestPanicClosesOnlyItsConnection(t *testing.T) {
	ts := newTestServer(t, Config{})
	ts.sess.SetHandleHook(func(c *session.Conn, cmd protocol.Command) {
		if cmd.Text == "boom" {
			panic("a bug in handling " + cmd.Type)
		}
	})
	alice, bob := connect(t, ts, "alice"), connect(t, ts, "bob")
	alice.send(protocol.TypeChat, "1", map[string]any{"text": "boom"})
	if code, _ := alice.expectClose(); code != int(protocol.CloseInternal) {
		t.Fatalf("the panicking connection closed with %d; want 1011", code)
	}
	bob.send(protocol.TypeChat, "2", map[string]any{"text": "still here"})
	bob.expect(protocol.TypeAck, isAck("2"))
	carol := connect(t, ts, "carol")
	carol.roundTrip("p")
	if n := ts.metrics.panics.Load(); n != 1 {
		t.Fatalf("panics counted: %d", n)
	}
}

// panickyEngine panics in the set-up of the user "boom" (a bug in an
// engine, or in anything a set-up runs), and takes its time over those of
// users named slow….
type panickyEngine struct {
	engine.Engine
	slow time.Duration
}

func (e panickyEngine) Enter(ctx context.Context, in engine.Entering) ([]engine.Entered, *engine.Session, error) {
	for _, en := range in.Entries {
		if en.User == "boom" {
			panic("a bug in a set-up")
		}
		if strings.HasPrefix(en.User, "slow") {
			time.Sleep(e.slow)
			break
		}
	}
	return e.Engine.Enter(ctx, in)
}

// TestPanicInASetUpClosesOnlyItsConnection: a set-up that panics closes
// that connection with 1011 and is counted, whether it ran at once on
// its connection's goroutine or, having waited for its turn behind
// MaxSetups others, on a set-up worker; the workers and the node go on,
// and every set-up that waited with it succeeds.
func TestPanicInASetUpClosesOnlyItsConnection(t *testing.T) {
	ts := newTestServer(t, Config{Engine: panickyEngine{Engine: memory.New(memory.Config{}), slow: 3 * time.Second}})
	alice := connect(t, ts, "alice")
	boom := dial(t, ts.ws+"/ws/boom") // not waiting: runs at once
	if code, _ := boom.expectClose(); code != int(protocol.CloseInternal) {
		t.Fatalf("the connection whose set-up panicked closed with %d; want 1011", code)
	}
	alice.roundTrip("p")
	// Fill every set-up slot with slow ones, then a panicking one and
	// more slow ones wait for their turn and run on the workers.
	var wg sync.WaitGroup
	welcomed := make(chan *client, 2*session.MaxSetups)
	dialSlow := func(n int) {
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ws, _, err := websocket.DefaultDialer.Dial(ts.ws+fmt.Sprintf("/ws/slow%d-%d", n, i), nil)
				if err != nil {
					t.Errorf("slow set-up %d: %v", i, err)
					return
				}
				welcomed <- startClient(t, ws)
			}()
		}
	}
	dialSlow(session.MaxSetups)
	waitUntil(t, "every slot taken", func() bool { return ts.Stats().Opened >= int64(session.MaxSetups)+2 })
	boomed := make(chan *client, 1)
	go func() {
		ws, _, err := websocket.DefaultDialer.Dial(ts.ws+"/ws/boom", nil)
		if err != nil {
			t.Errorf("boom: %v", err)
			close(boomed)
			return
		}
		boomed <- startClient(t, ws)
	}()
	waitUntil(t, "the panicking set-up waiting for its turn", func() bool { return ts.sess.SetupsWaiting() >= 1 })
	dialSlow(10)
	b, ok := <-boomed
	if !ok {
		t.FailNow()
	}
	if code, _ := b.expectClose(); code != int(protocol.CloseInternal) {
		t.Fatalf("the waiting set-up that panicked closed with %d; want 1011", code)
	}
	wg.Wait()
	close(welcomed)
	n := 0
	for c := range welcomed {
		c.expectWelcome()
		n++
	}
	if n != session.MaxSetups+10 {
		t.Fatalf("%d slow set-ups welcomed; want %d", n, session.MaxSetups+10)
	}
	if n := ts.metrics.panics.Load(); n != 2 {
		t.Fatalf("panics counted: %d; want the two set-ups", n)
	}
}

// redisVia returns a Redis engine whose connections pass through a
// fault-injecting proxy to srv.
func redisVia(t *testing.T, srv *testredis.Server, prefix string, history int) (*redis.Engine, *testnet.Proxy) {
	t.Helper()
	p := testnet.NewProxy(t, srv.Addr)
	eng, err := redis.New(redis.Config{URL: "redis://" + p.Addr() + "/0", Prefix: prefix, HistorySize: history,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return eng, p
}

var faultPrefixes atomic.Int64

// TestRedisStallKeepsLiveness: while Redis stalls (7 s, longer than a
// command's 5 s deadline), the node keeps pinging and answering, closes a
// silent client within ping-interval + pong-timeout (plus a heartbeat
// tick), never closes a client that answers (even one whose own command
// is waiting on Redis), turns unready within about two seconds, and tells
// a sender `unavailable` in words of its own. After the stall the re-sent
// message is delivered once.
func TestRedisStallKeepsLiveness(t *testing.T) {
	rs := testredis.Start(t)
	eng, proxy := redisVia(t, rs, fmt.Sprintf("stall%d:", faultPrefixes.Add(1)), 100)
	interval, timeout := 500*time.Millisecond, 500*time.Millisecond
	ts := newTestServer(t, Config{Engine: eng, PingInterval: interval, PongTimeout: timeout})
	waitUntil(t, "ready", func() bool { return readyz(ts) == http.StatusOK })
	alice, bob := connect(t, ts, "alice"), connect(t, ts, "bob")
	var pings atomic.Int64
	alice.ws.SetPingHandler(func(data string) error {
		pings.Add(1)
		return alice.ws.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
	})

	// A client that completes the handshake and then never sends a byte.
	silent, err := net.Dial("tcp", strings.TrimPrefix(ts.ws, "ws://"))
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	fmt.Fprintf(silent, "GET /ws/mute HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
	readUntil(t, silent, `"type":"members"`) // set up (the last of it), before the stall
	lastByte := time.Now()
	closedAt := make(chan time.Time, 1)
	go func() { // ping frames, then the close and EOF
		silent.SetReadDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(silent)
		for {
			if _, err := br.ReadByte(); err != nil {
				closedAt <- time.Now()
				return
			}
		}
	}()

	stall := time.Now()
	proxy.Stall(7 * time.Second)
	alice.send(protocol.TypeChat, "s1", map[string]any{"text": "during the stall"})
	unready := time.Duration(0)
	for unready == 0 && time.Since(stall) < 3500*time.Millisecond {
		if readyz(ts) != http.StatusOK {
			unready = time.Since(stall)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if unready == 0 {
		t.Fatal("/readyz still 200 3.5 s into a Redis stall")
	}
	// The silent client: the server closes its socket.
	closedAfter := (<-closedAt).Sub(lastByte)
	bound := interval + timeout + 125*time.Millisecond // the heartbeat ticks every min(1s, interval/2, timeout/4)
	t.Logf("stall: unready after %s; silent client closed %s after its last byte (bound %s); alice answered %d pings",
		unready.Round(time.Millisecond), closedAfter.Round(time.Millisecond), bound, pings.Load())
	if closedAfter > bound+500*time.Millisecond {
		t.Fatalf("silent client closed %s after its last byte; the bound is %s", closedAfter, bound)
	}
	// alice's reader waits on Redis for her message: she is pinged, and
	// not closed though her pongs wait unread; then she is told.
	e := payloadOf[protocol.Error](t, alice.expect(protocol.TypeError, isAck("s1")))
	if e.Code != protocol.ErrUnavailable || strings.Contains(strings.ToLower(e.Message), "redis") {
		t.Fatalf("error during a stall = %+v; want unavailable in the node's words", e)
	}
	if pings.Load() == 0 {
		t.Fatal("alice was never pinged during the stall")
	}
	alice.roundTrip("alive") // never closed for want of a pong
	bob.roundTrip("alive")
	// After the stall: the re-send with the same id, delivered once.
	waitUntil(t, "ready again", func() bool { return readyz(ts) == http.StatusOK })
	alice.send(protocol.TypeChat, "s1", map[string]any{"text": "during the stall"})
	alice.expect(protocol.TypeAck, isAck("s1"))
	bob.expect(protocol.TypeChat, nil)
	bob.expectNone(protocol.TypeChat, nil, quiet)
}

func readyz(ts *testServer) int {
	c := http.Client{Timeout: time.Second}
	r, err := c.Get(ts.url + "/readyz")
	if err != nil {
		return 0
	}
	r.Body.Close()
	return r.StatusCode
}

// TestLostStreamMakesItsReadersResume: a node cut off from Redis (its
// connections half-open) while another node publishes more to a room than
// history retains cannot fill the gap: its members are closed with 4010,
// resume, and are told plainly that the room was not recovered. None
// keeps reading past a silent gap.
func TestLostStreamMakesItsReadersResume(t *testing.T) {
	rs := testredis.Start(t)
	prefix := fmt.Sprintf("lost%d:", faultPrefixes.Add(1))
	engA, proxy := redisVia(t, rs, prefix, 5)
	engB, err := redis.New(redis.Config{URL: rs.URL, Prefix: prefix, HistorySize: 5, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	a := newTestServer(t, Config{Engine: engA})
	b := newTestServer(t, Config{Engine: engB})
	waitUntil(t, "both ready", func() bool { return readyz(a) == http.StatusOK && readyz(b) == http.StatusOK })
	alice, bob := connect(t, a, "alice"), connect(t, b, "bob")
	bob.send(protocol.TypeChat, "0", map[string]any{"text": "seen"})
	seen := payloadOf[protocol.Chat](t, alice.expect(protocol.TypeChat, nil))
	proxy.HalfOpen()
	for i := range 20 {
		bob.send(protocol.TypeChat, fmt.Sprint(i+1), map[string]any{"text": fmt.Sprint("m", i)})
		bob.expect(protocol.TypeAck, isAck(fmt.Sprint(i+1)))
	}
	code, _ := alice.expectClose()
	if code != int(protocol.CloseResync) {
		t.Fatalf("alice closed with %d; want 4010 (resync)", code)
	}
	again := dial(t, resumeURL(a.ws, "alice", alice.welcome.Session, map[string][2]any{"general": {seen.Epoch, seen.Seq}}))
	again.expectWelcome()
	r := payloadOf[protocol.Recovered](t, again.expect(protocol.TypeRecovered, isRecovered("general", false)))
	if r.Recovered || r.Top != seen.Seq+20 {
		t.Fatalf("recovered = %+v; want false, top %d", r, seen.Seq+20)
	}
	bob.send(protocol.TypeChat, "after", map[string]any{"text": "live again"})
	if m := payloadOf[protocol.Chat](t, again.expect(protocol.TypeChat, nil)); m.Seq != r.Top+1 {
		t.Fatalf("live after resume: seq %d, want %d", m.Seq, r.Top+1)
	}
	if n := engA.Stats().StreamsLost; n < 1 {
		t.Fatalf("streams lost counted: %v", n)
	}
}

// TestMessagesDuringShutdownAreAnswered: a message that arrives once a
// graceful stop has begun is not processed, and says so (`unavailable`),
// before the close 1012; one being processed when the stop began is
// finished and acked.
func TestMessagesDuringShutdownAreAnswered(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	ts := newTestServer(t, Config{})
	ts.sess.SetHandleHook(func(c *session.Conn, cmd protocol.Command) {
		if cmd.Text == "hold" {
			close(entered)
			<-release
		}
	})
	alice, bob := connect(t, ts, "alice"), connect(t, ts, "bob")
	alice.send(protocol.TypeChat, "h", map[string]any{"text": "hold"})
	<-entered
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ts.Shutdown(ctx)
	}()
	waitUntil(t, "the stop to begin", ts.sess.Stopping)
	// The stop waits for alice's message; bob's, arriving now, is refused.
	bob.send(protocol.TypeChat, "late", map[string]any{"text": "too late"})
	e := payloadOf[protocol.Error](t, bob.expect(protocol.TypeError, isAck("late")))
	if e.Code != protocol.ErrUnavailable {
		t.Fatalf("a message during shutdown got %+v; want unavailable", e)
	}
	close(release)
	alice.expect(protocol.TypeAck, isAck("h"))
	for _, c := range []*client{alice, bob} {
		if code, _ := c.expectClose(); code != int(protocol.CloseRestart) {
			t.Fatalf("%s closed with %d; want 1012", c.user, code)
		}
	}
	<-stopped
}
