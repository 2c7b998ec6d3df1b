package bench

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tether-chat/tether/internal/testbin"
	"github.com/tether-chat/tether/server"
)

// The smoke test runs every scenario at a small size, to keep the tool
// working. It asserts that each completes with sensible counts, never
// anything about time: timing figures live in docs/benchmarks.md.

var binary string

func TestMain(m *testing.M) { testbin.Main(m, "../..", &binary) }

func serve(t *testing.T) string {
	t.Helper()
	url, _ := serveNode(t)
	return url
}

func serveNode(t *testing.T) (string, *server.Server) {
	t.Helper()
	srv, err := server.New(server.Config{RateLimit: -1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return "ws://" + ln.Addr().String() + "/ws", srv
}

func opts(url string) Options {
	return Options{URL: url, PIDs: []int{os.Getpid()}, Conns: 20, Room: "bench", Messages: 5, Size: 100,
		Rate: 50, Duration: 500 * time.Millisecond, Timeout: time.Minute, Settle: 100 * time.Millisecond}
}

func TestScenariosSmoke(t *testing.T) {
	url := serve(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		run  func() (Result, error)
		ok   func(Result) bool
	}{
		{"idle", func() (Result, error) { return Idle(ctx, opts(url), binary) }, func(r Result) bool { return r.Conns == 20 && r.ServerRSSMiB > 0 && r.LoadCPUPerConnUS > 0 }},
		{"fanout", func() (Result, error) { return Fanout(ctx, opts(url)) }, func(r Result) bool { return r.Deliveries == 100 && r.Lost == 0 }},
		{"fanout-rate", func() (Result, error) { return FanoutRate(ctx, opts(url)) }, func(r Result) bool { return r.Messages > 0 && r.Lost == 0 }},
		{"rtt", func() (Result, error) { return RTT(ctx, opts(url)) }, func(r Result) bool { return r.Requests > 0 && r.PerSecond > 0 }},
		{"direct", func() (Result, error) { return Direct(ctx, opts(url)) }, func(r Result) bool { return r.Deliveries > 0 && r.Lost == 0 }},
		{"floor", func() (Result, error) { return Floor(ctx, opts(url), binary) }, func(r Result) bool { return r.Deliveries == 100 }},
		{"storm", func() (Result, error) { return Storm(ctx, opts(url), binary, nil) }, func(r Result) bool { return r.Conns == 20 && r.CPUPerConnUS > 0 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := tc.run()
			if err != nil {
				t.Fatal(err)
			}
			if !tc.ok(r) {
				t.Fatalf("unexpected result %+v", r)
			}
		})
	}
}

// TestIdleOverProcessesAndServers: idle opens its connections from worker
// processes, spread over several servers, and measures them all.
func TestIdleOverProcessesAndServers(t *testing.T) {
	url1, srv1 := serveNode(t)
	url2, srv2 := serveNode(t)
	o := opts(url1 + "," + url2)
	o.Conns, o.Procs = 41, 2
	r, err := Idle(context.Background(), o, binary)
	if err != nil {
		t.Fatal(err)
	}
	// The load generator's CPU is its own process's: not reported when
	// worker processes opened the connections.
	if r.Conns != 41 || r.Procs != 2 || r.Servers != 2 || r.ServerRSSMiB <= 0 || r.LoadCPUPerConnUS != 0 {
		t.Fatalf("result %+v", r)
	}
	if a, b := srv1.Stats().Opened, srv2.Stats().Opened; a != 21 || b != 20 {
		t.Fatalf("servers opened %d and %d connections, want 21 and 20", a, b)
	}
	o.Conns, o.Procs = PerProcess+1, 1
	if _, err := Idle(context.Background(), o, binary); err == nil || !strings.Contains(err.Error(), "processes") {
		t.Fatalf("%d connections from one process: err = %v", PerProcess+1, err)
	}
	o.Conns = PerProcess + 1
	if _, err := RTT(context.Background(), o); err == nil || !strings.Contains(err.Error(), "at most") {
		t.Fatalf("rtt with %d connections: err = %v", PerProcess+1, err)
	}
}

func TestRefusesNonLoopbackTargets(t *testing.T) {
	o := opts("ws://192.0.2.1:8000/ws")
	if _, err := Idle(context.Background(), o, binary); err == nil || !strings.Contains(err.Error(), "non-loopback") {
		t.Fatalf("err = %v", err)
	}
	o.Conns = 0
	o.URL = "ws://127.0.0.1:1/ws"
	if _, err := Idle(context.Background(), o, binary); err == nil {
		t.Fatal("conns=0 accepted")
	}
}

func TestChart(t *testing.T) {
	var b bytes.Buffer
	runs := []Result{{Conns: 100, CPUPerDelivUS: 6, P50MS: 1, P99MS: 3}, {Conns: 10000, CPUPerDelivUS: 7, P50MS: 40, P99MS: 90}}
	if err := Chart(&b, runs, 5.3); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<svg", "</svg>", "10000", "floor 5.3"} {
		if !strings.Contains(b.String(), want) {
			t.Fatalf("chart lacks %q", want)
		}
	}
}
