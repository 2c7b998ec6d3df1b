// Package auth signs and verifies Tether's access tokens: HS256 JWTs whose
// subject is the user id, with an expiry and an optional list of rooms the
// user may join.
package auth

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Claims are what a token says about its holder.
type Claims struct {
	Subject   string   `json:"sub"`
	ExpiresAt int64    `json:"exp"`             // Unix seconds
	IssuedAt  int64    `json:"iat,omitempty"`   // Unix seconds
	Rooms     []string `json:"rooms,omitempty"` // rooms the user may join; empty means any
}

// MayJoin reports whether the claims allow room.
func (c *Claims) MayJoin(room string) bool {
	return len(c.Rooms) == 0 || slices.Contains(c.Rooms, room)
}

// Errors a token can fail with. They are distinct so the server can say
// which (in the close reason and the log), never echoing the token.
var (
	ErrMalformed = errors.New("token malformed")
	ErrAlgorithm = errors.New("token algorithm not HS256")
	ErrSignature = errors.New("token signature invalid")
	ErrExpired   = errors.New("token expired")
	ErrNoSubject = errors.New("token has no subject")
)

var enc = base64.RawURLEncoding

const header = `{"alg":"HS256","typ":"JWT"}`

// Sign makes a token for claims with secret.
func Sign(secret []byte, c Claims) (string, error) {
	if len(secret) == 0 {
		return "", errors.New("auth: empty secret")
	}
	if c.Subject == "" {
		return "", ErrNoSubject
	}
	body, err := json.Marshal(c)
	if err != nil {
		return "", err
	}
	unsigned := enc.EncodeToString([]byte(header)) + "." + enc.EncodeToString(body)
	return unsigned + "." + enc.EncodeToString(mac(secret, unsigned)), nil
}

// Verify checks a token's algorithm, signature (in constant time) and
// expiry at now, and returns its claims.
func Verify(secret []byte, token string, now time.Time) (*Claims, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 || len(token) > 8192 {
		return nil, ErrMalformed
	}
	hb, err := enc.DecodeString(parts[0])
	if err != nil {
		return nil, ErrMalformed
	}
	var h struct {
		Alg string `json:"alg"`
	}
	if json.Unmarshal(hb, &h) != nil {
		return nil, ErrMalformed
	}
	if h.Alg != "HS256" {
		return nil, ErrAlgorithm
	}
	sig, err := enc.DecodeString(parts[2])
	if err != nil {
		return nil, ErrMalformed
	}
	if !hmac.Equal(sig, mac(secret, parts[0]+"."+parts[1])) {
		return nil, ErrSignature
	}
	body, err := enc.DecodeString(parts[1])
	if err != nil {
		return nil, ErrMalformed
	}
	var c Claims
	if err := json.Unmarshal(body, &c); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if c.Subject == "" {
		return nil, ErrNoSubject
	}
	if c.ExpiresAt == 0 || now.Unix() >= c.ExpiresAt {
		return nil, ErrExpired
	}
	return &c, nil
}

func mac(secret []byte, s string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(s))
	return m.Sum(nil)
}
