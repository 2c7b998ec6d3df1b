package server

import (
	"io/fs"
	"net/http"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/tether-chat/tether/engine"
	"github.com/tether-chat/tether/protocol"
	"github.com/tether-chat/tether/web"
)

// The admin page (docs/api.md, Admin page) shows an operator the cluster
// from one node: its nodes, connections, the users online, the busiest
// rooms, and messages per second and delivery latency charted live from
// the node's own metrics, with forms to publish to a room and to
// disconnect a user. It is off (404) unless the node has an admin secret
// or an API key, and every request for data bears one of them: the page
// itself is static and holds nothing secret. It keeps the secret in the
// tab's sessionStorage and sends it as a bearer token, never in a cookie,
// so another site cannot make the browser act with it.

// adminUsersShown and adminRoomsShown bound what one overview lists.
const (
	adminUsersShown = 100
	adminRoomsShown = 10
)

func (s *Server) adminRoutes() {
	page, _ := fs.Sub(web.FS, "admin")
	files := http.FileServerFS(page)
	s.mux.Handle("GET /admin/", s.adminOn(http.StripPrefix("/admin/", files)))
	s.mux.Handle("GET /admin", http.RedirectHandler("/admin/", http.StatusMovedPermanently))
	for _, r := range []struct {
		pattern string
		h       http.HandlerFunc
	}{
		{"GET /admin/api/overview", s.adminOverview},
		{"GET /admin/api/stats", s.adminStats},
		{"POST /admin/api/publish", s.apiPublish},
		{"POST /admin/api/disconnect", s.apiDisconnect},
	} {
		h := r.h
		s.mux.Handle(r.pattern, s.adminOn(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if s.bearerAuthorized(w, r, "admin secret", s.cfg.AdminSecret, s.cfg.APIKey) {
				h(w, r)
			}
		})))
	}
}

// adminOn serves h when the admin page is configured, with headers that
// keep the page from being framed, cached or made to run anything but its
// own script; 404 otherwise.
func (s *Server) adminOn(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.AdminSecret == "" && s.cfg.APIKey == "" {
			apiError(w, http.StatusNotFound, apiDisabled, "the admin page is off: start the server with --admin-secret or --api-key")
			return
		}
		hd := w.Header()
		hd.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("Cache-Control", "no-store")
		h.ServeHTTP(w, r)
	})
}

// AdminOverview is what GET /admin/api/overview answers: the cluster as
// this node sees it. Users and Rooms are read from the engine, so they
// cover every node.
type AdminOverview struct {
	Info
	Users          []string         `json:"users"` // online, sorted, at most adminUsersShown
	UsersTruncated bool             `json:"users_truncated"`
	Rooms          []engine.SetSize `json:"rooms"` // the busiest, most members first
	Errors         []protocol.Error `json:"errors,omitempty"`
}

func (s *Server) adminOverview(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := s.apiContext(r)
	defer cancel()
	out := AdminOverview{Info: s.info(ctx), Users: []string{}, Rooms: []engine.SetSize{}}
	failed := func(op string, err error) {
		out.Errors = append(out.Errors, *s.sess.EngineFailed("admin "+op, err))
	}
	if users, err := s.eng.PresenceMembers(ctx, "", adminUsersShown+1); err != nil {
		failed("users", err)
	} else {
		out.UsersTruncated = len(users) > adminUsersShown
		out.Users = users[:min(len(users), adminUsersShown)]
	}
	if in, ok := s.eng.(engine.Inspector); ok {
		if sets, err := in.Sets(ctx, adminRoomsShown); err != nil {
			failed("rooms", err)
		} else if sets != nil {
			out.Rooms = sets
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// AdminStats is what GET /admin/api/stats answers: this node's counters,
// read from the same registry as /metrics, for the page to chart rates
// and latency between two readings.
type AdminStats struct {
	Time        int64   `json:"time"` // ms since the epoch
	Connections float64 `json:"connections"`
	Received    float64 `json:"received"`    // tether_messages_received_total, every type
	Published   float64 `json:"published"`   // tether_publications_total, every type
	Delivered   float64 `json:"delivered"`   // tether_deliveries_total
	Errors      float64 `json:"errors"`      // tether_error_replies_total
	SlowClosed  float64 `json:"slow_closed"` // tether_slow_consumer_disconnects_total
	// Latency is tether_publish_to_deliver_seconds: cumulative counts per
	// upper bound (seconds), as Prometheus keeps them.
	Latency struct {
		Buckets []adminBucket `json:"buckets"`
		Count   uint64        `json:"count"`
		Sum     float64       `json:"sum"`
	} `json:"latency"`
}

type adminBucket struct {
	LE    float64 `json:"le"`
	Count uint64  `json:"count"`
}

func (s *Server) adminStats(w http.ResponseWriter, r *http.Request) {
	families, err := s.metrics.reg.Gather()
	if err != nil {
		s.log.Warn("admin: gathering metrics", "err", err)
	}
	out := AdminStats{Time: time.Now().UnixMilli()}
	out.Latency.Buckets = []adminBucket{}
	sum := func(f *dto.MetricFamily) (v float64) {
		for _, m := range f.GetMetric() {
			v += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
		return v
	}
	for _, f := range families {
		switch f.GetName() {
		case "tether_connections":
			out.Connections = sum(f)
		case "tether_messages_received_total":
			out.Received = sum(f)
		case "tether_publications_total":
			out.Published = sum(f)
		case "tether_deliveries_total":
			out.Delivered = sum(f)
		case "tether_error_replies_total":
			out.Errors = sum(f)
		case "tether_slow_consumer_disconnects_total":
			out.SlowClosed = sum(f)
		case "tether_publish_to_deliver_seconds":
			for _, m := range f.GetMetric() {
				h := m.GetHistogram()
				out.Latency.Count, out.Latency.Sum = h.GetSampleCount(), h.GetSampleSum()
				for _, b := range h.GetBucket() {
					out.Latency.Buckets = append(out.Latency.Buckets, adminBucket{LE: b.GetUpperBound(), Count: b.GetCumulativeCount()})
				}
			}
		}
	}
	writeJSON(w, http.StatusOK, out)
}
