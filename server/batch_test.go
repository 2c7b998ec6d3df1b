package server

import (
	"fmt"
	"testing"

	"github.com/tether-chat/tether/protocol"
)

// TestChatsOfOneReadArePublishedTogether: chat messages that arrive in one
// read go to the engine as one batch, in order, each acked with its own
// seq; a message of another kind between them ends the batch first (a
// chat after a leave is refused as before), and one that cannot be sent
// is answered in its place without holding up the others.
func TestChatsOfOneReadArePublishedTogether(t *testing.T) {
	eng := newCountingEngine()
	ts := newTestServer(t, Config{Engine: eng})
	alice, bob := connect(t, ts, "alice"), connect(t, ts, "bob")
	bob.send(protocol.TypeJoin, "j", inRoom("ops"))
	bob.expect(protocol.TypeAck, isAck("j"))
	eng.take()

	var burst []byte
	chat := func(id, room, text string) []byte {
		return textFrame(fmt.Appendf(nil, `{"type":"chat","id":%q,"payload":{"room":%q,"text":%q}}`, id, room, text))
	}
	for i := 1; i <= 5; i++ {
		burst = append(burst, chat(fmt.Sprint("c", i), "general", fmt.Sprint("m", i))...)
	}
	if _, err := bob.ws.UnderlyingConn().Write(burst); err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for i := 1; i <= 5; i++ {
		a := payloadOf[protocol.Ack](t, bob.expect(protocol.TypeAck, isAck(fmt.Sprint("c", i))))
		seqs = append(seqs, a.Seq)
	}
	for i := 1; i <= 5; i++ {
		if m := payloadOf[protocol.Chat](t, alice.expect(protocol.TypeChat, nil)); m.Text != fmt.Sprint("m", i) || m.Seq != seqs[i-1] {
			t.Fatalf("alice got %+v as message %d (acks gave seqs %v)", m, i, seqs)
		}
	}
	for i := 1; i < 5; i++ {
		if seqs[i] != seqs[i-1]+1 {
			t.Fatalf("seqs %v: not in order", seqs)
		}
	}
	if calls := eng.take(); calls != "PublishBatch(5)×1" {
		t.Fatalf("engine calls %q: five chats of one read are one batch", calls)
	}

	// chat, a room bob is not in, chat, leave ops, chat to ops: in order.
	burst = append(chat("d1", "general", "n1"), chat("d2", "nowhere", "lost")...)
	burst = append(burst, chat("d3", "ops", "n2")...)
	burst = append(burst, textFrame([]byte(`{"type":"leave","id":"l","payload":{"room":"ops"}}`))...)
	burst = append(burst, chat("d4", "ops", "after leaving")...)
	if _, err := bob.ws.UnderlyingConn().Write(burst); err != nil {
		t.Fatal(err)
	}
	bob.expect(protocol.TypeAck, isAck("d1"))
	if e := payloadOf[protocol.Error](t, bob.expect(protocol.TypeError, isAck("d2"))); e.Code != protocol.ErrNotMember {
		t.Fatalf("d2: %+v", e)
	}
	bob.expect(protocol.TypeAck, isAck("d3"))
	bob.expect(protocol.TypeAck, isAck("l"))
	if e := payloadOf[protocol.Error](t, bob.expect(protocol.TypeError, isAck("d4"))); e.Code != protocol.ErrNotMember {
		t.Fatalf("d4 after leaving: %+v", e)
	}
	if m := payloadOf[protocol.Chat](t, alice.expect(protocol.TypeChat, nil)); m.Text != "n1" {
		t.Fatalf("alice got %+v", m)
	}
	alice.expectNone(protocol.TypeChat, nil, quiet)
}
