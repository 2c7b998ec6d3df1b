package protocol

import (
	"strings"
	"testing"
)

var chatFrame = []byte(`{"type":"chat","id":"k3j2-17","ts":1718234567000,"payload":{"room":"general","text":"` + strings.Repeat("x", 100) + `"}}`)

func BenchmarkDecodeChat(b *testing.B) {
	b.ReportAllocs()
	b.SetBytes(int64(len(chatFrame)))
	for b.Loop() {
		if _, err := Decode(chatFrame, Limits{MaxText: DefaultMaxText}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncodeChat(b *testing.B) {
	b.ReportAllocs()
	c := Chat{Room: "general", From: "alice", Text: strings.Repeat("x", 100), Seq: 12345, Epoch: "a1b2c3d4", ID: "k3j2-17", TS: 1718234567000}
	for b.Loop() {
		Encode(TypeChat, "", c)
	}
}
