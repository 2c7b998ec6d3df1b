package server

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"

	"github.com/tether-chat/tether/engine"
	"github.com/tether-chat/tether/protocol"
)

// BenchmarkDeliverToRoom measures the fan-out path without sockets: one
// publication encoded once and enqueued to every member of a room.
func BenchmarkDeliverToRoom(b *testing.B) {
	for _, n := range []int{100, 1000, 10000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			srv, err := New(Config{Logger: slog.New(slog.DiscardHandler), SendQueueMessages: 1 << 30, SendQueueBytes: 1 << 30})
			if err != nil {
				b.Fatal(err)
			}
			defer srv.eng.Close()
			r := &room{index: make(map[*Conn]int), users: make(map[string]int)}
			var conns []*Conn
			for i := 0; i < n; i++ {
				c := &Conn{id: uint64(i + 1), srv: srv, writing: true} // corked: no writer, measures the enqueue
				r.index[c] = i
				r.conns = append(r.conns, c)
				conns = append(conns, c)
			}
			srv.hub.rooms["bench"] = r
			p := &engine.Publication{Stream: engine.RoomStream("bench"), Type: protocol.TypeChat, Room: "bench",
				From: "alice", Text: strings.Repeat("x", 100), Seq: 1, Epoch: "e", TS: 1}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				srv.hub.Deliver(p)
				if i%64 == 63 {
					b.StopTimer()
					for _, c := range conns {
						c.queue = c.queue[:0]
						c.queued = 0
					}
					b.StartTimer()
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/delivery")
		})
	}
}

// BenchmarkWriteBatch compares one write() per frame with the writer's
// coalescing of everything queued into one write(), over real loopback TCP.
func BenchmarkWriteBatch(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			io.Copy(io.Discard, c)
		}
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	srv, _ := New(Config{Logger: slog.New(slog.DiscardHandler)})
	defer srv.eng.Close()
	c := &Conn{srv: srv, raw: &rawConn{Conn: conn, timeout: srv.cfg.WriteTimeout}}
	frame := protocol.Encode(protocol.TypeChat, "", protocol.Chat{Room: "r", From: "a", Text: strings.Repeat("x", 100)})
	for _, batch := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("frames=%d", batch), func(b *testing.B) {
			frames := make([]outFrame, batch)
			for i := range frames {
				frames[i] = outFrame{op: 1, data: frame}
			}
			buf := make([]byte, 0, 4096)
			b.ReportAllocs()
			for b.Loop() {
				if err := c.writeBatch(&buf, frames); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/frame")
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
		waitUntil(b, "the connections to close", func() bool { return ts.hub.count() == members })
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
