// Package bench is the load generator behind `tether bench`: it opens many
// real WebSocket connections to a Tether server (spread over loopback source
// addresses), drives a scenario and reads the server's CPU time and RSS
// from /proc when given its PID.
package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// Options configure a run. Every count and duration is bounded.
type Options struct {
	URL      string        // ws://host:port/ws; idle: several, comma-separated, connections spread over them
	PIDs     []int         // server processes to measure (figures are their sums); none = no server figures
	Procs    int           // idle: load-generator processes (0: one per PerProcess connections)
	Rate     float64       // fanout/direct: messages per second in total (fanout: 0 = one at a time)
	Duration time.Duration // rtt, fixed-rate fanout, direct: how long to measure
	Conns    int           // connections (members)
	Room     string        // room the members join
	// JoinAtConnect: members ask for the room in the connection's URL
	// (?rooms=) instead of with a join once connected, so that the whole
	// set-up is one engine call.
	JoinAtConnect bool
	Messages      int // fanout: messages published
	// Publishers: fanout --rate sends the messages from this many members
	// in turn (a room's traffic comes from many of its members); 0 or 1:
	// one.
	Publishers  int
	Size        int           // fanout: text size in bytes
	Sources     []string      // local source addresses to spread connections over
	Timeout     time.Duration // bound on the whole scenario
	Settle      time.Duration // idle: wait before measuring memory
	Frozen      int           // fanout --rate: members that join and then never read again
	Progress    io.Writer     // progress lines; nil = silent
	AllowRemote bool          // permit a non-loopback target
	// Redis is the address of the Redis the server uses (host:port or a
	// redis:// URL), to report Redis's CPU and commands per connection or
	// per message beside the server's; empty: not measured.
	Redis string

	urls   []string // URL split at commas, set by check
	spread bool     // the scenario opens connections from several processes (idle)
}

// PerProcess is the most connections one load-generator process opens: a
// process here may hold at most 20,000 open files.
const PerProcess = 19000

// Result is one scenario's figures; it is printed as a table row and as one
// JSON line.
type Result struct {
	Scenario      string  `json:"scenario"`
	Conns         int     `json:"conns"`
	Procs         int     `json:"procs,omitempty"`   // idle: load-generator processes
	Servers       int     `json:"servers,omitempty"` // idle: server URLs the connections were spread over
	Rate          float64 `json:"rate,omitempty"`
	Requests      int64   `json:"requests,omitempty"`
	PerSecond     float64 `json:"per_second,omitempty"`
	CPUPerReqUS   float64 `json:"cpu_per_request_us,omitempty"`
	Resumed       int     `json:"resumed,omitempty"`
	Frozen        int     `json:"frozen,omitempty"`
	Messages      int     `json:"messages,omitempty"`
	Deliveries    int64   `json:"deliveries,omitempty"`
	Lost          int64   `json:"lost,omitempty"`
	Seconds       float64 `json:"seconds"`
	RSSPerConnKiB float64 `json:"rss_per_conn_kib,omitempty"`
	CPUPerConnUS  float64 `json:"cpu_per_conn_us,omitempty"`
	CPUPerDelivUS float64 `json:"cpu_per_delivery_us,omitempty"`
	P50MS         float64 `json:"p50_ms,omitempty"`
	P99MS         float64 `json:"p99_ms,omitempty"`
	ServerRSSMiB  float64 `json:"server_rss_mib,omitempty"`
	// ConnsPerSec is idle's connections opened per second (set-up and
	// welcome included), over the time to open them all.
	ConnsPerSec float64 `json:"conns_per_second,omitempty"`
	// LoadCPUPerConnUS is idle's load generator's own CPU per connection
	// opened (one process only): on a machine it shares with the server,
	// connections per second are bound by the sum of its, the server's
	// and Redis's CPU per connection.
	LoadCPUPerConnUS float64 `json:"load_cpu_per_conn_us,omitempty"`
	// Redis's CPU and commands (--redis) per connection set-up (idle), per
	// published message (fanout, direct) and per delivered message.
	RedisCPUPerConnUS  float64 `json:"redis_cpu_per_conn_us,omitempty"`
	RedisCmdsPerConn   float64 `json:"redis_cmds_per_conn,omitempty"`
	RedisCPUPerMsgUS   float64 `json:"redis_cpu_per_message_us,omitempty"`
	RedisCmdsPerMsg    float64 `json:"redis_cmds_per_message,omitempty"`
	RedisCPUPerDelivUS float64 `json:"redis_cpu_per_delivery_us,omitempty"`
}

// DefaultSources are the loopback addresses connections are spread over,
// so that no single source address runs out of ephemeral ports.
var DefaultSources = []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.7", "127.0.0.8", "127.0.0.9"}

func (o *Options) check() error {
	o.urls = strings.Split(o.URL, ",")
	for _, raw := range o.urls {
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "ws" && u.Scheme != "wss") {
			return fmt.Errorf("url must be ws:// or wss:// (got %q)", raw)
		}
		if !o.AllowRemote {
			ip := net.ParseIP(u.Hostname())
			if !(u.Hostname() == "localhost" || (ip != nil && ip.IsLoopback())) {
				return fmt.Errorf("refusing non-loopback target %s (use --allow-remote for a server you own)", u.Host)
			}
		}
	}
	if o.Conns < 1 || o.Conns > 100000 {
		return fmt.Errorf("conns must be 1..100000 (got %d)", o.Conns)
	}
	if o.Procs < 0 || o.Procs > 16 {
		return fmt.Errorf("procs must be 0..16 (got %d)", o.Procs)
	}
	if !o.spread && o.Conns > PerProcess {
		return fmt.Errorf("conns must be at most %d here: one process holds at most ~19,000 sockets (only idle spreads over processes)", PerProcess)
	}
	if o.Timeout <= 0 || o.Timeout > time.Hour {
		return fmt.Errorf("timeout must be in (0, 1h] (got %s)", o.Timeout)
	}
	if len(o.Sources) == 0 {
		o.Sources = DefaultSources
	}
	return nil
}

// dialEach runs dial(i) for i in [0, n), 64 at a time, until ctx is done,
// and returns when all have returned.
func dialEach(ctx context.Context, n int, dial func(i int)) {
	sem := make(chan struct{}, 64) // connection attempts in flight
	var wg sync.WaitGroup
	for i := 0; i < n && ctx.Err() == nil; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			dial(i)
		}()
	}
	wg.Wait()
}

// dialer dials connection i from its source address (Sources, in turn).
func (o *Options) dialer(i int) *websocket.Dialer {
	src := o.Sources[i%len(o.Sources)]
	return &websocket.Dialer{HandshakeTimeout: 10 * time.Second,
		NetDialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Control: bindNoPort}).DialContext}
}

func (o *Options) progress(format string, args ...any) {
	if o.Progress != nil {
		fmt.Fprintf(o.Progress, format+"\n", args...)
	}
}

// member is one benchmark connection.
type member struct {
	ws     *websocket.Conn
	id     int
	chats  atomic.Int64
	pong   chan struct{}
	frozen atomic.Bool // stops reading (a frozen client) once set
	// joinedBy and room, when set, make the welcome the sign that the
	// member is in room (JoinAtConnect); shared by all members.
	joinedBy, room []byte
}

// dialAll opens n connections as users bench-<i>, each joining room, and
// waits until every join is acknowledged.
func dialAll(ctx context.Context, o *Options, n int, prefix string, onChat func(m *member, frame []byte)) ([]*member, error) {
	return dialAllFrames(ctx, o, n, prefix, func(m *member, b []byte) {
		if bytes.Contains(b, chatType) {
			m.chats.Add(1)
			if onChat != nil {
				onChat(m, b)
			}
		}
	})
}

// dialAllFrames is dialAll with a callback for every frame after the join.
func dialAllFrames(ctx context.Context, o *Options, n int, prefix string, onFrame func(m *member, frame []byte)) ([]*member, error) {
	members := make([]*member, n)
	quotedRoom, _ := json.Marshal(o.Room)
	var failed atomic.Int64
	var firstErr atomic.Value
	dialEach(ctx, n, func(i int) {
		d := o.dialer(i)
		d.ReadBufferSize, d.WriteBufferSize = 1024, 1024
		target := fmt.Sprintf("%s?user=%s%d", o.urls[i%len(o.urls)], prefix, i)
		if o.JoinAtConnect {
			target += "&rooms=" + url.QueryEscape(o.Room)
		}
		ws, _, err := d.DialContext(ctx, target, nil)
		if err != nil {
			failed.Add(1)
			firstErr.CompareAndSwap(nil, err)
			return
		}
		m := &member{ws: ws, id: i, pong: make(chan struct{}, 1)}
		joined := make(chan bool, 1)
		if o.JoinAtConnect {
			m.joinedBy, m.room = roomsField, quotedRoom
		}
		go m.read(joined, onFrame)
		if !o.JoinAtConnect {
			ws.WriteMessage(websocket.TextMessage, []byte(fmt.Sprintf(`{"type":"join","id":"j","payload":{"room":%q}}`, o.Room)))
		}
		select {
		case ok := <-joined:
			if !ok {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, fmt.Errorf("the welcome does not list room %s", o.Room))
				ws.Close()
				return
			}
			members[i] = m
		case <-ctx.Done():
			ws.Close()
		}
		if (i+1)%1000 == 0 {
			o.progress("  %d connections", i+1)
		}
	})
	if f := failed.Load(); f > 0 {
		closeAll(members)
		return nil, fmt.Errorf("%d of %d connections failed: %v", f, n, firstErr.Load())
	}
	if err := ctx.Err(); err != nil {
		closeAll(members)
		return nil, fmt.Errorf("timed out opening connections: %w", err)
	}
	return members, nil
}

var (
	ackJoin     = []byte(`"type":"ack","id":"j"`)
	welcomeType = []byte(`"type":"welcome"`)
	roomsField  = []byte(`"rooms":[`)
	chatType    = []byte(`"type":"chat"`)
)

// read reads a member's frames. It reports on joined once the member is
// in the room: the join's ack, or the welcome (which lists the room when
// it was asked for in the URL; false if it does not).
func (m *member) read(joined chan bool, onFrame func(*member, []byte)) {
	buf := make([]byte, 0, 512) // reused: onFrame must not keep the frame
	for {
		b, err := m.next(buf[:0])
		if err != nil {
			return
		}
		buf = b[:0]
		if joined != nil {
			if m.joinedBy == nil && bytes.Contains(b, ackJoin) {
				joined <- true
				joined = nil
				continue
			}
			if m.joinedBy != nil && bytes.Contains(b, welcomeType) {
				_, rooms, _ := bytes.Cut(b, m.joinedBy)
				rooms, _, _ = bytes.Cut(rooms, []byte("]"))
				joined <- bytes.Contains(rooms, m.room)
				joined = nil
				continue
			}
		}
		if m.frozen.Load() {
			select {} // never read again; the connection stays open
		}
		if onFrame != nil {
			onFrame(m, b)
		}
	}
}

// next reads the next message into buf (grown as needed) without the
// per-message allocations of ReadMessage.
func (m *member) next(buf []byte) ([]byte, error) {
	_, r, err := m.ws.NextReader()
	if err != nil {
		return nil, err
	}
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

func closeAll(ms []*member) {
	for _, m := range ms {
		if m != nil {
			m.ws.Close()
		}
	}
}

// Idle measures what idle connections cost the servers: RSS growth and CPU
// per connection set-up. Every connection joins one room; heartbeats run.
// Connections are spread over the URLs (nodes of one cluster) and, past
// PerProcess of them or with Procs > 1, opened by worker processes (self
// bench idle-worker) of Conns/Procs each, since one process here holds at
// most ~19,000 sockets.
func Idle(ctx context.Context, o Options, self string) (Result, error) {
	o.spread = true
	if err := o.check(); err != nil {
		return Result{}, err
	}
	procs := o.Procs
	if procs == 0 {
		procs = (o.Conns + PerProcess - 1) / PerProcess
	}
	if (o.Conns+procs-1)/procs > PerProcess {
		return Result{}, fmt.Errorf("%d connections need at least %d processes of %d (got --procs %d)",
			o.Conns, (o.Conns+PerProcess-1)/PerProcess, PerProcess, procs)
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	before, err := o.readServers()
	if err != nil {
		return Result{}, err
	}
	start := time.Now()
	genBefore, genOK := selfCPU()
	if procs == 1 {
		o.progress("idle: opening %d connections", o.Conns)
		members, err := dialAll(ctx, &o, o.Conns, "idle", nil)
		if err != nil {
			return Result{}, err
		}
		defer closeAll(members)
	} else {
		o.progress("idle: opening %d connections from %d processes", o.Conns, procs)
		stop, err := startWorkers(ctx, &o, procs, self)
		if err != nil {
			return Result{}, err
		}
		defer stop()
	}
	connected, err := o.readServers()
	if err != nil {
		return Result{}, err
	}
	genAfter, _ := selfCPU()
	o.progress("idle: %d open; settling %s", o.Conns, o.Settle)
	select {
	case <-time.After(o.Settle):
	case <-ctx.Done():
		return Result{}, ctx.Err()
	}
	after, err := o.readServers()
	if err != nil {
		return Result{}, err
	}
	n := float64(o.Conns)
	r := Result{Scenario: "idle", Conns: o.Conns, Procs: procs, Servers: len(o.urls), Seconds: time.Since(start).Seconds(),
		ConnsPerSec: n / connected.at.Sub(start).Seconds()}
	o.redisPerUnit(before, connected, int64(o.Conns), &r.RedisCPUPerConnUS, &r.RedisCmdsPerConn)
	if procs == 1 && genOK {
		r.LoadCPUPerConnUS = (genAfter - genBefore).Seconds() * 1e6 / n
	}
	if len(o.PIDs) > 0 {
		r.RSSPerConnKiB = float64(after.rss-before.rss) / 1024 / n
		r.CPUPerConnUS = (connected.cpu - before.cpu).Seconds() * 1e6 / n
		r.ServerRSSMiB = float64(after.rss) / (1 << 20)
	}
	return r, nil
}

// Fanout publishes Messages messages of Size bytes to a room of Conns
// members one at a time (the next only when every member has the previous
// one) and reports server CPU per delivery and delivery latency.
func Fanout(ctx context.Context, o Options) (Result, error) {
	if err := o.check(); err != nil {
		return Result{}, err
	}
	if o.Messages < 1 || o.Messages > 1000000 {
		return Result{}, fmt.Errorf("messages must be 1..1000000 (got %d)", o.Messages)
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()

	var sentAt atomic.Int64 // unix nanos of the message in flight
	lat := newLatencies(5_000_000)
	var delivered atomic.Int64
	onChat := func(m *member, b []byte) {
		delivered.Add(1)
		lat.add(m.id, time.Duration(time.Now().UnixNano()-sentAt.Load()))
	}
	o.progress("fanout: opening %d members", o.Conns)
	members, err := dialAll(ctx, &o, o.Conns, "fan", onChat)
	if err != nil {
		return Result{}, err
	}
	defer closeAll(members)
	pubs, err := dialAll(ctx, &o, 1, "publisher", nil)
	if err != nil {
		return Result{}, err
	}
	defer closeAll(pubs)
	pub := pubs[0].ws
	time.Sleep(500 * time.Millisecond) // let presence settle before measuring
	text := strings.Repeat("x", max(1, o.Size))
	frame, _ := json.Marshal(map[string]any{"type": "chat", "payload": map[string]any{"room": o.Room, "text": text}})

	before, err := o.readServers()
	if err != nil {
		return Result{}, err
	}
	start := time.Now()
	var want int64
	for i := 0; i < o.Messages; i++ {
		want += int64(o.Conns)
		sentAt.Store(time.Now().UnixNano())
		if err := pub.WriteMessage(websocket.TextMessage, frame); err != nil {
			return Result{}, fmt.Errorf("publish: %w", err)
		}
		for delivered.Load() < want {
			if ctx.Err() != nil {
				return Result{}, fmt.Errorf("message %d: %d of %d deliveries before the timeout", i, delivered.Load(), want)
			}
			time.Sleep(200 * time.Microsecond)
		}
		if (i+1)%max(1, o.Messages/10) == 0 {
			o.progress("  %d/%d messages", i+1, o.Messages)
		}
	}
	elapsed := time.Since(start)
	after, err := o.readServers()
	if err != nil {
		return Result{}, err
	}
	r := Result{Scenario: "fanout", Conns: o.Conns, Messages: o.Messages, Deliveries: delivered.Load(),
		Lost: want - delivered.Load(), Seconds: elapsed.Seconds()}
	// The publisher is a member too: the server delivers Conns+1 copies.
	r.CPUPerDelivUS = r.serverCPU(len(o.PIDs) > 0, before, after, int64(o.Messages*(o.Conns+1)))
	o.redisPerUnit(before, after, int64(o.Messages), &r.RedisCPUPerMsgUS, &r.RedisCmdsPerMsg)
	r.RedisCPUPerDelivUS = r.RedisCPUPerMsgUS / float64(o.Conns+1)
	r.P50MS, r.P99MS = lat.percentiles()
	return r, nil
}

func percentile(d []time.Duration, p float64) float64 {
	if len(d) == 0 {
		return 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return float64(d[int(float64(len(d)-1)*p)]) / 1e6
}

// serverCPU returns the server's CPU time per unit, in µs, between two
// readings, and records its RSS; zero without a server to measure or units.
func (r *Result) serverCPU(measured bool, before, after procStat, units int64) float64 {
	if !measured || units <= 0 {
		return 0
	}
	r.ServerRSSMiB = float64(after.rss) / (1 << 20)
	return (after.cpu - before.cpu).Seconds() * 1e6 / float64(units)
}

// drain waits up to 5 s for done, for messages still on their way.
func drain(done func() bool) {
	for deadline := time.Now().Add(5 * time.Second); !done() && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
}

type procStat struct {
	at        time.Time     // when read
	redisCPU  time.Duration // Redis's (Options.Redis), when measured
	redisCmds int64
	cpu       time.Duration // user + system
	rss       int64         // bytes
}

// readServers sums the CPU time and RSS of the server processes.
func (o *Options) readServers() (procStat, error) {
	sum := procStat{at: time.Now()}
	if o.Redis != "" {
		var err error
		if sum.redisCPU, sum.redisCmds, err = RedisStats(o.Redis); err != nil {
			return sum, err
		}
	}
	for _, pid := range o.PIDs {
		p, err := readProc(pid)
		if err != nil {
			return sum, err
		}
		sum.cpu += p.cpu
		sum.rss += p.rss
	}
	return sum, nil
}

// readProc reads a process's CPU time and RSS from /proc. PID 0 gives zeros.
func readProc(pid int) (procStat, error) {
	if pid == 0 {
		return procStat{}, nil
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, fmt.Errorf("server process %d: %w", pid, err)
	}
	// Fields after the parenthesised command name; utime and stime are the
	// 14th and 15th fields of the whole line, in clock ticks (100 Hz).
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procStat{}, errors.New("unexpected /proc stat format")
	}
	f := strings.Fields(s[i+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	rssPages, _ := strconv.ParseInt(f[21], 10, 64)
	return procStat{cpu: time.Duration(ut+st) * 10 * time.Millisecond, rss: rssPages * int64(os.Getpagesize())}, nil
}

// startWorkers starts procs idle-worker processes, each opening its share
// of o.Conns, and waits until all are connected. stop closes their stdin
// (a worker closes its connections and exits at EOF) and waits for them.
func startWorkers(ctx context.Context, o *Options, procs int, self string) (stop func(), err error) {
	if self == "" {
		return nil, errors.New("idle over several processes needs the tether binary")
	}
	type worker struct {
		cmd   *exec.Cmd
		stdin io.WriteCloser
	}
	var workers []worker
	stop = func() {
		for _, w := range workers {
			w.stdin.Close()
		}
		for _, w := range workers {
			done := make(chan struct{})
			go func() { w.cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				w.cmd.Process.Kill()
				<-done
			}
		}
	}
	ready := make(chan error, procs)
	for k := range procs {
		share := o.Conns / procs
		if k < o.Conns%procs {
			share++
		}
		args := []string{"bench", "idle-worker", "--worker", strconv.Itoa(k), "--url", o.URL, "--conns", strconv.Itoa(share),
			"--room", o.Room, "--join-at-connect=" + strconv.FormatBool(o.JoinAtConnect), "--timeout", o.Timeout.String(), "--sources", strings.Join(o.Sources, ",")}
		if o.AllowRemote {
			args = append(args, "--allow-remote")
		}
		cmd := exec.CommandContext(ctx, self, args...)
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			stop()
			return nil, err
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			stop()
			return nil, err
		}
		if err := cmd.Start(); err != nil {
			stop()
			return nil, fmt.Errorf("idle worker: %w", err)
		}
		workers = append(workers, worker{cmd, stdin})
		go func() {
			line, err := bufio.NewReader(stdout).ReadString('\n')
			switch {
			case strings.TrimSpace(line) == "ready":
				ready <- nil
				io.Copy(io.Discard, stdout)
			case err != nil && line == "":
				ready <- fmt.Errorf("idle worker %d exited before it was connected", k)
			default:
				ready <- fmt.Errorf("idle worker %d: %s", k, strings.TrimSpace(line))
			}
		}()
	}
	for range procs {
		select {
		case err := <-ready:
			if err != nil {
				stop()
				return nil, err
			}
		case <-ctx.Done():
			stop()
			return nil, ctx.Err()
		}
	}
	return stop, nil
}

// IdleWorker is one process of a multi-process idle run: it opens
// o.Conns connections as users idle<worker>-<i>, writes "ready" (or the
// error) on stdout, holds them until stdin ends, and closes them.
func IdleWorker(ctx context.Context, o Options, worker int, stdin io.Reader, stdout io.Writer) error {
	if err := o.check(); err != nil {
		fmt.Fprintln(stdout, err)
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	members, err := dialAll(ctx, &o, o.Conns, fmt.Sprintf("idle%d-", worker), nil)
	if err != nil {
		fmt.Fprintln(stdout, err)
		return err
	}
	defer closeAll(members)
	fmt.Fprintln(stdout, "ready")
	done := make(chan struct{})
	go func() { io.Copy(io.Discard, stdin); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	return nil
}
