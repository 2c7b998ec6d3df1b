package client

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/gorilla/websocket"
)

// Options configure a Client. A nil *Options, and every zero field, means
// the default stated on the field: the same defaults as the browser SDK
// (docs/clients.md).
type Options struct {
	// User names the client in open mode (sent as ?user=). Ignored by a
	// server in token mode, where the token names the user.
	User string
	// Token is sent as ?token= on every attempt; TokenFunc, if set, is
	// called before every attempt instead (to refresh a short-lived token).
	Token     string
	TokenFunc func() string

	// Reconnect policy: attempt n waits
	// min(MaxDelay, BaseDelay·Factor^(n-1)) · random(1-Jitter, 1+Jitter).
	BaseDelay time.Duration // 500ms
	Factor    float64       // 1.8
	MaxDelay  time.Duration // 15s
	Jitter    float64       // 0.2 (±20%); negative means none
	// MaxRetries stops reconnecting after this many failed attempts in a
	// row (the client is then CLOSED). Zero means unlimited.
	MaxRetries int
	// LaterDelay is the minimum wait after a close that says "later"
	// (4008 slow consumer, 4029 rate limited, 1013). Zero means 5s.
	LaterDelay time.Duration
	// StableAfter: the attempt counter resets only after a connection has
	// stayed open this long. Zero means 5s.
	StableAfter time.Duration
	// ConnectTimeout abandons an attempt without a welcome by then.
	// Zero means 10s.
	ConnectTimeout time.Duration

	// HeartbeatInterval: an app-level ping is sent this often.
	// Zero means 10s.
	HeartbeatInterval time.Duration
	// HeartbeatTimeout: nothing received for this long means the socket is
	// dead (close 4000, reconnect). Zero means 25s. It must exceed
	// HeartbeatInterval plus a round trip: every ping is answered.
	HeartbeatTimeout time.Duration

	// OutboxLimit bounds the messages waiting for an ack; past it Send
	// fails with ErrOutboxFull. Zero means 1000.
	OutboxLimit int
	// EventBuffer is the capacity of the Events channel. Zero means 1024.
	EventBuffer int

	// Dialer dials the WebSocket. Nil means a dialer with
	// ConnectTimeout as its handshake timeout.
	Dialer *websocket.Dialer
	// Header is sent with every handshake (e.g. Authorization).
	Header http.Header
	// Logf receives the client's evidence log, one line per transition,
	// attempt and timeout. Nil means no logging.
	Logf func(format string, args ...any)
}

// ErrInvalidOptions wraps every option validation error.
var ErrInvalidOptions = errors.New("client: invalid options")

func (o *Options) withDefaults() (Options, error) {
	var out Options
	if o != nil {
		out = *o
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"BaseDelay", out.BaseDelay}, {"MaxDelay", out.MaxDelay}, {"LaterDelay", out.LaterDelay},
		{"StableAfter", out.StableAfter}, {"ConnectTimeout", out.ConnectTimeout},
		{"HeartbeatInterval", out.HeartbeatInterval}, {"HeartbeatTimeout", out.HeartbeatTimeout},
	} {
		if d.v < 0 {
			return out, fmt.Errorf("%w: %s must not be negative (got %s)", ErrInvalidOptions, d.name, d.v)
		}
	}
	if out.Factor < 0 || out.MaxRetries < 0 || out.OutboxLimit < 0 || out.EventBuffer < 0 {
		return out, fmt.Errorf("%w: Factor, MaxRetries, OutboxLimit and EventBuffer must not be negative", ErrInvalidOptions)
	}
	if out.Factor != 0 && out.Factor < 1 {
		return out, fmt.Errorf("%w: Factor must be at least 1 (got %g)", ErrInvalidOptions, out.Factor)
	}
	if out.HeartbeatTimeout != 0 && out.HeartbeatInterval != 0 && out.HeartbeatTimeout <= out.HeartbeatInterval {
		return out, fmt.Errorf("%w: HeartbeatTimeout (%s) must exceed HeartbeatInterval (%s)", ErrInvalidOptions, out.HeartbeatTimeout, out.HeartbeatInterval)
	}
	if out.Jitter > 1 {
		return out, fmt.Errorf("%w: Jitter must be at most 1 (got %g)", ErrInvalidOptions, out.Jitter)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&out.BaseDelay, 500*time.Millisecond)
	def(&out.MaxDelay, 15*time.Second)
	def(&out.LaterDelay, 5*time.Second)
	def(&out.StableAfter, 5*time.Second)
	def(&out.ConnectTimeout, 10*time.Second)
	def(&out.HeartbeatInterval, 10*time.Second)
	def(&out.HeartbeatTimeout, 25*time.Second)
	if out.Factor == 0 {
		out.Factor = 1.8
	}
	if out.Jitter == 0 {
		out.Jitter = 0.2
	} else if out.Jitter < 0 {
		out.Jitter = 0
	}
	if out.OutboxLimit == 0 {
		out.OutboxLimit = 1000
	}
	if out.EventBuffer == 0 {
		out.EventBuffer = 1024
	}
	if out.Dialer == nil {
		out.Dialer = &websocket.Dialer{HandshakeTimeout: out.ConnectTimeout, Proxy: http.ProxyFromEnvironment}
	}
	return out, nil
}

// Backoff is the delay before reconnect attempt n (1-based) for random r
// in [0, 1): min(MaxDelay, BaseDelay·Factor^(n-1)) · (1 - Jitter + 2·Jitter·r).
func (o *Options) Backoff(n int, r float64) time.Duration {
	if n < 1 {
		n = 1
	}
	d := float64(o.BaseDelay)
	for i := 1; i < n && d < float64(o.MaxDelay); i++ {
		d *= o.Factor
	}
	d = min(d, float64(o.MaxDelay))
	return time.Duration(d * (1 - o.Jitter + 2*o.Jitter*r))
}
