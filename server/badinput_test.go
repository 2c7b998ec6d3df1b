package server

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tether-chat/tether/protocol"
	"github.com/tether-chat/tether/server/transport"
)

// rawFrame writes one masked client frame (clientFrame) on conn.
func rawFrame(t *testing.T, conn net.Conn, fin bool, op byte, payload []byte) {
	t.Helper()
	if _, err := conn.Write(clientFrame(fin, op, payload)); err != nil {
		t.Fatal(err)
	}
}

// TestFragmentedFramesAreReassembled: a message split over continuation
// frames, with a ping between them, is one message.
func TestFragmentedFramesAreReassembled(t *testing.T) {
	ts := newTestServer(t, Config{})
	c := connect(t, ts, "frag")
	conn := c.ws.UnderlyingConn()
	rawFrame(t, conn, false, 0x1, []byte(`{"type":"ch`))
	rawFrame(t, conn, true, 0x9, []byte("mid-message ping"))
	rawFrame(t, conn, false, 0x0, []byte(`at","id":"f1","payload":{"te`))
	rawFrame(t, conn, true, 0x0, []byte(`xt":"in three pieces"}}`))
	m := payloadOf[protocol.Chat](t, c.expect(protocol.TypeChat, nil))
	if m.Text != "in three pieces" {
		t.Fatalf("reassembled %+v", m)
	}
	c.expect(protocol.TypeAck, isAck("f1"))
	// A continuation frame with no message started is a protocol error.
	rawFrame(t, conn, true, 0x0, []byte("orphan"))
	if code, _ := c.expectClose(); code != int(protocol.CloseProtocolError) {
		t.Fatalf("orphan continuation: close %d, want 1002", code)
	}
}

// TestHostileInputLeavesTheServerHealthy throws the rest of the bad-input
// list at one server and checks that a healthy client is still served at
// full speed and no goroutine is left behind.
func TestHostileInputLeavesTheServerHealthy(t *testing.T) {
	ts := newTestServer(t, Config{RateLimit: 1000, RateBurst: 2000, RateStrikes: 100})
	healthy := connect(t, ts, "healthy")
	healthy.roundTrip("warm")
	time.Sleep(50 * time.Millisecond)
	base := runtime.NumGoroutine()

	// Control characters and markup in names.
	for _, name := range []string{"a%00b", "a%0Ab", "%3Cscript%3Ealert(1)%3C%2Fscript%3E", "a%2Fb", "..", "%2A"} {
		code, _ := get(t, ts.url+"/ws?user="+name, nil)
		if code != 400 {
			t.Errorf("user %q: HTTP %d, want 400", name, code)
		}
	}
	c := connect(t, ts, "mallory")
	for _, room := range []string{"a\u0000b", "a\nb", "<img src=x>", "rooms/*", "a b", "%2e%2e"} {
		c.send(protocol.TypeJoin, "j", map[string]any{"room": room})
		if e := payloadOf[protocol.Error](t, c.expect(protocol.TypeError, nil)); e.Code != protocol.ErrBadRoom {
			t.Errorf("room %q: %+v", room, e)
		}
	}
	// HTML in text is stored and delivered as text (escaping is the UI's job).
	c.send(protocol.TypeChat, "x", map[string]any{"text": `<script>alert(1)</script>`})
	if m := payloadOf[protocol.Chat](t, healthy.expect(protocol.TypeChat, nil)); m.Text != `<script>alert(1)</script>` {
		t.Fatalf("text altered: %q", m.Text)
	}
	// Thousands of joins: the room limit holds, nothing else breaks.
	for i := 0; i < 2000; i++ {
		c.ws.WriteMessage(websocket.TextMessage, []byte(fmt.Sprintf(`{"type":"join","id":"j%d","payload":{"room":"r%d"}}`, i, i)))
	}
	e := payloadOf[protocol.Error](t, c.expect(protocol.TypeError, func(e protocol.Envelope) bool {
		return payloadOf[protocol.Error](t, e).Code == protocol.ErrTooManyRooms
	}))
	if e.ID != "j99" {
		t.Fatalf("first refused join = %s, want j99 (the 101st room: general is the first)", e.ID)
	}
	c.roundTrip("after-joins")

	// 10,000 messages as fast as one client can send them.
	flood := connect(t, ts, "flood")
	for i := 0; i < 10000; i++ {
		if err := flood.ws.WriteMessage(websocket.TextMessage, []byte(`{"type":"ping"}`)); err != nil {
			break
		}
	}
	if code, _ := flood.expectClose(); code != int(protocol.CloseRateLimited) {
		t.Fatalf("flood: close %d, want 4029", code)
	}

	// The healthy client is served, at full speed, throughout.
	start := time.Now()
	for i := 0; i < 200; i++ {
		healthy.roundTrip(fmt.Sprint("rt", i))
	}
	t.Logf("200 round trips after the abuse: %s", time.Since(start))
	c.ws.Close()
	http.DefaultClient.CloseIdleConnections() // the test's own keep-alive goroutines
	deadline := time.Now().Add(waitFor)
	for runtime.NumGoroutine() > base+2 {
		if time.Now().After(deadline) {
			t.Fatalf("goroutines %d, baseline %d", runtime.NumGoroutine(), base)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(ts.url, "127.0.0.1") {
		t.Fatal("unexpected test server address")
	}
}

// TestTenThousandConnectionsLeaveNothingBehind: 10,000 connect/disconnect
// cycles, half closed cleanly and half dropped, return the goroutine count
// and the heap to their baseline. The baseline is taken after a first
// round of 2,000 cycles, so that maps and pools have reached their working
// size: what is measured is growth that keeps growing.
func TestTenThousandConnectionsLeaveNothingBehind(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	// Dropped connections keep their session for the resume window; short
	// windows (and a short history TTL, which paces the memory engine's
	// sweep) let the test see everything go.
	// No auto-join: the test's anchor client would buffer every presence
	// event of the 12,000 connections and look like a leak itself.
	ts := newTestServer(t, Config{PresenceGrace: time.Millisecond, ResumeWindow: 50 * time.Millisecond,
		HistoryTTL: 200 * time.Millisecond, AutoJoin: "-"})
	connect(t, ts, "anchor").roundTrip("warm")
	cycles := func(total int) {
		const workers = 8
		errs := make(chan error, workers)
		for w := 0; w < workers; w++ {
			go func(w int) {
				for i := w; i < total; i += workers {
					ws, _, err := websocket.DefaultDialer.Dial(fmt.Sprintf("%s/ws/u%d", ts.ws, i%50), nil)
					if err != nil {
						errs <- err
						return
					}
					ws.ReadMessage() // the welcome
					if i%2 == 0 {
						ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(time.Second))
					}
					ws.Close()
				}
				errs <- nil
			}(w)
		}
		for w := 0; w < workers; w++ {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
	}
	settle := func() (goroutines int, heap uint64) {
		deadline := time.Now().Add(30 * time.Second)
		for ts.Stats().Connections != 1 {
			if time.Now().After(deadline) {
				t.Fatalf("connections %d, want 1", ts.Stats().Connections)
			}
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(400 * time.Millisecond)                   // ghosts' grace timers, session expiry, an engine sweep
		for transport.Readers()+handshakers.Workers() != 0 { // reusable workers exit after transport.ReaderHot + workerIdle
			if time.Now().After(deadline) {
				t.Fatalf("%d readers and %d handshakers still waiting", transport.Readers(), handshakers.Workers())
			}
			time.Sleep(50 * time.Millisecond)
		}
		runtime.GC()
		runtime.GC() // sync.Pool victims survive one collection
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return runtime.NumGoroutine(), m.HeapAlloc
	}
	cycles(2000)
	g0, h0 := settle()
	cycles(10000)
	g1, h1 := settle()
	t.Logf("10,000 more cycles: heap %d -> %d bytes (%+d), goroutines %d -> %d", h0, h1, int64(h1)-int64(h0), g0, g1)
	if g1 > g0+1 {
		t.Fatalf("goroutines grew from %d to %d", g0, g1)
	}
	if int64(h1)-int64(h0) > 512<<10 {
		t.Fatalf("heap grew by %d bytes over 10,000 finished connections", int64(h1)-int64(h0))
	}
	if s := ts.Stats(); s.Opened != 12001 || s.Closed != 12000 {
		t.Fatalf("opened %d closed %d", s.Opened, s.Closed)
	}
}

// TestFrameSplitAtEveryByte: a frame that arrives one byte per read (a
// slow or fragmenting network) is put together across reads.
func TestFrameSplitAtEveryByte(t *testing.T) {
	ts := newTestServer(t, Config{})
	c := connect(t, ts, "trickle")
	conn := c.ws.UnderlyingConn()
	frame := textFrame([]byte(`{"type":"chat","id":"t1","payload":{"text":"one byte at a time"}}`))
	for _, b := range frame {
		if _, err := conn.Write([]byte{b}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond) // each byte its own segment, its own read
	}
	if m := payloadOf[protocol.Chat](t, c.expect(protocol.TypeChat, nil)); m.Text != "one byte at a time" {
		t.Fatalf("got %+v", m)
	}
	c.expect(protocol.TypeAck, isAck("t1"))
	// Two frames in one write are two messages.
	two := append(textFrame([]byte(`{"type":"ping","id":"p1"}`)),
		textFrame([]byte(`{"type":"ping","id":"p2"}`))...)
	if _, err := conn.Write(two); err != nil {
		t.Fatal(err)
	}
	c.expect(protocol.TypePong, func(e protocol.Envelope) bool { return e.ID == "p1" })
	c.expect(protocol.TypePong, func(e protocol.Envelope) bool { return e.ID == "p2" })
}

// TestFrameSentWithTheHandshake: a client that sends its first frame in
// the same write as the handshake request (before the 101) is served.
func TestFrameSentWithTheHandshake(t *testing.T) {
	ts := newTestServer(t, Config{AutoJoin: "-"})
	conn, err := net.Dial("tcp", strings.TrimPrefix(ts.ws, "ws://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req := "GET /ws/eager HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
	if _, err := conn.Write(append([]byte(req), textFrame([]byte(`{"type":"ping","id":"early"}`))...)); err != nil {
		t.Fatal(err)
	}
	got := readUntil(t, conn, `"early"`)
	if !bytes.Contains(got, []byte("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")) {
		t.Fatalf("handshake answer %q", got)
	}
}

// TestClientCloseIsEchoedThenSocketClosed: the client's close frame is
// answered with the same code and the server closes the socket (RFC 6455
// section 7.1.1: the server closes the TCP connection first).
func TestClientCloseIsEchoedThenSocketClosed(t *testing.T) {
	ts := newTestServer(t, Config{})
	c := connect(t, ts, "leaver")
	conn := c.ws.UnderlyingConn()
	rawFrame(t, conn, true, 0x8, append(binary.BigEndian.AppendUint16(nil, 1000), "bye"...))
	if code, _ := c.expectClose(); code != 1000 {
		t.Fatalf("echo %d, want 1000", code)
	}
	waitUntil(t, "the server to close the socket", func() bool { return ts.Stats().Connections == 0 })
}

// TestIdleConnectionsHaveNoGoroutines: reading is driven by the poller, so
// a connection that sends nothing costs no goroutine (and no stack).
func TestIdleConnectionsHaveNoGoroutines(t *testing.T) {
	ts := newTestServer(t, Config{})
	connect(t, ts, "warm").roundTrip("w")
	time.Sleep(50 * time.Millisecond)
	base := runtime.NumGoroutine()
	const n = 200
	for i := range n {
		c := connect(t, ts, fmt.Sprintf("idle%d", i))
		c.ws.SetReadDeadline(time.Time{})
	}
	// Our side's readers are n goroutines; the server's must add none.
	waitUntil(t, "the server's set-up goroutines to finish", func() bool {
		return runtime.NumGoroutine() <= base+n+10
	})
}

// senderAndSilentMember joins a sender and a member to room; nothing
// reads the member's socket until the test does.
func senderAndSilentMember(t *testing.T, ts *testServer, room string) (*client, *websocket.Conn) {
	t.Helper()
	sender := connect(t, ts, "sender")
	sender.send(protocol.TypeJoin, "j", map[string]any{"room": room})
	sender.expect(protocol.TypeAck, isAck("j"))
	ws, _, err := websocket.DefaultDialer.Dial(ts.ws+"/ws/silent", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.Close() })
	join, _ := json.Marshal(map[string]any{"type": "join", "id": "j", "payload": map[string]any{"room": room}})
	if _, err := ws.UnderlyingConn().Write(textFrame(join)); err != nil {
		t.Fatal(err)
	}
	return sender, ws
}

// TestBacklogPastTheSocketBufferArrivesIntact: a member that stops reading
// while megabytes are sent to it fills its socket, so writes are taken only
// in part (the rest of a frame waits at the head of its queue) while
// heartbeat pings keep being queued. When it reads again, every message
// arrives whole, in order, and the framing was never broken.
func TestBacklogPastTheSocketBufferArrivesIntact(t *testing.T) {
	ts := newTestServer(t, Config{AutoJoin: "-", RateLimit: -1, SendQueueMessages: 100000, SendQueueBytes: 64 << 20,
		PingInterval: 50 * time.Millisecond, PongTimeout: 10 * time.Second})
	sender, ws := senderAndSilentMember(t, ts, "big")
	waitUntil(t, "the sleeper to join", func() bool { return ts.hub.Count() == 2 && ts.Stats().Received >= 2 })
	time.Sleep(100 * time.Millisecond)

	text := strings.Repeat("x", 3000)
	const n = 3000 // ~9 MB: more than loopback socket buffers hold
	for i := range n {
		sender.send(protocol.TypeChat, fmt.Sprintf("c%d", i), map[string]any{"room": "big", "text": text})
	}
	sender.expect(protocol.TypeAck, isAck(fmt.Sprintf("c%d", n-1)))
	// The member's socket is full once deliveries stop while the rest is
	// still queued (whether the write that found it full was the
	// non-blocking one, counted in SocketFull, or the writer goroutine's
	// depends on timing).
	waitUntil(t, "the member's socket to be full", func() bool {
		before := ts.Stats().Delivered
		time.Sleep(200 * time.Millisecond)
		return ts.Stats().Delivered == before
	})
	t.Logf("writes the socket took only in part without blocking: %d", ts.Stats().SocketFull)

	// Wake up and read everything.
	ws.SetReadDeadline(time.Now().Add(20 * time.Second))
	next := 0
	for next < n {
		_, b, err := ws.ReadMessage()
		if err != nil {
			t.Fatalf("after %d of %d chats: %v", next, n, err)
		}
		var env protocol.Envelope
		if err := json.Unmarshal(b, &env); err != nil {
			t.Fatalf("broken message %q: %v", b[:min(len(b), 80)], err)
		}
		if env.Type != protocol.TypeChat {
			continue
		}
		m := payloadOf[protocol.Chat](t, env)
		if m.ID != fmt.Sprintf("c%d", next) || m.Text != text {
			t.Fatalf("chat %d: got id %q (%d bytes)", next, m.ID, len(m.Text))
		}
		next++
	}
}

// TestWritesGoOnAfterASlowWritesDeadline: a write that had to wait for a
// slow reader leaves a write deadline on the socket; the writes after it
// (written at once, without waiting) must not fail when it passes.
func TestWritesGoOnAfterASlowWritesDeadline(t *testing.T) {
	const writeTimeout = 2 * time.Second
	ts := newTestServer(t, Config{AutoJoin: "-", RateLimit: -1, SendQueueMessages: 100000, SendQueueBytes: 64 << 20,
		WriteTimeout: writeTimeout})
	sender, ws := senderAndSilentMember(t, ts, "r")
	waitUntil(t, "the slow member to join", func() bool { return ts.Stats().Received >= 2 })

	// Not reading: the socket fills, and a writer goroutine waits with a
	// deadline. Start reading well within it.
	text := strings.Repeat("y", 3000)
	const n = 3000
	for i := range n {
		sender.send(protocol.TypeChat, fmt.Sprintf("c%d", i), map[string]any{"room": "r", "text": text})
	}
	// The member's socket is full once deliveries stop while the rest is
	// still queued (whether the write that found it full was the
	// non-blocking one, counted in SocketFull, or the writer goroutine's
	// depends on timing).
	waitUntil(t, "the member's socket to be full", func() bool {
		before := ts.Stats().Delivered
		time.Sleep(200 * time.Millisecond)
		return ts.Stats().Delivered == before
	})
	t.Logf("writes the socket took only in part without blocking: %d", ts.Stats().SocketFull)
	slow := startClient(t, ws)
	chatID := func(id string) func(protocol.Envelope) bool {
		return func(e protocol.Envelope) bool { return payloadOf[protocol.Chat](t, e).ID == id }
	}
	for i := range n {
		slow.expect(protocol.TypeChat, chatID(fmt.Sprintf("c%d", i)))
	}
	// Past the deadline that slow write left, writes still work.
	time.Sleep(writeTimeout + 500*time.Millisecond)
	sender.send(protocol.TypeChat, "after", map[string]any{"room": "r", "text": "still here"})
	slow.expect(protocol.TypeChat, chatID("after"))
}

// TestBusyQuietBusy: a connection that is busy (its reader stays and waits
// with a deadline), then quiet past transport.ReaderHot (the reader returns the
// socket to the poller), then busy again, is served every time.
func TestBusyQuietBusy(t *testing.T) {
	ts := newTestServer(t, Config{})
	c := connect(t, ts, "bursty")
	for round := range 3 {
		for i := range 5 {
			c.roundTrip(fmt.Sprintf("r%d-%d", round, i))
			time.Sleep(transport.ReaderHot / 5) // busy: the next arrives while the reader waits
		}
		time.Sleep(3 * transport.ReaderHot) // quiet: the reader's deadline passes
	}
	c.roundTrip("last")
}
