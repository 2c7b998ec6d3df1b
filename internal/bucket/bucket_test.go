package bucket

import (
	"testing"
	"time"
)

func TestBucket(t *testing.T) {
	t0 := time.Unix(1000, 0)
	b := New(2, 3) // 2 a second, 3 at once
	for i := range 3 {
		if !b.Take(t0) {
			t.Fatalf("take %d of the burst refused", i)
		}
	}
	if b.Take(t0) {
		t.Fatal("a fourth take at once allowed")
	}
	if b.Full(t0.Add(time.Second)) {
		t.Fatal("full a second after emptying at 2 a second with a burst of 3")
	}
	if !b.Take(t0.Add(500 * time.Millisecond)) {
		t.Fatal("half a second later a token has come back")
	}
	if b.Take(t0.Add(500 * time.Millisecond)) {
		t.Fatal("only one token came back")
	}
	if !b.Full(t0.Add(3 * time.Second)) {
		t.Fatal("not full long after")
	}
	var zero Bucket
	for range 100 {
		if !zero.Take(t0) {
			t.Fatal("the zero bucket refused")
		}
	}
}
