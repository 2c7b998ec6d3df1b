package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Command is a decoded, validated client message. Only the fields of its
// Type are set.
type Command struct {
	Type string
	ID   string // the client's message id, "" when absent

	Room string // join, leave, chat, history, who
	Text string // chat, direct
	To   string // direct

	// history
	Before uint64
	After  uint64
	Limit  int

	Echo json.RawMessage // ping: the payload, echoed in pong
}

// Limits bounds what Decode accepts.
type Limits struct {
	MaxText int // longest text in characters (runes)
}

// DefaultMaxText is the default Limits.MaxText.
const DefaultMaxText = 4000

// Decode parses and validates one client frame. On failure it returns an
// *Error whose ID is the message's id when the id itself could be read, so
// the client can match the error to what it sent.
func Decode(frame []byte, lim Limits) (Command, *Error) {
	if cmd, err, ok := decodeFast(frame, lim); ok {
		return cmd, err
	}
	return decodeJSON(frame, lim)
}

// decodeJSON is Decode with encoding/json: the reference for every frame,
// and the decoder of every frame the fast path (scan.go) does not take.
func decodeJSON(frame []byte, lim Limits) (Command, *Error) {
	var cmd Command
	var env struct {
		Type    json.RawMessage `json:"type"`
		ID      json.RawMessage `json:"id"`
		Payload json.RawMessage `json:"payload"`
		Data    json.RawMessage `json:"data"`
	}
	trimmed := bytes.TrimLeft(frame, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		if json.Valid(frame) {
			return cmd, errorf(ErrBadEnvelope, "", "a message must be a JSON object with a \"type\"")
		}
		return cmd, errorf(ErrBadJSON, "", "the frame is not valid JSON")
	}
	if err := json.Unmarshal(frame, &env); err != nil {
		return cmd, errorf(ErrBadJSON, "", "the frame is not valid JSON: %s", jsonProblem(err))
	}

	id, ok := decodeID(env.ID)
	if !ok {
		return cmd, errorf(ErrBadEnvelope, "", "\"id\" must be a string or a number of at most %d characters", MaxIDLength)
	}
	cmd.ID = id
	if len(env.Type) == 0 || isNull(env.Type) {
		return cmd, errorf(ErrBadEnvelope, id, "\"type\" is missing")
	}
	if err := json.Unmarshal(env.Type, &cmd.Type); err != nil {
		return cmd, errorf(ErrBadEnvelope, id, "\"type\" must be a string")
	}

	payload := env.Payload
	if len(payload) == 0 || isNull(payload) {
		payload = env.Data
	}
	if len(payload) == 0 || isNull(payload) {
		payload = nil
	} else if bytes.TrimLeft(payload, " \t\r\n")[0] != '{' {
		return cmd, errorf(ErrBadPayload, id, "\"payload\" must be an object")
	}

	var p struct {
		Room   *string `json:"room"`
		Text   *string `json:"text"`
		To     *string `json:"to"`
		Before *uint64 `json:"before"`
		After  *uint64 `json:"after"`
		Limit  *int    `json:"limit"`
	}
	switch cmd.Type {
	case TypePing:
		cmd.Echo = payload
		return cmd, nil
	case TypeJoin, TypeLeave, TypeChat, TypeDirect, TypeHistory, TypeWho:
	default:
		if len(cmd.Type) > 32 {
			return cmd, errorf(ErrUnknownType, id, "unknown message type")
		}
		return cmd, errorf(ErrUnknownType, id, "unknown message type %q", cmd.Type)
	}
	if payload != nil {
		if err := json.Unmarshal(payload, &p); err != nil {
			return cmd, errorf(ErrBadPayload, id, "%s", jsonProblem(err))
		}
	}
	var f fields
	for i, v := range [...]*string{p.Room, p.Text, p.To} {
		if v != nil {
			f.setText(i, *v)
		}
	}
	if p.Before != nil {
		f.before, f.has[fieldBefore] = *p.Before, true
	}
	if p.After != nil {
		f.after, f.has[fieldAfter] = *p.After, true
	}
	if p.Limit != nil {
		f.limit, f.has[fieldLimit] = *p.Limit, true
	}
	return finish(cmd, f, lim)
}

// finish checks the payload's fields for cmd's type and puts them in cmd.
func finish(cmd Command, p fields, lim Limits) (Command, *Error) {
	id := cmd.ID
	switch cmd.Type {
	case TypeJoin, TypeLeave, TypeWho:
		if !p.has[fieldRoom] {
			return cmd, errorf(ErrBadPayload, id, "\"room\" is required")
		}
		cmd.Room = p.room
		if e := ValidateRoom(cmd.Room); e != "" {
			return cmd, errorf(ErrBadRoom, id, "%s", e)
		}
	case TypeChat:
		cmd.Room = DefaultRoom
		if p.has[fieldRoom] && p.room != "" {
			cmd.Room = p.room
		}
		if e := ValidateRoom(cmd.Room); e != "" {
			return cmd, errorf(ErrBadRoom, id, "%s", e)
		}
		if err := takeText(&cmd, p, lim); err != nil {
			return cmd, err
		}
	case TypeDirect:
		if !p.has[fieldTo] {
			return cmd, errorf(ErrBadPayload, id, "\"to\" is required")
		}
		cmd.To = p.to
		if e := ValidateUser(cmd.To); e != "" {
			return cmd, errorf(ErrBadUser, id, "%s", e)
		}
		if err := takeText(&cmd, p, lim); err != nil {
			return cmd, err
		}
	case TypeHistory:
		if !p.has[fieldRoom] {
			return cmd, errorf(ErrBadPayload, id, "\"room\" is required")
		}
		cmd.Room = p.room
		if e := ValidateRoom(cmd.Room); e != "" {
			return cmd, errorf(ErrBadRoom, id, "%s", e)
		}
		cmd.Before, cmd.After, cmd.Limit = p.before, p.after, p.limit
		if cmd.Limit < 0 {
			return cmd, errorf(ErrBadPayload, id, "\"limit\" must not be negative")
		}
	}
	return cmd, nil
}

// takeText checks a message's text and puts it in cmd.
func takeText(cmd *Command, p fields, lim Limits) *Error {
	if !p.has[fieldText] {
		return errorf(ErrBadPayload, cmd.ID, "\"text\" is required")
	}
	cmd.Text = p.text
	if e := ValidateText(cmd.Text, lim.MaxText); e != "" {
		return errorf(ErrBadText, cmd.ID, "%s", e)
	}
	return nil
}

// ValidateRoom returns "" for a valid room name, or what is wrong with it.
func ValidateRoom(room string) string { return validateName("room", room, MaxRoomLength) }

// ValidateUser returns "" for a valid user name, or what is wrong with it.
func ValidateUser(user string) string { return validateName("user", user, MaxUserLength) }

func validateName(what, name string, max int) string {
	if name == "" {
		return what + " name is empty"
	}
	if !utf8.ValidString(name) {
		return what + " name is not valid UTF-8"
	}
	if n := utf8.RuneCountInString(name); n > max {
		return fmt.Sprintf("%s name is %d characters long; the limit is %d", what, n, max)
	}
	for _, r := range name {
		if !(unicode.IsLetter(r) || unicode.IsDigit(r) || r == '_' || r == '-' || r == '.') {
			return fmt.Sprintf("%s name may contain letters, digits, '_', '-' and '.' only", what)
		}
	}
	return ""
}

// ValidateText returns "" for a valid message text, or what is wrong with
// it. Newlines and tabs are allowed; other control characters are not.
func ValidateText(text string, max int) string {
	if max <= 0 {
		max = DefaultMaxText
	}
	if strings.TrimSpace(text) == "" {
		return "text is empty"
	}
	if !utf8.ValidString(text) {
		return "text is not valid UTF-8"
	}
	n := 0
	for _, r := range text {
		n++
		if (r < 0x20 && r != '\n' && r != '\t' && r != '\r') || r == 0x7f {
			return fmt.Sprintf("text contains the control character U+%04X", r)
		}
	}
	if n > max {
		return fmt.Sprintf("text is %d characters long; the limit is %d", n, max)
	}
	return ""
}

func errorf(code ErrorCode, id, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...), ID: id}
}

func isNull(raw json.RawMessage) bool { return string(bytes.TrimSpace(raw)) == "null" }

// decodeID accepts a string or a number (written back as its JSON text), as
// clients written from the tutorials send either.
func decodeID(raw json.RawMessage) (string, bool) {
	if len(raw) == 0 || isNull(raw) {
		return "", true
	}
	var s string
	if raw[0] == '"' {
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", false
		}
	} else {
		var n json.Number
		if err := json.Unmarshal(raw, &n); err != nil {
			return "", false
		}
		s = n.String()
	}
	return s, validID(s)
}

// validID says whether a decoded id is acceptable: at most MaxIDLength
// bytes and no control characters.
func validID(s string) bool {
	if len(s) > MaxIDLength {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

// jsonProblem turns encoding/json's error into a sentence about the client's
// message (field names, not Go types).
func jsonProblem(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		if te.Field != "" {
			return fmt.Sprintf("%q must not be a JSON %s", te.Field, te.Value)
		}
		return fmt.Sprintf("unexpected JSON %s", te.Value)
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("%s (at byte %d)", se.Error(), se.Offset)
	}
	return err.Error()
}
