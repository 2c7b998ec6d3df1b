package protocol

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
	"unicode/utf8"
)

// Tiny but real file signatures.
var (
	pngBytes  = append([]byte("\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"), make([]byte, 40)...)
	jpegBytes = append([]byte("\xff\xd8\xff\xe0\x00\x10JFIF\x00"), make([]byte, 40)...)
	gifBytes  = append([]byte("GIF89a"), make([]byte, 40)...)
	svgBytes  = []byte(`<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"></svg>`)
)

func TestDecodeFile(t *testing.T) {
	lim := Limits{MaxText: 20}
	frame := func(h FileHeader, data []byte) []byte { return EncodeFile(h, data) }
	for _, tc := range []struct {
		name      string
		frame     []byte
		code      ErrorCode // "" = accepted
		mime      string
		image     bool
		fileName  string
		inMessage string
	}{
		{"png to a room", frame(FileHeader{ID: "m1", Room: "general", Name: "cat.png", Mime: "image/png"}, pngBytes), "", "image/png", true, "cat.png", ""},
		{"jpeg said image/jpg", frame(FileHeader{ID: "m1", To: "bob", Name: "a.jpg", Mime: "image/jpg"}, jpegBytes), "", "image/jpeg", true, "a.jpg", ""},
		{"gif with no type said", frame(FileHeader{ID: "m1", Room: "r", Name: "x.gif"}, gifBytes), "", "image/gif", true, "x.gif", ""},
		{"a text file", frame(FileHeader{ID: "m1", Room: "r", Name: "notes.txt", Mime: "text/plain"}, []byte("hello")), "", "text/plain", false, "notes.txt", ""},
		{"svg is never an image", frame(FileHeader{ID: "m1", Room: "r", Name: "x.svg", Mime: "image/svg+xml"}, svgBytes), "", "text/plain", false, "x.svg", ""},
		{"mislabelled: text said png", frame(FileHeader{ID: "m1", Room: "r", Name: "cat.png", Mime: "image/png"}, []byte("not a picture at all")), ErrBadFile, "", false, "", "its bytes are"},
		{"mislabelled: gif said png", frame(FileHeader{ID: "m1", Room: "r", Name: "cat.png", Mime: "image/png"}, gifBytes), ErrBadFile, "", false, "", "image/gif"},
		{"empty", frame(FileHeader{ID: "m1", Room: "r", Name: "e.png"}, nil), ErrBadFile, "", false, "", "empty"},
		{"too large", frame(FileHeader{ID: "m1", Room: "r", Name: "big.png"}, append(pngBytes, make([]byte, 100)...)), ErrFileTooLarge, "", false, "", "limit is 100 bytes"},
		{"both room and to", frame(FileHeader{ID: "m1", Room: "r", To: "bob", Name: "x"}, pngBytes), ErrBadFile, "", false, "", "not both"},
		{"neither room nor to", frame(FileHeader{ID: "m1", Name: "x"}, pngBytes), ErrBadFile, "", false, "", "goes to"},
		{"bad room", frame(FileHeader{ID: "m1", Room: "a b", Name: "x"}, pngBytes), ErrBadRoom, "", false, "", ""},
		{"caption too long", frame(FileHeader{ID: "m1", Room: "r", Name: "x", Text: strings.Repeat("a", 21)}, pngBytes), ErrBadText, "", false, "", ""},
		{"no header length", []byte{0x01}, ErrBadFile, "", false, "", "header's length"},
		{"header length 0", []byte{0, 0, 1, 2}, ErrBadFile, "", false, "", "header length"},
		{"header past the frame", []byte{0, 9, '{', '}'}, ErrBadFile, "", false, "", "header length"},
		{"header not JSON", append([]byte{0, 3}, "abc"...), ErrBadFile, "", false, "", "JSON"},
		{"header of another type", func() []byte {
			b := []byte{0, 0}
			hb := []byte(`{"type":"chat","room":"r"}`)
			binary.BigEndian.PutUint16(b, uint16(len(hb)))
			return append(append(b, hb...), pngBytes...)
		}(), ErrBadFile, "", false, "", `"type":"file"`},
		{"a path in the name", frame(FileHeader{ID: "m1", Room: "r", Name: "../../etc/passwd"}, []byte("x")), "", "text/plain", false, "passwd", ""},
		{"markup in the name is kept as text", frame(FileHeader{ID: "m1", Room: "r", Name: "<img src=x onerror=alert(1)>.png"}, pngBytes), "", "image/png", true, "<img src=x onerror=alert(1)>.png", ""},
		{"control characters in the name", frame(FileHeader{ID: "m1", Room: "r", Name: "a\x00b\nc"}, pngBytes), "", "image/png", true, "abc", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, data, mime, image, perr := DecodeFile(tc.frame, lim, 100)
			if tc.code != "" {
				if perr == nil || perr.Code != tc.code || !strings.Contains(perr.Message, tc.inMessage) {
					t.Fatalf("error = %v; want %s containing %q", perr, tc.code, tc.inMessage)
				}
				return
			}
			if perr != nil {
				t.Fatalf("refused: %v", perr)
			}
			if mime != tc.mime || image != tc.image || h.Name != tc.fileName || len(data) == 0 {
				t.Fatalf("mime %q image %v name %q (%d bytes); want %q %v %q", mime, image, h.Name, len(data), tc.mime, tc.image, tc.fileName)
			}
		})
	}
}

// FuzzDecodeFile: whatever a frame holds, decoding never panics, and what
// it accepts is within bounds, with a clean name.
func FuzzDecodeFile(f *testing.F) {
	f.Add(EncodeFile(FileHeader{ID: "m1", Room: "general", Name: "cat.png", Mime: "image/png"}, pngBytes))
	f.Add(EncodeFile(FileHeader{ID: "m1", To: "bob", Name: "../x\x00", Text: "hi"}, svgBytes))
	f.Add([]byte{0, 2, '{', '}'})
	f.Fuzz(func(t *testing.T, frame []byte) {
		h, data, _, _, perr := DecodeFile(frame, Limits{MaxText: DefaultMaxText}, 1<<20)
		if perr != nil {
			return
		}
		if len(data) == 0 || len(data) > 1<<20 || !bytes.HasSuffix(frame, data) {
			t.Fatalf("accepted %d bytes", len(data))
		}
		if h.Name == "" || len(h.Name) > 255 || !utf8.ValidString(h.Name) || strings.ContainsAny(h.Name, "/\\\x00\n") {
			t.Fatalf("name %q", h.Name)
		}
		if (h.Room == "") == (h.To == "") {
			t.Fatalf("room %q to %q", h.Room, h.To)
		}
	})
}
