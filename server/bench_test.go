package server

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"

	"github.com/tether-chat/tether/engine"
	"github.com/tether-chat/tether/protocol"
)

// BenchmarkDeliverToRoom measures the fan-out path without sockets: one
// publication encoded once and enqueued to every member of a room. The
// members stay corked, so nothing is written and every queue keeps what
// the run delivered (bound the run with -benchtime=Nx for big rooms).
func BenchmarkDeliverToRoom(b *testing.B) {
	for _, n := range []int{100, 1000, 10000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			srv, err := New(Config{Logger: slog.New(slog.DiscardHandler), SendQueueMessages: 1 << 30, SendQueueBytes: 1 << 30})
			if err != nil {
				b.Fatal(err)
			}
			defer srv.eng.Close()
			for i := 0; i < n; i++ {
				c := &Conn{id: uint64(i + 1), user: fmt.Sprint("u", i), srv: srv}
				c.Init(&srv.tp, nil, c, nil)                               // corked: no writer, measures the enqueue
				if err := srv.hub.Plan(c).Room("bench", nil); err != nil { // the hub's side of a join
					b.Fatal(err)
				}
			}
			p := &engine.Publication{Stream: engine.RoomStream("bench"), Type: protocol.TypeChat, Room: "bench",
				From: "alice", Text: strings.Repeat("x", 100), Seq: 1, Epoch: "e", TS: 1}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				srv.hub.Deliver(p)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/delivery")
		})
	}
}

// BenchmarkConnectionSetUp is one connection's set-up as `tether bench
// idle` makes it, over real loopback TCP through Serve's fast path: the
// handshake (answered with the welcome, in the auto-joined room) and a
// join of a second room, answered. The client side is a few raw writes and
// reads, so allocs/op is nearly all the server's. Connections stay open
// (closed, unmeasured, every 500) so their tear-down is not counted. The
// rooms start with 150 members, past PresenceEventsMax as in `tether bench
// idle`: below it every join is a presence event to every member.
func BenchmarkConnectionSetUp(b *testing.B) {
	ts := newTestServer(b, Config{RateLimit: -1})
	addr := strings.TrimPrefix(ts.ws, "ws://")
	join := textFrame([]byte(`{"type":"join","id":"j","payload":{"room":"bench"}}`))
	buf := make([]byte, 64<<10)
	var open []net.Conn
	const members = 150
	closeAll := func() {
		b.StopTimer()
		for _, c := range open[members:] {
			c.Close()
		}
		open = open[:members]
		waitUntil(b, "the connections to close", func() bool { return ts.hub.Count() == members })
		b.StartTimer()
	}
	readTo := func(c net.Conn, want []byte) {
		var got []byte
		for !bytes.Contains(got, want) {
			n, err := c.Read(buf)
			if err != nil {
				b.Fatalf("read: %v; so far %q", err, got)
			}
			got = append(got, buf[:n]...)
		}
	}
	setUp := func(i int) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		open = append(open, c)
		fmt.Fprintf(c, "GET /ws?user=bench-%d HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
			"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", i, addr)
		readTo(c, []byte(`"welcome"`))
		c.Write(join)
		readTo(c, []byte(`"id":"j"`))
	}
	for i := 0; i < members; i++ {
		setUp(-1 - i)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		setUp(i)
		if len(open) == members+500 {
			closeAll()
		}
	}
	closeAll()
}
