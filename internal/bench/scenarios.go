package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tether-chat/tether/client"
	"github.com/tether-chat/tether/protocol"
)

// latencies collects samples, at most max of them, in shards: thousands
// of member goroutines adding 400,000 samples a second to one locked slice
// made the load generator, not the server, the bottleneck.
type latencies struct {
	shards [64]latShard
	max    int // per shard
}

type latShard struct {
	mu sync.Mutex
	d  []time.Duration
	_  [32]byte // keeps shards on separate cache lines
}

func newLatencies(max int) *latencies {
	return &latencies{max: max / 64}
}

// add records one sample; key (a member's number) picks the shard.
func (l *latencies) add(key int, d time.Duration) {
	s := &l.shards[key%len(l.shards)]
	s.mu.Lock()
	if len(s.d) < l.max {
		s.d = append(s.d, d)
	}
	s.mu.Unlock()
}

func (l *latencies) percentiles() (p50, p99 float64) {
	var all []time.Duration
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		all = append(all, s.d...)
		s.mu.Unlock()
	}
	return percentile(all, 0.50), percentile(all, 0.99)
}

// stamp puts the send time in a text of size bytes: "<unix nanos> xxx…".
func stamp(size int) string {
	s := strconv.FormatInt(time.Now().UnixNano(), 10)
	if len(s) < size {
		s += " " + strings.Repeat("x", size-len(s)-1)
	}
	return s
}

var textKey = []byte(`"text":"`)

// sentAt reads the stamp back from a chat or direct frame.
func sentAt(frame []byte) (time.Time, bool) {
	i := bytes.Index(frame, textKey)
	if i < 0 {
		return time.Time{}, false
	}
	rest := frame[i+len(textKey):]
	j := bytes.IndexAny(rest, ` "`)
	if j < 0 {
		return time.Time{}, false
	}
	ns, err := strconv.ParseInt(string(rest[:j]), 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.Unix(0, ns), true
}

func (o *Options) duration() time.Duration {
	if o.Duration <= 0 {
		return 5 * time.Second
	}
	return min(o.Duration, o.Timeout)
}

// RTT runs a closed loop of ping → pong on every connection for Duration
// and reports requests per second, server CPU per request and latency.
func RTT(ctx context.Context, o Options) (Result, error) {
	if err := o.check(); err != nil {
		return Result{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	members, err := dialAllFrames(ctx, &o, o.Conns, "rtt", func(m *member, b []byte) {
		if bytes.Contains(b, []byte(`"type":"pong"`)) {
			m.pong <- struct{}{}
		}
	})
	if err != nil {
		return Result{}, err
	}
	defer closeAll(members)
	lat := newLatencies(2_000_000)
	var reqs atomic.Int64
	before, err := o.readServers()
	if err != nil {
		return Result{}, err
	}
	start := time.Now()
	end := start.Add(o.duration())
	ping := []byte(`{"type":"ping","id":"p"}`)
	var wg sync.WaitGroup
	for _, m := range members {
		wg.Add(1)
		go func(m *member) {
			defer wg.Done()
			for time.Now().Before(end) && ctx.Err() == nil {
				t0 := time.Now()
				if m.ws.WriteMessage(websocket.TextMessage, ping) != nil {
					return
				}
				select {
				case <-m.pong:
				case <-ctx.Done():
					return
				}
				lat.add(m.id, time.Since(t0))
				reqs.Add(1)
			}
		}(m)
	}
	wg.Wait()
	elapsed := time.Since(start)
	after, err := o.readServers()
	if err != nil {
		return Result{}, err
	}
	r := Result{Scenario: "rtt", Conns: o.Conns, Requests: reqs.Load(), Seconds: elapsed.Seconds(),
		PerSecond: float64(reqs.Load()) / elapsed.Seconds()}
	r.CPUPerReqUS = r.serverCPU(len(o.PIDs) > 0, before, after, r.Requests)
	r.P50MS, r.P99MS = lat.percentiles()
	return r, nil
}

// FanoutRate publishes Rate messages per second to a room of Conns members
// for Duration, then waits up to 5 s for stragglers; it reports server CPU
// per delivery, latency and what never arrived.
func FanoutRate(ctx context.Context, o Options) (Result, error) {
	if err := o.check(); err != nil {
		return Result{}, err
	}
	if o.Rate <= 0 || o.Rate > 100000 {
		return Result{}, fmt.Errorf("rate must be in (0, 100000] (got %g)", o.Rate)
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	lat := newLatencies(5_000_000)
	var delivered atomic.Int64
	members, err := dialAll(ctx, &o, o.Conns, "fan", func(m *member, b []byte) {
		if t, ok := sentAt(b); ok {
			lat.add(m.id, time.Since(t))
			delivered.Add(1)
		}
	})
	if err != nil {
		return Result{}, err
	}
	defer closeAll(members)
	// Frozen members (the first Frozen) stop reading: the server must drop
	// them alone; the others' latency and losses are what is measured.
	for _, m := range members[:min(o.Frozen, len(members))] {
		m.frozen.Store(true)
	}
	healthy := int64(o.Conns - min(o.Frozen, o.Conns))
	pubs, err := dialAll(ctx, &o, max(o.Publishers, 1), "publisher", nil)
	if err != nil {
		return Result{}, err
	}
	defer closeAll(pubs)
	time.Sleep(500 * time.Millisecond)
	before, err := o.readServers()
	if err != nil {
		return Result{}, err
	}
	start := time.Now()
	interval := time.Duration(float64(time.Second) / o.Rate)
	sent := 0
	for next := start; time.Since(start) < o.duration() && ctx.Err() == nil; next = next.Add(interval) {
		time.Sleep(time.Until(next))
		frame, _ := json.Marshal(map[string]any{"type": "chat", "payload": map[string]any{"room": o.Room, "text": stamp(o.Size)}})
		if err := pubs[sent%len(pubs)].ws.WriteMessage(websocket.TextMessage, frame); err != nil {
			return Result{}, fmt.Errorf("publish: %w", err)
		}
		sent++
	}
	want := int64(sent) * healthy
	drain(func() bool { return delivered.Load() >= want })
	elapsed := time.Since(start)
	after, err := o.readServers()
	if err != nil {
		return Result{}, err
	}
	r := Result{Scenario: "fanout-rate", Conns: o.Conns, Rate: o.Rate, Messages: sent, Deliveries: delivered.Load(),
		Lost: max(0, want-delivered.Load()), Seconds: elapsed.Seconds(), Frozen: o.Frozen}
	r.CPUPerDelivUS = r.serverCPU(len(o.PIDs) > 0, before, after, int64(sent*(o.Conns+len(pubs))))
	o.redisPerUnit(before, after, int64(sent), &r.RedisCPUPerMsgUS, &r.RedisCmdsPerMsg)
	r.RedisCPUPerDelivUS = r.RedisCPUPerMsgUS / float64(o.Conns+len(pubs))
	r.P50MS, r.P99MS = lat.percentiles()
	return r, nil
}

// Direct runs Conns/2 private conversations: every user sends to its
// partner at Rate/Conns messages per second for Duration.
func Direct(ctx context.Context, o Options) (Result, error) {
	if err := o.check(); err != nil {
		return Result{}, err
	}
	if o.Conns < 2 || o.Conns%2 != 0 {
		return Result{}, fmt.Errorf("direct needs an even number of conns (got %d)", o.Conns)
	}
	if o.Rate <= 0 {
		o.Rate = float64(o.Conns)
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	lat := newLatencies(5_000_000)
	var delivered atomic.Int64
	members, err := dialAllFrames(ctx, &o, o.Conns, "dm", func(m *member, b []byte) {
		if bytes.Contains(b, []byte(`"type":"direct"`)) {
			if t, ok := sentAt(b); ok {
				lat.add(m.id, time.Since(t))
				delivered.Add(1)
			}
		}
	})
	if err != nil {
		return Result{}, err
	}
	defer closeAll(members)
	before, err := o.readServers()
	if err != nil {
		return Result{}, err
	}
	var sent atomic.Int64
	start := time.Now()
	end := start.Add(o.duration())
	per := time.Duration(float64(time.Second) * float64(o.Conns) / o.Rate)
	var wg sync.WaitGroup
	for i, m := range members {
		wg.Add(1)
		go func(i int, m *member) {
			defer wg.Done()
			partner := fmt.Sprintf("dm%d", i^1)
			for next := start.Add(time.Duration(i) * per / time.Duration(o.Conns)); next.Before(end) && ctx.Err() == nil; next = next.Add(per) {
				time.Sleep(time.Until(next))
				frame, _ := json.Marshal(map[string]any{"type": "direct", "payload": map[string]any{"to": partner, "text": stamp(o.Size)}})
				if m.ws.WriteMessage(websocket.TextMessage, frame) != nil {
					return
				}
				sent.Add(1)
			}
		}(i, m)
	}
	wg.Wait()
	drain(func() bool { return delivered.Load() >= sent.Load() })
	elapsed := time.Since(start)
	after, err := o.readServers()
	if err != nil {
		return Result{}, err
	}
	r := Result{Scenario: "direct", Conns: o.Conns, Rate: o.Rate, Messages: int(sent.Load()), Deliveries: delivered.Load(),
		Lost: sent.Load() - delivered.Load(), Seconds: elapsed.Seconds(), PerSecond: float64(delivered.Load()) / elapsed.Seconds()}
	r.CPUPerReqUS = r.serverCPU(len(o.PIDs) > 0, before, after, sent.Load())
	o.redisPerUnit(before, after, sent.Load(), &r.RedisCPUPerMsgUS, &r.RedisCmdsPerMsg)
	r.P50MS, r.P99MS = lat.percentiles()
	return r, nil
}

// Floor measures the physical floor of one delivery on this machine: a
// child process writes Size bytes to each of Conns plain TCP sockets, one
// write() each, Messages rounds, and its CPU time is divided by the writes.
// Compare cpu_per_delivery_us of fanout with it.
func Floor(ctx context.Context, o Options, self string) (Result, error) {
	o.URL = "ws://127.0.0.1/"
	if err := o.check(); err != nil {
		return Result{}, err
	}
	cmd := exec.CommandContext(ctx, self, "bench", "floor-server")
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return Result{}, err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	out := bufio.NewScanner(stdout)
	if !out.Scan() {
		return Result{}, fmt.Errorf("floor server did not start")
	}
	addr := strings.TrimSpace(out.Text())
	// The command first: the child accepts while we dial (a listen backlog
	// is far smaller than 10,000).
	fmt.Fprintf(stdin, "%d %d %d\n", o.Conns, o.Messages, o.Size)
	var got atomic.Int64
	conns := make([]net.Conn, 0, o.Conns)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < o.Conns; i++ {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(o.Sources[i%len(o.Sources)])}, Control: bindNoPort}
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return Result{}, err
		}
		conns = append(conns, c)
		go func() {
			buf := make([]byte, 4096)
			for {
				n, err := c.Read(buf)
				got.Add(int64(n))
				if err != nil {
					return
				}
			}
		}()
	}
	if !out.Scan() {
		return Result{}, fmt.Errorf("floor server failed")
	}
	var cpuNS, secs float64
	fmt.Sscan(out.Text(), &cpuNS, &secs)
	writes := float64(o.Conns * o.Messages)
	return Result{Scenario: "floor", Conns: o.Conns, Messages: o.Messages, Deliveries: int64(writes),
		CPUPerDelivUS: cpuNS / 1e3 / writes, Seconds: secs}, nil
}

// FloorServer is the child side of Floor: it prints its address, accepts
// connections, then on "conns rounds size" writes size bytes to every
// connection per round, one write() each, and prints its CPU time (ns) and
// the seconds taken.
func FloorServer(stdin io.Reader, stdout io.Writer) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, ln.Addr().String())
	var n, rounds, size int
	if _, err := fmt.Fscan(stdin, &n, &rounds, &size); err != nil {
		return err
	}
	conns := make([]net.Conn, 0, n)
	for len(conns) < n {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		conns = append(conns, c)
	}
	payload := make([]byte, size)
	before, _ := readProc(os.Getpid())
	start := time.Now()
	for r := 0; r < rounds; r++ {
		for _, c := range conns {
			if _, err := c.Write(payload); err != nil {
				return err
			}
		}
	}
	after, _ := readProc(os.Getpid())
	fmt.Fprintf(stdout, "%d %f\n", (after.cpu - before.cpu).Nanoseconds(), time.Since(start).Seconds())
	return nil
}

// Storm starts a server (self serve …), connects Conns SDK clients, stops
// the server with SIGTERM and starts it again, and measures how long it
// takes until every client is OPEN again and how many resumed their
// session (with the in-memory engine a restart loses sessions: pass
// serverArgs "--redis …" to keep them).
func Storm(ctx context.Context, o Options, self string, serverArgs []string) (Result, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return Result{}, err
	}
	addr := ln.Addr().String()
	ln.Close()
	o.URL = "ws://" + addr + "/ws"
	if err := o.check(); err != nil {
		return Result{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	start := func() (*exec.Cmd, error) {
		args := append([]string{"serve", "--addr", addr, "--rate-limit", "-1", "--log-level", "error"}, serverArgs...)
		cmd := exec.Command(self, args...)
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if c, err := net.Dial("tcp", addr); err == nil {
				c.Close()
				return cmd, nil
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("server did not start")
			}
		}
	}
	srv, err := start()
	if err != nil {
		return Result{}, err
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	o.progress("storm: connecting %d clients", o.Conns)
	clients := make([]*client.Client, o.Conns)
	// After the SIGTERM (restarting), closedAt is when each client left
	// OPEN and backAt when it had its welcome again (unix nanos), both
	// taken from its events: the progress lines show how long after the
	// SIGTERM the clients learned of the restart, and the wait for all of
	// them reads one counter instead of every client's state.
	var restarting atomic.Bool
	var back, resumed, again atomic.Int64
	closedAt := make([]atomic.Int64, o.Conns)
	backAt := make([]atomic.Int64, o.Conns)
	errc := make(chan error, 1)
	dialEach(ctx, len(clients), func(i int) {
		d := o.dialer(i)
		c, err := client.Dial(ctx, o.URL, &client.Options{User: fmt.Sprint("s", i), Dialer: d, EventBuffer: 16})
		if err != nil {
			select {
			case errc <- err:
			default:
			}
			return
		}
		clients[i] = c
		go func() {
			for ev := range c.Events() {
				switch {
				case !restarting.Load():
				case ev.State != nil && ev.State.Prev == client.StateOpen:
					closedAt[i].CompareAndSwap(0, time.Now().UnixNano())
				case ev.Type == protocol.TypeWelcome && closedAt[i].Load() != 0:
					if !backAt[i].CompareAndSwap(0, time.Now().UnixNano()) {
						again.Add(1) // its connection ended again
						continue
					}
					if ev.Welcome.Resumed {
						resumed.Add(1)
					}
					back.Add(1)
				}
			}
		}()
	})
	defer func() {
		for _, c := range clients {
			if c != nil {
				c.Close()
			}
		}
	}()
	if err := ctx.Err(); err != nil {
		return Result{}, fmt.Errorf("timed out connecting: %w", err)
	}
	select {
	case err := <-errc:
		return Result{}, err
	default:
	}
	o.progress("storm: %d connected; restarting the server", o.Conns)
	o.PIDs = nil // the servers' CPU is read from the restarted one below
	redisBefore, err := o.readServers()
	if err != nil {
		return Result{}, err
	}
	restarting.Store(true)
	stopping := time.Now()
	srv.Process.Signal(syscall.SIGTERM)
	srv.Wait()
	t0 := time.Now()
	if srv, err = start(); err != nil {
		return Result{}, err
	}
	o.progress("storm: the server stopped in %s and listened again %s later",
		t0.Sub(stopping).Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
	closes := make([]float64, 0, o.Conns)
	for i := range closedAt {
		if at := closedAt[i].Load(); at != 0 {
			closes = append(closes, time.Duration(at-stopping.UnixNano()).Seconds())
		}
	}
	if len(closes) > 0 {
		sort.Float64s(closes)
		o.progress("storm: %d clients had seen the close by then: after %.2f s (first), %.2f (median), %.2f (last) from the SIGTERM",
			len(closes), closes[0], closes[len(closes)/2], closes[len(closes)-1])
	}
	report := time.Now().Add(2 * time.Second)
	for back.Load() < int64(o.Conns) {
		if time.Now().After(report) {
			// Who is still out, and why: state, attempts, the last close.
			report = time.Now().Add(2 * time.Second)
			why := map[string]int{}
			for i, c := range clients {
				if backAt[i].Load() != 0 {
					continue
				}
				info := c.Info()
				code := 0
				if info.LastClose != nil {
					code = int(info.LastClose.Code)
				}
				why[fmt.Sprintf("%s/attempt %d/close %d", info.State, info.Attempt, code)]++
			}
			o.progress("storm: %d of %d back after %s; the others: %v", back.Load(), o.Conns, time.Since(t0).Round(time.Millisecond), why)
		}
		if ctx.Err() != nil {
			return Result{}, fmt.Errorf("%d of %d clients back before the timeout", back.Load(), o.Conns)
		}
		time.Sleep(20 * time.Millisecond)
	}
	last := int64(0)
	for i := range backAt {
		last = max(last, backAt[i].Load())
	}
	if n := again.Load(); n > 0 {
		o.progress("storm: %d more welcomes after the restart than clients: connections that ended again", n)
	}
	r := Result{Scenario: "storm", Conns: o.Conns, Seconds: time.Duration(last - t0.UnixNano()).Seconds(), Resumed: int(resumed.Load())}
	// The restarted server's CPU from its start until every client was
	// back: its cost per resume (the set-ups, and the rest of its start);
	// Redis's (--redis) from the SIGTERM on, the old server's saves
	// included.
	if st, err := readProc(srv.Process.Pid); err == nil {
		r.CPUPerConnUS = st.cpu.Seconds() * 1e6 / float64(o.Conns)
	}
	if redisAfter, err := o.readServers(); err != nil {
		o.progress("storm: Redis not read: %v", err)
	} else {
		o.redisPerUnit(redisBefore, redisAfter, int64(o.Conns), &r.RedisCPUPerConnUS, &r.RedisCmdsPerConn)
	}
	return r, nil
}
