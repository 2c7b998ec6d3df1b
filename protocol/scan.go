package protocol

import (
	"bytes"
	"encoding/json"
	"unicode/utf8"
)

// The fast path of Decode: one pass over the frame, no reflection, and an
// allocation only for the strings a command keeps. It takes the frames
// clients send (an object with "type", "id", "payload" or "data" and keys it
// ignores, such as "ts"; a payload of the command's fields) and gives up on
// anything else: a syntax error, a key that differs from a field only in
// case (encoding/json matches those), a duplicate key, a null or a value of
// the wrong kind, a string encoding/json would repair (invalid UTF-8), an
// unknown type. decodeJSON then decodes the frame as it always did, so the
// fast path only ever returns what decodeJSON returns (FuzzDecodeFastPath
// compares the two).

// fields is a decoded payload: the command fields a client may send.
type fields struct {
	room, text, to string
	before, after  uint64
	limit          int
	has            [len(fieldNames)]bool // by position in fieldNames: the field was sent
}

var fieldNames = [...]string{"room", "text", "to", "before", "after", "limit"}

const (
	fieldRoom = iota
	fieldText
	fieldTo
	fieldBefore
	fieldAfter
	fieldLimit
)

// setText sets the string field i (fieldRoom, fieldText or fieldTo).
func (f *fields) setText(i int, v string) {
	*[...]*string{&f.room, &f.text, &f.to}[i] = v
	f.has[i] = true
}

// maxScanDepth bounds the nesting the fast path follows; deeper frames go
// to encoding/json, which has its own limit.
const maxScanDepth = 64

type scanner struct {
	b []byte
	i int
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// str reads a string token at s.i; content is what is between the quotes,
// escaped whether it holds a backslash escape. It reports false for
// anything that is not a valid JSON string (raw control characters, a bad
// escape, no closing quote).
func (s *scanner) str() (content []byte, escaped, ok bool) {
	if s.i >= len(s.b) || s.b[s.i] != '"' {
		return nil, false, false
	}
	start := s.i + 1
	for i := start; i < len(s.b); i++ {
		switch c := s.b[i]; {
		case c == '"':
			s.i = i + 1
			return s.b[start:i], escaped, true
		case c < 0x20:
			return nil, false, false
		case c == '\\':
			escaped = true
			i++
			if i >= len(s.b) {
				return nil, false, false
			}
			switch s.b[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if i+4 >= len(s.b) {
					return nil, false, false
				}
				for _, h := range s.b[i+1 : i+5] {
					if !isHex(h) {
						return nil, false, false
					}
				}
				i += 4
			default:
				return nil, false, false
			}
		}
	}
	return nil, false, false
}

func isHex(c byte) bool { return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F' }

// number reads a JSON number token at s.i.
func (s *scanner) number() ([]byte, bool) {
	start, b, i := s.i, s.b, s.i
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && '1' <= b[i] && b[i] <= '9':
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
		}
	default:
		return nil, false
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			return nil, false
		}
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			return nil, false
		}
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
		}
	}
	s.i = i
	return b[start:i], true
}

// value skips one JSON value of any kind at s.i, checking its syntax.
func (s *scanner) value(depth int) bool {
	if s.i >= len(s.b) || depth > maxScanDepth {
		return false
	}
	switch c := s.b[s.i]; {
	case c == '"':
		_, _, ok := s.str()
		return ok
	case c == '{':
		return s.object(func([]byte, bool) bool { return s.value(depth + 1) })
	case c == '[':
		s.i++
		s.ws()
		if s.i < len(s.b) && s.b[s.i] == ']' {
			s.i++
			return true
		}
		for {
			if !s.value(depth + 1) {
				return false
			}
			if done, ok := s.after(']'); done || !ok {
				return ok
			}
		}
	case c == '-' || '0' <= c && c <= '9':
		_, ok := s.number()
		return ok
	default:
		for _, lit := range literals {
			if bytes.HasPrefix(s.b[s.i:], lit) {
				s.i += len(lit)
				return true
			}
		}
		return false
	}
}

var literals = [...][]byte{[]byte("true"), []byte("false"), []byte("null")}

// object walks the members of the object at s.i, calling member with each
// key (not unescaped) and the scanner at the member's value; member must
// consume the value and reports false to give up.
func (s *scanner) object(member func(key []byte, keyEscaped bool) bool) bool {
	if s.i >= len(s.b) || s.b[s.i] != '{' {
		return false
	}
	s.i++
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == '}' {
		s.i++
		return true
	}
	for {
		key, esc, ok := s.str()
		if !ok {
			return false
		}
		s.ws()
		if s.i >= len(s.b) || s.b[s.i] != ':' {
			return false
		}
		s.i++
		s.ws()
		if !member(key, esc) {
			return false
		}
		if done, ok := s.after('}'); done || !ok {
			return ok
		}
	}
}

// after reads what follows a member of an object or an array: a comma (and
// the space after it) or the closing bracket, done.
func (s *scanner) after(close byte) (done, ok bool) {
	s.ws()
	if s.i >= len(s.b) {
		return false, false
	}
	switch s.b[s.i] {
	case ',':
		s.i++
		s.ws()
		return false, true
	case close:
		s.i++
		return true, true
	}
	return false, false
}

// keyIndex returns the position of key in names, or -1 for a key no name
// takes (its value is skipped). It reports false for a key the fast path
// leaves to encoding/json, which matches keys to fields case-insensitively
// (with Unicode folding): an escaped or non-ASCII key, or one that differs
// from a name only in case.
func keyIndex(key []byte, escaped bool, names []string) (int, bool) {
	if escaped {
		return 0, false
	}
	for _, c := range key {
		if c >= utf8.RuneSelf {
			return 0, false
		}
	}
	for i, k := range names {
		if string(key) == k {
			return i, true
		}
		if asciiEqualFold(key, k) {
			return 0, false
		}
	}
	return -1, true
}

func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i, c := range b {
		d := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if 'A' <= d && d <= 'Z' {
			d += 'a' - 'A'
		}
		if c != d {
			return false
		}
	}
	return true
}

// text returns the string value at s.i as encoding/json would decode it.
func (s *scanner) text() (string, bool) {
	start := s.i
	content, escaped, ok := s.str()
	if !ok {
		return "", false
	}
	if escaped {
		var v string
		if json.Unmarshal(s.b[start:s.i], &v) != nil {
			return "", false
		}
		return v, true
	}
	for _, c := range content {
		if c >= utf8.RuneSelf {
			if !utf8.Valid(content) {
				return "", false // encoding/json would put U+FFFD in
			}
			break
		}
	}
	return string(content), true
}

// count returns the non-negative integer at s.i (at most 18 digits, so that
// it fits every field's type).
func (s *scanner) count() (uint64, bool) {
	tok, ok := s.number()
	if !ok || len(tok) > 18 || tok[0] == '-' {
		return 0, false
	}
	var n uint64
	for _, c := range tok {
		if c < '0' || c > '9' {
			return 0, false // a fraction or an exponent
		}
		n = n*10 + uint64(c-'0')
	}
	return n, true
}

var commandTypes = [...]string{TypeJoin, TypeLeave, TypeChat, TypeDirect, TypePing, TypeHistory, TypeWho}

var envelopeNames = [...]string{"type", "id", "payload", "data"}

// decodeFast is Decode's fast path; ok false means "ask decodeJSON".
func decodeFast(frame []byte, lim Limits) (cmd Command, perr *Error, ok bool) {
	s := &scanner{b: frame}
	s.ws()
	var env [4][]byte // by position in envelopeNames: the raw value
	if !s.object(func(key []byte, esc bool) bool {
		i, ok := keyIndex(key, esc, envelopeNames[:])
		if !ok {
			return false
		}
		if i < 0 {
			return s.value(1)
		}
		if env[i] != nil {
			return false // duplicate: the last one wins in encoding/json
		}
		start := s.i
		if !s.value(1) {
			return false
		}
		env[i] = frame[start:s.i]
		return true
	}) {
		return cmd, nil, false
	}
	typ, id, payload, data := env[0], env[1], env[2], env[3]
	s.ws()
	if s.i != len(frame) {
		return cmd, nil, false
	}

	if len(id) > 0 {
		if id[0] == 'n' {
			return cmd, nil, false // null
		}
		sc := scanner{b: id}
		var v string
		if id[0] == '"' {
			if v, ok = sc.text(); !ok {
				return cmd, nil, false
			}
		} else if id[0] == '-' || '0' <= id[0] && id[0] <= '9' {
			v = string(id) // a number is kept as written
		} else {
			return cmd, nil, false
		}
		if !validID(v) {
			return cmd, nil, false
		}
		cmd.ID = v
	}

	if len(typ) < 2 || typ[0] != '"' {
		return cmd, nil, false
	}
	for _, t := range commandTypes {
		if string(typ[1:len(typ)-1]) == t {
			cmd.Type = t // the constant: no allocation
		}
	}
	if cmd.Type == "" {
		return cmd, nil, false // escaped, or unknown: decodeJSON words the error
	}

	p := payload
	if len(p) == 0 || p[0] == 'n' {
		p = data
	}
	if len(p) == 0 || p[0] == 'n' {
		p = nil
	} else if p[0] != '{' {
		return cmd, nil, false
	}
	if cmd.Type == TypePing {
		if p != nil {
			cmd.Echo = append(json.RawMessage(nil), p...)
		}
		return cmd, nil, true
	}
	var f fields
	if p != nil {
		ps := &scanner{b: p}
		if !ps.object(func(key []byte, esc bool) bool {
			i, ok := keyIndex(key, esc, fieldNames[:])
			if !ok {
				return false
			}
			if i < 0 {
				return ps.value(1)
			}
			if f.has[i] {
				return false // duplicate
			}
			if i <= fieldTo {
				v, ok := ps.text()
				if ok {
					f.setText(i, v)
				}
				return ok
			}
			n, ok := ps.count()
			switch i {
			case fieldBefore:
				f.before = n
			case fieldAfter:
				f.after = n
			default:
				f.limit = int(n)
			}
			f.has[i] = true
			return ok
		}) {
			return cmd, nil, false
		}
	}
	cmd, perr = finish(cmd, f, lim)
	return cmd, perr, true
}
