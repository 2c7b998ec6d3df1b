package server

import "github.com/tether-chat/tether/internal/ws"

// clientFrame is a masked client frame, as a browser sends it.
func clientFrame(fin bool, op byte, payload []byte) []byte {
	return ws.AppendClientFrame(nil, fin, op, [4]byte{0x37, 0xfa, 0x21, 0x3d}, payload)
}

// textFrame is a masked, unfragmented client text frame.
func textFrame(payload []byte) []byte { return clientFrame(true, ws.OpText, payload) }
