// Package protocol defines Tether's wire protocol (v1): the JSON envelope,
// the message types in both directions, the error codes carried by `error`
// replies and the WebSocket close codes with their reconnect policy.
//
// The server and the Go SDK both import it, so the two can never disagree on
// a name. docs/protocol.md is the human-readable form of this file; change
// both together.
//
// Flow of one connection:
//
//	client                                server
//	  | -- HTTP GET /ws?user=alice (Upgrade) -->|
//	  | <-------------------- 101 Switching ----|
//	  | <---------- welcome {user, session, ...} |
//	  | -- join {room} (id=1) ------------------>|
//	  | <------------------------- ack {id: 1}  |
//	  | <--------- members {room, users, count} |
//	  | -- chat {room, text} (id=2) ------------>|
//	  | <------------------------- ack {id: 2}  |
//	  | <----- chat {room, from, text, seq} ----|  (to every member, sender included)
//	  | -- ping ------------------------------->|
//	  | <------------------------------- pong   |
//	  | <--------- close 1012 (server restart) --|
package protocol

// Version is the protocol version announced in `welcome`. It changes only
// when a change on the wire would break an existing client.
const Version = 1

// Client → server message types.
const (
	TypeJoin    = "join"
	TypeLeave   = "leave"
	TypeChat    = "chat"
	TypeDirect  = "direct"
	TypePing    = "ping"
	TypeHistory = "history"
	TypeWho     = "who"
	// TypeFile is a file frame's header type (a binary frame, see
	// EncodeFile); the file arrives as a chat or direct message.
	TypeFile = "file"
)

// Server → client message types (TypeChat and TypeDirect are used in both
// directions).
const (
	TypeWelcome   = "welcome"
	TypePresence  = "presence"
	TypeMembers   = "members"
	TypeLeft      = "left"
	TypePong      = "pong"
	TypeAck       = "ack"
	TypeError     = "error"
	TypeRecovered = "recovered"
	// TypeUnsubscribed tells a connection that the application took its
	// user out of a room (the server API); the client must not join it
	// again on its own.
	TypeUnsubscribed = "unsubscribed"
)

// InboxKey names the user's private inbox in a client's `since` positions
// (room names cannot contain '@').
const InboxKey = "@"

// DefaultRoom is the room a `chat` without a room goes to.
const DefaultRoom = "general"

// Limits on names. Room and user names share one alphabet: letters and
// digits of any script, '_', '-' and '.', so a name is safe in a URL path, a
// log line, a Redis key and an HTML attribute, and cannot carry wildcards or
// path separators.
const (
	MaxRoomLength = 64
	MaxUserLength = 64
	MaxIDLength   = 64
)

// ErrorCode is the stable machine-readable code of an `error` reply. The
// connection stays open after every one of them.
type ErrorCode string

// Error codes. Clients switch on these; the message text is for humans and
// may change.
const (
	ErrBadJSON       ErrorCode = "bad_json"       // the frame is not valid JSON
	ErrBadEnvelope   ErrorCode = "bad_envelope"   // not an object, or type/id missing or of the wrong kind
	ErrUnknownType   ErrorCode = "unknown_type"   // type is not one this server knows
	ErrBadPayload    ErrorCode = "bad_payload"    // payload is not an object, or a field has the wrong JSON type
	ErrBadRoom       ErrorCode = "bad_room"       // room name empty, too long or with forbidden characters
	ErrBadUser       ErrorCode = "bad_user"       // user name empty, too long or with forbidden characters
	ErrBadText       ErrorCode = "bad_text"       // text empty, too long or with control characters
	ErrBadFrame      ErrorCode = "bad_frame"      // a binary frame that is not a file frame, or files are off
	ErrBadFile       ErrorCode = "bad_file"       // a file frame that is malformed, empty, or whose bytes are not what it says
	ErrFileTooLarge  ErrorCode = "file_too_large" // a file over the server's size limit
	ErrNotMember     ErrorCode = "not_member"     // chat or history on a room the connection has not joined
	ErrTooManyRooms  ErrorCode = "too_many_rooms" // the per-connection room limit is reached
	ErrForbiddenRoom ErrorCode = "forbidden_room" // the token does not allow this room
	ErrUserOffline   ErrorCode = "user_offline"   // direct to a user with no connection
	ErrRejected      ErrorCode = "rejected"       // the application's check (--check-url) refused this message
	ErrRateLimited   ErrorCode = "rate_limited"   // too many messages; this one was not processed
	ErrUnavailable   ErrorCode = "unavailable"    // the engine could not take the message; retry later
	ErrInternal      ErrorCode = "internal"       // a bug on the server side; the message was not processed
)

// Retryable reports whether a client may send the same message again later
// and expect a different answer (the SDK outboxes keep such messages).
func (c ErrorCode) Retryable() bool {
	switch c {
	case ErrRateLimited, ErrUnavailable, ErrInternal:
		return true
	}
	return false
}
