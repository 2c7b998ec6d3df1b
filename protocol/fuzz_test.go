package protocol

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
)

// FuzzDecode checks that no input makes Decode panic, that every failure
// carries a known code, and that every success is a command the server can
// act on without further checks. The seed corpus is in testdata/fuzz.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"type":"chat","id":"1","payload":{"room":"general","text":"hi"}}`,
		`{"type":"direct","data":{"to":"bob","text":"x"}}`,
		`{"type":"ping","payload":{"ts":1}}`,
		`{"type":"history","payload":{"room":"a","after":3,"limit":10}}`,
		`[]`, `null`, `{"type":{}}`, "\xff\xfe",
	} {
		f.Add([]byte(s))
	}
	known := map[ErrorCode]bool{ErrBadJSON: true, ErrBadEnvelope: true, ErrUnknownType: true,
		ErrBadPayload: true, ErrBadRoom: true, ErrBadUser: true, ErrBadText: true}
	f.Fuzz(func(t *testing.T, frame []byte) {
		cmd, err := Decode(frame, Limits{MaxText: 100})
		if err != nil {
			if !known[err.Code] || err.Message == "" {
				t.Fatalf("unexpected error %+v", err)
			}
			if len(err.ID) > MaxIDLength {
				t.Fatalf("error id too long: %d", len(err.ID))
			}
			if _, mErr := json.Marshal(err); mErr != nil {
				t.Fatalf("error reply does not encode: %v", mErr)
			}
			return
		}
		switch cmd.Type {
		case TypeJoin, TypeLeave, TypeWho, TypeHistory:
			if ValidateRoom(cmd.Room) != "" {
				t.Fatalf("accepted bad room %q", cmd.Room)
			}
		case TypeChat:
			if ValidateRoom(cmd.Room) != "" || ValidateText(cmd.Text, 100) != "" {
				t.Fatalf("accepted bad chat %+v", cmd)
			}
		case TypeDirect:
			if ValidateUser(cmd.To) != "" || ValidateText(cmd.Text, 100) != "" {
				t.Fatalf("accepted bad direct %+v", cmd)
			}
		case TypePing:
		default:
			t.Fatalf("accepted unknown type %q", cmd.Type)
		}
	})
}

// FuzzEnvelope checks that the hand-built envelope is byte for byte what
// json.Marshal writes for the same Envelope (valid UTF-8 or not, with
// characters that need escaping), so clients cannot tell them apart.
func FuzzEnvelope(f *testing.F) {
	for _, s := range [][2]string{
		{"chat", ""}, {"ack", "c7"}, {"error", `quote " and \ back`}, {"pong", "<script>&"},
		{"members", "\x00\x1f\x7f"}, {"welcome", "é ✓ \u2028"}, {"x", "\xff\xfe"},
	} {
		f.Add(s[0], s[1], int64(1718234567000), []byte(`{"room":"general"}`))
	}
	f.Add("ping", "", int64(0), []byte(nil))
	f.Fuzz(func(t *testing.T, typ, id string, ts int64, payload []byte) {
		if len(payload) > 0 && !json.Valid(payload) {
			payload = nil
		}
		var compact bytes.Buffer
		if len(payload) > 0 {
			json.Compact(&compact, payload)
			payload = compact.Bytes()
		}
		want, err := json.Marshal(Envelope{Type: typ, ID: id, TS: ts, Payload: payload})
		if err != nil {
			t.Fatal(err)
		}
		if got := appendEnvelope(nil, typ, id, ts, payload); !bytes.Equal(got, want) {
			t.Fatalf("appendEnvelope = %s\njson.Marshal  = %s", got, want)
		}
	})
}

// fastPathFrames are frames as the SDKs and the tutorials' clients send
// them; each must be taken by the fast path (decodeFast ok), or the fast
// path is dead code that FuzzDecodeFastPath cannot catch.
var fastPathFrames = []string{
	`{"type":"chat","id":"k3j2-17","ts":1718234567000,"payload":{"room":"general","text":"hi"}}`,
	`{"type":"join","payload":{"room":"bench"}}`,
	`{"type":"join","id":"j","payload":{"room":"bench"}}`,
	`{"type":"ping","payload":{"ts":1718234567000}}`,
	`{"type":"ping","id":7}`,
	`{"type":"direct","id":"d1","ts":1,"data":{"to":"bob","text":"line\nbreak \"quoted\" é ✓"}}`,
	`{"type":"history","id":"h","payload":{"room":"general","after":3,"limit":50}}`,
	`{"type":"who","id":"w","payload":{"room":"général"}}`,
	`{"type":"leave","id":"l","payload":{"room":"a"}}`,
	` { "type" : "chat" , "payload" : { "text" : "x" , "extra" : [1, {"a": null}, true, -2.5e3] } } `,
	`{"type":"chat","payload":{"room":"a","text":""}}`,   // fast, and an ErrBadText
	`{"type":"join","payload":{"room":"no spaces"}}`,     // fast, and an ErrBadRoom
	`{"type":"direct","id":"x","payload":{"text":"hi"}}`, // fast, and "to" is required
}

func TestFastPathTakesWhatClientsSend(t *testing.T) {
	for _, frame := range fastPathFrames {
		fcmd, ferr, ok := decodeFast([]byte(frame), Limits{MaxText: 100})
		if !ok {
			t.Errorf("fast path refused %s", frame)
			continue
		}
		scmd, serr := decodeJSON([]byte(frame), Limits{MaxText: 100})
		if !sameDecode(fcmd, ferr, scmd, serr) {
			t.Errorf("%s:\nfast %+v %+v\njson %+v %+v", frame, fcmd, ferr, scmd, serr)
		}
	}
}

// FuzzDecodeFastPath: whatever the frame, Decode (fast path first) returns
// exactly what encoding/json's decodeJSON returns.
func FuzzDecodeFastPath(f *testing.F) {
	for _, s := range fastPathFrames {
		f.Add([]byte(s))
	}
	for _, s := range []string{`{"type":"chat","Type":"join"}`, `{"type":"join","payload":{"room":"a","room":"b"}}`,
		`{"type":"chat","payload":{"text":"\ud800"}}`, `{"type":"chat","payload":{"text":"a\xffb"}}`, `{"id":1e400,"type":"ping"}`,
		`{"type":"history","payload":{"room":"a","limit":-1}}`, `{"type":"history","payload":{"room":"a","before":1.5}}`,
		`{"type":"ping","payload":[]}`, `{"type":"ping","payload":null,"data":{"a":1}}`, `{"type":"join","id":null,"payload":{"room":"a"}}`,
		`{"type":"join","payload":{"room":"a"}} x`, `{"type":"join","payload":{"room":"a"},}`, `{"type":"jo\u0069n","payload":{"room":"a"}}`,
		`{"type":"join","payload":{"ROOM":"a"}}`, `{"type":"join","payload":{"room":"a","ſ":1}}`, `{"type":"join","id":"\u0001"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		lim := Limits{MaxText: 100}
		fcmd, ferr := Decode(frame, lim)
		scmd, serr := decodeJSON(frame, lim)
		if !sameDecode(fcmd, ferr, scmd, serr) {
			t.Fatalf("%q:\nDecode     %+v %+v\ndecodeJSON %+v %+v", frame, fcmd, ferr, scmd, serr)
		}
	})
}

func sameDecode(a Command, aerr *Error, b Command, berr *Error) bool {
	if (aerr == nil) != (berr == nil) || aerr != nil && *aerr != *berr {
		return false
	}
	return reflect.DeepEqual(a, b)
}
