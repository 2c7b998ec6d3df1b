package ws

import (
	"crypto/sha1"
	"encoding/base64"
)

// acceptGUID is RFC 6455's constant for Sec-WebSocket-Accept.
const acceptGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// AppendAcceptKey appends the Sec-WebSocket-Accept value for the client's
// Sec-WebSocket-Key (RFC 6455 section 4.2.2).
func AppendAcceptKey(b []byte, key string) []byte {
	h := sha1.New()
	h.Write([]byte(key))
	h.Write([]byte(acceptGUID))
	var sum [sha1.Size]byte
	return base64.StdEncoding.AppendEncode(b, h.Sum(sum[:0]))
}

// ValidKey says whether a Sec-WebSocket-Key is 16 bytes in base64 (24
// characters), without decoding it into a new slice.
func ValidKey(key string) bool {
	if len(key) != 24 {
		return false
	}
	var k [18]byte
	n, err := base64.StdEncoding.Decode(k[:], []byte(key))
	return err == nil && n == 16
}
