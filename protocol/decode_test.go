package protocol

import (
	"strings"
	"testing"
)

func TestDecodeValid(t *testing.T) {
	lim := Limits{MaxText: 10}
	for _, tc := range []struct {
		name  string
		frame string
		want  Command
	}{
		{"join", `{"type":"join","id":"1","payload":{"room":"lobby"}}`, Command{Type: TypeJoin, ID: "1", Room: "lobby"}},
		{"data alias", `{"type":"join","data":{"room":"lobby"}}`, Command{Type: TypeJoin, Room: "lobby"}},
		{"payload wins over data", `{"type":"join","payload":{"room":"a"},"data":{"room":"b"}}`, Command{Type: TypeJoin, Room: "a"}},
		{"numeric id", `{"type":"leave","id":42,"payload":{"room":"x"}}`, Command{Type: TypeLeave, ID: "42", Room: "x"}},
		{"chat default room", `{"type":"chat","payload":{"text":"hi"}}`, Command{Type: TypeChat, Room: DefaultRoom, Text: "hi"}},
		{"chat empty room is default", `{"type":"chat","payload":{"room":"","text":"hi"}}`, Command{Type: TypeChat, Room: DefaultRoom, Text: "hi"}},
		{"chat unicode room", `{"type":"chat","payload":{"room":"聊天室","text":"你好"}}`, Command{Type: TypeChat, Room: "聊天室", Text: "你好"}},
		{"direct", `{"type":"direct","id":"d","payload":{"to":"bob","text":"psst"}}`, Command{Type: TypeDirect, ID: "d", To: "bob", Text: "psst"}},
		{"ping no payload", `{"type":"ping"}`, Command{Type: TypePing}},
		{"history", `{"type":"history","payload":{"room":"r","before":10,"limit":5}}`, Command{Type: TypeHistory, Room: "r", Before: 10, Limit: 5}},
		{"unknown fields ignored", `{"type":"who","ts":"whatever","payload":{"room":"r","x":[1]}}`, Command{Type: TypeWho, Room: "r"}},
		{"text at limit", `{"type":"chat","payload":{"text":"0123456789"}}`, Command{Type: TypeChat, Room: DefaultRoom, Text: "0123456789"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Decode([]byte(tc.frame), lim)
			if err != nil {
				t.Fatalf("Decode(%s) = error %v", tc.frame, err)
			}
			got.Echo = nil
			if got.Type != tc.want.Type || got.ID != tc.want.ID || got.Room != tc.want.Room ||
				got.Text != tc.want.Text || got.To != tc.want.To || got.Before != tc.want.Before || got.Limit != tc.want.Limit {
				t.Fatalf("Decode(%s) = %+v, want %+v", tc.frame, got, tc.want)
			}
		})
	}
}

func TestDecodePingEcho(t *testing.T) {
	got, err := Decode([]byte(`{"type":"ping","data":{"ts":5}}`), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if string(got.Echo) != `{"ts":5}` {
		t.Fatalf("echo = %s", got.Echo)
	}
}

func TestDecodeErrors(t *testing.T) {
	lim := Limits{MaxText: 10}
	for _, tc := range []struct {
		name   string
		frame  string
		code   ErrorCode
		id     string
		phrase string
	}{
		{"not json", `hello`, ErrBadJSON, "", "not valid JSON"},
		{"truncated", `{"type":"chat"`, ErrBadJSON, "", "not valid JSON"},
		{"empty", ``, ErrBadJSON, "", ""},
		{"array", `[1,2]`, ErrBadEnvelope, "", "object"},
		{"scalar", `42`, ErrBadEnvelope, "", "object"},
		{"string", `"chat"`, ErrBadEnvelope, "", "object"},
		{"no type", `{"id":"7"}`, ErrBadEnvelope, "7", "missing"},
		{"null type", `{"type":null,"id":"7"}`, ErrBadEnvelope, "7", "missing"},
		{"type not string", `{"type":3,"id":"7"}`, ErrBadEnvelope, "7", "string"},
		{"id object", `{"type":"ping","id":{}}`, ErrBadEnvelope, "", "id"},
		{"id too long", `{"type":"ping","id":"` + strings.Repeat("x", 65) + `"}`, ErrBadEnvelope, "", "id"},
		{"unknown type", `{"type":"shout","id":"u"}`, ErrUnknownType, "u", "shout"},
		{"payload array", `{"type":"join","id":"p","payload":[1]}`, ErrBadPayload, "p", "object"},
		{"payload string", `{"type":"join","id":"p","data":"room"}`, ErrBadPayload, "p", "object"},
		{"room missing", `{"type":"join","id":"r"}`, ErrBadPayload, "r", "room"},
		{"room number", `{"type":"join","id":"r","payload":{"room":5}}`, ErrBadPayload, "r", `"room"`},
		{"room empty", `{"type":"join","payload":{"room":""}}`, ErrBadRoom, "", "empty"},
		{"room slash", `{"type":"join","payload":{"room":"a/b"}}`, ErrBadRoom, "", "letters"},
		{"room wildcard", `{"type":"join","payload":{"room":"*"}}`, ErrBadRoom, "", "letters"},
		{"room dotdot path", `{"type":"join","payload":{"room":"../etc"}}`, ErrBadRoom, "", "letters"},
		{"room too long", `{"type":"join","payload":{"room":"` + strings.Repeat("a", 65) + `"}}`, ErrBadRoom, "", "limit"},
		{"room html", `{"type":"join","payload":{"room":"<b>"}}`, ErrBadRoom, "", "letters"},
		{"chat no text", `{"type":"chat","id":"c","payload":{"room":"a"}}`, ErrBadPayload, "c", "text"},
		{"chat text number", `{"type":"chat","id":"c","payload":{"text":1}}`, ErrBadPayload, "c", `"text"`},
		{"chat blank", `{"type":"chat","payload":{"text":"   "}}`, ErrBadText, "", "empty"},
		{"chat too long", `{"type":"chat","payload":{"text":"01234567890"}}`, ErrBadText, "", "limit"},
		{"chat control char", `{"type":"chat","payload":{"text":"a\u0007b"}}`, ErrBadText, "", "U+0007"},
		{"direct no to", `{"type":"direct","payload":{"text":"x"}}`, ErrBadPayload, "", "to"},
		{"direct bad to", `{"type":"direct","payload":{"to":"a b","text":"x"}}`, ErrBadUser, "", "letters"},
		{"history negative limit", `{"type":"history","payload":{"room":"a","limit":-1}}`, ErrBadPayload, "", "negative"},
		{"history huge number", `{"type":"history","payload":{"room":"a","before":1e400}}`, ErrBadPayload, "", "before"},
		{"deep nesting", `{"type":"join","payload":{"room":` + strings.Repeat("[", 20000) + strings.Repeat("]", 20000) + `}}`, ErrBadJSON, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode([]byte(tc.frame), lim)
			if err == nil {
				t.Fatalf("Decode(%.80s) succeeded, want %s", tc.frame, tc.code)
			}
			if err.Code != tc.code || err.ID != tc.id || !strings.Contains(err.Message, tc.phrase) {
				t.Fatalf("Decode(%.80s) = %+v, want code %s id %q message containing %q", tc.frame, err, tc.code, tc.id, tc.phrase)
			}
		})
	}
}

func TestPolicyFor(t *testing.T) {
	for _, tc := range []struct {
		code CloseCode
		want Policy
	}{
		{CloseNormal, Terminal},
		{CloseGoingAway, Reconnect},
		{CloseAbnormal, Reconnect},
		{CloseInvalidUTF8, Terminal},
		{ClosePolicy, Terminal},
		{CloseTooBig, Terminal},
		{CloseInternal, Reconnect},
		{CloseRestart, Reconnect},
		{CloseTryAgainLater, ReconnectLater},
		{CloseHeartbeat, Reconnect},
		{CloseSlowConsumer, ReconnectLater},
		{CloseRateLimited, ReconnectLater},
		{CloseUnauthorized, Terminal},
		{CloseForbidden, Terminal},
		{CloseSessionInvalid, Reconnect},
		{CloseResync, Reconnect},
		{1005, Reconnect},
		{4999, Reconnect},
	} {
		if got := PolicyFor(tc.code); got != tc.want {
			t.Errorf("PolicyFor(%d) = %s, want %s", tc.code, got, tc.want)
		}
	}
}
