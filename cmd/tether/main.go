// Command tether is the Tether binary: `tether` or `tether serve` runs a
// node; `tether version` prints the version.
package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/tether-chat/tether/engine/redis"
	"github.com/tether-chat/tether/protocol"
	"github.com/tether-chat/tether/server"
)

// version and commit are set at build time (make dist):
// -ldflags "-X main.version=v1.2.3 -X main.commit=abc1234". A plain go
// build or go install from a checkout leaves version "dev" and takes the
// commit from the build's VCS stamp.
var (
	version = "dev"
	commit  = ""
)

// buildInfo is what `tether version` prints after the version: the commit
// (with "+dirty" for uncommitted changes), the Go version and the platform.
func buildInfo() string {
	c, dirty := commit, false
	if bi, ok := debug.ReadBuildInfo(); ok && c == "" {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				c = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
	}
	c, suffix, _ := strings.Cut(c, "+") // make dist stamps "abc1234+dirty"
	if len(c) > 12 {
		c = c[:12]
	}
	if c == "" {
		c = "unknown"
	}
	if dirty || suffix == "dirty" {
		c += "+dirty"
	}
	return fmt.Sprintf("commit %s, %s, %s/%s", c, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
		usage(stdout)
		return 0
	}
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		return serve(args, stdout, stderr)
	case "bench":
		return benchCmd(args, stdout, stderr)
	case "token":
		return tokenCmd(args, stdout, stderr)
	case "chat":
		return chatCmd(args, os.Stdin, stdout, stderr)
	case "version":
		fmt.Fprintf(stdout, "tether %s (protocol v%d; %s)\n", version, protocol.Version, buildInfo())
		return 0
	case "help":
		usage(stdout)
		return 0
	}
	fmt.Fprintf(stderr, "tether: unknown command %q\n\n", cmd)
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprint(w, `Usage: tether [command] [flags]

Commands:
  serve     run a Tether node (the default)
  chat      a terminal chat client (tether chat --user alice)
  bench     load a node: idle, fanout, rtt, direct, floor, storm, sweep (docs/benchmarks.md)
  token     print a signed token for a user (token mode)
  version   print the version

Run 'tether COMMAND --help' for a command's flags ('tether serve --help':
every setting of a node and its default).
`)
}

// serveFlags binds every server setting to a flag; each flag can also be
// given as the environment variable TETHER_<NAME> (upper case, '-' → '_').
// A flag on the command line wins over the environment.
func serveFlags(fs *flag.FlagSet, cfg *server.Config, addr, logFormat, logLevel *string, rc *redisFlags) {
	fs.StringVar(addr, "addr", "127.0.0.1:8000", "address to listen on")
	fs.StringVar(&rc.config, "config", "", "optional `file` of settings, one \"name = value\" per line (flags and TETHER_* win over it)")
	fs.StringVar(&rc.tlsCert, "tls-cert", "", "TLS certificate (PEM) to serve https:// and wss:// directly")
	fs.StringVar(&rc.tlsKey, "tls-key", "", "TLS private key (PEM) for --tls-cert")
	fs.StringVar(&rc.pprof, "pprof", "", "serve /debug/pprof on this separate address (e.g. 127.0.0.1:6060); off when empty")
	fs.StringVar(&cfg.APIKey, "api-key", "", "enables the server API (/api/..., docs/api.md) and the admin page (/admin) for requests bearing this key")
	fs.StringVar(&cfg.AdminSecret, "admin-secret", "", "opens the admin page (/admin) to operators bearing this secret (the API key works there too)")
	fs.Func("allowed-origins", "comma-separated browser origins (globs, e.g. https://*.example.com) allowed besides the server's own", func(v string) error {
		cfg.AllowedOrigins = nil
		for _, o := range strings.Split(v, ",") {
			if o = strings.TrimSpace(o); o != "" {
				cfg.AllowedOrigins = append(cfg.AllowedOrigins, strings.ToLower(o))
			}
		}
		return nil
	})
	fs.IntVar(&cfg.MaxConnsPerIP, "max-conns-per-ip", 0, "concurrent connections from one remote address (0: no limit; refusals close with 1013)")
	fs.IntVar(&cfg.MaxConnsPerUser, "max-conns-per-user", 0, "concurrent connections of one user (0: no limit)")
	fs.Float64Var(&cfg.ConnRatePerIP, "conn-rate-per-ip", 0, "new connections per second from one remote address, bursts of twice that (0: no limit)")
	fs.StringVar(&rc.url, "redis", "", "Redis URL (redis://host:port/db) to run as one node of a cluster; empty: the in-memory engine")
	fs.StringVar(&rc.prefix, "redis-prefix", "tether:", "prefix of every Redis key (several clusters can share a Redis)")
	fs.DurationVar(&rc.presenceTTL, "presence-ttl", 30*time.Second, "with --redis: a dead node's users go offline after this")
	fs.DurationVar(&cfg.PingInterval, "ping-interval", 10*time.Second, "ping a connection silent for this long")
	fs.DurationVar(&cfg.PongTimeout, "pong-timeout", 10*time.Second, "close a connection silent for ping-interval + this (code 4000)")
	fs.Int64Var(&cfg.MaxMessageSize, "max-message-size", 64<<10, "largest frame a client may send, bytes (larger: close 1009)")
	fs.IntVar(&cfg.MaxText, "max-text", protocol.DefaultMaxText, "longest chat/direct text, characters")
	fs.IntVar(&cfg.SendQueueMessages, "send-queue-messages", 1024, "messages that may wait for one connection before it is a slow consumer (close 4008)")
	fs.IntVar(&cfg.SendQueueBytes, "send-queue-bytes", 1<<20, "bytes that may wait for one connection before it is a slow consumer")
	fs.DurationVar(&cfg.WriteTimeout, "write-timeout", 10*time.Second, "longest a single socket write may take")
	fs.DurationVar(&cfg.WriteDelay, "write-delay", 10*time.Millisecond, "coalesce room deliveries to a connection written more often than this: up to this much added latency for such busy connections, for fewer write()s; 0 writes every delivery at once")
	fs.DurationVar(&cfg.HeaderTimeout, "header-timeout", 10*time.Second, "longest a new connection may take to send its HTTP request head")
	fs.Float64Var(&cfg.RateLimit, "rate-limit", 50, "messages per second per connection (negative: unlimited)")
	fs.IntVar(&cfg.RateBurst, "rate-burst", 100, "burst allowed above rate-limit")
	fs.IntVar(&cfg.RateStrikes, "rate-strikes", 50, "rate_limited errors within one second before closing with 4029")
	fs.IntVar(&cfg.MaxRoomsPerConn, "max-rooms", 100, "rooms one connection may be in")
	fs.StringVar(&cfg.AutoJoin, "auto-join", protocol.DefaultRoom, "room every new connection joins ('-' for none)")
	fs.IntVar(&cfg.MaxFileSize, "max-file-size", 1<<20, "largest file (picture or other) a client may send, in bytes; -1 turns files off")
	fs.IntVar(&cfg.FilesPerMinute, "files-per-minute", 20, "files one user may send through this node per minute")
	fs.BoolVar(&cfg.ImagesOnly, "images-only", false, "take pictures only (PNG, JPEG, GIF, WebP); by default other files are taken as downloads")
	fs.StringVar(&cfg.HookURL, "hook-url", "", "post the node's events (messages, joins, leaves, connects, disconnects) to this URL of the application, signed, at least once")
	fs.StringVar(&cfg.HookSecret, "hook-secret", "", "HMAC-SHA256 key signing hook posts and checks (X-Tether-Signature)")
	fs.IntVar(&cfg.HookQueue, "hook-queue", 10000, "events kept while the application is not taking them; past it they are dropped and counted")
	fs.StringVar(&cfg.CheckURL, "check-url", "", "ask this URL of the application before setting up a connection and before publishing a client's message (allow, deny, rewrite)")
	fs.DurationVar(&cfg.CheckTimeout, "check-timeout", time.Second, "how long a check may take")
	fs.BoolVar(&cfg.CheckFailOpen, "check-fail-open", false, "when the application does not answer a check, allow (default: refuse)")
	fs.StringVar(&cfg.WSDialect, "ws-dialect", "tether", "what GET /ws speaks: tether, or tutorial-001 (the FastAPI tutorial's JSON {type, data} clients, unchanged); /tether/ws always speaks tether")
	fs.StringVar(&cfg.WSIDDialect, "ws-id-dialect", "tether", "what GET /ws/{client_id} speaks: tether, tutorial-001, or tutorial-003 (the FastAPI tutorial's plain-text private chat); /tether/ws/{client_id} always speaks tether")
	fs.IntVar(&cfg.PresenceEventsMax, "presence-events-max", 100, "room size (users) up to which each join/leave is an event; bigger rooms get coalesced counts")
	fs.DurationVar(&cfg.PresenceInterval, "presence-interval", 2*time.Second, "how often big rooms get their coalesced presence count")
	fs.IntVar(&cfg.MembersMax, "members-max", 100, "most users listed in a members reply")
	fs.IntVar(&cfg.HistorySize, "history-size", 100, "messages retained per room and inbox")
	fs.DurationVar(&cfg.HistoryTTL, "history-ttl", 10*time.Minute, "how long messages are retained")
	fs.StringVar(&cfg.AuthSecret, "auth-secret", "", "token mode: HS256 secret that signs client tokens (empty: open mode, for development)")
	fs.DurationVar(&cfg.ResumeWindow, "resume-window", 2*time.Minute, "how long a dropped connection's session can be resumed")
	fs.DurationVar(&cfg.PresenceGrace, "presence-grace", 10*time.Second, "how long a dropped connection still counts as present")
	fs.DurationVar(&cfg.PresenceGraceAway, "presence-grace-away", 1500*time.Millisecond, "presence-grace for a client that closed with 1001 (a page closed, reloaded or left): its session stays resumable, its presence ends this soon")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", 10*time.Second, "how long a graceful shutdown may take")
	fs.StringVar(&cfg.NodeID, "node-id", "", "this node's id among several (default: random)")
	fs.StringVar(logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(logLevel, "log-level", "info", "log level: debug, info, warn or error")
}

// applyEnv sets every flag not given on the command line from its
// TETHER_* variable, naming the setting when a value is invalid.
func applyEnv(fs *flag.FlagSet, getenv func(string) string) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || err != nil {
			return
		}
		env := "TETHER_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v := getenv(env); v != "" {
			if e := f.Value.Set(v); e != nil {
				err = fmt.Errorf("%s=%q: invalid value for %s: %v", env, v, f.Name, e)
			}
		}
	})
	return err
}

const serveAbout = `Usage: tether serve [flags]

Runs a Tether node: the WebSocket server, the web chat at / and the
browser SDK at /sdk/. Every flag can also be set as TETHER_<NAME>, e.g.
TETHER_ADDR=0.0.0.0:8000, or in a --config file.
`

func serve(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("tether serve", flag.ContinueOnError)
	var cfg server.Config
	var addr, logFormat, logLevel string
	var rc redisFlags
	serveFlags(fs, &cfg, &addr, &logFormat, &logLevel, &rc)
	if code, ok := parseFlags(fs, args, serveAbout, stdout, stderr); !ok {
		return code
	}
	if err := applyEnv(fs, os.Getenv); err != nil {
		fmt.Fprintln(stderr, "tether:", err)
		return 2
	}
	if rc.config != "" {
		if err := applyFile(fs, rc.config, os.Getenv); err != nil {
			fmt.Fprintln(stderr, "tether:", err)
			return 2
		}
	}
	if cfg.WriteDelay <= 0 {
		cfg.WriteDelay = -1 // --write-delay 0: off (Config's zero is the default)
	}
	if (rc.tlsCert == "") != (rc.tlsKey == "") {
		fmt.Fprintln(stderr, "tether: --tls-cert and --tls-key go together")
		return 2
	}
	logger, err := newLogger(stderr, logFormat, logLevel)
	if err != nil {
		fmt.Fprintln(stderr, "tether:", err)
		return 2
	}
	cfg.Logger = logger
	engineName := "memory"
	if rc.url != "" {
		if cfg.NodeID == "" {
			cfg.NodeID = randomNodeID()
		}
		eng, err := redis.New(redis.Config{URL: rc.url, Prefix: rc.prefix, NodeID: cfg.NodeID,
			HistorySize: cfg.HistorySize, HistoryTTL: cfg.HistoryTTL, KeyTTL: server.KeyTTL(cfg.ResumeWindow),
			PresenceTTL: rc.presenceTTL, Logger: logger})
		if err != nil {
			fmt.Fprintln(stderr, "tether: --redis:", err)
			return 2
		}
		cfg.Engine = eng
		engineName = "redis"
	}

	server.Version = version
	srv, err := server.New(cfg)
	if err != nil {
		fmt.Fprintln(stderr, "tether: invalid configuration:", err)
		return 2
	}
	// No TCP keepalive: WebSocket heartbeats find dead peers sooner, and
	// net/http's idle timeout ends kept-alive HTTP connections; the four
	// setsockopt calls it takes were a few percent of a connection set-up.
	ln, err := (&net.ListenConfig{KeepAlive: -1}).Listen(context.Background(), "tcp", addr)
	if err != nil {
		fmt.Fprintln(stderr, "tether:", err)
		srv.Shutdown(context.Background())
		return 1
	}
	scheme := "http"
	if rc.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(rc.tlsCert, rc.tlsKey)
		if err != nil {
			fmt.Fprintln(stderr, "tether: --tls-cert/--tls-key:", err)
			srv.Shutdown(context.Background())
			return 2
		}
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12,
			NextProtos: []string{"http/1.1"}})
		scheme = "https"
	}
	if rc.pprof != "" {
		go servePprof(rc.pprof, logger)
	}
	mode := "open (development: clients name themselves)"
	if cfg.AuthSecret != "" {
		mode = "token"
	}
	logger.Info("tether listening", "version", version, "build", buildInfo(), "addr", ln.Addr().String(),
		"chat", scheme+"://"+ln.Addr().String()+"/", "engine", engineName, "node", cfg.NodeID, "auth", mode)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			logger.Error("serve failed", "err", err)
			return 1
		}
	case <-ctx.Done():
		stop()
		logger.Info("signal received, shutting down", "timeout", cfg.ShutdownTimeout)
		sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			logger.Warn("shutdown did not drain every connection in time", "err", err)
		}
		logger.Info("stopped")
	}
	return 0
}

// redisFlags are the settings that are not server.Config fields: the
// Redis engine's, the listener's and the config file.
type redisFlags struct {
	url, prefix     string
	presenceTTL     time.Duration
	config          string
	tlsCert, tlsKey string
	pprof           string
}

// applyFile sets every flag given neither on the command line nor in the
// environment from a file of `name = value` lines (# starts a comment).
// Unknown names and bad values are errors naming the line.
func applyFile(fs *flag.FlagSet, path string, getenv func(string) string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--config: %w", err)
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		name, value = strings.TrimSpace(name), strings.Trim(strings.TrimSpace(value), `"`)
		if !ok || fs.Lookup(name) == nil || name == "config" {
			return fmt.Errorf("%s:%d: not a setting: %q", path, i+1, line)
		}
		env := "TETHER_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
		if given[name] || getenv(env) != "" {
			continue
		}
		if err := fs.Set(name, value); err != nil {
			return fmt.Errorf("%s:%d: invalid value for %s: %v", path, i+1, name, err)
		}
	}
	return nil
}

// servePprof serves the runtime profiles on their own address, never on
// the public one.
func servePprof(addr string, log *slog.Logger) {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	log.Info("pprof listening", "addr", addr)
	if err := http.ListenAndServe(addr, mux); err != nil {
		log.Error("pprof server failed", "err", err)
	}
}

func randomNodeID() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log-level: %v", err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log-format must be text or json, not %q", format)
}
