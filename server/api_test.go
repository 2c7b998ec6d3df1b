package server

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tether-chat/tether/engine"
	"github.com/tether-chat/tether/protocol"
)

const apiKeyForTests = "the-key"

func apiGet(t *testing.T, ts *testServer, path string, v any) int {
	t.Helper()
	return getAs(t, ts, path, apiKeyForTests, v)
}

// getAs GETs path with key as the bearer token and decodes the JSON
// answer (a result, or an error's {code, message}) into v if v is not nil.
func getAs(t *testing.T, ts *testServer, path, key string, v any) int {
	t.Helper()
	code, body := get(t, ts.url+path, http.Header{"Authorization": {"Bearer " + key}})
	if v != nil {
		if err := json.Unmarshal([]byte(body), v); err != nil {
			t.Fatalf("GET %s: %d %q: %v", path, code, body, err)
		}
	}
	return code
}

func apiPost(t *testing.T, ts *testServer, path, body string, v any) int {
	t.Helper()
	code, out := post(t, ts.url+path, apiKeyForTests, body)
	if v != nil {
		if err := json.Unmarshal([]byte(out), v); err != nil {
			t.Fatalf("POST %s: %d %q: %v", path, code, out, err)
		}
	}
	return code
}

// TestServerAPI: every read and write of the server API on one node, and
// errors in the protocol's shape.
func TestServerAPI(t *testing.T) {
	bothEngines(t, func(t *testing.T, eng engineCase) {
		ts := newTestServer(t, eng.with(Config{APIKey: apiKeyForTests}))
		alice, bob := connect(t, ts, "alice"), connect(t, ts, "bob")
		for _, c := range []*client{alice, bob} {
			c.send(protocol.TypeJoin, "j", inRoom("ops"))
			c.expect(protocol.TypeAck, isAck("j"))
		}

		var e protocol.Error
		if code := apiPost(t, ts, "/api/publish", `{"room":"bad room","text":"x"}`, &e); code != 400 || e.Code != protocol.ErrBadRoom || e.Message == "" {
			t.Fatalf("a bad room: %d %+v", code, e)
		}
		if code, body := post(t, ts.url+"/api/publish", "", `{}`); code != 401 || !strings.Contains(body, `"code":"unauthorized"`) {
			t.Fatalf("no key: %d %s", code, body)
		}

		var br struct{ Results []publishResponse }
		if code := apiPost(t, ts, "/api/broadcast", `{"rooms":["ops","general"],"text":"maintenance at 10","id":"b1"}`, &br); code != 200 || len(br.Results) != 2 {
			t.Fatalf("broadcast: %d %+v", code, br)
		}
		for _, r := range br.Results {
			if r.Seq == 0 || r.Error != nil {
				t.Fatalf("broadcast result %+v", r)
			}
		}
		for _, room := range []string{"ops", "general"} {
			m := payloadOf[protocol.Chat](t, alice.expect(protocol.TypeChat, func(e protocol.Envelope) bool { return payloadOf[protocol.Chat](t, e).Room == room }))
			if m.Text != "maintenance at 10" || m.From != "system" {
				t.Fatalf("alice got %+v", m)
			}
		}
		// The same id again: each room's message is published once.
		apiPost(t, ts, "/api/broadcast", `{"rooms":["ops","general"],"text":"maintenance at 10","id":"b1"}`, &br)
		alice.expectNone(protocol.TypeChat, nil, quiet)

		var mem protocol.Members
		if code := apiGet(t, ts, "/api/presence?room=ops", &mem); code != 200 || mem.Count != 2 || fmt.Sprint(mem.Users) != "[alice bob]" {
			t.Fatalf("presence: %d %+v", code, mem)
		}
		var online struct {
			Online map[string]bool
			Count  int
		}
		if apiGet(t, ts, "/api/online?user=alice&user=carol", &online); !online.Online["alice"] || online.Online["carol"] || online.Count != 2 {
			t.Fatalf("online: %+v", online)
		}
		var counts struct{ Rooms map[string]int }
		if apiGet(t, ts, "/api/counts?room=ops&room=general&room=empty", &counts); counts.Rooms["ops"] != 2 || counts.Rooms["general"] != 2 || counts.Rooms["empty"] != 0 {
			t.Fatalf("counts: %+v", counts)
		}
		var page protocol.HistoryPage
		if apiGet(t, ts, "/api/history?room=ops&limit=10", &page); page.Top != 1 || len(page.Messages) != 1 || page.Epoch == "" || page.Messages[0].Text != "maintenance at 10" {
			t.Fatalf("history: %+v", page)
		}
		var rooms struct{ Rooms []engine.SetSize }
		if apiGet(t, ts, "/api/rooms", &rooms); fmt.Sprint(rooms.Rooms) != "[{general 2} {ops 2}]" {
			t.Fatalf("rooms: %+v", rooms)
		}
		var info Info
		if apiGet(t, ts, "/api/info", &info); info.Node.Connections != 2 || info.Node.Users != 2 || info.Node.Rooms != 2 || !info.Node.Ready || info.Online != 2 {
			t.Fatalf("info: %+v", info)
		}

		// Unsubscribe: bob is out of ops, and told.
		var res struct {
			User   string
			Online bool
		}
		if code := apiPost(t, ts, "/api/unsubscribe", `{"user":"bob","room":"ops"}`, &res); code != 200 || !res.Online {
			t.Fatalf("unsubscribe: %d %+v", code, res)
		}
		if u := payloadOf[protocol.Unsubscribed](t, bob.expect(protocol.TypeUnsubscribed, nil)); u.Room != "ops" {
			t.Fatalf("bob told %+v", u)
		}
		waitUntil(t, "bob out of ops", func() bool {
			apiGet(t, ts, "/api/presence?room=ops", &mem)
			return mem.Count == 1
		})
		bob.send(protocol.TypeChat, "c", map[string]any{"room": "ops", "text": "still here?"})
		if e := payloadOf[protocol.Error](t, bob.expect(protocol.TypeError, nil)); e.Code != protocol.ErrNotMember {
			t.Fatalf("bob after the unsubscribe: %+v", e)
		}

		// Disconnect: with a terminal code the session ends and the client
		// does not come back.
		if code := apiPost(t, ts, "/api/disconnect", `{"user":"alice","code":4403,"reason":"account suspended"}`, &res); code != 200 || !res.Online {
			t.Fatalf("disconnect: %d %+v", code, res)
		}
		if code, reason := alice.expectClose(); code != 4403 || reason != "account suspended" {
			t.Fatalf("alice closed with %d %q", code, reason)
		}
		if code := apiPost(t, ts, "/api/disconnect", `{"user":"alice","code":1006}`, &e); code != 400 {
			t.Fatalf("a code a server cannot send: %d", code)
		}
		if apiPost(t, ts, "/api/disconnect", `{"user":"nobody"}`, &res); res.Online {
			t.Fatalf("an offline user: %+v", res)
		}
	})
}

// TestServerAPIReachesEveryNode: a disconnect or an unsubscribe asked of
// one node reaches the user's connections on another.
func TestServerAPIReachesEveryNode(t *testing.T) {
	node := clusterNodes(t, "api")
	cfg := Config{APIKey: apiKeyForTests}
	a, b := node("a", cfg), node("b", cfg)
	carol := connect(t, b, "carol")
	dave := connect(t, b, "dave")
	var info Info
	if apiGet(t, a, "/api/info", &info); len(info.Instances) != 2 || info.Online != 2 {
		t.Fatalf("info from a: %+v", info)
	}
	var res struct{ Online bool }
	apiPost(t, a, "/api/unsubscribe", `{"user":"carol","room":"general"}`, &res)
	if !res.Online {
		t.Fatal("carol is online on b")
	}
	carol.expect(protocol.TypeUnsubscribed, nil)
	apiPost(t, a, "/api/disconnect", `{"user":"dave","code":4000,"reason":"come back"}`, &res)
	if code, _ := dave.expectClose(); code != 4000 {
		t.Fatalf("dave closed with %d", code)
	}
	time.Sleep(50 * time.Millisecond)
	carol.roundTrip("carol-still-connected")
}
