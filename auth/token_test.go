package auth

import (
	"errors"
	"strings"
	"testing"
	"time"
)

var secret = []byte("test-secret")

func TestSignVerifyRoundTrip(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	tok, err := Sign(secret, Claims{Subject: "alice", ExpiresAt: now.Add(time.Hour).Unix(), Rooms: []string{"ops"}})
	if err != nil {
		t.Fatal(err)
	}
	c, err := Verify(secret, tok, now)
	if err != nil {
		t.Fatal(err)
	}
	if c.Subject != "alice" || !c.MayJoin("ops") || c.MayJoin("general") {
		t.Fatalf("claims = %+v", c)
	}
	open, _ := Sign(secret, Claims{Subject: "bob", ExpiresAt: now.Add(time.Hour).Unix()})
	if c, err := Verify(secret, open, now); err != nil || !c.MayJoin("anything") {
		t.Fatalf("no rooms claim must allow every room: %+v %v", c, err)
	}
}

func TestVerifyRefusals(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	good, _ := Sign(secret, Claims{Subject: "alice", ExpiresAt: now.Add(time.Hour).Unix()})
	expired, _ := Sign(secret, Claims{Subject: "alice", ExpiresAt: now.Add(-time.Second).Unix()})
	forged, _ := Sign([]byte("other-secret"), Claims{Subject: "alice", ExpiresAt: now.Add(time.Hour).Unix()})
	parts := strings.Split(good, ".")
	none := enc.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + parts[1] + "."
	tampered := parts[0] + "." + enc.EncodeToString([]byte(`{"sub":"root","exp":9999999999}`)) + "." + parts[2]
	noExp, _ := Sign(secret, Claims{Subject: "alice"})
	for _, tc := range []struct {
		name, tok string
		want      error
	}{
		{"expired", expired, ErrExpired},
		{"no exp", noExp, ErrExpired},
		{"forged", forged, ErrSignature},
		{"tampered claims", tampered, ErrSignature},
		{"alg none", none, ErrAlgorithm},
		{"garbage", "not-a-token", ErrMalformed},
		{"bad base64", "a.b.c", ErrMalformed},
		{"empty", "", ErrMalformed},
	} {
		if _, err := Verify(secret, tc.tok, now); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
	}
}

func FuzzVerify(f *testing.F) {
	good, _ := Sign(secret, Claims{Subject: "alice", ExpiresAt: 1_900_000_000})
	f.Add(good)
	f.Add("a.b.c")
	f.Fuzz(func(t *testing.T, tok string) {
		c, err := Verify(secret, tok, time.Unix(1_800_000_000, 0))
		if err == nil && c.Subject == "" {
			t.Fatal("accepted a token without subject")
		}
	})
}
