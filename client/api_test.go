package client

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/tether-chat/tether/protocol"
	"github.com/tether-chat/tether/server"
)

// TestServerAPIClient: the backend's client of the server API, against a
// real server with a connected SDK client.
func TestServerAPIClient(t *testing.T) {
	_, addr := startServer(t, server.Config{APIKey: "k"})
	alice := dialT(t, addr, fast("alice"))
	next(t, alice, protocol.TypeWelcome)
	api := NewAPI("http://"+addr, "k")
	ctx := context.Background()

	res, err := api.Publish(ctx, Publication{Room: "general", Text: "from the backend", From: "ci", ID: "p1"})
	if err != nil || res.Seq != 1 {
		t.Fatalf("Publish = %+v, %v", res, err)
	}
	if m := next(t, alice, protocol.TypeChat).Chat; m.From != "ci" || m.Text != "from the backend" {
		t.Fatalf("alice got %+v", m)
	}
	if again, err := api.Publish(ctx, Publication{Room: "general", Text: "from the backend", From: "ci", ID: "p1"}); err != nil || again.Seq != 1 {
		t.Fatalf("a retried publish = %+v, %v; want the same seq", again, err)
	}
	results, err := api.Broadcast(ctx, []string{"general", "ops"}, Publication{Text: "to both"})
	if err != nil || len(results) != 2 || results[0].Seq != 2 || results[1].Seq != 1 {
		t.Fatalf("Broadcast = %+v, %v", results, err)
	}
	if m, err := api.Presence(ctx, "general", 0); err != nil || m.Count != 1 || m.Users[0] != "alice" {
		t.Fatalf("Presence = %+v, %v", m, err)
	}
	if on, n, err := api.Online(ctx, "alice", "zed"); err != nil || !on["alice"] || on["zed"] || n != 1 {
		t.Fatalf("Online = %v %d %v", on, n, err)
	}
	if c, err := api.Counts(ctx, "general", "ops"); err != nil || c["general"] != 1 || c["ops"] != 0 {
		t.Fatalf("Counts = %v, %v", c, err)
	}
	if p, err := api.History(ctx, "general", 0, 0, 10); err != nil || p.Top != 2 || len(p.Messages) != 2 {
		t.Fatalf("History = %+v, %v", p, err)
	}
	if r, err := api.Rooms(ctx, 10); err != nil || len(r) != 1 || r[0].Room != "general" {
		t.Fatalf("Rooms = %+v, %v", r, err)
	}
	if in, err := api.Info(ctx); err != nil || in.Node.Connections != 1 || !in.Node.Ready {
		t.Fatalf("Info = %+v, %v", in, err)
	}
	if on, err := api.Unsubscribe(ctx, "alice", "general"); err != nil || !on {
		t.Fatalf("Unsubscribe = %v, %v", on, err)
	}
	if u := next(t, alice, protocol.TypeUnsubscribed).Unsubscribed; u.Room != "general" {
		t.Fatalf("alice told %+v", u)
	}
	_, err = api.Publish(ctx, Publication{Room: "no good", Text: "x"})
	var pe *protocol.Error
	if !errors.As(err, &pe) || pe.Code != protocol.ErrBadRoom {
		t.Fatalf("a bad room: %v", err)
	}
	if _, err := NewAPI("http://"+addr, "wrong").Info(ctx); err == nil || !strings.Contains(err.Error(), "API key") {
		t.Fatalf("a wrong key: %v", err)
	}
	if on, err := api.Disconnect(ctx, "alice", protocol.CloseForbidden, "bye"); err != nil || !on {
		t.Fatalf("Disconnect = %v, %v", on, err)
	}
	for {
		if ev := next(t, alice, "state"); ev.State.State == StateClosed {
			break
		}
	}
	if lc := alice.Info().LastClose; lc == nil || lc.Code != protocol.CloseForbidden || lc.Reason != "bye" {
		t.Fatalf("alice's last close = %+v", lc)
	}
}
