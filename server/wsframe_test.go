package server

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/tether-chat/tether/protocol"
)

// clientFrame is a masked client frame, as a browser sends it.
func clientFrame(fin bool, op byte, payload []byte) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	out := []byte{b0}
	switch n := len(payload); {
	case n <= 125:
		out = append(out, 0x80|byte(n))
	case n <= 0xffff:
		out = append(out, 0x80|126, byte(n>>8), byte(n))
	default:
		out = append(out, 0x80|127)
		out = binary.BigEndian.AppendUint64(out, uint64(n))
	}
	mask := [4]byte{0x37, 0xfa, 0x21, 0x3d}
	out = append(out, mask[:]...)
	for i, b := range payload {
		out = append(out, b^mask[i%4])
	}
	return out
}

func TestParseFrameHeader(t *testing.T) {
	long := bytes.Repeat([]byte("x"), 300)
	huge := clientFrame(true, opText, nil)
	huge[1] = 0x80 | 127
	huge = append(huge[:2], append(binary.BigEndian.AppendUint64(nil, 1<<40), huge[2:]...)...)
	for _, tc := range []struct {
		name   string
		frame  []byte
		op     byte
		length int64
		errSub string
	}{
		{"small text", clientFrame(true, opText, []byte("hello")), opText, 5, ""},
		{"16-bit length", clientFrame(true, opText, long), opText, 300, ""},
		{"64-bit length", huge, opText, 1 << 40, ""},
		{"ping", clientFrame(true, opPing, []byte("p")), opPing, 1, ""},
		{"unmasked", []byte{0x81, 0x05, 'h', 'e', 'l', 'l', 'o'}, 0, 0, "must be masked"},
		{"reserved bit", append([]byte{0xC1}, clientFrame(true, opText, nil)[1:]...), 0, 0, "reserved bits"},
		{"unknown opcode", clientFrame(true, 0x3, nil), 0, 0, "unknown opcode 3"},
		{"fragmented ping", clientFrame(false, opPing, nil), 0, 0, "fragmented control"},
		{"long close", clientFrame(true, opClose, long), 0, 0, "over 125 bytes"},
		{"length msb", append([]byte{0x81, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 0}, 1, 2, 3, 4), 0, 0, "most significant bit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, perr := parseFrameHeader(tc.frame)
			if tc.errSub != "" {
				if perr == nil || perr.Code != protocol.CloseProtocolError || !strings.Contains(perr.Reason, tc.errSub) {
					t.Fatalf("got %+v, want a 1002 about %q", perr, tc.errSub)
				}
				return
			}
			if perr != nil || h.size == 0 || h.op != tc.op || h.length != tc.length {
				t.Fatalf("got %+v %+v, want op %d length %d", h, perr, tc.op, tc.length)
			}
			// Every shorter prefix of the header is "need more", never an error.
			for i := range h.size {
				if p, perr := parseFrameHeader(tc.frame[:i]); p.size != 0 || perr != nil {
					t.Fatalf("prefix of %d bytes: %+v %+v", i, p, perr)
				}
			}
		})
	}
}

func TestUnmaskMatchesBytewise(t *testing.T) {
	key := [4]byte{1, 2, 3, 250}
	for n := range 40 {
		b := bytes.Repeat([]byte{0xA5}, n)
		want := make([]byte, n)
		for i := range want {
			want[i] = b[i] ^ key[i%4]
		}
		unmask(key, b)
		if !bytes.Equal(b, want) {
			t.Fatalf("n=%d: %x, want %x", n, b, want)
		}
	}
}

func TestParseClose(t *testing.T) {
	code := func(c uint16, reason string) []byte {
		return append(binary.BigEndian.AppendUint16(nil, c), reason...)
	}
	for _, tc := range []struct {
		payload []byte
		want    protocol.CloseCode
		errCode protocol.CloseCode
	}{
		{nil, closeNoStatus, 0},
		{code(1000, "bye"), 1000, 0},
		{code(4000, ""), 4000, 0},
		{[]byte{3}, 0, protocol.CloseProtocolError},
		{code(1005, ""), 0, protocol.CloseProtocolError},
		{code(1006, ""), 0, protocol.CloseProtocolError},
		{code(999, ""), 0, protocol.CloseProtocolError},
		{code(5000, ""), 0, protocol.CloseProtocolError},
		{code(1000, "\xff\xfe"), 0, protocol.CloseInvalidUTF8},
	} {
		d, perr := parseClose(tc.payload)
		switch {
		case tc.errCode != 0 && (perr == nil || perr.Code != tc.errCode):
			t.Errorf("%x: %+v, want close %d", tc.payload, perr, tc.errCode)
		case tc.errCode == 0 && (perr != nil || d.Code != tc.want):
			t.Errorf("%x: %+v %+v, want %d", tc.payload, d, perr, tc.want)
		}
	}
}

func TestClosePayloadFitsAControlFrame(t *testing.T) {
	d := protocol.Disconnect{Code: 4008, Reason: strings.Repeat("é", 100)} // 200 bytes
	p := closePayload(d)
	if len(p) > 125 || binary.BigEndian.Uint16(p) != 4008 {
		t.Fatalf("payload %d bytes, code %d", len(p), binary.BigEndian.Uint16(p))
	}
	got, perr := parseClose(p)
	if perr != nil || !strings.HasPrefix(d.Reason, got.Reason) {
		t.Fatalf("cut reason is not a valid prefix: %+v %+v", got, perr)
	}
}

// FuzzParseFrameHeader: any bytes give a header, "need more" or a close,
// and a header never claims more than it read.
func FuzzParseFrameHeader(f *testing.F) {
	f.Add(clientFrame(true, opText, []byte(`{"type":"ping"}`)))
	f.Add(clientFrame(false, opContinuation, bytes.Repeat([]byte("a"), 200)))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, p []byte) {
		h, perr := parseFrameHeader(p)
		if perr != nil {
			if perr.Code != protocol.CloseProtocolError || perr.Reason == "" {
				t.Fatalf("bad close %+v", perr)
			}
			return
		}
		if h.size > len(p) || h.length < 0 {
			t.Fatalf("header %+v from %d bytes", h, len(p))
		}
	})
}
