package server

import (
	"bytes"
	"fmt"
	"net"
	"strings"
	"testing"
)

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
