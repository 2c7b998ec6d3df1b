package protocol

import "fmt"

// CloseCode is a WebSocket close status code as Tether uses it.
type CloseCode int

// Close codes. Every code has a reconnect policy (see Policy) that both SDKs
// obey; docs/protocol.md carries the same table.
const (
	CloseNormal         CloseCode = 1000 // manual close: never reconnect
	CloseGoingAway      CloseCode = 1001 // server or page going away: reconnect
	CloseProtocolError  CloseCode = 1002 // broken framing: client bug, do not reconnect
	CloseUnsupported    CloseCode = 1003 // unsupported data: do not reconnect
	CloseAbnormal       CloseCode = 1006 // no close frame (network, crash): reconnect; never sent on the wire
	CloseInvalidUTF8    CloseCode = 1007 // text frame with invalid UTF-8: client bug, do not reconnect
	ClosePolicy         CloseCode = 1008 // policy violation (e.g. origin): do not reconnect
	CloseTooBig         CloseCode = 1009 // frame over the size limit: client bug, do not reconnect
	CloseInternal       CloseCode = 1011 // server error: reconnect with backoff
	CloseRestart        CloseCode = 1012 // server restarting (graceful shutdown): reconnect with jitter
	CloseTryAgainLater  CloseCode = 1013 // server overloaded: reconnect with backoff
	CloseHeartbeat      CloseCode = 4000 // no frame within the heartbeat timeout: reconnect
	CloseResync         CloseCode = 4010 // a stream's deliveries have a gap: reconnect and resume (recovery fills it or says it cannot)
	CloseSlowConsumer   CloseCode = 4008 // send queue overflowed: reconnect (resume recovers what was missed)
	CloseRateLimited    CloseCode = 4029 // kept flooding after rate_limited errors: reconnect after a delay
	CloseUnauthorized   CloseCode = 4401 // missing, forged or expired credentials: do not reconnect with them
	CloseForbidden      CloseCode = 4403 // authenticated but not allowed: do not reconnect
	CloseSessionInvalid CloseCode = 4409 // session belongs to another user or is unknown: reconnect without it
)

// Policy says what a client does after a close with a given code.
type Policy int

const (
	// Reconnect with the normal exponential backoff and jitter.
	Reconnect Policy = iota
	// ReconnectLater reconnects, but waits at least the policy's minimum
	// delay first (rate limit, overload).
	ReconnectLater
	// Terminal means: stop. Reconnecting would fail the same way.
	Terminal
)

func (p Policy) String() string {
	switch p {
	case Reconnect:
		return "reconnect"
	case ReconnectLater:
		return "reconnect-later"
	case Terminal:
		return "terminal"
	}
	return fmt.Sprintf("Policy(%d)", int(p))
}

// PolicyFor is the single mapping from close code to reconnect policy. Codes
// not listed (including 1005 "no status" and unknown application codes)
// reconnect: a client that gives up on an unknown code leaves the user
// disconnected for no reason, one that retries with backoff costs little.
func PolicyFor(code CloseCode) Policy {
	switch code {
	case CloseNormal, CloseProtocolError, CloseUnsupported, CloseInvalidUTF8,
		ClosePolicy, CloseTooBig, CloseUnauthorized, CloseForbidden:
		return Terminal
	case CloseRateLimited, CloseTryAgainLater, CloseSlowConsumer:
		return ReconnectLater
	}
	return Reconnect
}

// Disconnect is the reason the server ends a connection. It is an error, so
// it can travel up a call stack; Code and Reason go into the close frame.
type Disconnect struct {
	Code   CloseCode
	Reason string
}

func (d Disconnect) Error() string { return fmt.Sprintf("disconnect %d: %s", d.Code, d.Reason) }

// The disconnects the server issues. Reasons are short: a close frame's
// reason is limited to 123 bytes.
var (
	DisconnectShutdown     = Disconnect{CloseRestart, "server restarting"}
	DisconnectHeartbeat    = Disconnect{CloseHeartbeat, "heartbeat timeout"}
	DisconnectSlowConsumer = Disconnect{CloseSlowConsumer, "slow consumer"}
	DisconnectRateLimited  = Disconnect{CloseRateLimited, "rate limit exceeded"}
	DisconnectInvalidUTF8  = Disconnect{CloseInvalidUTF8, "invalid UTF-8 in text frame"}
	DisconnectTooBig       = Disconnect{CloseTooBig, "message too big"}
	DisconnectInternal     = Disconnect{CloseInternal, "internal error"}
	DisconnectSessionUser  = Disconnect{CloseSessionInvalid, "session belongs to another user"}
	DisconnectResync       = Disconnect{CloseResync, "missed messages: resume to recover them"}
)

// Unauthorized is the close for a connection without valid credentials;
// reason says which check failed (never the token itself).
func Unauthorized(reason string) Disconnect { return Disconnect{CloseUnauthorized, reason} }

// Forbidden is the close for valid credentials that do not allow what the
// connection asked for.
func Forbidden(reason string) Disconnect { return Disconnect{CloseForbidden, reason} }
