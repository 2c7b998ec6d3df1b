// Package bucket is a token bucket: a rate with a burst, for the server's
// rate limits (a connection's messages, an address's new connections, a
// user's files). Not safe for concurrent use: its owner locks.
package bucket

import "time"

// Bucket allows Rate events a second on average and Burst at once. The
// zero value allows everything.
type Bucket struct {
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
}

// New is a full bucket; rate <= 0 means unlimited.
func New(rate, burst float64) Bucket { return Bucket{rate: rate, burst: burst, tokens: burst} }

// Take takes a token at now, and reports false when there is none.
func (b *Bucket) Take(now time.Time) bool {
	if b.rate <= 0 {
		return true
	}
	if !b.last.IsZero() {
		b.tokens += now.Sub(b.last).Seconds() * b.rate
		if b.tokens > b.burst {
			b.tokens = b.burst
		}
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// Full says whether the bucket has refilled by now since its last Take:
// it may be forgotten and made anew.
func (b *Bucket) Full(now time.Time) bool {
	return now.Sub(b.last).Seconds()*b.rate >= b.burst
}
