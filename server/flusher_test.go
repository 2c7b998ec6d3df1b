package server

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tether-chat/tether/engine"
	"github.com/tether-chat/tether/protocol"
)

// TestWriteDelayCoalescesBusyRooms: with a write delay, a burst of room
// messages reaches each member in fewer writes than messages, complete and
// in order; a message into a quiet room is not delayed; and a shutdown
// right after the burst still delivers everything before the 1012 close.
func TestWriteDelayCoalescesBusyRooms(t *testing.T) {
	const delay = 200 * time.Millisecond
	ts := newTestServer(t, Config{AutoJoin: "-", WriteDelay: delay})
	sender := connect(t, ts, "sender")
	members := []*client{connect(t, ts, "m1"), connect(t, ts, "m2"), connect(t, ts, "m3")}
	for _, c := range append([]*client{sender}, members...) {
		c.send(protocol.TypeJoin, "j", inRoom("busy"))
		c.expect(protocol.TypeAck, isAck("j"))
	}
	for _, m := range members {
		m.expect(protocol.TypeMembers, nil)
	}

	// Quiet room: once nothing was written for longer than the delay, a
	// message goes out at once. (The joins' presence events may have been
	// delayed themselves, and written up to one delay later.)
	time.Sleep(3 * delay)
	before := ts.Stats()
	sender.send(protocol.TypeChat, "first", map[string]any{"room": "busy", "text": "first"})
	sender.expect(protocol.TypeAck, isAck("first"))
	for _, m := range members {
		m.expect(protocol.TypeChat, nil)
	}
	if d := ts.Stats().Delayed - before.Delayed; d != 0 {
		t.Fatalf("%d deliveries into a quiet room were delayed", d)
	}

	// A burst: every member gets it all, in order, in fewer writes.
	const n = 20
	before = ts.Stats()
	for i := range n {
		sender.send(protocol.TypeChat, fmt.Sprint("b", i), map[string]any{"room": "busy", "text": fmt.Sprint("burst ", i)})
	}
	for i := range n {
		sender.expect(protocol.TypeAck, isAck(fmt.Sprint("b", i)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := ts.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	for _, m := range members {
		for i := range n {
			got := payloadOf[protocol.Chat](t, m.expect(protocol.TypeChat, nil))
			if want := fmt.Sprint("burst ", i); got.Text != want {
				t.Fatalf("%s: got %q, want %q", m.user, got.Text, want)
			}
		}
		if code, _ := m.expectClose(); code != int(protocol.CloseRestart) {
			t.Fatalf("%s: close %d, want 1012 after the burst", m.user, code)
		}
	}
	after := ts.Stats()
	delivered, writes := after.Delivered-before.Delivered, after.Writes-before.Writes
	if after.Delayed == before.Delayed || delivered < (1+int64(len(members)))*n || writes*3/2 > delivered {
		t.Fatalf("burst: %d delayed, %d frames delivered in %d writes; want delays and well under one write per frame",
			after.Delayed-before.Delayed, delivered, writes)
	}
	t.Logf("burst: %d frames in %d writes, %d deliveries delayed", delivered, writes, after.Delayed-before.Delayed)
}

// TestNoWriteDelay: a negative WriteDelay writes every delivery at once.
func TestNoWriteDelay(t *testing.T) {
	ts := newTestServer(t, Config{AutoJoin: "-", WriteDelay: -1})
	if ts.flusher != nil {
		t.Fatal("a flusher runs with WriteDelay -1")
	}
	sender, member := connect(t, ts, "sender"), connect(t, ts, "member")
	for _, c := range []*client{sender, member} {
		c.send(protocol.TypeJoin, "j", inRoom("busy"))
		c.expect(protocol.TypeAck, isAck("j"))
	}
	const n = 20
	for i := range n {
		sender.send(protocol.TypeChat, fmt.Sprint("b", i), map[string]any{"room": "busy", "text": fmt.Sprint("burst ", i)})
	}
	for i := range n {
		if got := payloadOf[protocol.Chat](t, member.expect(protocol.TypeChat, nil)); got.Text != fmt.Sprint("burst ", i) {
			t.Fatalf("got %q, want burst %d", got.Text, i)
		}
	}
	if d := ts.Stats().Delayed; d != 0 {
		t.Fatalf("%d deliveries delayed", d)
	}
}

// TestWriteDelayBurstDoesNotOverflowTheQueue: a burst faster than the
// queue limit per delay is written as it grows (parkedMax frames at a
// time), not held until the delay passes: nobody is closed as a slow
// consumer and everything arrives in order. (Before, a parked connection
// gathered the whole burst and overflowed its 1,024-frame queue.)
func TestWriteDelayBurstDoesNotOverflowTheQueue(t *testing.T) {
	ts := newTestServer(t, Config{AutoJoin: "-", WriteDelay: 500 * time.Millisecond, RateLimit: -1})
	sender, member := connect(t, ts, "sender"), connect(t, ts, "member")
	for _, c := range []*client{sender, member} {
		c.send(protocol.TypeJoin, "j", inRoom("burst"))
		c.expect(protocol.TypeAck, isAck("j"))
	}
	member.expect(protocol.TypeMembers, nil)
	const n = 3000 // about three times the queue limit, sent without waiting
	for i := range n {
		sender.sendRaw(websocket.TextMessage, fmt.Appendf(nil, `{"type":"chat","payload":{"room":"burst","text":"%d"}}`, i))
	}
	for _, c := range []*client{member, sender} {
		for i := range n {
			if got := payloadOf[protocol.Chat](t, c.expect(protocol.TypeChat, nil)); got.Text != fmt.Sprint(i) {
				t.Fatalf("%s: got %q, want %d", c.user, got.Text, i)
			}
		}
	}
	if s := ts.Stats(); s.SlowConsumers != 0 || s.Delayed == 0 {
		t.Fatalf("stats %+v: want delays and no slow consumer", s)
	}
}

// TestBigRoomCountsShareAWrite: the periodic count events of big rooms are
// always parked for the write delay, so a member of two big rooms gets both
// counts of one flush in one write, even on a quiet connection.
func TestBigRoomCountsShareAWrite(t *testing.T) {
	const delay = 100 * time.Millisecond
	ts := newTestServer(t, Config{AutoJoin: "-", WriteDelay: delay})
	var members []*client
	for i := range 4 {
		c := connect(t, ts, fmt.Sprint("m", i))
		for _, room := range []string{"a", "b"} {
			c.send(protocol.TypeJoin, "j"+room, inRoom(room))
			c.expect(protocol.TypeAck, isAck("j"+room))
		}
		members = append(members, c)
	}
	time.Sleep(3 * delay)       // every connection quiet: a chat would go out at once
	for _, m := range members { // the joins' presence events
		for _, more := m.drained(); more; _, more = m.drained() {
		}
	}
	before := ts.Stats()
	ctx := context.Background()
	for _, room := range []string{"a", "b"} { // as the upkeep's flush publishes them
		count := &engine.Publication{Stream: engine.RoomStream(room), Type: protocol.TypePresence, Room: room,
			Action: protocol.PresenceCount, Count: 4, TS: time.Now().UnixMilli()}
		if _, err := ts.eng.Publish(ctx, count, engine.PublishOptions{Ephemeral: true}); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range members {
		for _, room := range []string{"a", "b"} {
			p := payloadOf[protocol.Presence](t, m.expect(protocol.TypePresence, func(e protocol.Envelope) bool {
				return payloadOf[protocol.Presence](t, e).Action == protocol.PresenceCount
			}))
			if p.Room != room || p.Count != 4 {
				t.Fatalf("%s: count event %+v, want room %s's", m.user, p, room)
			}
		}
	}
	after := ts.Stats()
	delivered, writes := after.Delivered-before.Delivered, after.Writes-before.Writes
	if delivered != 2*int64(len(members)) || writes != int64(len(members)) {
		t.Fatalf("%d count frames in %d writes; want %d in %d (both rooms' counts in one write per member)",
			delivered, writes, 2*len(members), len(members))
	}
}
