package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tether-chat/tether/internal/bench"
)

const benchUsage = `Usage: tether bench SCENARIO [flags]

Scenarios (each prints a summary line and one JSON line):
  idle     N idle connections in a room: server RSS and CPU per connection
  fanout   messages to an N-member room: one at a time, or --rate R per second
  rtt      ping/pong closed loop on N connections: requests/s, CPU per request
  direct   N/2 private conversations at --rate messages/s in total
  floor    the raw-write floor: one write() of --size bytes to each of N TCP sockets
  storm    start a server, connect N clients, restart it: time until all are back
  sweep    fanout (and floor) at several room sizes, with an SVG chart (--svg)

Give the server's PID (--pid) for its CPU and memory figures. Targets must be
loopback unless --allow-remote. Every count and duration is bounded. One
process opens at most 18,000 connections; idle spreads more over several
processes (--procs) and over several servers (--url a,b --pid 1,2).
Run 'tether bench SCENARIO --help' for the flags.
`

// benchCmd runs one load scenario; see benchUsage.
func benchCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, benchUsage)
		return 2
	}
	scenario, args := args[0], args[1:]
	if os.Getenv("GOGC") == "" {
		// The load generator holds thousands of clients' buffers: at the
		// default pace the collector took a fifth of its CPU in a storm,
		// CPU that the server it measures then lacks on a shared machine.
		// (The servers it starts keep the default.)
		debug.SetGCPercent(400)
	}
	if scenario == "floor-server" { // the child of `floor`
		if err := bench.FloorServer(os.Stdin, stdout); err != nil {
			fmt.Fprintln(stderr, "floor-server:", err)
			return 1
		}
		return 0
	}
	fs := flag.NewFlagSet("tether bench "+scenario, flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := bench.Options{Progress: stderr}
	fs.StringVar(&o.URL, "url", "ws://127.0.0.1:8000/ws", "server WebSocket URL (loopback only unless --allow-remote); several, comma-separated, to spread connections over the nodes of a cluster")
	pids := fs.String("pid", "", "server PID, to read its CPU time and RSS from /proc; several, comma-separated, are summed")
	fs.IntVar(&o.Procs, "procs", 0, fmt.Sprintf("idle: load-generator processes (0: one per %d connections)", bench.PerProcess))
	sources := fs.String("sources", strings.Join(bench.DefaultSources, ","), "local source addresses to spread connections over")
	worker := fs.Int("worker", 0, "(internal) the number of an idle-worker process")
	fs.IntVar(&o.Conns, "conns", 1000, "connections (room members)")
	fs.StringVar(&o.Room, "room", "bench", "room the members join")
	fs.BoolVar(&o.JoinAtConnect, "join-at-connect", false, "members ask for the room in the connection URL (?rooms=) instead of joining once connected")
	fs.IntVar(&o.Messages, "messages", 100, "fanout/floor: messages (rounds), one at a time")
	fs.IntVar(&o.Publishers, "publishers", 1, "fanout --rate: members that send the messages, in turn")
	fs.IntVar(&o.Size, "size", 100, "message text size, bytes")
	fs.Float64Var(&o.Rate, "rate", 0, "fanout: messages per second (0: one at a time); direct: in total")
	fs.DurationVar(&o.Duration, "duration", 5*time.Second, "rtt, fanout --rate, direct: how long to measure")
	fs.DurationVar(&o.Timeout, "timeout", 5*time.Minute, "bound on the whole scenario")
	fs.DurationVar(&o.Settle, "settle", 3*time.Second, "idle: wait before measuring memory")
	fs.BoolVar(&o.AllowRemote, "allow-remote", false, "allow a non-loopback target")
	fs.IntVar(&o.Frozen, "frozen", 0, "fanout --rate: this many members stop reading after joining (slow-consumer test)")
	sizes := fs.String("sizes", "100,1000,5000,10000", "sweep: room sizes")
	svg := fs.String("svg", "", "sweep: write the chart to this file")
	pprofAddr := fs.String("pprof", "", "serve the load generator's own /debug/pprof on this address while it runs (e.g. 127.0.0.1:6064)")
	serverArgs := fs.String("server-args", "", "storm: extra arguments for the server it starts (e.g. \"--redis redis://127.0.0.1:6379/0\")")
	fs.StringVar(&o.Redis, "redis", "", "the Redis the server uses (host:port or URL): also report Redis's CPU and commands per connection or message")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	for _, p := range strings.Split(*pids, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		pid, err := strconv.Atoi(p)
		if err != nil || pid <= 0 {
			fmt.Fprintf(stderr, "tether bench: --pid: %q is not a process ID\n", p)
			return 2
		}
		o.PIDs = append(o.PIDs, pid)
	}
	o.Sources = strings.Split(*sources, ",")
	if *pprofAddr != "" {
		go servePprof(*pprofAddr, slog.New(slog.NewTextHandler(stderr, nil)))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	self, _ := os.Executable()
	var results []bench.Result
	var err error
	run := func(r bench.Result, e error) {
		if e != nil && err == nil {
			err = e
		}
		if e == nil {
			results = append(results, r)
		}
	}
	switch scenario {
	case "idle":
		run(bench.Idle(ctx, o, self))
	case "idle-worker": // a process of a multi-process idle run
		o.Progress = nil
		if bench.IdleWorker(ctx, o, *worker, os.Stdin, stdout) != nil {
			return 1
		}
		return 0
	case "fanout":
		if o.Rate > 0 {
			run(bench.FanoutRate(ctx, o))
		} else {
			run(bench.Fanout(ctx, o))
		}
	case "rtt":
		run(bench.RTT(ctx, o))
	case "direct":
		run(bench.Direct(ctx, o))
	case "floor":
		run(bench.Floor(ctx, o, self))
	case "storm":
		run(bench.Storm(ctx, o, self, strings.Fields(*serverArgs)))
	case "sweep":
		var floor float64
		for _, s := range strings.Split(*sizes, ",") {
			n, e := strconv.Atoi(strings.TrimSpace(s))
			if e != nil {
				fmt.Fprintf(stderr, "tether bench: --sizes: %v\n", e)
				return 2
			}
			o.Conns = n
			run(bench.Floor(ctx, o, self))
			if len(results) > 0 && results[len(results)-1].Scenario == "floor" {
				floor = results[len(results)-1].CPUPerDelivUS
			}
			run(bench.Fanout(ctx, o))
		}
		if *svg != "" && err == nil {
			var fan []bench.Result
			for _, r := range results {
				if r.Scenario == "fanout" {
					fan = append(fan, r)
				}
			}
			f, e := os.Create(*svg)
			if e == nil {
				e = bench.Chart(f, fan, floor)
				f.Close()
			}
			if e != nil {
				err = e
			}
		}
	default:
		fmt.Fprintf(stderr, "tether bench: unknown scenario %q\n\n%s", scenario, benchUsage)
		return 2
	}
	for _, r := range results {
		fmt.Fprintf(stdout, "%-11s conns=%-6d msgs=%-6d deliveries=%-8d lost=%-4d rss/conn=%.1fKiB cpu/conn=%.0fµs cpu/delivery=%.2fµs req/s=%.0f cpu/req=%.1fµs p50=%.1fms p99=%.1fms resumed=%d %.1fs\n",
			r.Scenario, r.Conns, r.Messages, r.Deliveries, r.Lost, r.RSSPerConnKiB, r.CPUPerConnUS, r.CPUPerDelivUS,
			r.PerSecond, r.CPUPerReqUS, r.P50MS, r.P99MS, r.Resumed, r.Seconds)
		if o.Redis != "" {
			fmt.Fprintf(stdout, "%-11s redis: cpu/conn=%.0fµs cmds/conn=%.1f cpu/message=%.1fµs cmds/message=%.1f cpu/delivery=%.3fµs\n",
				"", r.RedisCPUPerConnUS, r.RedisCmdsPerConn, r.RedisCPUPerMsgUS, r.RedisCmdsPerMsg, r.RedisCPUPerDelivUS)
		}
		if r.ConnsPerSec > 0 {
			fmt.Fprintf(stdout, "%-11s %.0f connections opened per second", "", r.ConnsPerSec)
			if r.LoadCPUPerConnUS > 0 {
				fmt.Fprintf(stdout, " (load generator: %.0fµs of CPU per connection)", r.LoadCPUPerConnUS)
			}
			fmt.Fprintln(stdout)
		}
		line, _ := json.Marshal(r)
		fmt.Fprintln(stdout, string(line))
	}
	if err != nil {
		fmt.Fprintln(stderr, "tether bench:", err)
		return 1
	}
	return 0
}
