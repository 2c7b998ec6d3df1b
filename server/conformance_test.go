package server

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tether-chat/tether/internal/ws"
	"github.com/tether-chat/tether/server/session"
)

// The WebSocket layer against RFC 6455, case by case, modelled on the
// Autobahn|Testsuite's categories: framing, pings, reserved bits and
// opcodes, fragmentation, UTF-8, closing, masking and the handshake. Each
// case is raw client frames sent to a real server over loopback and the
// server frames it must answer with, read raw: pongs and closes in order
// (text replies in between are passed over unless named). A case that
// does not end in a close checks that the connection still works; one that
// does answers the server's close and checks that the server then closes
// TCP at once, not when the close grace runs out (raised to a minute here).

// rawWS is a client speaking raw frames.
type rawWS struct {
	t    *testing.T
	conn net.Conn
	br   *bufio.Reader
}

const conformanceKey = "dGhlIHNhbXBsZSBub25jZQ=="

func rawConnect(t *testing.T, ts *testServer, user string) *rawWS {
	t.Helper()
	return rawConnectWith(t, ts, user, net.Dial)
}

func rawConnectWith(t *testing.T, ts *testServer, user string, dial func(network, addr string) (net.Conn, error)) *rawWS {
	t.Helper()
	conn, err := dial("tcp", strings.TrimPrefix(ts.ws, "ws://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(20 * time.Second)) // a bound, not a measure
	fmt.Fprintf(conn, "GET /ws/%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n", user, conformanceKey)
	r := &rawWS{t: t, conn: conn, br: bufio.NewReader(conn)}
	status, err := r.br.ReadString('\n')
	if err != nil || !strings.HasPrefix(status, "HTTP/1.1 101 ") {
		t.Fatalf("handshake: %q %v", status, err)
	}
	accept := false
	for {
		line, err := r.br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if line == "\r\n" {
			break
		}
		accept = accept || strings.EqualFold(strings.TrimSpace(line), "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
	}
	if !accept {
		t.Fatal("no or a wrong Sec-WebSocket-Accept")
	}
	if op, p, err := r.next(); err != nil || op != ws.OpText || !bytes.Contains(p, []byte(`"welcome"`)) {
		t.Fatalf("welcome: %d %q %v", op, p, err)
	}
	return r
}

func (r *rawWS) send(b []byte) {
	r.t.Helper()
	if _, err := r.conn.Write(b); err != nil {
		r.t.Fatal(err)
	}
}

// next reads one server frame: unmasked and whole (the server never
// fragments).
func (r *rawWS) next() (byte, []byte, error) {
	var h [2]byte
	if _, err := io.ReadFull(r.br, h[:]); err != nil {
		return 0, nil, err
	}
	if h[0]&0x80 == 0 || h[0]&0x70 != 0 || h[1]&0x80 != 0 {
		return 0, nil, fmt.Errorf("bad server frame header %x", h)
	}
	n := int64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		io.ReadFull(r.br, b[:])
		n = int64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		io.ReadFull(r.br, b[:])
		n = int64(binary.BigEndian.Uint64(b[:]))
	}
	p := make([]byte, n)
	_, err := io.ReadFull(r.br, p)
	return h[0] & 0x0f, p, err
}

// Frame builders for the cases.
func frame(fin bool, op byte, p string) []byte { return clientFrame(fin, op, []byte(p)) }
func text(p string) []byte                     { return frame(true, ws.OpText, p) }
func ping(p string) []byte                     { return frame(true, ws.OpPing, p) }
func closeFrame(code uint16, reason string) []byte {
	return frame(true, ws.OpClose, string(binary.BigEndian.AppendUint16(nil, code))+reason)
}
func withBits(f []byte, bits byte) []byte { f = bytes.Clone(f); f[0] |= bits; return f }
func cat(fs ...[]byte) []byte             { return bytes.Join(fs, nil) }

// jsonPing is an application ping the server answers with a text frame
// naming id, padded with spaces to n bytes when n is larger.
func jsonPing(id string, n int) string {
	s := `{"type":"ping","id":"` + id + `"}`
	if n > len(s) {
		s += strings.Repeat(" ", n-len(s))
	}
	return s
}

type conformanceCase struct {
	name string
	send []byte
	// want, in order: "pong:<payload>", "text:<substring>", "close:<code>".
	want []string
	// clientCloses: the case's frames end with the client's close, which
	// the server echoes; otherwise a close in want is the server's, which
	// the runner answers.
	clientCloses bool
}

func conformanceCases() []conformanceCase {
	const limit = 64 << 10 // the server's MaxMessageSize in these cases
	var cs []conformanceCase
	add := func(c conformanceCase) { cs = append(cs, c) }

	// 1. Framing: messages at each length encoding's edges.
	for _, n := range []int{0, 125, 126, 127, 65535, limit} {
		if n == 0 {
			add(conformanceCase{name: "1 framing/empty text", send: text(""), want: []string{"text:bad_"}})
			continue
		}
		add(conformanceCase{name: fmt.Sprintf("1 framing/text of %d bytes", n), send: text(jsonPing("n", n)), want: []string{`text:"id":"n"`}})
	}
	add(conformanceCase{name: "1 framing/text over the limit", send: text(jsonPing("n", limit+1)), want: []string{"close:1009"}})
	add(conformanceCase{name: "1 framing/64-bit length over the limit, no payload sent", send: withLength64(1 << 40), want: []string{"close:1009"}})
	add(conformanceCase{name: "1 framing/binary", send: frame(true, ws.OpBinary, "\x00\x01x"), want: []string{"text:bad_"}})
	add(conformanceCase{name: "1 framing/two frames in one write", send: cat(text(jsonPing("a", 0)), text(jsonPing("b", 0))), want: []string{`text:"id":"a"`, `text:"id":"b"`}})

	// 2. Pings and pongs.
	add(conformanceCase{name: "2 ping/empty", send: ping(""), want: []string{"pong:"}})
	add(conformanceCase{name: "2 ping/125 bytes of binary", send: ping(strings.Repeat("\xfe", 125)), want: []string{"pong:" + strings.Repeat("\xfe", 125)}})
	add(conformanceCase{name: "2 ping/126 bytes", send: ping(strings.Repeat("x", 126)), want: []string{"close:1002"}})
	add(conformanceCase{name: "2 ping/fragmented", send: frame(false, ws.OpPing, "x"), want: []string{"close:1002"}})
	add(conformanceCase{name: "2 ping/unsolicited pong", send: frame(true, ws.OpPong, "unasked"), want: nil})
	var tenPings []byte
	var tenPongs []string
	for i := range 10 {
		tenPings = append(tenPings, ping(fmt.Sprint("ping ", i))...)
		tenPongs = append(tenPongs, fmt.Sprint("pong:ping ", i))
	}
	add(conformanceCase{name: "2 ping/ten in one write, answered in order", send: tenPings, want: tenPongs})
	add(conformanceCase{name: "2 ping/then close", send: cat(ping("p"), closeFrame(1000, "")), want: []string{"pong:p", "close:1000"}, clientCloses: true})

	// 3. Reserved bits.
	for _, bits := range []byte{0x40, 0x20, 0x10, 0x70} {
		add(conformanceCase{name: fmt.Sprintf("3 reserved/bits %#x on text", bits), send: withBits(text(jsonPing("r", 0)), bits), want: []string{"close:1002"}})
	}
	add(conformanceCase{name: "3 reserved/bit on a ping", send: withBits(ping("p"), 0x40), want: []string{"close:1002"}})
	add(conformanceCase{name: "3 reserved/after a valid message", send: cat(text(jsonPing("ok", 0)), withBits(text("x"), 0x20)), want: []string{`text:"id":"ok"`, "close:1002"}})

	// 4. Reserved opcodes.
	for _, op := range []byte{3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF} {
		add(conformanceCase{name: fmt.Sprintf("4 opcode/%d", op), send: frame(true, op, "x"), want: []string{"close:1002"}})
	}

	// 5. Fragmentation.
	msg := jsonPing("frag", 0)
	add(conformanceCase{name: "5 fragments/two", send: cat(frame(false, ws.OpText, msg[:5]), frame(true, ws.OpContinuation, msg[5:])), want: []string{`text:"id":"frag"`}})
	var bytewise []byte
	for i := range len(msg) {
		op := ws.OpContinuation
		if i == 0 {
			op = ws.OpText
		}
		bytewise = append(bytewise, frame(i == len(msg)-1, op, msg[i:i+1])...)
	}
	add(conformanceCase{name: "5 fragments/one byte each", send: bytewise, want: []string{`text:"id":"frag"`}})
	add(conformanceCase{name: "5 fragments/ping between", send: cat(frame(false, ws.OpText, msg[:5]), ping("mid"), frame(true, ws.OpContinuation, msg[5:])), want: []string{"pong:mid", `text:"id":"frag"`}})
	add(conformanceCase{name: "5 fragments/empty fragments", send: cat(frame(false, ws.OpText, ""), frame(false, ws.OpContinuation, msg), frame(true, ws.OpContinuation, "")), want: []string{`text:"id":"frag"`}})
	add(conformanceCase{name: "5 fragments/continuation with nothing to continue", send: frame(true, ws.OpContinuation, "x"), want: []string{"close:1002"}})
	add(conformanceCase{name: "5 fragments/continuation with nothing to continue, over the limit", send: frame(true, ws.OpContinuation, strings.Repeat("x", limit+10)), want: []string{"close:1002"}})
	add(conformanceCase{name: "5 fragments/new text inside a fragmented one", send: cat(frame(false, ws.OpText, msg[:5]), text(msg)), want: []string{"close:1002"}})
	add(conformanceCase{name: "5 fragments/new text inside a fragmented one near the limit", send: cat(frame(false, ws.OpText, strings.Repeat(" ", limit-10)), text(msg)), want: []string{"close:1002"}})
	add(conformanceCase{name: "5 fragments/fragments over the limit together", send: cat(frame(false, ws.OpText, strings.Repeat(" ", limit-10)), frame(true, ws.OpContinuation, strings.Repeat(" ", 20))), want: []string{"close:1009"}})
	add(conformanceCase{name: "5 fragments/fragmented close", send: frame(false, ws.OpClose, ""), want: []string{"close:1002"}})

	// 6. UTF-8.
	add(conformanceCase{name: "6 utf8/valid, split inside a character", send: cat(frame(false, ws.OpText, `{"type":"ping","id":"κ`[:21]), frame(true, ws.OpContinuation, `{"type":"ping","id":"κ"}`[21:])), want: []string{`text:"id":"κ"`}})
	for name, bad := range map[string]string{
		"invalid byte":         "\xff",
		"overlong slash":       "\xc0\xaf",
		"surrogate":            "\xed\xa0\x80",
		"truncated at the end": "\xce",
		"above U+10FFFF":       "\xf4\x90\x80\x80",
	} {
		add(conformanceCase{name: "6 utf8/" + name, send: text(`{"type":"ping","id":"` + bad), want: []string{"close:1007"}})
	}
	add(conformanceCase{name: "6 utf8/invalid across fragments", send: cat(frame(false, ws.OpText, "ab\xce"), frame(true, ws.OpContinuation, "x")), want: []string{"close:1007"}})
	// Fail fast: the final fragment never comes; the close must not wait for it.
	add(conformanceCase{name: "6 utf8/fail fast on the first fragment", send: frame(false, ws.OpText, "{\"type\":\"ping\",\"id\":\"\xff"), want: []string{"close:1007"}})
	add(conformanceCase{name: "6 utf8/fail fast on a continuation", send: cat(frame(false, ws.OpText, `{"type":"ping",`), frame(false, ws.OpContinuation, "\"id\":\"\xed\xa0\x80")), want: []string{"close:1007"}})

	// 7. Closing.
	add(conformanceCase{name: "7 close/empty payload", send: frame(true, ws.OpClose, ""), want: []string{"close:"}, clientCloses: true})
	add(conformanceCase{name: "7 close/one-byte payload", send: frame(true, ws.OpClose, "\x03"), want: []string{"close:1002"}})
	for _, code := range []uint16{1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999} {
		add(conformanceCase{name: fmt.Sprintf("7 close/code %d echoed", code), send: closeFrame(code, "ok"), want: []string{fmt.Sprint("close:", code)}, clientCloses: true})
	}
	for _, code := range []uint16{0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535} {
		add(conformanceCase{name: fmt.Sprintf("7 close/invalid code %d", code), send: closeFrame(code, ""), want: []string{"close:1002"}})
	}
	add(conformanceCase{name: "7 close/reason of 123 bytes", send: closeFrame(1000, strings.Repeat("r", 123)), want: []string{"close:1000"}, clientCloses: true})
	add(conformanceCase{name: "7 close/reason not UTF-8", send: closeFrame(1000, "\xff"), want: []string{"close:1007"}})
	add(conformanceCase{name: "7 close/frames after the close are ignored", send: cat(closeFrame(1000, ""), text(jsonPing("late", 0)), ping("late")), want: []string{"close:1000"}, clientCloses: true})

	// 9. Masking.
	add(conformanceCase{name: "9 masking/unmasked text", send: []byte{0x81, 0x02, 'h', 'i'}, want: []string{"close:1002"}})
	add(conformanceCase{name: "9 masking/unmasked after a valid message", send: cat(text(jsonPing("m", 0)), []byte{0x89, 0x00}), want: []string{`text:"id":"m"`, "close:1002"}})
	return cs
}

// withLength64 is a text frame header claiming n bytes (64-bit length)
// with no payload after it.
func withLength64(n uint64) []byte {
	return append(binary.BigEndian.AppendUint64([]byte{0x81, 0x80 | 127}, n), 1, 2, 3, 4)
}

// TestRFC6455Conformance runs conformanceCases against a real server.
func TestRFC6455Conformance(t *testing.T) {
	ts := newTestServer(t, Config{AutoJoin: "-", MaxMessageSize: 64 << 10})
	ts.tp.CloseGrace.Store(int64(time.Minute))
	for i, tc := range conformanceCases() {
		t.Run(tc.name, func(t *testing.T) {
			r := rawConnect(t, ts, fmt.Sprint("c", i))
			r.send(tc.send)
			closed := false
			for _, w := range tc.want {
				kind, arg, _ := strings.Cut(w, ":")
				for {
					op, p, err := r.next()
					if err != nil {
						t.Fatalf("waiting for %s: %v", w, err)
					}
					if op == ws.OpText && kind != "text" {
						continue // a reply in between
					}
					if op == ws.OpText && !strings.Contains(string(p), arg) {
						continue
					}
					switch kind {
					case "pong":
						if op != ws.OpPong || string(p) != arg {
							t.Fatalf("want pong %q, got op %d %q", arg, op, p)
						}
					case "close":
						if op != ws.OpClose {
							t.Fatalf("want close %s, got op %d %q", arg, op, p)
						}
						got := ""
						if len(p) >= 2 {
							got = fmt.Sprint(binary.BigEndian.Uint16(p))
						}
						if got != arg {
							t.Fatalf("want close %q, got %q (%q)", arg, got, p)
						}
						closed = true
					}
					break
				}
			}
			if !closed {
				// Still open and working.
				r.send(text(jsonPing("alive", 0)))
				for {
					op, p, err := r.next()
					if err != nil {
						t.Fatalf("the connection did not stay usable: %v", err)
					}
					if op == ws.OpText && bytes.Contains(p, []byte(`"id":"alive"`)) {
						break
					}
					if op != ws.OpText {
						t.Fatalf("unexpected frame op %d %q", op, p)
					}
				}
				r.send(closeFrame(1000, ""))
				if op, _, err := r.next(); err != nil || op != ws.OpClose {
					t.Fatalf("close echo: %d %v", op, err)
				}
			} else if !tc.clientCloses {
				r.send(closeFrame(1000, "")) // the client's answer completes the handshake
			}
			// The server closes TCP once both close frames have crossed, not
			// when the close grace (a minute here) runs out. The bound is
			// below the 2 s the grace used to be: a build that waited for
			// it fails here.
			r.conn.SetReadDeadline(time.Now().Add(1500 * time.Millisecond))
			// A reset is a close too: after a frame it cannot read past, the
			// server closes without reading the client's reply.
			if n, err := io.Copy(io.Discard, r.br); (err != nil && !errors.Is(err, syscall.ECONNRESET)) || n != 0 {
				t.Fatalf("after the close: %d more bytes, %v (want EOF)", n, err)
			}
		})
	}
}

// textUntil reads r's frames until a text frame containing sub.
func (r *rawWS) textUntil(sub string) {
	r.t.Helper()
	for {
		op, p, err := r.next()
		if err != nil {
			r.t.Fatalf("waiting for %s: %v", sub, err)
		}
		if op == ws.OpText && bytes.Contains(p, []byte(sub)) {
			return
		}
	}
}

// pongsUntil reads r's frames until the application's reply to id and
// returns the pongs' payloads, in the order they came.
func (r *rawWS) pongsUntil(id string) []string {
	r.t.Helper()
	var pongs []string
	for {
		op, p, err := r.next()
		if err != nil {
			r.t.Fatalf("after %d pongs: %v", len(pongs), err)
		}
		switch {
		case op == ws.OpPong:
			pongs = append(pongs, string(p))
		case op == ws.OpText && bytes.Contains(p, []byte(`"id":"`+id+`"`)):
			return pongs
		case op != ws.OpText:
			r.t.Fatalf("unexpected frame op %d %q", op, p)
		}
	}
}

// parked says whether user's connection has its writer parked for the
// write delay (a delivery waits in its queue).
func parked(ts *testServer, user string) bool {
	for _, c := range ts.hub.ConnsOf(user) {
		if c.(*session.Conn).Parked() {
			return true
		}
	}
	return false
}

// TestPingFloodCostsNoMoreThanItsPongs: a client floods pings while the
// server's writer is held (by the write delay, after a room delivery; a
// full socket holds it the same way). Its pongs come first in, first out,
// at most maxPongs of them waiting at a time, the most recent ping always
// answered, and the connection still works. (Before, every pong was put
// at the queue's head by copying the whole queue, with no limit: the work
// grew with the square of the pings, and pongs came out newest first.)
func TestPingFloodCostsNoMoreThanItsPongs(t *testing.T) {
	ts := newTestServer(t, Config{WriteDelay: time.Second})
	sender := connect(t, ts, "sender")
	r := rawConnect(t, ts, "flood")
	r.textUntil(`"type":"members"`) // in the room
	// Delivered to flood a moment after its last write: parked for the
	// write delay. (The sender's ack waits with its own copy: not awaited.)
	sender.send("chat", "c", map[string]any{"room": "general", "text": "hold the writer"})
	waitUntil(t, "flood's writer parked", func() bool { return parked(ts, "flood") })
	const n = 20000
	var burst []byte
	for i := range n {
		burst = append(burst, ping(fmt.Sprint(i))...)
	}
	r.send(burst)
	r.send(text(jsonPing("after", 0)))
	pongs := r.pongsUntil("after")
	last := -1
	for _, p := range pongs {
		var v int
		fmt.Sscan(p, &v)
		if v <= last {
			t.Fatalf("pong %d after pong %d: not first in, first out", v, last)
		}
		last = v
	}
	if last != n-1 {
		t.Fatalf("the last pong answers ping %d, want the most recent, %d", last, n-1)
	}
	if len(pongs) >= n {
		t.Fatalf("%d pongs for %d pings: the waiting pongs were not capped", len(pongs), n)
	}
	t.Logf("%d pings, %d pongs", n, len(pongs))
}

// TestPongsInOrderWhileTheWriteDelayHoldsTheWriter: pongs queued while a
// room delivery waits for the write delay come out in the order of their
// pings (they came out in reverse).
func TestPongsInOrderWhileTheWriteDelayHoldsTheWriter(t *testing.T) {
	ts := newTestServer(t, Config{WriteDelay: 500 * time.Millisecond})
	sender := connect(t, ts, "sender")
	r := rawConnect(t, ts, "member")
	r.textUntil(`"type":"members"`) // in the room
	for round := range 3 {
		sender.send("chat", fmt.Sprint("c", round), map[string]any{"room": "general", "text": "hi"})
		waitUntil(t, "member's writer parked", func() bool { return parked(ts, "member") })
		var pings []byte
		for i := range 5 {
			pings = append(pings, ping(fmt.Sprint(round, "-", i))...)
		}
		r.send(pings)
		r.send(text(jsonPing(fmt.Sprint("r", round), 0)))
		pongs := r.pongsUntil(fmt.Sprint("r", round))
		want := []string{}
		for i := range 5 {
			want = append(want, fmt.Sprint(round, "-", i))
		}
		if fmt.Sprint(pongs) != fmt.Sprint(want) {
			t.Fatalf("round %d: pongs %v, want %v", round, pongs, want)
		}
	}
}

// TestAServerCloseNobodyAnswersEndsAfterTheGrace: the server closes (a
// protocol error), the client reads the close frame and never answers:
// the server closes TCP anyway once the close grace has passed (2 s; 300
// ms here), and the connection is gone from the node.
func TestAServerCloseNobodyAnswersEndsAfterTheGrace(t *testing.T) {
	ts := newTestServer(t, Config{AutoJoin: "-"})
	ts.tp.CloseGrace.Store(int64(300 * time.Millisecond))
	r := rawConnect(t, ts, "mute")
	// A breach the server can read past (so it waits for the answer).
	r.send(frame(true, ws.OpContinuation, "nothing to continue"))
	start := time.Now()
	op, p, err := r.next()
	if err != nil || op != ws.OpClose || binary.BigEndian.Uint16(p) != 1002 {
		t.Fatalf("want the server's close 1002, got %d %q %v", op, p, err)
	}
	// No answer: the socket must still be closed by the server.
	if n, err := io.Copy(io.Discard, r.br); err != nil || n != 0 {
		t.Fatalf("after the close: %d more bytes, %v (want EOF)", n, err)
	}
	t.Logf("closed %s after the breach", time.Since(start).Round(time.Millisecond))
	waitUntil(t, "the connection gone from the node", func() bool { return ts.Stats().Connections == 0 })
}
