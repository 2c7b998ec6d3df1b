package server

import (
	"fmt"
	"log/slog"
	"path"
	"time"

	"github.com/tether-chat/tether/engine"
	"github.com/tether-chat/tether/protocol"
	"github.com/tether-chat/tether/server/session"
)

// Config is everything a Server can be told. The zero value of every field
// means its default, stated on the field; New fills them in. cmd/tether maps
// flags and TETHER_* environment variables onto this struct one to one.
type Config struct {
	// Engine orders, stores and fans out messages. Nil means a new
	// in-memory engine (engine/memory) with HistorySize and HistoryTTL.
	Engine engine.Engine
	// HistorySize and HistoryTTL size the default memory engine's retained
	// history per stream. Zero means 100 messages and 10 minutes.
	HistorySize int
	HistoryTTL  time.Duration

	// PingInterval: a connection silent for this long gets a WebSocket ping.
	// Zero means 10s.
	PingInterval time.Duration
	// PongTimeout: a connection silent for PingInterval+PongTimeout is
	// considered dead and closed with 4000. Zero means 10s. A half-open peer
	// is therefore found within 20s by default (plus one heartbeat tick of
	// at most 1s), whatever the TCP timeouts say.
	PongTimeout time.Duration

	// MaxMessageSize is the largest frame a client may send, in bytes;
	// larger ones close the connection with 1009. Zero means 64 KiB.
	MaxMessageSize int64
	// MaxText is the longest chat or direct text, in characters.
	// Zero means 4000.
	MaxText int
	// MaxFileSize is the largest file (a picture, or any file) a client may
	// send in a binary frame (files.go), in bytes. Zero means 1 MiB;
	// negative turns files off. FilesPerMinute bounds the files one user
	// sends through this node (bursts of a third of that). Zero means 20.
	MaxFileSize    int
	FilesPerMinute int
	// ImagesOnly refuses files that are not pictures (PNG, JPEG, GIF,
	// WebP) with bad_file; by default other files are taken and offered
	// as downloads.
	ImagesOnly bool

	// SendQueueMessages and SendQueueBytes bound what may wait to be written
	// to one connection. A connection that lets its queue overflow is a slow
	// consumer and is closed with 4008; nobody else waits for it. Zero
	// means 1024 messages and 1 MiB.
	SendQueueMessages int
	SendQueueBytes    int
	// WriteTimeout bounds one write to a connection's socket. Zero means 10s.
	WriteTimeout time.Duration
	// WriteDelay coalesces room deliveries to a connection that is being
	// written more often than once per WriteDelay: its frames wait up to
	// WriteDelay and go out together, several messages per write(). Less
	// CPU per delivery in busy rooms, at the cost of up to WriteDelay of
	// added latency for connections that busy, and only for them (see
	// flusher). Zero means 10ms; negative writes every delivery at once.
	WriteDelay time.Duration
	// HeaderTimeout bounds how long a new connection may take to send its
	// HTTP request head (the handshake, or any other request). Zero means
	// 10s.
	HeaderTimeout time.Duration

	// RateLimit is the sustained number of messages per second one
	// connection may send, with bursts of RateBurst. Past it a message gets
	// a rate_limited error and is not processed; after RateStrikes such
	// errors within one second the connection is closed with 4029. Zero
	// means 50/s, burst 100, 50 strikes. A negative RateLimit disables the
	// limit (benchmarks).
	RateLimit   float64
	RateBurst   int
	RateStrikes int

	// MaxRoomsPerConn bounds the rooms one connection may be in.
	// Zero means 100.
	MaxRoomsPerConn int
	// AutoJoin is the room every new connection is put in, so clients
	// written for the tutorials (which never join) can chat at once.
	// Empty means protocol.DefaultRoom; "-" disables it.
	AutoJoin string

	// PresenceEventsMax is the room size (in users) up to which every join
	// and leave is an event to all members. Bigger rooms get one coalesced
	// "count" event per PresenceInterval instead. Zero means 100; negative
	// means never coalesce.
	PresenceEventsMax int
	// PresenceInterval is how often big rooms get their count event.
	// Zero means 2s.
	PresenceInterval time.Duration
	// MembersMax bounds the user list in a `members` reply. Zero means 100.
	MembersMax int

	// AuthSecret switches on token mode: every connection must present an
	// HS256 token signed with it (?token= or Authorization: Bearer), and
	// the user is the token's subject. Empty means open mode, where a
	// client names itself: for development only.
	AuthSecret string
	// ResumeWindow is how long a dropped connection's session can be
	// resumed (rooms, private conversations, missed messages). Zero means
	// 2 minutes.
	ResumeWindow time.Duration
	// PresenceGrace is how long a dropped connection still counts as
	// present, so that a quick resume causes no leave/join for others.
	// A clean close (1000) leaves at once. Zero means 10s; it cannot
	// exceed ResumeWindow.
	PresenceGrace time.Duration
	// PresenceGraceAway is PresenceGrace for a connection its client
	// closed with 1001 "going away": a browser page that was closed,
	// reloaded or left. Its session stays resumable (a reload resumes and
	// misses nothing) but its partners and rooms learn of a closed tab
	// this soon. Zero means 1.5s; it cannot exceed PresenceGrace.
	PresenceGraceAway time.Duration

	// WSDialect is what GET /ws speaks, and WSIDDialect what GET
	// /ws/{client_id} speaks: "tether" (the default, the protocol of
	// docs/protocol.md), or one of the FastAPI tutorials' protocols, for
	// their clients unchanged: "tutorial-001" (JSON {type, data}, rooms
	// joined by name) on either, "tutorial-003" (plain-text private chat,
	// the user named by the path) on /ws/{client_id} only. GET /tether/ws
	// and /tether/ws/{client_id} always speak tether (dialect.go).
	WSDialect   string
	WSIDDialect string

	// HookURL, when set, receives the node's events (hooks.go): room and
	// private messages, joins and leaves, connects and disconnects, in
	// signed JSON batches, retried until accepted (at least once), from a
	// queue of at most HookQueue events (zero means 10,000). HookSecret
	// signs them (HMAC-SHA256).
	HookURL    string
	HookSecret string
	HookQueue  int
	// CheckURL, when set, is asked before a connection is set up and before
	// a client's message is published (hooks.go): allow, deny, or (a
	// message) rewrite, within CheckTimeout (zero means 1s). When it does
	// not answer, connections and messages are refused (fail closed)
	// unless CheckFailOpen.
	CheckURL      string
	CheckTimeout  time.Duration
	CheckFailOpen bool

	// AllowedOrigins are glob patterns (path.Match syntax, e.g.
	// "https://*.example.com") of browser origins allowed to open a
	// WebSocket, besides the server's own origin. In open mode loopback
	// origins are allowed too; in token mode nothing else is, by default.
	AllowedOrigins []string
	// APIKey enables the server API (/api/..., docs/api.md); requests
	// present it as "Authorization: Bearer KEY". Empty means the API is
	// disabled.
	APIKey string
	// AdminSecret opens the admin page (/admin) to whoever presents it, so
	// that operators need not hold the application's API key. The page
	// takes the API key as well; with neither set it is off (404).
	AdminSecret string
	// MaxConnsPerIP and MaxConnsPerUser bound concurrent connections from
	// one remote address and of one user; ConnRatePerIP bounds new
	// connections per second from one address (bursts of twice that).
	// Zero means no limit. A refused connection is closed with 1013.
	MaxConnsPerIP   int
	MaxConnsPerUser int
	ConnRatePerIP   float64

	// ShutdownTimeout bounds a graceful shutdown: how long queued messages
	// may take to drain and clients to answer the close. Zero means 10s.
	ShutdownTimeout time.Duration

	// NodeID names this server among several sharing an engine.
	// Empty means a random id.
	NodeID string

	// Logger receives structured logs. Nil means slog.Default().
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	defInt := func(i *int, v int) {
		if *i == 0 {
			*i = v
		}
	}
	def(&c.PingInterval, 10*time.Second)
	def(&c.PongTimeout, 10*time.Second)
	def(&c.WriteTimeout, 10*time.Second)
	def(&c.HeaderTimeout, 10*time.Second)
	def(&c.WriteDelay, 10*time.Millisecond)
	def(&c.ShutdownTimeout, 10*time.Second)
	if c.MaxMessageSize == 0 {
		c.MaxMessageSize = 64 << 10
	}
	defInt(&c.MaxText, protocol.DefaultMaxText)
	def(&c.HistoryTTL, 10*time.Minute) // the engines' default too; files are kept as long
	defInt(&c.MaxFileSize, 1<<20)
	defInt(&c.FilesPerMinute, 20)
	defInt(&c.HookQueue, 10000)
	def(&c.CheckTimeout, time.Second)
	defInt(&c.SendQueueMessages, 1024)
	defInt(&c.SendQueueBytes, 1<<20)
	if c.RateLimit == 0 {
		c.RateLimit = 50
	}
	defInt(&c.RateBurst, 100)
	defInt(&c.RateStrikes, 50)
	defInt(&c.MaxRoomsPerConn, 100)
	defInt(&c.PresenceEventsMax, 100)
	def(&c.PresenceInterval, 2*time.Second)
	def(&c.ResumeWindow, 2*time.Minute)
	def(&c.PresenceGrace, 10*time.Second)
	def(&c.PresenceGraceAway, 1500*time.Millisecond)
	c.PresenceGraceAway = min(c.PresenceGraceAway, c.PresenceGrace)
	defInt(&c.MembersMax, 100)
	if c.AutoJoin == "" {
		c.AutoJoin = protocol.DefaultRoom
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Validate reports the first setting that cannot work, by name.
func (c Config) Validate() error {
	c = c.withDefaults()
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"ping-interval", c.PingInterval}, {"pong-timeout", c.PongTimeout},
		{"write-timeout", c.WriteTimeout}, {"header-timeout", c.HeaderTimeout}, {"shutdown-timeout", c.ShutdownTimeout},
		{"history-ttl", c.HistoryTTL}, {"presence-interval", c.PresenceInterval},
		{"resume-window", c.ResumeWindow}, {"presence-grace", c.PresenceGrace},
		{"presence-grace-away", c.PresenceGraceAway},
	} {
		if d.v < 0 {
			return fmt.Errorf("%s must not be negative (got %s)", d.name, d.v)
		}
	}
	if c.WriteDelay > time.Second {
		return fmt.Errorf("write-delay must be at most 1s (got %s): it is latency added to busy connections", c.WriteDelay)
	}
	for _, i := range []struct {
		name string
		v    int
	}{
		{"max-text", c.MaxText}, {"send-queue-messages", c.SendQueueMessages},
		{"send-queue-bytes", c.SendQueueBytes}, {"rate-burst", c.RateBurst},
		{"rate-strikes", c.RateStrikes}, {"max-rooms", c.MaxRoomsPerConn},
		{"history-size", c.HistorySize}, {"members-max", c.MembersMax},
		{"max-conns-per-ip", c.MaxConnsPerIP}, {"max-conns-per-user", c.MaxConnsPerUser},
		{"files-per-minute", c.FilesPerMinute},
	} {
		if i.v < 0 {
			return fmt.Errorf("%s must not be negative (got %d)", i.name, i.v)
		}
	}
	if c.MaxFileSize > 64<<20 {
		return fmt.Errorf("max-file-size must be at most 64 MiB (got %d): a file travels in one frame", c.MaxFileSize)
	}
	if c.MaxMessageSize < 256 {
		return fmt.Errorf("max-message-size must be at least 256 bytes (got %d)", c.MaxMessageSize)
	}
	if c.ConnRatePerIP < 0 {
		return fmt.Errorf("conn-rate-per-ip must not be negative (got %g)", c.ConnRatePerIP)
	}
	for _, o := range c.AllowedOrigins {
		if _, err := path.Match(o, ""); err != nil {
			return fmt.Errorf("allowed-origins: bad pattern %q: %v", o, err)
		}
	}
	if c.PresenceGrace > c.ResumeWindow {
		return fmt.Errorf("presence-grace (%s) must not exceed resume-window (%s)", c.PresenceGrace, c.ResumeWindow)
	}
	if c.PresenceGraceAway > c.PresenceGrace && c.PresenceGrace > 0 {
		return fmt.Errorf("presence-grace-away (%s) must not exceed presence-grace (%s)", c.PresenceGraceAway, c.PresenceGrace)
	}
	if c.AutoJoin != "-" {
		if msg := protocol.ValidateRoom(c.AutoJoin); msg != "" {
			return fmt.Errorf("auto-join: %s", msg)
		}
	}
	if err := session.ValidDialect(c.WSDialect, false); err != nil {
		return fmt.Errorf("ws-dialect: %v", err)
	}
	if err := session.ValidDialect(c.WSIDDialect, true); err != nil {
		return fmt.Errorf("ws-id-dialect: %v", err)
	}
	return nil
}
