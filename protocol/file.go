package protocol

import (
	"encoding/binary"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Files. A client sends a file (a picture, or any other file) in one
// binary WebSocket frame:
//
//	[2 bytes: N, the header's length, big-endian][N bytes: the header, JSON][the file's bytes]
//
// The header is {"type":"file","id":"m7","room":"general","name":"cat.png",
// "mime":"image/png","text":"a caption"}, with "to" instead of "room" for
// a private message. The server checks the bytes (not the name or the
// declared type), stores the file for as long as the history keeps
// messages, and publishes a chat (or direct) message whose File describes
// it; clients fetch the bytes from File.URL. Acks and errors are as for
// chat and direct, by id.

// FileInfo describes a file attached to a chat or direct message.
type FileInfo struct {
	ID   string `json:"id"`
	Name string `json:"name"` // the sender's file name, cleaned: show it as text
	Mime string `json:"mime"` // the type the server found in the bytes
	Size int    `json:"size"` // bytes
	// Image says the file is a PNG, JPEG, GIF or WebP image, safe to show
	// inline. Anything else (SVG and HTML included) is only ever served as
	// a download.
	Image bool   `json:"image,omitempty"`
	URL   string `json:"url"` // where to GET it, relative to the server
}

// FileHeader is the JSON header of a file frame.
type FileHeader struct {
	Type string `json:"type"` // "file"
	ID   string `json:"id"`
	Room string `json:"room,omitempty"`
	To   string `json:"to,omitempty"`
	Name string `json:"name"`
	Mime string `json:"mime,omitempty"` // what the sender says it is; checked against the bytes
	Text string `json:"text,omitempty"` // a caption
	// Data is the file's bytes, for a client's outbox; never in the header.
	Data []byte `json:"-"`
}

// MaxFileHeader bounds a file frame's header.
const MaxFileHeader = 4 << 10

// EncodeFile builds a file frame's payload.
func EncodeFile(h FileHeader, data []byte) []byte {
	h.Type = TypeFile
	hb, _ := json.Marshal(h)
	b := make([]byte, 2, 2+len(hb)+len(data))
	binary.BigEndian.PutUint16(b, uint16(len(hb)))
	return append(append(b, hb...), data...)
}

// DecodeFile reads a file frame: its header, checked, and the file's
// bytes (a sub-slice of frame), checked against maxSize and the declared
// type. mime is the type found in the bytes.
func DecodeFile(frame []byte, lim Limits, maxSize int) (h FileHeader, data []byte, mime string, image bool, perr *Error) {
	if len(frame) < 2 {
		return h, nil, "", false, errorf(ErrBadFile, "", "a file frame starts with its header's length (2 bytes, big-endian)")
	}
	n := int(binary.BigEndian.Uint16(frame))
	if n == 0 || n > MaxFileHeader || 2+n > len(frame) {
		return h, nil, "", false, errorf(ErrBadFile, "", "a file frame's header length must be 1-%d and within the frame", MaxFileHeader)
	}
	if json.Unmarshal(frame[2:2+n], &h) != nil || h.Type != TypeFile {
		return h, nil, "", false, errorf(ErrBadFile, "", `a file frame's header must be JSON with "type":"file"`)
	}
	id := h.ID
	if len(id) > MaxIDLength {
		return h, nil, "", false, errorf(ErrBadEnvelope, "", "id is longer than %d characters", MaxIDLength)
	}
	switch {
	case h.Room != "" && h.To != "":
		return h, nil, "", false, errorf(ErrBadFile, id, `a file goes to a "room" or to a user ("to"), not both`)
	case h.Room != "":
		if msg := ValidateRoom(h.Room); msg != "" {
			return h, nil, "", false, errorf(ErrBadRoom, id, "%s", msg)
		}
	case h.To != "":
		if msg := ValidateUser(h.To); msg != "" {
			return h, nil, "", false, errorf(ErrBadUser, id, "%s", msg)
		}
	default:
		return h, nil, "", false, errorf(ErrBadFile, id, `a file goes to a "room" or to a user ("to")`)
	}
	if h.Text != "" {
		if msg := ValidateText(h.Text, lim.MaxText); msg != "" {
			return h, nil, "", false, errorf(ErrBadText, id, "%s", msg)
		}
	}
	h.Name = CleanFileName(h.Name)
	data = frame[2+n:]
	if len(data) == 0 {
		return h, nil, "", false, errorf(ErrBadFile, id, "%s is empty", quoteName(h.Name))
	}
	if len(data) > maxSize {
		return h, nil, "", false, errorf(ErrFileTooLarge, id, "%s is %s; the limit is %s", quoteName(h.Name), sizeText(len(data)), sizeText(maxSize))
	}
	mime, image = SniffFile(data)
	declared := strings.ToLower(strings.TrimSpace(h.Mime))
	if declared == "image/jpg" {
		declared = "image/jpeg"
	}
	if strings.HasPrefix(declared, "image/") && declared != mime && declared != "image/svg+xml" {
		return h, nil, "", false, errorf(ErrBadFile, id, "%s is said to be %s, but its bytes are %s", quoteName(h.Name), declared, describeMime(mime))
	}
	return h, data, mime, image, nil
}

// SniffFile returns the type of a file's bytes and whether it is an image
// that is safe to show inline (PNG, JPEG, GIF, WebP). SVG is never one:
// it can carry scripts.
func SniffFile(data []byte) (mime string, image bool) {
	mime, _, _ = strings.Cut(http.DetectContentType(data), ";")
	switch mime {
	case "image/png", "image/jpeg", "image/gif", "image/webp":
		return mime, true
	}
	return mime, false
}

// CleanFileName makes a sender's file name safe to store and show: the
// last path element, no control characters, at most 255 bytes; "file"
// when nothing is left. Shown as text, never as markup.
func CleanFileName(name string) string {
	if i := strings.LastIndexAny(name, `/\`); i >= 0 {
		name = name[i+1:]
	}
	name = strings.Map(func(r rune) rune {
		if r == utf8.RuneError || unicode.IsControl(r) {
			return -1
		}
		return r
	}, strings.ToValidUTF8(name, ""))
	name = strings.TrimSpace(name)
	for len(name) > 255 {
		_, size := utf8.DecodeLastRuneInString(name)
		name = name[:len(name)-size]
	}
	if name == "" || name == "." || name == ".." {
		return "file"
	}
	return name
}

func quoteName(name string) string { return `"` + name + `"` }

func describeMime(mime string) string {
	if mime == "application/octet-stream" {
		return "not an image"
	}
	return mime
}

func sizeText(n int) string {
	switch {
	case n >= 1<<20:
		return trimZero(float64(n)/(1<<20)) + " MiB"
	case n >= 1<<10:
		return trimZero(float64(n)/(1<<10)) + " KiB"
	}
	return strconv.Itoa(n) + " bytes"
}

func trimZero(f float64) string {
	return strings.TrimRight(strings.TrimRight(strconv.FormatFloat(f, 'f', 1, 64), "0"), ".")
}
