package server

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/tether-chat/tether/engine/redis"
	"github.com/tether-chat/tether/internal/testredis"
	"github.com/tether-chat/tether/protocol"
)

// TestStoppedNodesPresenceExpiresLikeACrashedOnes: two nodes share Redis.
// When node A stops gracefully, its users' presence is not withdrawn at
// once: alice, who resumes on node B within the presence TTL, never
// appears to leave or rejoin (no flap for bob, no `left`), while carol,
// who does not come back, leaves when A's holds expire, announced by B.
func TestStoppedNodesPresenceExpiresLikeACrashedOnes(t *testing.T) {
	rs := testredis.Start(t)
	prefix := fmt.Sprintf("stop%d:", redisPrefixes.Add(1))
	// Long enough that a node's renewals (every third of it) are not
	// missed on a machine loaded by the whole suite: a missed renewal gets
	// the node's holds swept and its users announced as leaving.
	const ttl = 2 * time.Second
	node := func(id string) *testServer {
		eng, err := redis.New(redis.Config{URL: rs.URL, Prefix: prefix, NodeID: id, PresenceTTL: ttl,
			Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		return newTestServer(t, Config{Engine: eng, NodeID: id})
	}
	a, b := node("a"), node("b")
	bob := connect(t, b, "bob")
	alice, carol := connect(t, a, "alice"), connect(t, a, "carol")
	isJoin := func(user string) func(protocol.Envelope) bool {
		return func(e protocol.Envelope) bool {
			p := payloadOf[protocol.Presence](t, e)
			return p.User == user && p.Action == protocol.PresenceJoin
		}
	}
	isLeave := func(user string) func(protocol.Envelope) bool {
		return func(e protocol.Envelope) bool {
			p := payloadOf[protocol.Presence](t, e)
			return p.User == user && p.Action == protocol.PresenceLeave
		}
	}
	bob.expect(protocol.TypePresence, isJoin("alice"))
	bob.expect(protocol.TypePresence, isJoin("carol"))
	// A private conversation makes bob alice's partner: a withdrawal would
	// send him `left`.
	bob.send(protocol.TypeDirect, "d", map[string]any{"to": "alice", "text": "hi"})
	bob.expect(protocol.TypeAck, isAck("d"))
	alice.expect(protocol.TypeDirect, nil)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*client{alice, carol} {
		if code, _ := c.expectClose(); code != int(protocol.CloseRestart) {
			t.Fatalf("%s: close %d, want 1012", c.user, code)
		}
	}
	// alice resumes on B at once, well within the TTL: neither her leave
	// nor her rejoin is announced, and bob gets no `left`. (Checked after
	// the resume: A's holds expire one TTL after its last refresh, so
	// watching for silence first would race the expiry.)
	again := dial(t, resumeURL(b.ws, "alice", alice.welcome.Session, nil))
	if w := again.expectWelcome(); !w.Resumed {
		t.Fatal("alice's session was not saved by the stopping node")
	}
	bob.expectNone(protocol.TypePresence, func(e protocol.Envelope) bool {
		return isLeave("alice")(e) || isJoin("alice")(e)
	}, quiet)
	bob.expectNone(protocol.TypeLeft, nil, 0)

	// Past the TTL, B sweeps A's holds: carol, who did not come back, leaves;
	// alice, held by B now, does not.
	leave := payloadOf[protocol.Presence](t, bob.expect(protocol.TypePresence, isLeave("carol")))
	if leave.Count != 2 {
		t.Fatalf("carol's leave = %+v, want 2 users left (bob, alice)", leave)
	}
	bob.expectNone(protocol.TypePresence, isLeave("alice"), 2*ttl)
	bob.expectNone(protocol.TypeLeft, nil, 0)

	// The session A saved when it stopped was current: it named bob as
	// alice's partner (noted by a delivery, never saved before the stop),
	// so when alice leaves for good on B, bob is told.
	again.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, "bye"), time.Now().Add(time.Second))
	if left := payloadOf[protocol.Left](t, bob.expect(protocol.TypeLeft, nil)); left.User != "alice" {
		t.Fatalf("left = %+v, want alice", left)
	}
}
