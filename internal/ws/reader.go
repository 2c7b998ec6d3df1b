package ws

import "unicode/utf8"

// Handler receives what a Reader reads. Payloads are valid only during
// the call.
type Handler interface {
	// Limit is the size of the largest message with opcode op (OpText or
	// OpBinary) the handler takes. A bigger one fails the connection with
	// 1009 from its header, before its payload is buffered.
	Limit(op byte) int64
	// OnMessage is a whole message, reassembled from its fragments; text
	// is valid UTF-8.
	OnMessage(op byte, data []byte)
	OnPing(payload []byte)
	OnPong(payload []byte)
	// OnClose is the end of the peer's side: its close frame (code
	// StatusNoStatus when the frame had none), or, once the Reader has
	// failed, StatusAbnormal when the peer's bytes can no longer be
	// followed to its close. Nothing is reported after it.
	OnClose(code Status, reason string)
	// OnFail is a violation of the protocol by the peer: the handler sends
	// a close with e's code and reason. The Reader then reads on only to
	// find the peer's close, which it reports with OnClose.
	OnFail(e *Error)
}

// Reader states.
const (
	reading  uint8 = iota
	failed         // OnFail was called: looking for the peer's close only
	finished       // OnClose was called (or Stop): everything is discarded
)

// Reader turns a client's bytes into frames and messages (RFC 6455
// sections 5 and 6.2): it keeps the start of a frame whose end has not
// arrived, assembles fragmented messages, enforces the size limits and
// the rules on fragments, control frames and UTF-8. Between whole frames
// it holds no memory. It is used by one goroutine at a time.
type Reader struct {
	pending []byte // the start of a frame whose end has not arrived
	msg     []byte // a fragmented message being assembled
	msgOp   byte   // its opcode; 0 when none is in progress
	valid   int    // text: how many bytes of msg are checked whole UTF-8
	state   uint8
	skip    int64 // once failed: payload bytes of the current frame still to discard
}

// Done reports whether the Reader has finished: the peer's close was
// read (or given up on), or Stop was called.
func (r *Reader) Done() bool { return r.state == finished }

// Stop discards everything from now on (after a panic in the handler, or
// when the connection is gone).
func (r *Reader) Stop() {
	r.state, r.pending, r.msg, r.msgOp, r.skip, r.valid = finished, nil, nil, 0, 0, 0
}

// Feed processes bytes read from the socket: every whole frame in them is
// handled, and what is left over (part of a frame) is kept for the next
// call. p may be modified (frames are unmasked in place) and is not
// retained.
func (r *Reader) Feed(p []byte, h Handler) {
	if r.state == finished {
		return
	}
	carried := len(r.pending) > 0
	if carried {
		r.pending = append(r.pending, p...)
		p = r.pending
	}
	for len(p) > 0 && r.state != finished {
		if r.skip > 0 {
			n := min(r.skip, int64(len(p)))
			p, r.skip = p[n:], r.skip-n
			continue
		}
		hd, perr := ParseHeader(p)
		if perr != nil {
			if r.state == failed {
				r.finish(h, StatusAbnormal, "the peer's frames can no longer be read after the protocol error")
			} else {
				r.fail(h, perr)
				r.finish(h, StatusAbnormal, "the frame header cannot be read past")
			}
			break
		}
		if hd.Size == 0 {
			break // the rest of the header has not arrived
		}
		if r.state == failed && hd.Op != OpClose {
			if !r.discard(hd, h) {
				break
			}
			p = p[hd.Size:]
			continue
		}
		if e := r.check(hd, h); e != nil {
			r.fail(h, e)
			if !r.discard(hd, h) {
				break
			}
			p = p[hd.Size:]
			continue
		}
		end := int64(hd.Size) + hd.Length
		if int64(len(p)) < end {
			break // the rest of the payload has not arrived
		}
		payload := p[hd.Size:end]
		Unmask(hd.Mask, payload)
		p = p[end:]
		r.frame(hd, payload, h)
	}
	switch {
	case r.state == finished || len(p) == 0:
		r.pending = nil
	case carried: // p is the tail of pending: move it to the front
		r.pending = r.pending[:copy(r.pending, p)]
	default:
		r.pending = append([]byte(nil), p...)
	}
}

// MaxDiscard is the most of a frame's payload a failed Reader discards
// while it looks for the peer's close. A frame that claims more ends the
// wait: the peer's close cannot come before it, and it may never end.
const MaxDiscard = 1 << 20

// discard skips hd's payload once the Reader has failed, and reports
// whether reading goes on.
func (r *Reader) discard(hd Header, h Handler) bool {
	if hd.Length > MaxDiscard {
		r.finish(h, StatusAbnormal, "the peer's close cannot come within the frame's claimed length")
		return false
	}
	r.skip = hd.Length
	return true
}

// check applies the rules a data frame's header must meet, in the order
// that names the real fault: the fragment sequence first, then the size
// of the message the frame would make.
func (r *Reader) check(hd Header, h Handler) *Error {
	switch hd.Op {
	case OpContinuation:
		if r.msgOp == 0 {
			return protocolError("continuation frame without a message to continue")
		}
		if int64(len(r.msg))+hd.Length > h.Limit(r.msgOp) {
			return &Error{Code: StatusTooBig, Reason: "message too big"}
		}
	case OpText, OpBinary:
		if r.msgOp != 0 {
			return protocolError("new message before the fragmented one was finished")
		}
		if hd.Length > h.Limit(hd.Op) {
			return &Error{Code: StatusTooBig, Reason: "message too big"}
		}
	}
	return nil
}

// frame handles one whole frame whose header passed check.
func (r *Reader) frame(hd Header, payload []byte, h Handler) {
	switch hd.Op {
	case OpPing:
		h.OnPing(payload)
	case OpPong:
		h.OnPong(payload)
	case OpClose:
		code, reason, perr := ParseClose(payload)
		if perr != nil {
			r.fail(h, perr)
			code, reason = StatusNoStatus, ""
		}
		r.finish(h, code, reason)
	case OpContinuation:
		r.msg = append(r.msg, payload...)
		if hd.Fin {
			op, msg, valid := r.msgOp, r.msg, r.valid
			r.msg, r.msgOp, r.valid = nil, 0, 0
			r.message(op, msg, valid, h)
			return
		}
		r.checkText(h)
	default: // text or binary
		if !hd.Fin {
			r.msgOp = hd.Op
			r.msg = append(make([]byte, 0, 2*len(payload)), payload...)
			r.valid = 0
			r.checkText(h)
			return
		}
		r.message(hd.Op, payload, 0, h)
	}
}

// errInvalidUTF8 is the failure of a text message that is not UTF-8.
var errInvalidUTF8 = Error{Code: StatusInvalidUTF8, Reason: "text message is not valid UTF-8"}

// message hands a whole message to h; a text message must be valid UTF-8
// (its first valid bytes were checked already).
func (r *Reader) message(op byte, data []byte, valid int, h Handler) {
	if op == OpText && !utf8.Valid(data[valid:]) {
		e := errInvalidUTF8
		r.fail(h, &e)
		return
	}
	h.OnMessage(op, data)
}

// checkText checks a fragmented text message as far as it has come, so
// that text which can no longer become UTF-8 fails at the fragment that
// broke it (RFC 6455 section 8.1; Autobahn's "fail fast" cases), not at
// the end of the message: everything must be valid but a code point
// whose last bytes are still to come.
func (r *Reader) checkText(h Handler) {
	if r.msgOp != OpText {
		return
	}
	b := r.msg[r.valid:]
	if utf8.Valid(b) {
		r.valid = len(r.msg)
		return
	}
	for len(b) > 0 {
		c, size := utf8.DecodeRune(b)
		if c == utf8.RuneError && size == 1 {
			if !utf8.FullRune(b) {
				return // the start of a code point whose rest is still to come
			}
			e := errInvalidUTF8
			r.fail(h, &e)
			return
		}
		b, r.valid = b[size:], r.valid+size
	}
}

// fail reports a violation, once, and from then on only looks for the
// peer's close.
func (r *Reader) fail(h Handler, e *Error) {
	if r.state != reading {
		return
	}
	r.state, r.msg, r.msgOp, r.valid = failed, nil, 0, 0
	h.OnFail(e)
}

func (r *Reader) finish(h Handler, code Status, reason string) {
	r.state, r.msg, r.msgOp, r.skip, r.valid = finished, nil, 0, 0, 0
	h.OnClose(code, reason)
}
