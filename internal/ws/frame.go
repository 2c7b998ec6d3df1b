// Package ws is the server's side of RFC 6455, the WebSocket protocol, and
// nothing else: the opening handshake's accept key, the frame codec,
// message assembly with its size and UTF-8 rules, and the close
// handshake's payloads. It knows nothing of sockets, rooms or JSON: the
// server reads bytes, feeds them to a Reader and writes what AppendFrame
// builds.
//
// The server reads client frames (always masked) and writes unmasked ones.
// No extension is negotiated, so the reserved bits must be zero.
package ws

import (
	"encoding/binary"
	"fmt"
	"unicode/utf8"
)

// Frame opcodes (RFC 6455 section 5.2).
const (
	OpContinuation byte = 0x0
	OpText         byte = 0x1
	OpBinary       byte = 0x2
	OpClose        byte = 0x8
	OpPing         byte = 0x9
	OpPong         byte = 0xA
)

// Status is a close status code (RFC 6455 section 7.4).
type Status int

// The status codes this package sends or reports.
const (
	StatusProtocolError Status = 1002
	StatusNoStatus      Status = 1005 // a close frame without a code; never sent
	StatusAbnormal      Status = 1006 // no close frame; never sent
	StatusInvalidUTF8   Status = 1007
	StatusTooBig        Status = 1009
)

// MaxControlPayload is the largest payload of a control frame.
const MaxControlPayload = 125

// Header is a parsed client frame header.
type Header struct {
	Fin    bool
	Op     byte
	Mask   [4]byte
	Length int64 // payload length
	Size   int   // header length in bytes; 0: the header is incomplete
}

// Error is a violation of the protocol: the close to answer it with.
type Error struct {
	Code   Status
	Reason string
}

func (e *Error) Error() string { return fmt.Sprintf("websocket: %d %s", e.Code, e.Reason) }

func protocolError(reason string) *Error {
	return &Error{Code: StatusProtocolError, Reason: reason}
}

// ParseHeader parses the client frame header at the start of p. It returns
// Size 0 when p holds only part of a header, and an error when the header
// breaks the protocol.
func ParseHeader(p []byte) (Header, *Error) {
	var h Header
	if len(p) < 2 {
		return h, nil
	}
	b0, b1 := p[0], p[1]
	h.Fin = b0&0x80 != 0
	h.Op = b0 & 0x0f
	if b0&0x70 != 0 {
		return h, protocolError("reserved bits set (no extension was negotiated)")
	}
	switch h.Op {
	case OpContinuation, OpText, OpBinary, OpClose, OpPing, OpPong:
	default:
		return h, protocolError(fmt.Sprintf("unknown opcode %d", h.Op))
	}
	if b1&0x80 == 0 {
		return h, protocolError("client frames must be masked")
	}
	size := 2
	switch n := b1 & 0x7f; n {
	case 126:
		if len(p) < 4 {
			return h, nil
		}
		h.Length = int64(binary.BigEndian.Uint16(p[2:]))
		size = 4
	case 127:
		if len(p) < 10 {
			return h, nil
		}
		v := binary.BigEndian.Uint64(p[2:])
		if v>>63 != 0 {
			return h, protocolError("payload length with the most significant bit set")
		}
		h.Length = int64(v)
		size = 10
	default:
		h.Length = int64(n)
	}
	if h.Op >= OpClose {
		if !h.Fin {
			return h, protocolError("fragmented control frame")
		}
		if h.Length > MaxControlPayload {
			return h, protocolError("control frame payload over 125 bytes")
		}
	}
	if len(p) < size+4 {
		return h, nil
	}
	copy(h.Mask[:], p[size:])
	h.Size = size + 4
	return h, nil
}

// Unmask XORs b with the masking key, eight bytes at a time where it can
// (eight is a multiple of the key's four, so the key stays aligned).
func Unmask(key [4]byte, b []byte) {
	if len(b) >= 8 {
		k := uint64(binary.LittleEndian.Uint32(key[:]))
		k |= k << 32
		for len(b) >= 8 {
			binary.LittleEndian.PutUint64(b, binary.LittleEndian.Uint64(b)^k)
			b = b[8:]
		}
	}
	for i := range b {
		b[i] ^= key[i&3]
	}
}

// AppendFrame appends one unmasked, unfragmented server frame.
func AppendFrame(buf []byte, op byte, data []byte) []byte {
	buf = append(buf, 0x80|op)
	switch n := len(data); {
	case n <= 125:
		buf = append(buf, byte(n))
	case n <= 0xffff:
		buf = append(buf, 126, byte(n>>8), byte(n))
	default:
		buf = append(buf, 127)
		buf = binary.BigEndian.AppendUint64(buf, uint64(n))
	}
	return append(buf, data...)
}

// ParseClose reads a close frame's payload: the peer's code and reason.
// An empty payload is StatusNoStatus. A payload that breaks section 5.5.1
// or 7.4 gets the close to answer with instead.
func ParseClose(p []byte) (Status, string, *Error) {
	switch {
	case len(p) == 0:
		return StatusNoStatus, "", nil
	case len(p) == 1:
		return 0, "", protocolError("close frame with a one-byte payload")
	}
	code := Status(binary.BigEndian.Uint16(p))
	if !ValidCloseCode(code) {
		return 0, "", protocolError(fmt.Sprintf("invalid close code %d", code))
	}
	if !utf8.Valid(p[2:]) {
		return 0, "", &Error{Code: StatusInvalidUTF8, Reason: "close reason is not valid UTF-8"}
	}
	return code, string(p[2:]), nil
}

// ValidCloseCode says whether a peer may send code (RFC 6455 section 7.4).
func ValidCloseCode(code Status) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}

// ClosePayload is a close frame's payload: the code, then the reason (cut
// to fit a control frame, on a rune boundary). StatusNoStatus gives an
// empty payload.
func ClosePayload(code Status, reason string) []byte {
	if code == StatusNoStatus {
		return nil
	}
	if len(reason) > MaxControlPayload-2 {
		reason = reason[:MaxControlPayload-2]
		for !utf8.ValidString(reason) {
			reason = reason[:len(reason)-1]
		}
	}
	b := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(reason)), uint16(code))
	return append(b, reason...)
}

// AppendClientFrame appends one frame as a client sends it: masked with
// key, fragmented or not (fin), with any opcode and payload, valid or not.
// Tests and load generators speak the protocol's client side with it.
func AppendClientFrame(buf []byte, fin bool, op byte, key [4]byte, payload []byte) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	buf = append(buf, b0)
	switch n := len(payload); {
	case n <= 125:
		buf = append(buf, 0x80|byte(n))
	case n <= 0xffff:
		buf = append(buf, 0x80|126, byte(n>>8), byte(n))
	default:
		buf = append(buf, 0x80|127)
		buf = binary.BigEndian.AppendUint64(buf, uint64(n))
	}
	buf = append(buf, key[:]...)
	start := len(buf)
	buf = append(buf, payload...)
	Unmask(key, buf[start:])
	return buf
}
