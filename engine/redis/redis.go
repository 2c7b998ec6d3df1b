// Package redis is Tether's multi-node engine: nodes share nothing but a
// Redis server. Every stream's sequence, epoch and bounded history live in
// Redis, and a publish is one Lua script that numbers, retains, publishes
// and records its idempotency key in one atomic step (scripts.go); a node
// subscribes to a stream's channel only while it has local members;
// presence is held per node instance, which renews its liveness, so a
// node that dies takes its users offline; sessions have TTLs, so a client
// resumes on any node.
//
// The client is rueidis: it pipelines concurrent commands automatically
// and never re-sends a write on its own (only read-only commands are
// retried after a network error). A publish that carries a key is retried
// by this engine, which is safe because the script is idempotent.
//
// Keys (P is Config.Prefix, default "tether:"), each with its bound:
//
//	P{s}:meta          hash   seq, epoch of stream s        TTL MetaTTL (24h), renewed by every publish
//	P{s}:hist          zset   retained messages, score=seq  at most HistorySize, TTL HistoryTTL (renewed)
//	P{s}:key:{k}       string an idempotent publish's "seq:epoch" TTL KeyTTL (twice the resume window: 4 min)
//	P{s}:ch            channel of stream s (PUBLISH; holds nothing)
//	Ppr:{set}:users    hash   user -> holding node instances  one field per present user; gone when empty
//	Ppr:node:{inst}    set    "set\0user" held by an instance  renamed away by the sweep when the instance dies
//	Ppr:gone:{inst}:…  set    a dead instance's holds being released  emptied and removed by the sweep
//	Ppr:nodes          zset   instance -> liveness expiry   one member per live (or just dead) instance
//	Ppr:gone           set    gone keys not yet emptied     one member per gone key
//	Ppr:swept:{inst}   string "a sweep released my holds"   TTL 24h; deleted when the instance put them back
//	Pse:{id}           string session JSON                  TTL the resume window
//	Phc:{inst}         channel of the instance's end-to-end probe
//
// Reading never creates a key: a stream that never published has no meta
// and reads as ("", 0).
//
// Failure handling (subscriber.go): every stream's deliveries are checked
// for continuity; a gap (a pub/sub reconnect, a dead subscription found by
// the end-to-end probe) is filled from history, retrying while Redis is
// unreachable, or reported to the node (Handler.Lost) when history no
// longer covers it. Ready answers from the probe, never waiting on Redis.
package redis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"

	"github.com/tether-chat/tether/engine"
)

// Config configures the engine. URL is required; zero values mean the
// stated defaults.
type Config struct {
	URL         string        // redis://host:port/db
	Prefix      string        // key prefix; "tether:"
	NodeID      string        // this node (logs, the instance id's prefix); random
	HistorySize int           // retained messages per stream; 100
	HistoryTTL  time.Duration // retention; 10m
	MetaTTL     time.Duration // how long an idle stream keeps its seq and epoch; 24h
	KeyTTL      time.Duration // how long an idempotent publish's result is kept; 4m
	PresenceTTL time.Duration // a dead node's users go offline after this; 30s
	// CommandTimeout bounds Redis's silence on a connection: a connection
	// whose replies stop for this long is closed (its callers get an
	// error) and redialled, which is how a stalled or half-open command
	// connection is found. Zero means 3s.
	CommandTimeout time.Duration
	// ProbeInterval is how often the engine checks itself end to end: a
	// probe published through Redis must come back through this node's
	// own subscription within ProbeTimeout, or the subscription is
	// replaced (and every stream's gap filled) and the engine is not
	// ready. Zero means 500ms and 1.5s.
	ProbeInterval time.Duration
	ProbeTimeout  time.Duration
	Logger        *slog.Logger
}

// Engine is the Redis engine.
type Engine struct {
	cfg      Config
	client   rueidis.Client
	log      *slog.Logger
	instance string // this process among the nodes: NodeID plus a random suffix

	handler engine.Handler
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	sub     *subscriber

	mu     sync.Mutex
	holds  map[string]map[string]bool // presence set -> users this instance holds
	closed bool
	// holdLocks order presence calls per (set, user) (holdLock).
	holdLocks [64]sync.Mutex

	stats engineStats
}

type engineStats struct {
	commands, retries, reconnects, probeFailures, fills, lost atomic.Uint64
}

var _ engine.Engine = (*Engine)(nil)

// New checks the configuration and prepares a client; it does not wait
// for Redis (Ready tells when it is reachable).
func New(cfg Config) (*Engine, error) {
	opt, err := rueidis.ParseURL(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("invalid Redis URL %q: %v (want redis://host:port/db)", cfg.URL, err)
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "tether:"
	}
	if cfg.NodeID == "" {
		cfg.NodeID = randomHex(6)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if cfg.HistorySize <= 0 {
		cfg.HistorySize = 100
	}
	def(&cfg.HistoryTTL, 10*time.Minute)
	def(&cfg.MetaTTL, 24*time.Hour)
	def(&cfg.KeyTTL, 4*time.Minute)
	def(&cfg.PresenceTTL, 30*time.Second)
	def(&cfg.CommandTimeout, 3*time.Second)
	def(&cfg.ProbeInterval, 500*time.Millisecond)
	def(&cfg.ProbeTimeout, 1500*time.Millisecond)
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	opt.DisableCache = true
	opt.DisableRetry = true // reads are cheap to retry ourselves; writes must never be resent blindly
	opt.ConnWriteTimeout = cfg.CommandTimeout
	opt.Dialer.Timeout = 2 * time.Second
	opt.Dialer.KeepAlive = time.Second // the gap between background PINGs on an idle connection
	opt.ForceSingleClient = true       // Redis Cluster is not supported (docs/operations.md)
	// With ForceSingleClient rueidis hands back a working client even
	// when its first dial fails: a Redis that is down at start is not a
	// configuration error, the node just is not ready until it is up.
	client, err := rueidis.NewClient(opt)
	if client == nil {
		return nil, fmt.Errorf("redis: %w", err)
	}
	if err != nil {
		cfg.Logger.Warn("redis not reachable yet; the node is not ready until it is", "err", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &Engine{cfg: cfg, client: client, log: cfg.Logger, ctx: ctx, cancel: cancel,
		instance: cfg.NodeID + "." + randomHex(4), holds: map[string]map[string]bool{}}
	e.sub = newSubscriber(e)
	return e, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Keys are built by one concatenation each (one allocation): a set-up
// names about fifteen of them.
func (e *Engine) meta(s string) string         { return e.cfg.Prefix + "{" + s + "}:meta" }
func (e *Engine) hist(s string) string         { return e.cfg.Prefix + "{" + s + "}:hist" }
func (e *Engine) recordKey(s, k string) string { return e.cfg.Prefix + "{" + s + "}:key:" + k }
func (e *Engine) channel(s string) string      { return e.cfg.Prefix + "{" + s + "}:ch" }
func (e *Engine) probeChannel() string         { return e.cfg.Prefix + "hc:" + e.instance }

// Start implements engine.Engine: it opens the pub/sub connection and
// starts the end-to-end probe and the presence upkeep.
func (e *Engine) Start(ctx context.Context, h engine.Handler) error {
	e.handler = h
	e.wg.Add(3)
	go e.sub.run()
	go e.sub.probe()
	go e.upkeep()
	return nil
}

// Ready implements engine.Engine from the end-to-end probe: a probe
// published through Redis came back through this node's own subscription
// within the last ProbeInterval+ProbeTimeout. It does not touch Redis.
func (e *Engine) Ready(ctx context.Context) error {
	e.mu.Lock()
	closed := e.closed
	e.mu.Unlock()
	if closed {
		return engine.ErrClosed
	}
	return e.sub.ready()
}

// Stats reports the engine's own counters, for the node's metrics.
func (e *Engine) Stats() engine.Stats {
	s := &e.stats
	return engine.Stats{Commands: s.commands.Load(), PublishRetries: s.retries.Load(),
		SubscriptionResets: s.reconnects.Load(), ProbeFailures: s.probeFailures.Load(),
		GapFills: s.fills.Load(), StreamsLost: s.lost.Load()}
}

// Close implements engine.Engine.
func (e *Engine) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	e.mu.Unlock()
	e.cancel()
	e.sub.close()
	e.wg.Wait()
	e.client.Close()
	return nil
}

// do runs one command, counting it.
func (e *Engine) do(ctx context.Context, cmd rueidis.Completed) rueidis.RedisResult {
	e.stats.commands.Add(1)
	return e.client.Do(ctx, cmd)
}

// unavailable wraps an error from Redis for the caller: ErrUnavailable
// when Redis did not answer (a network error, a timeout, a Redis that is
// loading or out of memory), so that the node can tell its client to try
// again; the text says what happened, for the node's log.
func unavailable(op string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, rueidis.ErrClosing) {
		return engine.ErrClosed
	}
	if re, ok := rueidis.IsRedisErr(err); ok && !transientReply(re.Error()) {
		return fmt.Errorf("redis %s: %w", op, err)
	}
	return fmt.Errorf("%w: redis %s: %v", engine.ErrUnavailable, op, err)
}

// transientReply reports whether a Redis error reply means "not now"
// rather than "never".
func transientReply(msg string) bool {
	for _, p := range []string{"LOADING", "BUSY", "OOM", "MASTERDOWN", "READONLY", "TRYAGAIN", "CLUSTERDOWN", "NOSCRIPT"} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

// retryable reports whether a failed call may be run again: the network
// failed (not Redis refusing the command) and the caller still waits.
func retryable(ctx context.Context, err error) bool {
	if ctx.Err() != nil || errors.Is(err, context.Canceled) || errors.Is(err, rueidis.ErrClosing) {
		return false
	}
	if re, ok := rueidis.IsRedisErr(err); ok {
		return transientReply(re.Error())
	}
	return true
}

// sleepCtx waits d or until ctx ends; it reports whether the wait was
// complete.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
