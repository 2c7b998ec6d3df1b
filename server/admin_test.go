package server

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/tether-chat/tether/protocol"
)

const adminSecretForTests = "the-admin-secret"

// TestAdminIsOffUnlessConfigured: without an admin secret or an API key
// neither the page nor its data is served.
func TestAdminIsOffUnlessConfigured(t *testing.T) {
	ts := newTestServer(t, Config{})
	for _, path := range []string{"/admin/", "/admin/admin.js", "/admin/api/stats", "/admin/api/overview"} {
		if code, body := get(t, ts.url+path, nil); code != http.StatusNotFound || !strings.Contains(body, `"code":"disabled"`) {
			t.Fatalf("GET %s: %d %s", path, code, body)
		}
	}
	if code, _ := post(t, ts.url+"/admin/api/publish", "", `{"room":"r","text":"x"}`); code != http.StatusNotFound {
		t.Fatalf("publish: %d", code)
	}
}

// TestAdminAuthorization: the admin secret and the API key open the
// admin data; nothing else does, and the admin secret does not open the
// server API.
func TestAdminAuthorization(t *testing.T) {
	ts := newTestServer(t, Config{AdminSecret: adminSecretForTests, APIKey: apiKeyForTests})
	code, body := get(t, ts.url+"/admin/", nil)
	if code != http.StatusOK || !strings.Contains(body, "Tether admin") {
		t.Fatalf("the page: %d", code)
	}
	resp, err := http.Get(ts.url + "/admin/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "frame-ancestors 'none'") {
		t.Fatalf("CSP %q", csp)
	}
	if resp.Header.Get("Cache-Control") != "no-store" || resp.Header.Get("X-Frame-Options") != "DENY" {
		t.Fatalf("headers %v", resp.Header)
	}
	for _, c := range []struct {
		secret string
		want   int
	}{
		{"", 401}, {"wrong", 401}, {adminSecretForTests + "x", 401},
		{adminSecretForTests, 200}, {apiKeyForTests, 200},
	} {
		for _, path := range []string{"/admin/api/stats", "/admin/api/overview"} {
			if got := getAs(t, ts, path, c.secret, nil); got != c.want {
				t.Errorf("GET %s with %q: %d, want %d", path, c.secret, got, c.want)
			}
		}
		if got, _ := post(t, ts.url+"/admin/api/publish", c.secret, `{"room":"r","text":"x"}`); got != c.want {
			t.Errorf("publish with %q: %d, want %d", c.secret, got, c.want)
		}
	}
	if code, _ := get(t, ts.url+"/api/info", http.Header{"Authorization": {"Bearer " + adminSecretForTests}}); code != 401 {
		t.Fatalf("the admin secret opened the server API: %d", code)
	}

	// An admin secret alone (no API key) opens the page too.
	only := newTestServer(t, Config{AdminSecret: adminSecretForTests})
	if got := getAs(t, only, "/admin/api/stats", adminSecretForTests, nil); got != 200 {
		t.Fatalf("admin secret alone: %d", got)
	}
	if got := getAs(t, only, "/admin/api/stats", "", nil); got != 401 {
		t.Fatalf("admin secret alone, none given: %d", got)
	}
}

// TestAdminData: the overview lists the cluster's users and busiest rooms,
// the stats count what the node did (the same figures as /metrics), and
// the forms publish and disconnect.
func TestAdminData(t *testing.T) {
	bothEngines(t, func(t *testing.T, eng engineCase) {
		ts := newTestServer(t, eng.with(Config{AdminSecret: adminSecretForTests}))
		alice, bob := connect(t, ts, "alice"), connect(t, ts, "bob")
		for _, c := range []*client{alice, bob} {
			c.send(protocol.TypeJoin, "j", inRoom("ops"))
			c.expect(protocol.TypeAck, isAck("j"))
		}
		alice.send(protocol.TypeJoin, "j2", inRoom("quiet"))
		alice.expect(protocol.TypeAck, isAck("j2"))

		var o AdminOverview
		waitUntil(t, "the overview", func() bool {
			getAs(t, ts, "/admin/api/overview", adminSecretForTests, &o)
			return fmt.Sprint(o.Users) == "[alice bob]" && fmt.Sprint(o.Rooms) == "[{general 2} {ops 2} {quiet 1}]"
		})
		if o.Node.Connections != 2 || o.Online != 2 || o.UsersTruncated || len(o.Errors) != 0 {
			t.Fatalf("overview %+v", o)
		}

		var before, after AdminStats
		getAs(t, ts, "/admin/api/stats", adminSecretForTests, &before)
		alice.send(protocol.TypeChat, "m1", map[string]any{"room": "ops", "text": "hello"})
		alice.expect(protocol.TypeAck, isAck("m1"))
		bob.expect(protocol.TypeChat, nil)
		waitUntil(t, "the stats", func() bool {
			getAs(t, ts, "/admin/api/stats", adminSecretForTests, &after)
			return after.Delivered >= before.Delivered+2 && after.Latency.Count >= before.Latency.Count+1
		})
		if after.Connections != 2 || after.Received < before.Received+1 || after.Published < before.Published+1 || after.Time < before.Time {
			t.Fatalf("stats before %+v after %+v", before, after)
		}
		if n := len(after.Latency.Buckets); n == 0 || after.Latency.Buckets[n-1].Count > after.Latency.Count {
			t.Fatalf("latency %+v", after.Latency)
		}
		// The same figures as /metrics.
		_, metrics := get(t, ts.url+"/metrics", nil)
		if want := fmt.Sprintf("tether_publish_to_deliver_seconds_count %d\n", after.Latency.Count); !strings.Contains(metrics, want) {
			t.Fatalf("/metrics lacks %q", want)
		}

		if code, body := post(t, ts.url+"/admin/api/publish", adminSecretForTests, `{"room":"ops","text":"from the admin"}`); code != 200 {
			t.Fatalf("publish: %d %s", code, body)
		}
		if m := payloadOf[protocol.Chat](t, bob.expect(protocol.TypeChat, nil)); m.Text != "from the admin" || m.From != "system" {
			t.Fatalf("bob got %+v", m)
		}
		if code, body := post(t, ts.url+"/admin/api/disconnect", adminSecretForTests, `{"user":"bob","code":4001,"reason":"bye"}`); code != 200 || !strings.Contains(body, `"online":true`) {
			t.Fatalf("disconnect: %d %s", code, body)
		}
		if code, reason := bob.expectClose(); code != 4001 || reason != "bye" {
			t.Fatalf("bob closed with %d %q", code, reason)
		}
	})
}

// TestAdminSeesTheCluster: opened on one node of two sharing Redis, the
// admin page lists both nodes, the users and rooms of both, and its
// disconnect reaches a user on the other node.
func TestAdminSeesTheCluster(t *testing.T) {
	node := clusterNodes(t, "admin")
	cfg := Config{AdminSecret: adminSecretForTests}
	a, b := node("a", cfg), node("b", cfg)
	connect(t, a, "alice")
	bob := connect(t, b, "bob")
	bob.send(protocol.TypeJoin, "j", inRoom("ops"))
	bob.expect(protocol.TypeAck, isAck("j"))

	var o AdminOverview
	waitUntil(t, "both nodes' users and rooms", func() bool {
		getAs(t, a, "/admin/api/overview", adminSecretForTests, &o)
		return len(o.Instances) == 2 && fmt.Sprint(o.Users) == "[alice bob]" && fmt.Sprint(o.Rooms) == "[{general 2} {ops 1}]"
	})
	for _, inst := range o.Instances {
		if !strings.HasPrefix(inst, "a.") && !strings.HasPrefix(inst, "b.") {
			t.Fatalf("instances %v: each is a node id and a suffix", o.Instances)
		}
	}
	if o.Node.ID != "a" || o.Node.Connections != 1 || o.Online != 2 {
		t.Fatalf("overview from a: %+v", o)
	}
	if code, body := post(t, a.url+"/admin/api/disconnect", adminSecretForTests, `{"user":"bob","code":4001}`); code != 200 || !strings.Contains(body, `"online":true`) {
		t.Fatalf("disconnect: %d %s", code, body)
	}
	if code, _ := bob.expectClose(); code != 4001 {
		t.Fatalf("bob closed with %d, want 4001", code)
	}
}
