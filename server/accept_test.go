package server

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

const wsHeaders = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n" +
	"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"

func TestParseUpgrade(t *testing.T) {
	for _, tc := range []struct {
		name, head string
		take       bool
		id, user   string
	}{
		{"plain", "GET /ws HTTP/1.1\r\nHost: h\r\n" + wsHeaders, true, "", ""},
		{"client id", "GET /ws/alice HTTP/1.1\r\nHost: h\r\n" + wsHeaders, true, "alice", ""},
		{"query", "GET /ws?user=bob&since=%7B%7D HTTP/1.1\r\nHost: h\r\n" + wsHeaders, true, "", "bob"},
		{"header names in any case", "GET /ws HTTP/1.1\r\nhost: h\r\nuPgRaDe: WebSocket\r\nconnection: keep-alive, Upgrade\r\n", true, "", ""},
		{"other path", "GET /wss HTTP/1.1\r\nHost: h\r\n" + wsHeaders, false, "", ""},
		{"two segments", "GET /ws/a/b HTTP/1.1\r\nHost: h\r\n" + wsHeaders, false, "", ""},
		{"dot segment", "GET /ws/.. HTTP/1.1\r\nHost: h\r\n" + wsHeaders, false, "", ""},
		{"empty id", "GET /ws/ HTTP/1.1\r\nHost: h\r\n" + wsHeaders, false, "", ""},
		{"escaped path", "GET /ws/%61lice HTTP/1.1\r\nHost: h\r\n" + wsHeaders, false, "", ""},
		{"HTTP/1.0", "GET /ws HTTP/1.0\r\nHost: h\r\n" + wsHeaders, false, "", ""},
		{"POST", "POST /ws HTTP/1.1\r\nHost: h\r\n" + wsHeaders, false, "", ""},
		{"no Host", "GET /ws HTTP/1.1\r\n" + wsHeaders, false, "", ""},
		{"two Hosts", "GET /ws HTTP/1.1\r\nHost: h\r\nHost: i\r\n" + wsHeaders, false, "", ""},
		{"no Upgrade", "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n", false, "", ""},
		{"folded header", "GET /ws HTTP/1.1\r\nHost: h\r\n" + wsHeaders + "X-A: 1\r\n  2\r\n", false, "", ""},
		{"space before colon", "GET /ws HTTP/1.1\r\nHost : h\r\n" + wsHeaders, false, "", ""},
		{"control byte in target", "GET /ws?\x01 HTTP/1.1\r\nHost: h\r\n" + wsHeaders, false, "", ""},
	} {
		r, ok := parseUpgrade([]byte(tc.head))
		if ok != tc.take {
			t.Errorf("%s: taken = %v, want %v", tc.name, ok, tc.take)
			continue
		}
		if !ok {
			continue
		}
		if r.clientID != tc.id || r.query("user") != tc.user || r.host != "h" {
			t.Errorf("%s: client_id %q user %q host %q", tc.name, r.clientID, r.query("user"), r.host)
		}
		if !r.upgradeWebSocket || !r.connectionUpgrade {
			t.Errorf("%s: %+v", tc.name, r)
		}
	}
}

// TestQueryMatchesURLParseQuery: wsRequest.query reads a parameter as
// url.ParseQuery(raw).Get(name) does.
func TestQueryMatchesURLParseQuery(t *testing.T) {
	for _, raw := range queryCorpus {
		for _, name := range []string{"user", "session", "since", "token", "a b", ""} {
			checkQuery(t, raw, name)
		}
	}
}

var queryCorpus = []string{"", "user=bob", "user=bob&user=eve", "session=s1&user=%62ob", "user=a+b", "user=%zz&user=ok",
	"user;x=1&user=2", "=v&user", "user", "a%20b=1", "a+b=2&user=&user=x", "&&user=1&", "since=%7B%22general%22%3A%5B%22e%22%2C3%5D%7D",
	"token=abc.def.ghi", "user=%", "us%65r=z", "user=a=b", "x=1;user=2"}

func checkQuery(t *testing.T, raw, name string) {
	t.Helper()
	want, _ := url.ParseQuery(raw)
	r := wsRequest{rawQuery: raw}
	if got := r.query(name); got != want.Get(name) {
		t.Errorf("query(%q) of %q = %q, url.ParseQuery says %q", name, raw, got, want.Get(name))
	}
}

func FuzzQuery(f *testing.F) {
	for _, raw := range queryCorpus {
		f.Add(raw, "user")
	}
	f.Fuzz(func(t *testing.T, raw, name string) { checkQuery(t, raw, name) })
}

// rawRequest sends req on a new connection and returns the status line of
// the answer and the rest of what arrived before the server closed or went
// quiet.
func rawRequest(t *testing.T, addr, req string) (status string, rest []byte) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(waitFor))
	br := bufio.NewReader(conn)
	status, err = br.ReadString('\n')
	if err != nil {
		t.Fatalf("%q: no answer: %v", req, err)
	}
	conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	rest, _ = readAll(br)
	return strings.TrimSpace(status), rest
}

func readAll(br *bufio.Reader) ([]byte, error) {
	var b bytes.Buffer
	_, err := b.ReadFrom(br)
	return b.Bytes(), err
}

// TestFastPathAnswersAsNetHTTPDoes: whatever the fast path does not take
// is served by net/http exactly as under Handler() alone, and what it
// takes gets the same answer.
func TestFastPathAnswersAsNetHTTPDoes(t *testing.T) {
	fast := newTestServer(t, Config{AutoJoin: "-"})
	plain := newHandlerTestServer(t, Config{AutoJoin: "-"})
	bigCookie := "Cookie: c=" + strings.Repeat("x", 10<<10) + "\r\n"
	for _, tc := range []struct {
		name, req, want string
	}{
		{"handshake", "GET /ws/a HTTP/1.1\r\nHost: h\r\n" + wsHeaders + "\r\n", "101"},
		{"escaped client id", "GET /ws/%61lice HTTP/1.1\r\nHost: h\r\n" + wsHeaders + "\r\n", "101"},
		{"head bigger than the fast path's buffer", "GET /ws/big HTTP/1.1\r\nHost: h\r\n" + bigCookie + wsHeaders + "\r\n", "101"},
		{"folded header", "GET /ws/f HTTP/1.1\r\nHost: h\r\n" + wsHeaders + "X-A: 1\r\n 2\r\n\r\n", "101"},
		{"HTTP/1.0", "GET /ws/old HTTP/1.0\r\nHost: h\r\n" + wsHeaders + "\r\n", "101"},
		{"no Host", "GET /ws/n HTTP/1.1\r\n" + wsHeaders + "\r\n", "400"},
		{"no Upgrade", "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", "400"},
		{"POST", "POST /ws HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", "405"},
		{"other path under /ws", "GET /ws/a/b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", "404"},
		{"unknown path", "GET /wsx HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", "404"},
		{"health", "GET /healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", "200"},
		{"not HTTP", "HELLO\r\n\r\n", "400"},
	} {
		var codes []string
		for _, ts := range []*testServer{fast, plain} {
			status, _ := rawRequest(t, strings.TrimPrefix(ts.url, "http://"), tc.req)
			f := strings.Fields(status)
			if len(f) < 2 {
				t.Fatalf("%s: status line %q", tc.name, status)
			}
			codes = append(codes, f[1])
		}
		if codes[0] != codes[1] || codes[0] != tc.want {
			t.Errorf("%s: Serve answered %s, Handler() %s, want %s", tc.name, codes[0], codes[1], tc.want)
		}
	}
}

// TestHandedOffConnectionStaysKeptAlive: a connection whose first request
// is not a handshake is net/http's for all its requests.
func TestHandedOffConnectionStaysKeptAlive(t *testing.T) {
	ts := newTestServer(t, Config{})
	conn, err := net.Dial("tcp", strings.TrimPrefix(ts.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	for _, path := range []string{"/healthz", "/readyz", "/healthz"} {
		if _, err := conn.Write([]byte("GET " + path + " HTTP/1.1\r\nHost: h\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		conn.SetReadDeadline(time.Now().Add(waitFor))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		body := make([]byte, resp.ContentLength)
		if _, err := io.ReadFull(resp.Body, body); err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s: %d %q %v", path, resp.StatusCode, body, err)
		}
	}
}

// TestHandshakeHeadOneByteAtATime: the fast path reads a request head that
// arrives in pieces, and a big head handed to net/http still gets a
// working connection.
func TestHandshakeHeadOneByteAtATime(t *testing.T) {
	ts := newTestServer(t, Config{AutoJoin: "-"})
	for name, extra := range map[string]string{"fast path": "", "handed to net/http": "Cookie: c=" + strings.Repeat("y", 9<<10) + "\r\n"} {
		conn, err := net.Dial("tcp", strings.TrimPrefix(ts.ws, "ws://"))
		if err != nil {
			t.Fatal(err)
		}
		req := []byte("GET /ws/slow?user=ignored HTTP/1.1\r\nHost: h\r\n" + extra + wsHeaders + "\r\n")
		for i := 0; i < len(req); {
			step := 1
			if i < len(extra) {
				step = 512 // a big cookie in chunks, the rest byte by byte
			}
			step = min(step, len(req)-i)
			if _, err := conn.Write(req[i : i+step]); err != nil {
				t.Fatal(err)
			}
			if i += step; step == 1 && i%16 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
		conn.Write(textFrame([]byte(`{"type":"ping","id":"after-slow-head"}`)))
		got := readUntil(t, conn, `"after-slow-head"`)
		if !bytes.HasPrefix(got, []byte("HTTP/1.1 101 ")) || !bytes.Contains(got, []byte(`"user":"slow"`)) {
			t.Fatalf("%s: answer %q", name, got)
		}
		conn.Close()
	}
}

// TestSilentConnectionsAreClosed: a connection that sends an incomplete
// head, or nothing, is closed after the header timeout, and one that
// closes at once costs nothing.
func TestSilentConnectionsAreClosed(t *testing.T) {
	ts := newTestServer(t, Config{HeaderTimeout: 300 * time.Millisecond})
	addr := strings.TrimPrefix(ts.url, "http://")
	for _, sent := range []string{"", "GET /ws HTTP/1.1\r\nHost: h\r\n"} {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conn.Write([]byte(sent))
		conn.SetReadDeadline(time.Now().Add(waitFor))
		start := time.Now()
		n, err := conn.Read(make([]byte, 1))
		if n != 0 || err == nil || time.Since(start) > waitFor-time.Second {
			t.Fatalf("after %q: read %d, %v; want the server to close", sent, n, err)
		}
		conn.Close()
	}
	for range 20 {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conn.Close()
	}
	c := connect(t, ts, "still-served")
	c.roundTrip("after-silent-ones")
	if n := ts.Stats().Connections; n != 1 {
		t.Fatalf("%d connections, want 1", n)
	}
}
