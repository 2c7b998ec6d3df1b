package transport

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tether-chat/tether/internal/testwait"
	"github.com/tether-chat/tether/internal/ws"
	"github.com/tether-chat/tether/protocol"
)

// recorder is a Handler that keeps what the transport told it.
type recorder struct {
	mu       sync.Mutex
	messages []string
	reads    int
	fails    []protocol.Disconnect
	gone     chan struct{}
	encode   func([]byte) []byte
}

func newRecorder() *recorder { return &recorder{gone: make(chan struct{})} }

func (r *recorder) Limit(byte) int64 { return 1 << 10 }
func (r *recorder) OnMessage(op byte, data []byte) {
	r.mu.Lock()
	r.messages = append(r.messages, string(data))
	r.mu.Unlock()
}
func (r *recorder) OnRead() { r.mu.Lock(); r.reads++; r.mu.Unlock() }
func (r *recorder) OnFail(d protocol.Disconnect) {
	r.mu.Lock()
	r.fails = append(r.fails, d)
	r.mu.Unlock()
}
func (r *recorder) OnGone()             { close(r.gone) }
func (r *recorder) OnPanic(string, any) {}
func (r *recorder) Encode(t []byte) []byte {
	if r.encode != nil {
		return r.encode(t)
	}
	return t
}

func (r *recorder) got() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.messages...)
}

// pair is a transport connection on one end of a loopback TCP connection
// and a raw client on the other.
type pair struct {
	c    *Conn
	h    *recorder
	peer net.Conn
	br   *bufio.Reader
	opt  *Options
}

func newPair(t *testing.T, head string, queueMessages int) *pair {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	nc := <-accepted
	opt := &Options{QueueMessages: queueMessages, QueueBytes: 1 << 20, WriteTimeout: 5 * time.Second,
		ShutdownGrace: time.Second, Counters: &Counters{}}
	p := &pair{c: &Conn{}, h: newRecorder(), peer: peer, br: bufio.NewReader(peer), opt: opt}
	p.c.Init(opt, nc, p.h, []byte(head))
	p.c.Attach()
	p.c.StartReading(nil)
	t.Cleanup(func() {
		peer.Close()
		p.c.CloseSocket()
		select {
		case <-p.h.gone:
		case <-time.After(5 * time.Second):
			t.Error("OnGone was not called")
		}
	})
	return p
}

// frame reads one server frame.
func (p *pair) frame(t *testing.T) (op byte, payload string) {
	t.Helper()
	p.peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	head := make([]byte, 2, 14)
	if _, err := io.ReadFull(p.br, head); err != nil {
		t.Fatalf("reading a frame: %v", err)
	}
	need := 2
	switch head[1] & 0x7f {
	case 126:
		need += 2
	case 127:
		need += 8
	}
	head = head[:need]
	if _, err := io.ReadFull(p.br, head[2:]); err != nil {
		t.Fatal(err)
	}
	if head[0]&0x80 == 0 || head[1]&0x80 != 0 {
		t.Fatalf("server frame header %x: not final, or masked", head)
	}
	n := uint64(head[1] & 0x7f)
	switch n {
	case 126:
		n = uint64(binary.BigEndian.Uint16(head[2:]))
	case 127:
		n = binary.BigEndian.Uint64(head[2:])
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(p.br, data); err != nil {
		t.Fatal(err)
	}
	return head[0] & 0x0f, string(data)
}

func (p *pair) write(t *testing.T, op byte, payload string) {
	t.Helper()
	if _, err := p.peer.Write(ws.AppendClientFrame(nil, true, op, [4]byte{1, 2, 3, 4}, []byte(payload))); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testwait.Until(t, 5*time.Second, what, cond)
}

// TestNothingBeforeTheFirstFrame: the head and the first frame go out
// before anything sent earlier, in one write, once uncorked.
func TestNothingBeforeTheFirstFrame(t *testing.T) {
	p := newPair(t, "HEAD\r\n", 64)
	p.c.Send([]byte("second"))
	p.c.SendFirst([]byte("first"))
	got := make([]byte, 6)
	p.peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(p.br, got); err != nil || string(got) != "HEAD\r\n" {
		t.Fatalf("head %q, %v", got, err)
	}
	for _, want := range []string{"first", "second"} {
		if op, data := p.frame(t); op != ws.OpText || data != want {
			t.Fatalf("got op %d %q, want %q", op, data, want)
		}
	}
	if w := p.opt.Counters.Writes.Load(); w != 1 {
		t.Fatalf("%d writes, want 1", w)
	}
}

// TestMessagesReachTheHandlerAndPingsAreAnswered: whole messages go up,
// once per read OnRead follows, pings are answered with their payload.
func TestMessagesReachTheHandlerAndPingsAreAnswered(t *testing.T) {
	p := newPair(t, "", 64)
	p.c.Uncork()
	p.write(t, ws.OpText, "hello")
	p.write(t, ws.OpPing, "p1")
	if op, data := p.frame(t); op != ws.OpPong || data != "p1" {
		t.Fatalf("got op %d %q, want the pong", op, data)
	}
	waitFor(t, "the message", func() bool { return len(p.h.got()) == 1 })
	if got := p.h.got(); got[0] != "hello" {
		t.Fatalf("handler got %q", got)
	}
	// OnRead follows the read's messages (on the reader, after OnMessage).
	waitFor(t, "OnRead", func() bool {
		p.h.mu.Lock()
		defer p.h.mu.Unlock()
		return p.h.reads >= 1
	})
}

// TestOverflowClosesAsSlowConsumer: past the queue's limit the
// connection is closed with 4008, what was queued dropped, and nothing
// more is accepted.
func TestOverflowClosesAsSlowConsumer(t *testing.T) {
	p := newPair(t, "", 4)
	// Corked: nothing is written, so the queue fills.
	for i := range 4 {
		if !p.c.Send(fmt.Appendf(nil, "m%d", i)) {
			t.Fatalf("message %d refused below the limit", i)
		}
	}
	if p.c.Send([]byte("one too many")) {
		t.Fatal("a fifth message accepted past a limit of four")
	}
	if p.c.Send([]byte("after")) {
		t.Fatal("a message accepted after the close")
	}
	p.c.Uncork()
	op, data := p.frame(t)
	if op != ws.OpClose {
		t.Fatalf("got op %d %q, want the close", op, data)
	}
	code, _, _ := ws.ParseClose([]byte(data))
	if code != ws.Status(protocol.DisconnectSlowConsumer.Code) {
		t.Fatalf("close code %d, want %d", code, protocol.DisconnectSlowConsumer.Code)
	}
	if n := p.opt.Counters.SlowConsumers.Load(); n != 1 {
		t.Fatalf("slow consumers %d", n)
	}
	if n := p.opt.Counters.QueueDrops.Load(); n != 4 {
		t.Fatalf("queue drops %d, want 4", n)
	}
	if c := p.c.Closing(); c == nil || c.Code != protocol.DisconnectSlowConsumer.Code {
		t.Fatalf("Closing() = %v", c)
	}
}

// TestPeerCloseIsEchoedAndEndsTheConnection: the peer's close is echoed,
// the socket closed, and the handler told once.
func TestPeerCloseIsEchoedAndEndsTheConnection(t *testing.T) {
	p := newPair(t, "", 64)
	p.c.Uncork()
	p.write(t, ws.OpClose, string(ws.ClosePayload(1000, "bye")))
	op, data := p.frame(t)
	code, reason, _ := ws.ParseClose([]byte(data))
	if op != ws.OpClose || code != 1000 || reason != "bye" {
		t.Fatalf("echo op %d code %d %q", op, code, reason)
	}
	select {
	case <-p.h.gone:
	case <-time.After(5 * time.Second):
		t.Fatal("OnGone not called after the close handshake")
	}
	closing, peer := p.c.Closed()
	if peer == nil || peer.Code != 1000 || closing == nil {
		t.Fatalf("Closed() = %v, %v", closing, peer)
	}
}

// TestBrokenFrameIsReportedAndClosed: a frame that breaks RFC 6455 is
// reported to the handler and closed with its code (1002 here: an
// unmasked client frame).
func TestBrokenFrameIsReportedAndClosed(t *testing.T) {
	p := newPair(t, "", 64)
	p.c.Uncork()
	p.peer.Write(ws.AppendFrame(nil, ws.OpText, []byte("unmasked")))
	op, data := p.frame(t)
	code, _, _ := ws.ParseClose([]byte(data))
	if op != ws.OpClose || code != 1002 {
		t.Fatalf("got op %d code %d, want a 1002 close", op, code)
	}
	p.h.mu.Lock()
	fails := p.h.fails
	p.h.mu.Unlock()
	if len(fails) != 1 || fails[0].Code != 1002 {
		t.Fatalf("OnFail got %v", fails)
	}
	if len(p.h.got()) != 0 {
		t.Fatalf("the broken frame's message reached the handler: %q", p.h.got())
	}
}

// TestTranslatedFrames: a translating connection writes what Encode
// returns and leaves out what it drops.
func TestTranslatedFrames(t *testing.T) {
	p := newPair(t, "", 64)
	p.h.encode = func(b []byte) []byte {
		if strings.HasPrefix(string(b), "drop") {
			return nil
		}
		return []byte(strings.ToUpper(string(b)))
	}
	p.c.Translate()
	p.c.Send([]byte("drop me"))
	p.c.Send([]byte("keep me"))
	p.c.Uncork()
	if op, data := p.frame(t); op != ws.OpText || data != "KEEP ME" {
		t.Fatalf("got op %d %q", op, data)
	}
}

// BenchmarkWriteBatch compares one write() per frame with the writer's
// coalescing of everything queued into one write(), over real loopback TCP.
func BenchmarkWriteBatch(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			io.Copy(io.Discard, c)
		}
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	opt := &Options{QueueMessages: 1024, QueueBytes: 1 << 20, WriteTimeout: 10 * time.Second, Counters: &Counters{}}
	c := &Conn{}
	c.Init(opt, conn, newRecorder(), nil)
	frame := protocol.Encode(protocol.TypeChat, "", protocol.Chat{Room: "r", From: "a", Text: strings.Repeat("x", 100)})
	for _, batch := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("frames=%d", batch), func(b *testing.B) {
			frames := make([]outFrame, batch)
			for i := range frames {
				frames[i] = outFrame{op: ws.OpText, data: frame}
			}
			buf := make([]byte, 0, 4096)
			b.ReportAllocs()
			for b.Loop() {
				if err := c.writeBatch(&buf, frames); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/frame")
		})
	}
}

// TestSendReplayWaitsForRoom: a replay longer than the queue allows is
// this connection's own backlog: it waits for the writer to make room
// instead of closing the connection as a slow consumer.
func TestSendReplayWaitsForRoom(t *testing.T) {
	p := newPair(t, "", 4)
	p.c.Uncork()
	const n = 50
	done := make(chan bool, 1)
	go func() {
		ok := true
		for i := range n {
			ok = ok && p.c.SendReplay(fmt.Appendf(nil, "r%d", i))
		}
		done <- ok
	}()
	for i := range n {
		if op, data := p.frame(t); op != ws.OpText || data != fmt.Sprint("r", i) {
			t.Fatalf("frame %d: op %d %q", i, op, data)
		}
	}
	if !<-done {
		t.Fatal("a replay was refused")
	}
	if c := p.c.Closing(); c != nil || p.opt.Counters.SlowConsumers.Load() != 0 {
		t.Fatalf("closed (%v) while replaying", c)
	}
}

// TestWriteDelayParksARecentlyWrittenConnection: a delivery to a
// connection written within the delay waits for the flusher and goes out
// with what follows it in one write; one that was not goes out at once.
func TestWriteDelayParksARecentlyWrittenConnection(t *testing.T) {
	p := newPair(t, "", 64)
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { cancel(); <-p.opt.Flusher.Done() }()
	p.opt.Flusher = NewFlusher(ctx, time.Hour, &p.opt.Counters.Delayed) // flushed only when ctx ends
	p.c.Uncork()
	deliver := func(text string) {
		b := NewBatch()
		p.c.SendTo([]byte(text), b)
		p.opt.Flusher.StartOrPark(b, false)
	}
	deliver("first") // not written within the delay: at once
	if op, data := p.frame(t); op != ws.OpText || data != "first" {
		t.Fatalf("got op %d %q", op, data)
	}
	deliver("second") // written a moment ago: parked
	deliver("third")  // queued behind it
	if !p.c.Parked() || p.opt.Counters.Delayed.Load() != 1 {
		t.Fatalf("parked %v, delayed %d: want parked once", p.c.Parked(), p.opt.Counters.Delayed.Load())
	}
	writes := p.opt.Counters.Writes.Load()
	cancel() // the flusher's last flush
	for _, want := range []string{"second", "third"} {
		if op, data := p.frame(t); op != ws.OpText || data != want {
			t.Fatalf("got op %d %q, want %q", op, data, want)
		}
	}
	// The peer can read the frames before the writer counts its write.
	waitFor(t, "the flush's write to be counted", func() bool { return p.opt.Counters.Writes.Load() > writes })
	if w := p.opt.Counters.Writes.Load() - writes; w != 1 {
		t.Fatalf("%d writes for the parked frames, want 1", w)
	}
}
