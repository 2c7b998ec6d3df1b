package server

import (
	"encoding/binary"
	"fmt"
	"unicode/utf8"

	"github.com/tether-chat/tether/protocol"
)

// The server's side of RFC 6455 framing. The server reads client frames
// (always masked) and writes unmasked ones (appendFrame). No extension is
// negotiated, so the reserved bits must be zero.

// Frame opcodes (RFC 6455 section 5.2).
const (
	opContinuation byte = 0x0
	opText         byte = 0x1
	opBinary       byte = 0x2
	opClose        byte = 0x8
	opPing         byte = 0x9
	opPong         byte = 0xA
)

// frameHeader is a parsed client frame header.
type frameHeader struct {
	fin    bool
	op     byte
	mask   [4]byte
	length int64 // payload length
	size   int   // header length in bytes
}

// parseFrameHeader parses the client frame header at the start of p. It
// returns size 0 when p holds only part of a header, and an error (the
// close to send) when the header breaks the protocol.
func parseFrameHeader(p []byte) (frameHeader, *protocol.Disconnect) {
	var h frameHeader
	if len(p) < 2 {
		return h, nil
	}
	b0, b1 := p[0], p[1]
	h.fin = b0&0x80 != 0
	h.op = b0 & 0x0f
	if b0&0x70 != 0 {
		return h, protocolError("reserved bits set (no extension was negotiated)")
	}
	switch h.op {
	case opContinuation, opText, opBinary, opClose, opPing, opPong:
	default:
		return h, protocolError(fmt.Sprintf("unknown opcode %d", h.op))
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
		h.length = int64(binary.BigEndian.Uint16(p[2:]))
		size = 4
	case 127:
		if len(p) < 10 {
			return h, nil
		}
		v := binary.BigEndian.Uint64(p[2:])
		if v>>63 != 0 {
			return h, protocolError("payload length with the most significant bit set")
		}
		h.length = int64(v)
		size = 10
	default:
		h.length = int64(n)
	}
	if h.op >= opClose {
		if !h.fin {
			return h, protocolError("fragmented control frame")
		}
		if h.length > 125 {
			return h, protocolError("control frame payload over 125 bytes")
		}
	}
	if len(p) < size+4 {
		return h, nil
	}
	copy(h.mask[:], p[size:])
	h.size = size + 4
	return h, nil
}

func protocolError(reason string) *protocol.Disconnect {
	return &protocol.Disconnect{Code: protocol.CloseProtocolError, Reason: reason}
}

// unmask XORs b with the masking key, eight bytes at a time where it can
// (eight is a multiple of the key's four, so the key stays aligned).
func unmask(key [4]byte, b []byte) {
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

// parseClose reads a close frame's payload: the peer's code and reason.
// An empty payload is 1005 (no status). A payload that breaks section
// 5.5.1 or 7.4 gets the close to answer with instead.
func parseClose(p []byte) (protocol.Disconnect, *protocol.Disconnect) {
	switch {
	case len(p) == 0:
		return protocol.Disconnect{Code: closeNoStatus}, nil
	case len(p) == 1:
		return protocol.Disconnect{}, protocolError("close frame with a one-byte payload")
	}
	code := protocol.CloseCode(binary.BigEndian.Uint16(p))
	if !validCloseCode(code) {
		return protocol.Disconnect{}, protocolError(fmt.Sprintf("invalid close code %d", code))
	}
	if !utf8.Valid(p[2:]) {
		return protocol.Disconnect{}, &protocol.Disconnect{Code: protocol.CloseInvalidUTF8, Reason: "close reason is not valid UTF-8"}
	}
	return protocol.Disconnect{Code: code, Reason: string(p[2:])}, nil
}

// closeNoStatus (1005) stands for a close frame without a code; it is never
// sent on the wire.
const closeNoStatus protocol.CloseCode = 1005

// validCloseCode says whether a peer may send code (RFC 6455 section 7.4).
func validCloseCode(code protocol.CloseCode) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}

// appendFrame appends one unmasked, unfragmented server frame.
func appendFrame(buf []byte, op byte, data []byte) []byte {
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

// closePayload is a close frame's payload for d: the code, then the reason
// (cut to fit the 125-byte limit of a control frame, on a rune boundary).
func closePayload(d protocol.Disconnect) []byte {
	if d.Code == closeNoStatus {
		return nil
	}
	reason := d.Reason
	if len(reason) > 123 {
		reason = reason[:123]
		for !utf8.ValidString(reason) {
			reason = reason[:len(reason)-1]
		}
	}
	b := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(reason)), uint16(d.Code))
	return append(b, reason...)
}
