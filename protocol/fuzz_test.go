package protocol

import (
	"bytes"
	"encoding/json"
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
