package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tether-chat/tether/auth"
	"github.com/tether-chat/tether/internal/testbin"
	"github.com/tether-chat/tether/internal/testnet"
	"github.com/tether-chat/tether/protocol"
	"github.com/tether-chat/tether/server"
)

const wait = 10 * time.Second

// startServer runs a Tether server in this process on a real socket.
func startServer(t *testing.T, cfg server.Config) (*server.Server, string) {
	t.Helper()
	cfg.Logger = slog.New(slog.DiscardHandler)
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		hs.Close()
	})
	return srv, strings.TrimPrefix(hs.URL, "http://")
}

// fast reconnects quickly, for tests.
func fast(user string) *Options {
	return &Options{User: user, BaseDelay: 20 * time.Millisecond, MaxDelay: 200 * time.Millisecond,
		HeartbeatInterval: 200 * time.Millisecond, HeartbeatTimeout: time.Second}
}

func dialT(t *testing.T, addr string, o *Options) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c, err := Dial(ctx, "ws://"+addr+"/ws", o)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// next returns the next event of type typ (skipping others), or fails.
func next(t *testing.T, c *Client, typ string) Event {
	t.Helper()
	deadline := time.After(wait)
	for {
		select {
		case ev, ok := <-c.Events():
			if !ok {
				t.Fatalf("events closed while waiting for %s", typ)
			}
			if ev.Type == typ {
				return ev
			}
		case <-deadline:
			t.Fatalf("no %s event within %s", typ, wait)
		}
	}
}

func waitState(t *testing.T, c *Client, want State) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for c.State() != want {
		if time.Now().After(deadline) {
			t.Fatalf("state %s, want %s", c.State(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSendDirectJoinWho(t *testing.T) {
	_, addr := startServer(t, server.Config{})
	ctx := context.Background()
	alice, bob := dialT(t, addr, fast("alice")), dialT(t, addr, fast("bob"))
	for _, c := range []*Client{alice, bob} {
		if err := c.Join(ctx, "ops"); err != nil {
			t.Fatal(err)
		}
	}
	ack, err := alice.Send(ctx, "ops", "deploying")
	if err != nil || ack.Seq != 1 {
		t.Fatalf("Send = %+v, %v", ack, err)
	}
	if m := next(t, bob, protocol.TypeChat).Chat; m.Text != "deploying" || m.From != "alice" || m.Room != "ops" {
		t.Fatalf("bob got %+v", m)
	}
	if _, err := bob.Direct(ctx, "alice", "psst"); err != nil {
		t.Fatal(err)
	}
	if d := next(t, alice, protocol.TypeDirect).Direct; d.Text != "psst" || d.From != "bob" {
		t.Fatalf("alice got %+v", d)
	}
	m, err := bob.Who(ctx, "ops")
	if err != nil || fmt.Sprint(m.Users) != "[alice bob]" {
		t.Fatalf("Who = %+v, %v", m, err)
	}
	var pe *protocol.Error
	if _, err := alice.Send(ctx, "nowhere", "x"); !errors.As(err, &pe) || pe.Code != protocol.ErrNotMember {
		t.Fatalf("Send to a room not joined: %v, want not_member", err)
	}
	if _, err := alice.Direct(ctx, "nobody", "x"); !errors.As(err, &pe) || pe.Code != protocol.ErrUserOffline {
		t.Fatalf("Direct to nobody: %v, want user_offline", err)
	}
}

func TestOptionsAreValidatedAtDial(t *testing.T) {
	for _, o := range []*Options{
		{HeartbeatInterval: -time.Second},
		{BaseDelay: -1},
		{Factor: 0.5},
		{Jitter: 2},
		{MaxRetries: -1},
	} {
		if _, err := Dial(context.Background(), "ws://127.0.0.1:1/ws", o); !errors.Is(err, ErrInvalidOptions) {
			t.Errorf("Dial with %+v: err = %v, want ErrInvalidOptions", o, err)
		}
	}
	if _, err := New("http://example.com/ws", nil); !errors.Is(err, ErrInvalidOptions) {
		t.Errorf("http URL accepted: %v", err)
	}
}

func TestBackoffBounds(t *testing.T) {
	o, _ := (&Options{}).withDefaults()
	for n := 1; n <= 40; n++ {
		pure := float64(500*time.Millisecond) * pow(1.8, n-1)
		pure = min(pure, float64(15*time.Second))
		lo, mid, hi := o.Backoff(n, 0), o.Backoff(n, 0.5), o.Backoff(n, 0.999999)
		if lo != time.Duration(pure*0.8) || mid != time.Duration(pure) || hi > time.Duration(pure*1.2) || hi < mid {
			t.Fatalf("attempt %d: %s %s %s around %s", n, lo, mid, hi, time.Duration(pure))
		}
	}
}

func pow(b float64, n int) float64 {
	r := 1.0
	for i := 0; i < n; i++ {
		r *= b
	}
	return r
}

// TestHalfOpenIsDetectedByHeartbeat: a proxy that stops forwarding (cable
// pulled) is noticed by the client's heartbeat, which closes with 4000 and
// reconnects as soon as the network is back.
func TestHalfOpenIsDetectedByHeartbeat(t *testing.T) {
	_, addr := startServer(t, server.Config{})
	px := testnet.NewProxy(t, addr)
	c := dialT(t, px.Addr(), fast("hal"))
	px.Freeze()
	frozen := time.Now()
	waitState(t, c, StateReconnecting)
	info := c.Info()
	if info.LastClose == nil || info.LastClose.Code != protocol.CloseHeartbeat {
		t.Fatalf("last close = %+v, want 4000", info.LastClose)
	}
	t.Logf("dead connection detected after %s (timeout 1s)", time.Since(frozen).Round(time.Millisecond))
	px.Thaw()
	waitState(t, c, StateOpen)
}

func TestTerminalCloseStopsRetrying(t *testing.T) {
	srv, addr := startServer(t, server.Config{AuthSecret: "k"})
	expired, _ := auth.Sign([]byte("k"), auth.Claims{Subject: "tess", ExpiresAt: time.Now().Add(-time.Minute).Unix()})
	o := fast("")
	o.Token = expired
	_, err := Dial(context.Background(), "ws://"+addr+"/ws", o)
	var ce *CloseError
	if !errors.As(err, &ce) || ce.Code != protocol.CloseUnauthorized || ce.Reason != "token expired" {
		t.Fatalf("Dial = %v, want a 4401 token expired CloseError", err)
	}
	time.Sleep(300 * time.Millisecond)
	if n := srv.Stats().Refused; n != 1 {
		t.Fatalf("the server refused %d connections: the client retried a terminal close", n)
	}
	good, _ := auth.Sign([]byte("k"), auth.Claims{Subject: "tess", ExpiresAt: time.Now().Add(time.Hour).Unix()})
	o.Token = good
	c := dialT(t, addr, o)
	if c.Info().User != "tess" {
		t.Fatalf("user = %q", c.Info().User)
	}
}

// TestManyForcedDropsLeaveOneConnection: 500 drops in a row end with one
// connection and no growth in goroutines.
func TestManyForcedDropsLeaveOneConnection(t *testing.T) {
	srv, addr := startServer(t, server.Config{PresenceGrace: time.Millisecond})
	px := testnet.NewProxy(t, addr)
	o := fast("dropper")
	o.BaseDelay, o.MaxDelay, o.StableAfter = time.Millisecond, 5*time.Millisecond, time.Hour
	c := dialT(t, px.Addr(), o)
	var base int
	for i := 1; i <= 500; i++ {
		px.Cut()
		deadline := time.Now().Add(wait)
		for c.Info().Attempt != i || c.State() != StateOpen {
			if time.Now().After(deadline) {
				t.Fatalf("drop %d: attempt %d state %s", i, c.Info().Attempt, c.State())
			}
			time.Sleep(time.Millisecond)
		}
		if i == 50 {
			base = runtime.NumGoroutine()
		}
	}
	deadline := time.Now().Add(wait)
	for srv.Stats().Connections != 1 || px.Live() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("server connections %d, proxied %d, want 1", srv.Stats().Connections, px.Live())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > base+5 {
		t.Fatalf("goroutines grew from %d (after 50 drops) to %d (after 500)", base, n)
	}
	ack, err := c.Send(context.Background(), "general", "still here")
	if err != nil || ack.Seq == 0 {
		t.Fatalf("Send after 500 drops: %+v %v", ack, err)
	}
}

func TestCloseLeavesNoGoroutines(t *testing.T) {
	_, addr := startServer(t, server.Config{})
	time.Sleep(20 * time.Millisecond)
	base := runtime.NumGoroutine()
	for i := 0; i < 20; i++ {
		c := dialT(t, addr, fast(fmt.Sprint("u", i)))
		c.Send(context.Background(), "general", "hi")
		c.Close()
		if _, ok := <-c.Events(); ok {
			for range c.Events() {
			}
		}
	}
	// a client closed while the server is unreachable, mid-backoff
	c, err := New("ws://127.0.0.1:1/ws", fast("x"))
	if err != nil {
		t.Fatal(err)
	}
	go c.Connect(context.Background())
	time.Sleep(100 * time.Millisecond)
	c.Close()
	if _, err := c.Send(context.Background(), "general", "late"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Send after Close: %v", err)
	}
	deadline := time.Now().Add(wait)
	for runtime.NumGoroutine() > base+2 {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("goroutines %d, baseline %d:\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestOutboxFullIsAnError(t *testing.T) {
	c, err := New("ws://127.0.0.1:1/ws", &Options{OutboxLimit: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	for i := 0; i < 2; i++ {
		go c.Send(ctx, "general", "queued")
	}
	deadline := time.Now().Add(wait)
	for c.Info().Pending != 2 {
		if time.Now().After(deadline) {
			t.Fatal("messages not queued")
		}
		time.Sleep(time.Millisecond)
	}
	if _, err := c.Send(context.Background(), "general", "one too many"); !errors.Is(err, ErrOutboxFull) {
		t.Fatalf("err = %v, want ErrOutboxFull", err)
	}
	cancel()
}

// --- against a real server process, killed and restarted ---------------

var binary string

func TestMain(m *testing.M) { testbin.Main(m, "..", &binary) }

type proc struct {
	t    *testing.T
	addr string
	cmd  *exec.Cmd
}

func startProc(t *testing.T, addr string) *proc {
	t.Helper()
	cmd := exec.Command(binary, "serve", "--addr", addr, "--log-level", "warn", "--rate-limit", "-1")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, addr: addr, cmd: cmd}
	t.Cleanup(func() { p.signal(syscall.SIGKILL) })
	deadline := time.Now().Add(wait)
	for {
		if r, err := http.Get("http://" + addr + "/healthz"); err == nil {
			r.Body.Close()
			return p
		}
		if time.Now().After(deadline) {
			t.Fatal("server process did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *proc) signal(sig syscall.Signal) {
	if p.cmd.ProcessState == nil {
		p.cmd.Process.Signal(sig)
		p.cmd.Wait()
	}
}

// TestServerRestartUnderSteadySends: while alice sends a steady stream,
// the server process is stopped and started again; every message alice
// got an ack for appears exactly once at bob, in order.
func TestServerRestartUnderSteadySends(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) { restartUnderSends(t, sig) })
	}
}

func restartUnderSends(t *testing.T, sig syscall.Signal) {
	addr := testnet.FreeAddr(t)
	srv := startProc(t, addr)
	alice := dialT(t, addr, fast("alice"))
	bob := dialT(t, addr, fast("bob"))

	// bob behaves like an application: it shows each message once (by
	// epoch and seq), and when told that a gap could not be replayed
	// (recovered: false, e.g. a restarted in-memory server) it pages back
	// through history.
	var mu sync.Mutex
	got := map[string]int{}
	seen := map[string]bool{}
	var order []int
	live := map[string][]int{} // epoch -> message numbers received live, in arrival order
	record := func(m protocol.Chat, isLive bool) {
		mu.Lock()
		defer mu.Unlock()
		key := fmt.Sprint(m.Epoch, ":", m.Seq)
		if seen[key] || !strings.HasPrefix(m.Text, "m") {
			return
		}
		seen[key] = true
		var n int
		fmt.Sscanf(m.Text, "m%d", &n)
		got[m.Text]++
		order = append(order, n)
		if isLive {
			live[m.Epoch] = append(live[m.Epoch], n)
		}
	}
	bobDone := make(chan struct{})
	go func() {
		defer close(bobDone)
		for ev := range bob.Events() {
			switch {
			case ev.Type == protocol.TypeChat:
				record(*ev.Chat, true)
			case ev.Type == protocol.TypeRecovered && !ev.Recovered.Recovered && ev.Recovered.Room != "":
				ctx, cancel := context.WithTimeout(context.Background(), wait)
				page, err := bob.History(ctx, ev.Recovered.Room, 0, 0, 100)
				cancel()
				if err == nil {
					for _, m := range page.Messages {
						record(m, false)
					}
				}
			}
		}
	}()

	const total = 300
	acked := make([]bool, total)
	sendDone := make(chan struct{})
	go func() {
		defer close(sendDone)
		for i := 0; i < total; i++ {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			if _, err := alice.Send(ctx, "general", fmt.Sprintf("m%d", i)); err == nil {
				acked[i] = true
			}
			cancel()
			time.Sleep(2 * time.Millisecond)
		}
	}()
	time.Sleep(250 * time.Millisecond)
	srv.signal(sig)
	time.Sleep(300 * time.Millisecond)
	startProc(t, addr)
	<-sendDone

	// Everything acked after the restart must reach bob; with SIGTERM (the
	// server drains before closing) everything acked at all must.
	deadline := time.Now().Add(wait)
	for {
		mu.Lock()
		missing := 0
		for i := 0; i < total; i++ {
			if acked[i] && got[fmt.Sprintf("m%d", i)] == 0 {
				missing++
			}
		}
		mu.Unlock()
		if missing == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	alice.Close()
	bob.Close()
	<-bobDone
	nAcked := 0
	for i := 0; i < total; i++ {
		if acked[i] {
			nAcked++
		}
		if n := got[fmt.Sprintf("m%d", i)]; n > 1 {
			t.Fatalf("m%d arrived %d times at bob", i, n)
		}
	}
	// History pages fill a gap after the fact, so the order is checked on
	// what arrived live: within an epoch, strictly alice's order.
	for epoch, ns := range live {
		for i := 1; i < len(ns); i++ {
			if ns[i] <= ns[i-1] {
				t.Fatalf("epoch %s: bob got m%d after m%d", epoch, ns[i], ns[i-1])
			}
		}
	}
	lost := []int{}
	for i := 0; i < total; i++ {
		if acked[i] && got[fmt.Sprintf("m%d", i)] == 0 {
			lost = append(lost, i)
		}
	}
	t.Logf("%s: %d/%d acked, %d at bob, lost %v", sig, nAcked, total, len(order), lost)
	if nAcked != total {
		t.Fatalf("only %d of %d messages were acked: the outbox must deliver all of them", nAcked, total)
	}
	if sig == syscall.SIGTERM && len(lost) > 0 {
		t.Fatalf("acked but never delivered to bob: %v", lost)
	}
	// After SIGKILL an in-memory engine loses what was in flight to bob at
	// the instant of the kill: written to bob's socket but reset before bob
	// read it, with the history gone with the process. That is one
	// contiguous run of messages; anything else lost would be a bug.
	for i := 1; i < len(lost); i++ {
		if lost[i] != lost[i-1]+1 {
			t.Fatalf("lost messages are not one in-flight run: %v", lost)
		}
	}
}
