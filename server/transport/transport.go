// Package transport is one WebSocket connection's life on a node: its
// socket, the reader role (driven by the process's poller, internal/
// netpoll, and feeding internal/ws), the send queue and the writer role,
// the write delay (Flusher), the slow-consumer limit and the close
// handshake.
//
// It knows frames and close codes, not rooms, users or commands: whole
// messages go up to a Handler (the session), and the session sends with
// Send, Reply and SendReplay and closes with Close. A Conn is meant to be
// embedded by value in the session's connection, so that an idle
// connection is one allocation.
//
// Goroutines: an idle connection has none. The reader exists only while
// there is something to read: the poller wakes it when the socket becomes
// readable, and it returns when the socket is quiet (read.go), so at most
// one runs per connection and it owns the ws.Reader and the clean-up when
// the socket is gone. (Where there is no poller, as with TLS, the reader
// is one goroutine for the life of the connection.) Writing is a role, not
// a goroutine: whoever queues a frame when nobody holds the role takes it
// and writes the queue at once without blocking (writeNow); only if the
// socket cannot take it all does a writer goroutine (flush) finish, and it
// exits when the queue is empty. One role holder at a time, so writes never
// interleave.
package transport

import (
	"sync/atomic"
	"time"

	"github.com/tether-chat/tether/protocol"
)

// Handler is the session above a connection. The transport calls it from
// the connection's reader (Limit, OnMessage, OnRead, OnFail, OnGone) and
// from whichever goroutine writes (Encode, OnPanic); it must not block on
// the connection's own writer.
type Handler interface {
	// Limit is the largest message of kind op (ws.OpText, ws.OpBinary)
	// the connection accepts.
	Limit(op byte) int64
	// OnMessage is a whole message. data is valid until it returns.
	OnMessage(op byte, data []byte)
	// OnRead is called once the messages of one read have been handled,
	// before the replies to them are written (in one write).
	OnRead()
	// OnFail is told that the peer broke RFC 6455; the connection is
	// closed with d, after what is queued, when it returns.
	OnFail(d protocol.Disconnect)
	// OnGone is called once, by the reader, when the socket is gone.
	OnGone()
	// OnPanic is told of a panic recovered while reading ("reading") or
	// writing ("writing") for this connection; the reader stops reading
	// after a panic while reading. The handler closes the connection.
	OnPanic(where string, r any)
	// Encode translates a text frame at write time, for a connection
	// opened with Translate; nil leaves the frame out.
	Encode(text []byte) []byte
}

// Options are the limits every connection of a node shares. They are read
// without a lock: set them before the first connection.
type Options struct {
	// QueueMessages and QueueBytes bound a connection's send queue; past
	// either the connection is closed as a slow consumer (4008).
	QueueMessages int
	QueueBytes    int
	// WriteTimeout bounds a blocking write: a writer goroutine that cannot
	// make progress for this long closes the socket.
	WriteTimeout time.Duration
	// ShutdownGrace is how long a close with CloseShutdown lets the peer
	// take what is queued.
	ShutdownGrace time.Duration
	// CloseGrace, when set (nanoseconds), replaces DefaultCloseGrace
	// (tests).
	CloseGrace atomic.Int64
	// Flusher, when not nil, is the write delay's; a connection notes its
	// writes' times for it.
	Flusher *Flusher
	// Counters are the node's transport counters.
	Counters *Counters
}

// Counters count what the transport does, for the node's metrics.
type Counters struct {
	Delivered     atomic.Int64 // text frames written
	Writes        atomic.Int64 // write(2) calls
	SocketFull    atomic.Int64 // writes the socket took only part of
	SlowConsumers atomic.Int64 // connections closed because their queue overflowed
	QueueDrops    atomic.Int64 // frames dropped from the queues of connections closed with CloseDrop
	Delayed       atomic.Int64 // deliveries parked for the write delay
}
