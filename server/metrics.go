package server

import (
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tether-chat/tether/engine"
	"github.com/tether-chat/tether/server/session"
	"github.com/tether-chat/tether/server/transport"
)

// metrics are the node's counters. The hot ones are plain atomics (also
// behind Stats); Prometheus reads them through CounterFuncs, so nothing is
// counted twice. Labelled ones are Prometheus vectors.
type metrics struct {
	panics             atomic.Int64
	transport.Counters // the transport's: deliveries, writes, slow consumers, ...
	session.Metrics    // the sessions': connections, messages, resumes, files, ...

	reg       *prometheus.Registry
	outByType *prometheus.CounterVec // publications fanned out by this node, by type
	latency   prometheus.Histogram   // publish to enqueue on this node
	checks    *prometheus.CounterVec // --check-url answers, by type and result
}

// historySizer is implemented by engines that can tell how many messages
// they retain (the memory engine).
type historySizer interface{ Retained() int }

func (s *Server) initMetrics() {
	m := &s.metrics
	m.reg = prometheus.NewRegistry()
	m.ClosedBy = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tether_connections_closed_total",
		Help: "Connections closed, by WebSocket close code (1006: no close frame)."}, []string{"code"})
	m.InByType = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tether_messages_received_total",
		Help: "Client messages received, by type (invalid: not decodable)."}, []string{"type"})
	m.outByType = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tether_publications_total",
		Help: "Publications fanned out to this node's connections, by type."}, []string{"type"})
	m.latency = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "tether_publish_to_deliver_seconds",
		Help:    "From a message's publication to its frame being queued for this node's members.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}})
	m.Files = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tether_files_total",
		Help: "Files sent by clients and stored, by kind (image: shown inline; other: a download)."}, []string{"kind"})
	m.FileBytes = prometheus.NewCounter(prometheus.CounterOpts{Name: "tether_file_bytes_total",
		Help: "Bytes of the files stored."})
	m.FilesRefused = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tether_files_refused_total",
		Help: "Files refused, by error code (bad_file, file_too_large, rate_limited, ...)."}, []string{"code"})
	m.checks = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tether_checks_total",
		Help: "Checks asked of the application (--check-url), by type (connect, publish) and result (allow, deny, rewrite, down)."}, []string{"type", "result"})
	counter := func(name, help string, v *atomic.Int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(v.Load()) })
	}
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.ClosedBy, m.InByType, m.outByType, m.latency, m.Files, m.FileBytes, m.FilesRefused, m.checks,
		hookCounter("tether_hook_events_sent_total", "Events the application (--hook-url) accepted.", s, func(h *hookSender) int64 { return h.sent.Load() }),
		hookCounter("tether_hook_events_dropped_total", "Events dropped because the hook queue (--hook-queue) was full: the application was not taking them.", s, func(h *hookSender) int64 { return h.lost.Load() }),
		hookCounter("tether_hook_failures_total", "Hook deliveries that failed and were retried.", s, func(h *hookSender) int64 { return h.failures.Load() }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tether_hook_queue",
			Help: "Events waiting to be posted to the application (--hook-url)."}, func() float64 {
			if s.hooks == nil {
				return 0
			}
			return float64(len(s.hooks.queue))
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tether_connections",
			Help: "Connections open now."}, func() float64 { return float64(s.hub.Count()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tether_setups_waiting",
			Help: fmt.Sprintf("New connections waiting for their set-up to start (at most %d run at once).", session.MaxSetups)},
			func() float64 { return float64(s.sess.SetupsWaiting()) }),
		counter("tether_connections_opened_total", "Connections accepted (after the WebSocket upgrade).", &m.Opened),
		counter("tether_connections_refused_total", "Connections refused after the upgrade (credentials, session, limits).", &m.Refused),
		counter("tether_deliveries_total", "Message frames written to connections.", &m.Delivered),
		counter("tether_error_replies_total", "Error replies sent.", &m.Errors),
		counter("tether_rate_limited_total", "Client messages refused by the rate limit.", &m.RateLimited),
		counter("tether_slow_consumer_disconnects_total", "Connections closed because their send queue overflowed (4008).", &m.SlowConsumers),
		counter("tether_socket_writes_total", "write() calls that put frames on sockets; tether_deliveries_total / this is messages per write.", &m.Writes),
		counter("tether_writes_delayed_total", "Room deliveries that waited for the write delay (--write-delay) to go out with later ones.", &m.Delayed),
		counter("tether_socket_full_total", "Writes the socket could not take at once (the peer reads slower than it is sent to); a writer goroutine finished them.", &m.SocketFull),
		counter("tether_queue_drops_total", "Frames dropped from the queues of connections closed as slow consumers.", &m.QueueDrops),
		counter("tether_engine_errors_total", "Publishes the engine failed (clients got `unavailable`).", &m.EngineErrors),
		counter("tether_resumes_total", "Sessions resumed.", &m.Resumes),
		counter("tether_recoveries_total", "Streams replayed from a client's position on (re)connect.", &m.Recoveries),
		counter("tether_recoveries_failed_total", "Streams whose position could not be served (recovered: false).", &m.RecoveriesFailed),
		counter("tether_duplicates_total", "Re-sent client messages acknowledged without being processed again.", &m.Duplicates),
		counter("tether_panics_total", "Panics recovered (a bug): each closed the connection it happened on with 1011; the stack is in the log.", &m.panics),
	)
	if hs, ok := s.eng.(historySizer); ok {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tether_history_retained",
			Help: "Messages retained in history (in-memory engine)."}, func() float64 { return float64(hs.Retained()) }))
	}
	if sr, ok := s.eng.(engine.StatsReporter); ok {
		stat := func(name, help string, get func(engine.Stats) uint64) prometheus.Collector {
			return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help},
				func() float64 { return float64(get(sr.Stats())) })
		}
		m.reg.MustRegister(
			stat("tether_engine_commands_total", "Commands the engine sent to its store (Redis).",
				func(s engine.Stats) uint64 { return s.Commands }),
			stat("tether_engine_publish_retries_total", "Idempotent publishes run again after the store did not answer (safe: a run whose reply was lost is found recorded).",
				func(s engine.Stats) uint64 { return s.PublishRetries }),
			stat("tether_engine_subscription_resets_total", "Pub/sub connections replaced: broken, or found silent by the end-to-end probe.",
				func(s engine.Stats) uint64 { return s.SubscriptionResets }),
			stat("tether_engine_probe_failures_total", "End-to-end probes (publish through the store, receive on this node's subscription) that did not come back in time.",
				func(s engine.Stats) uint64 { return s.ProbeFailures }),
			stat("tether_engine_gap_fills_total", "Gaps in a stream's deliveries filled from history.",
				func(s engine.Stats) uint64 { return s.GapFills }),
			stat("tether_engine_streams_lost_total", "Gaps history no longer covered: the stream's connections were told to resume (close 4010).",
				func(s engine.Stats) uint64 { return s.StreamsLost }),
		)
	}
}

func (s *Server) metricsHandler() http.Handler {
	return promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{})
}

func (m *metrics) observeDelivery(typ string, ts int64) {
	m.outByType.WithLabelValues(typ).Inc()
	if ts > 0 {
		m.latency.Observe(time.Since(time.UnixMilli(ts)).Seconds())
	}
}

// hookCounter is a counter of the hook sender's (0 without hooks).
func hookCounter(name, help string, s *Server, v func(*hookSender) int64) prometheus.Collector {
	return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 {
		if s.hooks == nil {
			return 0
		}
		return float64(v(s.hooks))
	})
}
