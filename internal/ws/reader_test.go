package ws

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"
)

// recorder is a Handler that writes down what it is told.
type recorder struct {
	limit  int64
	events []string
}

func (r *recorder) Limit(byte) int64 { return r.limit }
func (r *recorder) OnMessage(op byte, data []byte) {
	r.events = append(r.events, fmt.Sprintf("msg%d:%s", op, data))
}
func (r *recorder) OnPing(p []byte) { r.events = append(r.events, "ping:"+string(p)) }
func (r *recorder) OnPong(p []byte) { r.events = append(r.events, "pong:"+string(p)) }
func (r *recorder) OnClose(code Status, reason string) {
	r.events = append(r.events, fmt.Sprintf("close:%d:%s", code, reason))
}
func (r *recorder) OnFail(e *Error) { r.events = append(r.events, fmt.Sprintf("fail:%d", e.Code)) }

func f(fin bool, op byte, p string) []byte { return clientFrame(fin, op, []byte(p)) }
func closeOf(code uint16, reason string) []byte {
	return f(true, OpClose, string([]byte{byte(code >> 8), byte(code)})+reason)
}

// TestReader: what a Reader reports for each sequence of frames, fed
// whole, one byte at a time, and in two halves at every split point.
func TestReader(t *testing.T) {
	big := strings.Repeat("b", 100)
	for _, tc := range []struct {
		name string
		in   []byte
		want string
	}{
		{"text", f(true, OpText, "hi"), "msg1:hi"},
		{"binary", f(true, OpBinary, "\x00\xff"), "msg2:\x00\xff"},
		{"empty text", f(true, OpText, ""), "msg1:"},
		{"fragments", cat(f(false, OpText, "he"), f(false, OpContinuation, "l"), f(true, OpContinuation, "lo")), "msg1:hello"},
		{"control between fragments", cat(f(false, OpText, "he"), f(true, OpPing, "p"), f(true, OpPong, "q"), f(true, OpContinuation, "llo")), "ping:p pong:q msg1:hello"},
		{"two messages", cat(f(true, OpText, "a"), f(true, OpBinary, "b")), "msg1:a msg2:b"},
		{"at the limit", f(true, OpText, big), "msg1:" + big},
		{"over the limit", cat(f(true, OpText, big+"x"), closeOf(1000, "")), "fail:1009 close:1000:"},
		{"fragments over the limit", cat(f(false, OpText, big), f(true, OpContinuation, "x"), closeOf(1000, "")), "fail:1009 close:1000:"},
		{"continuation alone", cat(f(true, OpContinuation, "x"), closeOf(1000, "")), "fail:1002 close:1000:"},
		{"continuation alone over the limit", cat(f(true, OpContinuation, big+big), closeOf(1000, "")), "fail:1002 close:1000:"},
		{"text inside a fragmented one", cat(f(false, OpText, "a"), f(true, OpText, "b"), closeOf(1000, "")), "fail:1002 close:1000:"},
		{"text inside a fragmented one near the limit", cat(f(false, OpText, big[:95]), f(true, OpText, "0123456789"), closeOf(1000, "")), "fail:1002 close:1000:"},
		{"invalid UTF-8", cat(f(true, OpText, "\xff"), closeOf(1000, "")), "fail:1007 close:1000:"},
		{"UTF-8 split over fragments", cat(f(false, OpText, "\xce"), f(true, OpContinuation, "\xba")), "msg1:κ"},
		{"binary is not UTF-8 checked", f(true, OpBinary, "\xff"), "msg2:\xff"},
		{"a code point over three fragments", cat(f(false, OpText, "\xe2"), f(false, OpContinuation, "\x82"), f(true, OpContinuation, "\xac")), "msg1:€"},
		{"invalid UTF-8 fails at its fragment", cat(f(false, OpText, "a\xffb"), f(true, OpPing, "p"), closeOf(1000, "")), "fail:1007 close:1000:"},
		{"a surrogate's first bytes fail at once", cat(f(false, OpText, "\xed\xa0"), f(true, OpPing, "p"), closeOf(1000, "")), "fail:1007 close:1000:"},
		{"an impossible byte in a continuation fails at once", cat(f(false, OpText, "ok"), f(false, OpContinuation, "\xc0"), f(true, OpPing, "p"), closeOf(1000, "")), "fail:1007 close:1000:"},
		{"a code point cut off by the message's end", cat(f(false, OpText, "\xe2\x82"), f(true, OpContinuation, ""), closeOf(1000, "")), "fail:1007 close:1000:"},
		{"U+FFFD itself is text", cat(f(false, OpText, "\xef\xbf"), f(true, OpContinuation, "\xbd")), "msg1:\ufffd"},
		{"close", closeOf(1001, "bye"), "close:1001:bye"},
		{"close without a code", f(true, OpClose, ""), "close:1005:"},
		{"nothing after the close", cat(closeOf(1000, ""), f(true, OpText, "late")), "close:1000:"},
		{"bad close code", closeOf(1005, ""), "fail:1002 close:1005:"},
		{"bad close reason", closeOf(1000, "\xff"), "fail:1007 close:1005:"},
		{"unknown opcode: the stream cannot be followed", cat(f(true, OpBinary+1, "x"), closeOf(1000, "")), "fail:1002 close:1006:the frame header cannot be read past"},
		{"after a failure: data, pings, then the close", cat(f(true, OpContinuation, "x"), f(true, OpText, "t"), f(true, OpPing, "p"), closeOf(1001, "")), "fail:1002 close:1001:"},
		{"unmasked", []byte{0x81, 0x01, 'x'}, "fail:1002 close:1006:the frame header cannot be read past"},
		{"reserved bit", cat(withRSV(f(true, OpText, "x")), closeOf(1000, "")), "fail:1002 close:1006:the frame header cannot be read past"},
		{"a refused frame claiming more than MaxDiscard", append([]byte{0x81, 0x80 | 127, 0, 0, 0, 0, 0x10, 0, 0, 0}, 1, 2, 3, 4), "fail:1009 close:1006:the peer's close cannot come within the frame's claimed length"},
		{"a header error after the failure", cat(f(true, OpContinuation, "x"), []byte{0x81, 0x01, 'x'}), "fail:1002 close:1006:the peer's frames can no longer be read after the protocol error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			feeds := map[string][][]byte{"whole": {tc.in}}
			var bytewise [][]byte
			for i := range tc.in {
				bytewise = append(bytewise, tc.in[i:i+1])
			}
			feeds["bytewise"] = bytewise
			for i := 1; i < len(tc.in); i++ {
				feeds[fmt.Sprint("split at ", i)] = [][]byte{tc.in[:i], tc.in[i:]}
			}
			for how, parts := range feeds {
				var r Reader
				h := &recorder{limit: 100}
				for _, p := range parts {
					r.Feed(bytes.Clone(p), h) // Feed unmasks in place
				}
				if got := strings.Join(h.events, " "); got != tc.want {
					t.Fatalf("%s: %q, want %q", how, got, tc.want)
				}
				if strings.Contains(tc.want, "close:") != r.Done() {
					t.Fatalf("%s: Done() = %v", how, r.Done())
				}
				if len(r.pending) != 0 && r.Done() {
					t.Fatalf("%s: %d bytes kept after the end", how, len(r.pending))
				}
			}
		})
	}
}

func cat(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
func withRSV(b []byte) []byte { b[0] |= 0x40; return b }

// TestReaderHoldsNothingBetweenFrames: an idle connection's Reader keeps
// no buffer.
func TestReaderHoldsNothingBetweenFrames(t *testing.T) {
	var r Reader
	h := &recorder{limit: 1 << 20}
	frame := f(true, OpText, strings.Repeat("x", 1000))
	r.Feed(bytes.Clone(frame[:500]), h)
	if len(r.pending) != 500 {
		t.Fatalf("pending %d", len(r.pending))
	}
	r.Feed(bytes.Clone(frame[500:]), h)
	if r.pending != nil || r.msg != nil || len(h.events) != 1 {
		t.Fatalf("after the frame: pending %d, msg %d, events %d", len(r.pending), len(r.msg), len(h.events))
	}
}

// TestStop: nothing is reported after Stop.
func TestStop(t *testing.T) {
	var r Reader
	h := &recorder{limit: 100}
	r.Feed(f(false, OpText, "a"), h)
	r.Stop()
	r.Feed(cat(f(true, OpContinuation, "b"), closeOf(1000, "")), h)
	if len(h.events) != 0 || !r.Done() {
		t.Fatalf("events %v", h.events)
	}
}

// FuzzReader: any bytes, fed in any two pieces, never panic, report at
// most one failure and one close (the close last), never a message over
// the limit or text that is not UTF-8, and the same events however they
// are split.
func FuzzReader(f *testing.F) {
	f.Add(cat(clientFrame(false, OpText, []byte("he")), clientFrame(true, OpPing, []byte("p")), clientFrame(true, OpContinuation, []byte("llo"))), 3)
	f.Add(cat(clientFrame(true, OpContinuation, []byte("x")), clientFrame(true, OpClose, []byte{3, 232})), 1)
	f.Add([]byte{0x81, 0x80 | 127, 0, 0, 0, 0, 0, 0, 1, 0, 1, 2, 3, 4}, 5)
	f.Fuzz(func(t *testing.T, in []byte, split int) {
		run := func(parts ...[]byte) []string {
			var r Reader
			h := &recorder{limit: 64}
			for _, p := range parts {
				r.Feed(bytes.Clone(p), h)
			}
			return h.events
		}
		whole := run(in)
		if split >= 0 && split <= len(in) {
			if got := run(in[:split], in[split:]); strings.Join(got, "\x00") != strings.Join(whole, "\x00") {
				t.Fatalf("split at %d: %q, whole: %q", split, got, whole)
			}
		}
		fails, closes := 0, 0
		for i, e := range whole {
			switch {
			case strings.HasPrefix(e, "fail:"):
				fails++
			case strings.HasPrefix(e, "close:"):
				closes++
				if i != len(whole)-1 {
					t.Fatalf("events after the close: %q", whole)
				}
			case strings.HasPrefix(e, "msg"):
				data := e[strings.IndexByte(e, ':')+1:]
				if len(data) > 64 {
					t.Fatalf("a message of %d bytes over the limit of 64", len(data))
				}
				if strings.HasPrefix(e, "msg1:") && !utf8.ValidString(data) {
					t.Fatalf("text that is not UTF-8: %q", data)
				}
			}
		}
		if fails > 1 || closes > 1 {
			t.Fatalf("%d failures, %d closes: %q", fails, closes, whole)
		}
	})
}
