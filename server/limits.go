package server

import (
	"net"
	"net/url"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/tether-chat/tether/internal/bucket"
	"github.com/tether-chat/tether/protocol"
)

// limiter enforces the per-address and per-user connection limits.
type limiter struct {
	mu     sync.Mutex
	byIP   map[string]int
	byUser map[string]int
	rate   map[string]*bucket.Bucket // new connections per address
	files  map[string]*bucket.Bucket // files per user
}

func newLimiter() *limiter {
	return &limiter{byIP: map[string]int{}, byUser: map[string]int{}, rate: map[string]*bucket.Bucket{}, files: map[string]*bucket.Bucket{}}
}

// allowFile takes one of user's files per minute.
func (s *Server) allowFile(user string) bool {
	l, perMin := s.limits, float64(s.cfg.FilesPerMinute)
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.files[user]
	if b == nil {
		burst := max(1, perMin/3)
		nb := bucket.New(perMin/60, burst)
		b = &nb
		l.files[user] = b
	}
	return b.Take(time.Now())
}

// admit counts a new connection of user from ip, or says why not.
func (s *Server) admit(ip, user string) *protocol.Disconnect {
	cfg, l := &s.cfg, s.limits
	l.mu.Lock()
	defer l.mu.Unlock()
	if cfg.ConnRatePerIP > 0 {
		b := l.rate[ip]
		if b == nil {
			burst := max(1, 2*cfg.ConnRatePerIP)
			nb := bucket.New(cfg.ConnRatePerIP, burst)
			b = &nb
			l.rate[ip] = b
		}
		if !b.Take(time.Now()) {
			return &protocol.Disconnect{Code: protocol.CloseTryAgainLater, Reason: "connecting too fast from your address"}
		}
	}
	if cfg.MaxConnsPerIP > 0 && l.byIP[ip] >= cfg.MaxConnsPerIP {
		return &protocol.Disconnect{Code: protocol.CloseTryAgainLater, Reason: "too many connections from your address"}
	}
	if cfg.MaxConnsPerUser > 0 && l.byUser[user] >= cfg.MaxConnsPerUser {
		return &protocol.Disconnect{Code: protocol.CloseTryAgainLater, Reason: "too many connections for this user"}
	}
	l.byIP[ip]++
	l.byUser[user]++
	return nil
}

// rename moves a connection's share of the per-user limit from one user
// name to another (a tutorial-001 client names itself in its join).
func (s *Server) rename(ip, from, to string) *protocol.Disconnect {
	cfg, l := &s.cfg, s.limits
	l.mu.Lock()
	defer l.mu.Unlock()
	if cfg.MaxConnsPerUser > 0 && l.byUser[to] >= cfg.MaxConnsPerUser {
		return &protocol.Disconnect{Code: protocol.CloseTryAgainLater, Reason: "too many connections for this user"}
	}
	if l.byUser[from]--; l.byUser[from] <= 0 {
		delete(l.byUser, from)
	}
	l.byUser[to]++
	return nil
}

func (s *Server) release(ip, user string) {
	l := s.limits
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.byIP[ip]--; l.byIP[ip] <= 0 {
		delete(l.byIP, ip)
	}
	if l.byUser[user]--; l.byUser[user] <= 0 {
		delete(l.byUser, user)
	}
}

// sweepRates forgets the connection-rate buckets of addresses that have
// been quiet long enough to be full again.
func (s *Server) sweepRates(now time.Time) {
	l := s.limits
	l.mu.Lock()
	defer l.mu.Unlock()
	for ip, b := range l.rate {
		if b.Full(now) {
			delete(l.rate, ip)
		}
	}
	for user, b := range l.files {
		if b.Full(now) {
			delete(l.files, user)
		}
	}
}

func remoteIP(remote string) string {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return remote
	}
	return host
}

// checkOrigin decides a browser's WebSocket origin. Allowed: no Origin
// header (not a browser), the server's own origin, --allowed-origins
// patterns, and in open mode loopback origins. Every refusal is logged with
// the reason, so a "handshake 403" can be explained.
func (s *Server) checkOrigin(r *wsRequest) bool {
	origin := r.origin
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		s.log.Warn("handshake refused: unparsable Origin header", "origin", origin, "remote", r.remote)
		return false
	}
	if strings.EqualFold(u.Host, r.host) {
		return true
	}
	for _, pattern := range s.cfg.AllowedOrigins {
		if ok, _ := path.Match(pattern, strings.ToLower(origin)); ok {
			return true
		}
	}
	if s.cfg.AuthSecret == "" && isLoopbackHost(u.Hostname()) {
		return true
	}
	why := "origin not allowed (not this server's origin, not in --allowed-origins)"
	if s.cfg.AuthSecret == "" {
		why = "origin not allowed (not this server's origin, not loopback, not in --allowed-origins)"
	}
	s.log.Warn("handshake refused: "+why, "origin", origin, "host", r.host, "remote", r.remote)
	return false
}

func isLoopbackHost(h string) bool {
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}
