package server

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/gorilla/websocket"

	"github.com/tether-chat/tether/internal/testredis"
	"github.com/tether-chat/tether/protocol"
)

// TestGrafanaDashboardChartsRealMetrics: every metric the dashboard in
// deploy/grafana charts is one a node exports (a Redis node, after the
// traffic that makes its labelled series appear).
func TestGrafanaDashboardChartsRealMetrics(t *testing.T) {
	b, err := os.ReadFile("../deploy/grafana/tether-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("the dashboard is not JSON: %v", err)
	}
	names := regexp.MustCompile(`\b(?:tether|go|process)_[a-z_]+`)
	charted := map[string]string{} // metric -> panel
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			for _, m := range names.FindAllString(tg.Expr, -1) {
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					m = strings.TrimSuffix(m, suffix)
				}
				charted[m] = p.Title
			}
		}
	}
	if len(charted) < 20 {
		t.Fatalf("only %d metrics charted", len(charted))
	}

	ts := newTestServer(t, engineCase{redisURL: testredis.Start(t).URL}.with(Config{}))
	alice, bob := connect(t, ts, "alice"), connect(t, ts, "bob")
	alice.send(protocol.TypeChat, "c", map[string]any{"room": "general", "text": "hi"})
	bob.expect(protocol.TypeChat, nil)
	alice.sendRaw(websocket.BinaryMessage, protocol.EncodeFile(protocol.FileHeader{ID: "f", Room: "general", Name: "dot.png"}, png1x1))
	alice.sendRaw(websocket.BinaryMessage, protocol.EncodeFile(protocol.FileHeader{ID: "g", Room: "general", Name: "x.png"}, nil))
	alice.expect(protocol.TypeError, nil)
	bob.ws.Close()
	waitUntil(t, "bob's close counted", func() bool { return ts.Stats().Closed == 1 })
	_, metrics := get(t, ts.url+"/metrics", nil)
	exported := map[string]bool{}
	for _, line := range strings.Split(metrics, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name := line[:strings.IndexAny(line, "{ ")]
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			name = strings.TrimSuffix(name, suffix)
		}
		exported[name] = true
	}
	for m, panel := range charted {
		if !exported[m] {
			t.Errorf("panel %q charts %s, which /metrics does not export", panel, m)
		}
	}
}
