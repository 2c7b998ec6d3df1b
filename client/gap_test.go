package client

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tether-chat/tether/internal/testnet"
	"github.com/tether-chat/tether/protocol"
	"github.com/tether-chat/tether/server"
)

// logLines collects a client's evidence log.
type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) logf(format string, args ...any) {
	l.mu.Lock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
	l.mu.Unlock()
}

func (l *logLines) has(prefix string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, s := range l.lines {
		if strings.HasPrefix(s, prefix) {
			n++
		}
	}
	return n
}

// TestGapIsNoticedAndRecovered: a message of a room and one of the inbox
// never reach the client (a proxy drops their frames; the connection stays
// up). The client notices the skipped sequence at the next message,
// resumes (4010) and gets the missed ones replayed: the application sees
// every message once, in order.
func TestGapIsNoticedAndRecovered(t *testing.T) {
	_, addr := startServer(t, server.Config{})
	proxy := testnet.NewWSProxy(t, addr)
	var log logLines
	o := fast("alice")
	o.Logf = log.logf
	alice, bob := dialT(t, proxy.Addr(), o), dialT(t, addr, fast("bob"))
	ctx := context.Background()
	proxy.DropFrames([]byte(`"text":"m4"`), 1)
	for i := 1; i <= 8; i++ {
		if _, err := bob.Send(ctx, "general", fmt.Sprint("m", i)); err != nil {
			t.Fatal(err)
		}
	}
	proxy.DropFrames([]byte(`"text":"d2"`), 1)
	for i := 1; i <= 4; i++ {
		if _, err := bob.Direct(ctx, "alice", fmt.Sprint("d", i)); err != nil {
			t.Fatal(err)
		}
	}
	var rooms, dms []string
	deadline := time.After(wait)
	for len(rooms) < 8 || len(dms) < 4 {
		select {
		case ev := <-alice.Events():
			switch ev.Type {
			case protocol.TypeChat:
				rooms = append(rooms, ev.Chat.Text)
			case protocol.TypeDirect:
				dms = append(dms, ev.Direct.Text)
			}
		case <-deadline:
			t.Fatalf("alice got %v and %v", rooms, dms)
		}
	}
	if fmt.Sprint(rooms) != "[m1 m2 m3 m4 m5 m6 m7 m8]" || fmt.Sprint(dms) != "[d1 d2 d3 d4]" {
		t.Fatalf("alice got %v and %v; want every message once, in order", rooms, dms)
	}
	if proxy.Dropped() != 2 || log.has("[gap]") != 2 {
		t.Fatalf("%d frames dropped, %d gaps noticed; want 2 and 2", proxy.Dropped(), log.has("[gap]"))
	}
	select {
	case ev := <-alice.Events():
		if ev.Type == protocol.TypeChat || ev.Type == protocol.TypeDirect {
			t.Fatalf("a message more: %+v %+v", ev.Chat, ev.Direct)
		}
	case <-time.After(200 * time.Millisecond):
	}
}

// TestFirstPrivateMessageWhileAway: a client that never received a private
// message resumes its inbox from the position its welcome gave, so a
// message sent while it is cut off is not lost.
func TestFirstPrivateMessageWhileAway(t *testing.T) {
	_, addr := startServer(t, server.Config{})
	proxy := testnet.NewProxy(t, addr)
	alice, bob := dialT(t, proxy.Addr(), fast("alice")), dialT(t, addr, fast("bob"))
	ctx := context.Background()
	proxy.Freeze() // alice is cut off; the server still counts her present
	if _, err := bob.Direct(ctx, "alice", "first"); err != nil {
		t.Fatal(err)
	}
	proxy.Cut()
	proxy.Thaw()
	if d := next(t, alice, protocol.TypeDirect).Direct; d.Text != "first" {
		t.Fatalf("alice got %+v", d)
	}
	if r := next(t, alice, protocol.TypeRecovered).Recovered; !r.Inbox || !r.Recovered || r.Count != 1 {
		t.Fatalf("recovered = %+v", r)
	}
}

// TestFirstMessageOfAQuietRoomWhileAway: a room that had never published
// when the client joined is at ("", 0); its first message, sent while the
// client is cut off, comes with the resume.
func TestFirstMessageOfAQuietRoomWhileAway(t *testing.T) {
	_, addr := startServer(t, server.Config{})
	proxy := testnet.NewProxy(t, addr)
	alice, bob := dialT(t, proxy.Addr(), fast("alice")), dialT(t, addr, fast("bob"))
	ctx := context.Background()
	for _, c := range []*Client{alice, bob} {
		if err := c.Join(ctx, "quiet"); err != nil {
			t.Fatal(err)
		}
	}
	proxy.Freeze()
	if _, err := bob.Send(ctx, "quiet", "first"); err != nil {
		t.Fatal(err)
	}
	proxy.Cut()
	proxy.Thaw()
	if m := next(t, alice, protocol.TypeChat).Chat; m.Text != "first" || m.Seq != 1 {
		t.Fatalf("alice got %+v", m)
	}
	expectRecovered(t, alice, "quiet", 1)
}

// TestRoomsComeBackWhenTheSessionExpired: a client away for longer than
// the resume window comes back in a new session, but in its rooms (it asks
// for them as it connects) and with what its rooms published meanwhile,
// which their history still holds.
func TestRoomsComeBackWhenTheSessionExpired(t *testing.T) {
	_, addr := startServer(t, server.Config{ResumeWindow: 300 * time.Millisecond, PresenceGrace: 100 * time.Millisecond})
	proxy := testnet.NewProxy(t, addr)
	alice, bob := dialT(t, proxy.Addr(), fast("alice")), dialT(t, addr, fast("bob"))
	ctx := context.Background()
	for _, c := range []*Client{alice, bob} {
		if err := c.Join(ctx, "ops"); err != nil {
			t.Fatal(err)
		}
	}
	first := next(t, alice, protocol.TypeWelcome).Welcome
	proxy.SetTarget("127.0.0.1:1") // nothing listens there: alice's retries fail
	proxy.Cut()
	if _, err := bob.Send(ctx, "ops", "while away"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1200 * time.Millisecond) // the resume window and more
	proxy.SetTarget(addr)
	w := next(t, alice, protocol.TypeWelcome).Welcome
	if w.Resumed || w.Session == first.Session || !strings.Contains(strings.Join(w.Rooms, ","), "ops") {
		t.Fatalf("welcome after the window = %+v; want a new session in ops", w)
	}
	if m := next(t, alice, protocol.TypeChat).Chat; m.Text != "while away" {
		t.Fatalf("alice got %+v", m)
	}
	expectRecovered(t, alice, "ops", 1)
}

// expectRecovered waits for c's recovered event of room and checks that
// it replayed count messages.
func expectRecovered(t *testing.T, c *Client, room string, count int) {
	t.Helper()
	for {
		if r := next(t, c, protocol.TypeRecovered).Recovered; r.Room == room {
			if !r.Recovered || r.Count != count {
				t.Fatalf("recovered = %+v", r)
			}
			return
		}
	}
}
