package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/tether-chat/tether/internal/bench"
)

// benchCmd runs one load scenario against a running server:
//
//	tether bench idle   --conns 10000 --pid $(pgrep -n tether)
//	tether bench fanout --conns 10000 --messages 100 --size 100 --pid …
//
// It prints a summary and one JSON line per scenario.
func benchCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintln(stderr, "Usage: tether bench idle|fanout [flags]   (tether bench idle --help for flags)")
		return 2
	}
	scenario, args := args[0], args[1:]
	fs := flag.NewFlagSet("tether bench "+scenario, flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := bench.Options{Progress: stderr}
	fs.StringVar(&o.URL, "url", "ws://127.0.0.1:8000/ws", "server WebSocket URL (loopback only unless --allow-remote)")
	fs.IntVar(&o.PID, "pid", 0, "server PID, to read its CPU time and RSS from /proc")
	fs.IntVar(&o.Conns, "conns", 1000, "connections (room members)")
	fs.StringVar(&o.Room, "room", "bench", "room the members join")
	fs.IntVar(&o.Messages, "messages", 100, "fanout: messages to publish, one at a time")
	fs.IntVar(&o.Size, "size", 100, "fanout: text size, bytes")
	fs.DurationVar(&o.Timeout, "timeout", 5*time.Minute, "bound on the whole scenario")
	fs.DurationVar(&o.Settle, "settle", 3*time.Second, "idle: wait before measuring memory")
	fs.BoolVar(&o.AllowRemote, "allow-remote", false, "allow a non-loopback target")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var r bench.Result
	var err error
	switch scenario {
	case "idle":
		r, err = bench.Idle(ctx, o)
	case "fanout":
		r, err = bench.Fanout(ctx, o)
	default:
		fmt.Fprintf(stderr, "tether bench: unknown scenario %q (idle, fanout)\n", scenario)
		return 2
	}
	if err != nil {
		fmt.Fprintln(stderr, "tether bench:", err)
		return 1
	}
	fmt.Fprintf(stdout, "%-8s conns=%-6d msgs=%-5d deliveries=%-8d lost=%d  rss/conn=%.1fKiB  cpu/conn=%.0fµs  cpu/delivery=%.2fµs  p50=%.1fms p99=%.1fms  server=%.0fMiB  %.1fs\n",
		r.Scenario, r.Conns, r.Messages, r.Deliveries, r.Lost, r.RSSPerConnKiB, r.CPUPerConnUS, r.CPUPerDelivUS, r.P50MS, r.P99MS, r.ServerRSSMiB, r.Seconds)
	line, _ := json.Marshal(r)
	fmt.Fprintln(stdout, string(line))
	return 0
}
