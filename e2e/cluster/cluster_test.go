// Package cluster tests several tether processes sharing a real
// redis-server, behind a real nginx with the configuration shipped in
// deploy/nginx/tether.conf: chat and presence across nodes, the loss of a
// node (SIGKILL), and a Redis restart under load.
package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tether-chat/tether/client"
	"github.com/tether-chat/tether/internal/testbin"
	"github.com/tether-chat/tether/internal/testnet"
	"github.com/tether-chat/tether/internal/testredis"
	"github.com/tether-chat/tether/protocol"
)

const wait = 20 * time.Second

var binary string

func TestMain(m *testing.M) { testbin.Main(m, "../..", &binary) }

type node struct {
	addr string
	cmd  *exec.Cmd
}

func startNode(t *testing.T, redisURL, name string, extra ...string) *node {
	t.Helper()
	n := &node{addr: testnet.FreeAddr(t)}
	args := []string{"serve", "--addr", n.addr, "--redis", redisURL, "--node-id", name,
		"--presence-ttl", "3s", "--presence-grace", "1s", "--rate-limit", "-1", "--log-level", "warn"}
	n.cmd = exec.Command(binary, append(args, extra...)...)
	n.cmd.Stderr = os.Stderr
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.kill() })
	testbin.WaitReady(t, n.addr, http.StatusOK)
	return n
}

func (n *node) kill() {
	if n.cmd.ProcessState == nil {
		n.cmd.Process.Signal(syscall.SIGKILL)
		n.cmd.Wait()
	}
}

// startNginx runs nginx with deploy/nginx/tether.conf in front of nodes.
func startNginx(t *testing.T, nodes []*node) string {
	t.Helper()
	if _, err := exec.LookPath("nginx"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("nginx is not installed (CI=true: a missing dependency is a failure; make test installs it)")
		}
		t.Skip("nginx is not installed; run `make test` to install it")
	}
	shipped, err := os.ReadFile("../../deploy/nginx/tether.conf")
	if err != nil {
		t.Fatal(err)
	}
	addr := testnet.FreeAddr(t)
	conf := string(shipped)
	i := 0
	conf = regexp.MustCompile(`server 127\.0\.0\.1:800[1-3]`).ReplaceAllStringFunc(conf, func(string) string {
		s := "server " + nodes[i%len(nodes)].addr
		i++
		return s
	})
	conf = strings.Replace(conf, "listen 8000;", "listen "+addr+";", 1)
	if i != len(nodes) {
		t.Fatalf("shipped config has %d upstream servers, test has %d nodes", i, len(nodes))
	}
	dir := t.TempDir()
	full := fmt.Sprintf(`daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path %[1]s/body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
%[2]s
}
`, dir, conf)
	path := filepath.Join(dir, "nginx.conf")
	os.WriteFile(path, []byte(full), 0o644)
	cmd := exec.Command("nginx", "-p", dir, "-c", path)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGQUIT)
		cmd.Wait()
	})
	testbin.WaitReady(t, addr, http.StatusOK)
	return addr
}

func dial(t *testing.T, addr, user string) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c, err := client.Dial(ctx, "ws://"+addr+"/ws", &client.Options{User: user,
		BaseDelay: 50 * time.Millisecond, MaxDelay: 500 * time.Millisecond, HeartbeatInterval: time.Second, HeartbeatTimeout: 3 * time.Second})
	if err != nil {
		t.Fatalf("dial %s as %s: %v", addr, user, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// member records, like an application, every chat message of one room
// once, paging history when a gap could not be replayed.
type member struct {
	c     *client.Client
	mu    sync.Mutex
	seen  map[string]bool
	texts []string
	dms   []string
	done  chan struct{}
}

func watch(c *client.Client, room string) *member {
	m := &member{c: c, seen: map[string]bool{}, done: make(chan struct{})}
	record := func(ch protocol.Chat) {
		if ch.Room != room {
			return
		}
		m.mu.Lock()
		defer m.mu.Unlock()
		k := fmt.Sprint(ch.Epoch, ":", ch.Seq)
		if !m.seen[k] {
			m.seen[k] = true
			m.texts = append(m.texts, ch.Text)
		}
	}
	go func() {
		defer close(m.done)
		for ev := range c.Events() {
			switch ev.Type {
			case protocol.TypeChat:
				record(*ev.Chat)
			case protocol.TypeDirect:
				m.mu.Lock()
				m.dms = append(m.dms, ev.Direct.Text)
				m.mu.Unlock()
			case protocol.TypeRecovered:
				if !ev.Recovered.Recovered && ev.Recovered.Room == room {
					ctx, cancel := context.WithTimeout(context.Background(), wait)
					if page, err := c.History(ctx, room, 0, 0, 100); err == nil {
						for _, ch := range page.Messages {
							record(ch)
						}
					}
					cancel()
				}
			}
		}
	}()
	return m
}

func (m *member) snapshot() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.texts...)
}

// checkExactlyOnceInOrder waits until m has every text in want and checks
// that each arrived once, in want's order.
func checkExactlyOnceInOrder(t *testing.T, name string, m *member, want []string) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		got := m.snapshot()
		have := map[string]int{}
		for _, s := range got {
			have[s]++
		}
		missing := 0
		for _, w := range want {
			if have[w] == 0 {
				missing++
			}
		}
		if missing == 0 {
			for s, n := range have {
				if n > 1 {
					t.Fatalf("%s: %q arrived %d times", name, s, n)
				}
			}
			pos := map[string]int{}
			for i, w := range want {
				pos[w] = i
			}
			last := -1
			for _, s := range got {
				if p, ok := pos[s]; ok {
					if p < last {
						t.Fatalf("%s: %q arrived after a later message", name, s)
					}
					last = p
				}
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d of %d acked messages never arrived (got %d)", name, missing, len(want), len(got))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestClusterRoomsDirectAndPresenceAcrossNodes(t *testing.T) {
	rs := testredis.Start(t)
	nodes := []*node{startNode(t, rs.URL, "n1"), startNode(t, rs.URL, "n2"), startNode(t, rs.URL, "n3")}
	ctx := context.Background()
	users := []string{"ann", "ben", "cid"}
	var clients []*client.Client
	var members []*member
	for i, u := range users {
		c := dial(t, nodes[i].addr, u) // one user per node
		if err := c.Join(ctx, "ops"); err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
		members = append(members, watch(c, "ops"))
	}
	var want []string
	for i, c := range clients {
		text := fmt.Sprintf("hello from %s on node %d", users[i], i+1)
		if _, err := c.Send(ctx, "ops", text); err != nil {
			t.Fatal(err)
		}
		want = append(want, text)
	}
	for i, m := range members {
		checkExactlyOnceInOrder(t, users[i], m, want)
	}
	if _, err := clients[0].Direct(ctx, "cid", "private across nodes"); err != nil {
		t.Fatalf("direct to a user on another node: %v", err)
	}
	deadline := time.Now().Add(wait)
	for {
		members[2].mu.Lock()
		n := len(members[2].dms)
		members[2].mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the private message did not reach the other node")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Every node sees the same room.
	for i, c := range clients {
		m, err := c.Who(ctx, "ops")
		if err != nil || m.Count != 3 || strings.Join(m.Users, ",") != "ann,ben,cid" {
			t.Fatalf("node %d sees %+v, %v", i+1, m, err)
		}
	}
	// Every node reports its engine's work, and nothing went wrong.
	for i, n := range nodes {
		if cmds := metric(t, n, "tether_engine_commands_total"); cmds < 3 { // at least a set-up, a join and a who
			t.Fatalf("node %d: %v engine commands", i+1, cmds)
		}
		for _, name := range []string{"tether_engine_streams_lost_total", "tether_engine_subscription_resets_total", "tether_panics_total"} {
			if v := metric(t, n, name); v != 0 {
				t.Fatalf("node %d: %s = %v in a cluster without faults", i+1, name, v)
			}
		}
	}
}

// TestClusterPartnersToldWhenANodeDies: ann, on a node killed with
// SIGKILL, never comes back (her client keeps trying the dead node); ben,
// her private-conversation partner on another node, is told she left
// once her presence expires (--presence-ttl), by the node that swept it,
// and that node posts her leave of the room she was in to the
// application's hook. cid, on the dead node too but a stranger to ben,
// sends him nothing.
func TestClusterPartnersToldWhenANodeDies(t *testing.T) {
	rs := testredis.Start(t)
	var hookMu sync.Mutex
	var hooked []string // "type user room node" of the survivor's posts
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var batch struct {
			Events []struct{ Type, User, Room, Node string }
		}
		if err := json.NewDecoder(r.Body).Decode(&batch); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		hookMu.Lock()
		for _, e := range batch.Events {
			hooked = append(hooked, strings.Join([]string{e.Type, e.User, e.Room, e.Node}, " "))
		}
		hookMu.Unlock()
	}))
	defer app.Close()
	doomed := startNode(t, rs.URL, "n1")
	survivor := startNode(t, rs.URL, "n2", "--hook-url", app.URL, "--hook-secret", "s3cret")
	ctx := context.Background()
	ann, cid := dial(t, doomed.addr, "ann"), dial(t, doomed.addr, "cid")
	if err := ann.Join(ctx, "ops"); err != nil {
		t.Fatal(err)
	}
	ben := dial(t, survivor.addr, "ben")
	var mu sync.Mutex
	var dms, left []string
	go func() {
		for ev := range ben.Events() {
			mu.Lock()
			switch ev.Type {
			case protocol.TypeDirect:
				dms = append(dms, ev.Direct.From)
			case protocol.TypeLeft:
				left = append(left, ev.Left.User)
			}
			mu.Unlock()
		}
	}()
	seen := func() (int, []string) {
		mu.Lock()
		defer mu.Unlock()
		return len(dms), append([]string(nil), left...)
	}
	if _, err := ann.Direct(ctx, "ben", "hello from the doomed node"); err != nil {
		t.Fatal(err)
	}
	if _, err := cid.Who(ctx, "general"); err != nil { // cid is online, and talks to nobody
		t.Fatal(err)
	}
	deadline := time.Now().Add(wait)
	for n, _ := seen(); n < 1; n, _ = seen() {
		if time.Now().After(deadline) {
			t.Fatal("ben never got ann's message")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, l := seen(); len(l) != 0 {
		t.Fatalf("ben was told %v left while their node was up", l)
	}
	doomed.kill()
	killed := time.Now()
	for _, l := seen(); len(l) == 0; _, l = seen() {
		if time.Now().After(deadline.Add(wait)) {
			t.Fatal("ben was never told that ann left")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("ben told after %s (presence TTL 3 s)", time.Since(killed).Round(time.Millisecond))
	time.Sleep(2 * time.Second) // cid was swept in the same round: a left for him would be here by now
	if _, l := seen(); strings.Join(l, ",") != "ann" {
		t.Fatalf("ben was told %v left; want ann, once", l)
	}
	// Everyone is in general too (the auto-join): each of the dead node's
	// room leaves is posted once, by the survivor (the hook is posted on
	// its own, so it may come after ben's notice).
	want := "[leave ann general n2 leave ann ops n2 leave cid general n2]"
	leaves := func() string {
		hookMu.Lock()
		defer hookMu.Unlock()
		var out []string
		for _, h := range hooked {
			if strings.HasPrefix(h, "leave ") {
				out = append(out, h)
			}
		}
		sort.Strings(out)
		return fmt.Sprint(out)
	}
	for got := leaves(); got != want; got = leaves() {
		if time.Now().After(deadline.Add(2 * wait)) {
			t.Fatalf("the survivor posted the leaves %s; want %s", got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(time.Second) // a second post of any of them would be here by now
	if got := leaves(); got != want {
		t.Fatalf("the survivor posted the leaves %s; want %s, each once", got, want)
	}
}

// metric reads one unlabelled metric from a node's /metrics.
func metric(t *testing.T, n *node, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + n.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^` + name + ` (\S+)$`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("/metrics has no %s", name)
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return v
}

// TestClusterNodeLossThroughNginx: under a steady stream of chat, one node
// is killed with SIGKILL; its clients reconnect through nginx to the others
// and resume. Every acked message is seen exactly once by every member, in
// order.
func TestClusterNodeLossThroughNginx(t *testing.T) {
	rs := testredis.Start(t)
	nodes := []*node{startNode(t, rs.URL, "n1"), startNode(t, rs.URL, "n2"), startNode(t, rs.URL, "n3")}
	lb := startNginx(t, nodes)
	ctx := context.Background()
	var members []*member
	for i := 0; i < 6; i++ {
		c := dial(t, lb, fmt.Sprint("m", i))
		if err := c.Join(ctx, "ops"); err != nil {
			t.Fatal(err)
		}
		members = append(members, watch(c, "ops"))
	}
	sender := dial(t, lb, "sender")
	if err := sender.Join(ctx, "ops"); err != nil {
		t.Fatal(err)
	}
	want := sendSteadily(t, sender, 200, 10*time.Millisecond, func(i int) {
		if i == 60 {
			nodes[0].kill()
		}
	})
	moved := 0
	for i, m := range members {
		checkExactlyOnceInOrder(t, fmt.Sprint("m", i), m, want)
		if info := m.c.Info(); info.LastClose != nil {
			moved++
		}
	}
	if moved == 0 {
		t.Fatal("no member was on the killed node: the test proved nothing")
	}
	t.Logf("%d of %d members lost their node and resumed on another", moved, len(members))
}

// sendSteadily sends n messages, one every gap, without waiting for each
// ack, then waits for all the acks; at(i) runs before message i. It
// returns the texts in send order (all acked).
func sendSteadily(t *testing.T, c *client.Client, n int, gap time.Duration, at func(int)) []string {
	t.Helper()
	var pend []*client.Pending
	var texts []string
	for i := 0; i < n; i++ {
		at(i)
		text := fmt.Sprintf("msg %03d", i)
		p, err := c.SendAsync("ops", text)
		if err != nil {
			t.Fatal(err)
		}
		pend = append(pend, p)
		texts = append(texts, text)
		time.Sleep(gap)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i, p := range pend {
		if _, err := p.Wait(ctx); err != nil {
			t.Fatalf("message %d not acked: %v", i, err)
		}
	}
	return texts
}

// TestClusterRedisRestartUnderLoad: Redis is killed and started again
// (empty) while chat flows; /readyz turns 503 and back to 200, the nodes
// recover by themselves, and no acked message is lost.
func TestClusterRedisRestartUnderLoad(t *testing.T) {
	rs := testredis.Start(t)
	nodes := []*node{startNode(t, rs.URL, "n1"), startNode(t, rs.URL, "n2"), startNode(t, rs.URL, "n3")}
	ctx := context.Background()
	var members []*member
	for i, n := range nodes {
		c := dial(t, n.addr, fmt.Sprint("r", i))
		if err := c.Join(ctx, "ops"); err != nil {
			t.Fatal(err)
		}
		members = append(members, watch(c, "ops"))
	}
	sender := dial(t, nodes[1].addr, "sender")
	if err := sender.Join(ctx, "ops"); err != nil {
		t.Fatal(err)
	}
	var sawUnready bool
	want := sendSteadily(t, sender, 150, 10*time.Millisecond, func(i int) {
		if i == 50 {
			rs.Stop()
			deadline := time.Now().Add(wait)
			for testbin.Readyz(nodes[0].addr) != http.StatusServiceUnavailable {
				if time.Now().After(deadline) {
					t.Fatal("/readyz stayed ready with Redis down")
				}
				time.Sleep(50 * time.Millisecond)
			}
			sawUnready = true
			rs.Restart(t, 0)
		}
	})
	if !sawUnready {
		t.Fatal("the restart did not happen")
	}
	for _, n := range nodes {
		testbin.WaitReady(t, n.addr, http.StatusOK)
	}
	for i, m := range members {
		checkExactlyOnceInOrder(t, fmt.Sprint("r", i), m, want)
	}
}
