package ws

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

// clientFrame is a masked client frame, as a browser sends it.
func clientFrame(fin bool, op byte, payload []byte) []byte {
	return AppendClientFrame(nil, fin, op, [4]byte{0x37, 0xfa, 0x21, 0x3d}, payload)
}

func TestParseFrameHeader(t *testing.T) {
	long := bytes.Repeat([]byte("x"), 300)
	huge := clientFrame(true, OpText, nil)
	huge[1] = 0x80 | 127
	huge = append(huge[:2], append(binary.BigEndian.AppendUint64(nil, 1<<40), huge[2:]...)...)
	for _, tc := range []struct {
		name   string
		frame  []byte
		op     byte
		length int64
		errSub string
	}{
		{"small text", clientFrame(true, OpText, []byte("hello")), OpText, 5, ""},
		{"16-bit length", clientFrame(true, OpText, long), OpText, 300, ""},
		{"64-bit length", huge, OpText, 1 << 40, ""},
		{"ping", clientFrame(true, OpPing, []byte("p")), OpPing, 1, ""},
		{"unmasked", []byte{0x81, 0x05, 'h', 'e', 'l', 'l', 'o'}, 0, 0, "must be masked"},
		{"reserved bit", append([]byte{0xC1}, clientFrame(true, OpText, nil)[1:]...), 0, 0, "reserved bits"},
		{"unknown opcode", clientFrame(true, 0x3, nil), 0, 0, "unknown opcode 3"},
		{"fragmented ping", clientFrame(false, OpPing, nil), 0, 0, "fragmented control"},
		{"long close", clientFrame(true, OpClose, long), 0, 0, "over 125 bytes"},
		{"length msb", append([]byte{0x81, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 0}, 1, 2, 3, 4), 0, 0, "most significant bit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, perr := ParseHeader(tc.frame)
			if tc.errSub != "" {
				if perr == nil || perr.Code != StatusProtocolError || !strings.Contains(perr.Reason, tc.errSub) {
					t.Fatalf("got %+v, want a 1002 about %q", perr, tc.errSub)
				}
				return
			}
			if perr != nil || h.Size == 0 || h.Op != tc.op || h.Length != tc.length {
				t.Fatalf("got %+v %+v, want op %d length %d", h, perr, tc.op, tc.length)
			}
			// Every shorter prefix of the header is "need more", never an error.
			for i := range h.Size {
				if p, perr := ParseHeader(tc.frame[:i]); p.Size != 0 || perr != nil {
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
		Unmask(key, b)
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
		want    Status
		errCode Status
	}{
		{nil, StatusNoStatus, 0},
		{code(1000, "bye"), 1000, 0},
		{code(4000, ""), 4000, 0},
		{[]byte{3}, 0, StatusProtocolError},
		{code(1005, ""), 0, StatusProtocolError},
		{code(1006, ""), 0, StatusProtocolError},
		{code(999, ""), 0, StatusProtocolError},
		{code(5000, ""), 0, StatusProtocolError},
		{code(1000, "\xff\xfe"), 0, StatusInvalidUTF8},
	} {
		got, _, perr := ParseClose(tc.payload)
		switch {
		case tc.errCode != 0 && (perr == nil || perr.Code != tc.errCode):
			t.Errorf("%x: %+v, want close %d", tc.payload, perr, tc.errCode)
		case tc.errCode == 0 && (perr != nil || got != tc.want):
			t.Errorf("%x: %d %+v, want %d", tc.payload, got, perr, tc.want)
		}
	}
}

func TestClosePayloadFitsAControlFrame(t *testing.T) {
	reason := strings.Repeat("é", 100) // 200 bytes
	p := ClosePayload(4008, reason)
	if len(p) > 125 || binary.BigEndian.Uint16(p) != 4008 {
		t.Fatalf("payload %d bytes, code %d", len(p), binary.BigEndian.Uint16(p))
	}
	_, got, perr := ParseClose(p)
	if perr != nil || !strings.HasPrefix(reason, got) {
		t.Fatalf("cut reason is not a valid prefix: %q %+v", got, perr)
	}
	if ClosePayload(StatusNoStatus, "x") != nil {
		t.Fatal("1005 is never sent: its payload is empty")
	}
}

// TestAcceptKey: RFC 6455 section 1.3's example.
func TestAcceptKey(t *testing.T) {
	if got := string(AppendAcceptKey(nil, "dGhlIHNhbXBsZSBub25jZQ==")); got != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Fatalf("accept %q", got)
	}
	for key, want := range map[string]bool{
		"dGhlIHNhbXBsZSBub25jZQ==": true,
		"dGhlIHNhbXBsZSBub25jZQ=":  false, // 23 characters
		"dGhlIHNhbXBsZSBub25jZQ!!": false,
		"dGhlIHNhbXBsZSBub25jZWVl": false, // 18 bytes
		"":                         false,
	} {
		if ValidKey(key) != want {
			t.Errorf("ValidKey(%q) = %v", key, !want)
		}
	}
}

// FuzzParseFrameHeader: any bytes give a header, "need more" or a close,
// and a header never claims more than it read.
func FuzzParseFrameHeader(f *testing.F) {
	f.Add(clientFrame(true, OpText, []byte(`{"type":"ping"}`)))
	f.Add(clientFrame(false, OpContinuation, bytes.Repeat([]byte("a"), 200)))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, p []byte) {
		h, perr := ParseHeader(p)
		if perr != nil {
			if perr.Code != StatusProtocolError || perr.Reason == "" {
				t.Fatalf("bad close %+v", perr)
			}
			return
		}
		if h.Size > len(p) || h.Length < 0 {
			t.Fatalf("header %+v from %d bytes", h, len(p))
		}
	})
}
