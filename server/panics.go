package server

import (
	"fmt"
	"runtime/debug"

	"github.com/tether-chat/tether/protocol"
	"github.com/tether-chat/tether/server/session"
	"github.com/tether-chat/tether/server/transport"
)

// Panic isolation. A panic is a bug, but one connection's bug must not
// take the node and everyone on it down (and, with the in-memory engine,
// all history with it). Every goroutine entry that works for one
// connection (its reader, its set-up, its writer) or for one delivery
// recovers: the panic is logged with its stack and counted
// (tether_panics_total), the connection it happened on is closed with
// 1011 (its client reconnects and resumes), and the node goes on.

// recoverPanic is deferred at such an entry; c is the connection the work
// was for, or nil.
func (s *Server) recoverPanic(where string, c *session.Conn) {
	if r := recover(); r != nil {
		s.panicked(where, r, c)
	}
}

// panicked handles a recovered panic.
func (s *Server) panicked(where string, r any, c *session.Conn) {
	s.metrics.panics.Add(1)
	args := []any{"where", where, "panic", fmt.Sprint(r), "stack", string(debug.Stack())}
	if c != nil {
		args = append(args, "user", c.User(), "conn", c.ID())
	}
	s.log.Error("panic recovered: closing the connection it happened on", args...)
	if c != nil {
		c.Close(protocol.DisconnectInternal, transport.CloseDrop)
	}
}
