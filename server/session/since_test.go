package session

import (
	"fmt"
	"testing"
)

// TestParseSince: ?since= as the SDKs send it, and every way it can be
// wrong: a position whose epoch or seq is not a string and an unsigned
// integer is ignored on its own; a value that is not an array, or a
// parameter that is not a JSON object, ignores the whole parameter; an
// unknown key (not a valid room, not "@") is dropped. Ignored positions
// only mean no replay for them: the client is told it was not recovered.
func TestParseSince(t *testing.T) {
	for _, tc := range []struct{ raw, want string }{
		{``, `map[]`},
		{`{"general":["ab12",17],"@":["ef",3]}`, `map[@:{ef 3} general:{ab12 17}]`},
		{`{"general": [ "ab12" , 17 ] }`, `map[general:{ab12 17}]`},                       // spaces: the slow way
		{`{"general":["a\u0062",1]}`, `map[general:{ab 1}]`},                              // an escape: the slow way
		{`{"general":["é",0]}`, `map[general:{é 0}]`},                                     // UTF-8
		{`{"general":["",18446744073709551615]}`, `map[general:{ 18446744073709551615}]`}, // the largest seq
		{`{"general":["e",18446744073709551616]}`, `map[]`},                               // too large
		{`{"general":["e",-1],"ops":["e",2]}`, `map[ops:{e 2}]`},                          // negative: that one ignored
		{`{"general":["e",1.5]}`, `map[]`},
		{`{"general":["e",1e3]}`, `map[]`},
		{`{"general":["e"]}`, `map[]`},
		{`{"general":["e",1,2]}`, `map[general:{e 1}]`}, // extra elements are ignored, as encoding/json does
		{`{"general":[1,"e"]}`, `map[]`},
		{`{"general":5,"ops":["e",2]}`, `map[]`},
		{`{"no spaces allowed":["e",1],"@":["e",2]}`, `map[@:{e 2}]`}, // not a valid room name
		{`["e",1]`, `map[]`},
		{`{"general":["e",1]`, `map[]`}, // not JSON
		{`{"general":["e",01]}`, `map[]`},
	} {
		got := parseSince(tc.raw)
		if s := fmt.Sprint(got); s != tc.want {
			t.Errorf("parseSince(%s) = %s; want %s", tc.raw, s, tc.want)
		}
	}
}

func BenchmarkParseSince(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if len(parseSince(`{"general":["ab12cd34",17],"bench":["ab12cd34",0],"@":["ef56",3]}`)) != 3 {
			b.Fatal("three positions")
		}
	}
}
