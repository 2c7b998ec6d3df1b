package server

import (
	"net"
	"net/http"
	"time"

	"github.com/tether-chat/tether/internal/ws"
	"github.com/tether-chat/tether/protocol"
	"github.com/tether-chat/tether/server/transport"
)

// serveWS is /ws served by net/http (Handler(), TLS): it upgrades one
// connection and hands it to its session.
func (s *Server) serveWS(w http.ResponseWriter, r *http.Request) {
	s.openWS(&handshake{req: requestFromHTTP(r), w: w})
}

// openWS takes one WebSocket opening request through the node's part —
// the user it is for (session.Identify), the connection limits, the
// upgrade, a refusal after it — and hands the socket to the sessions.
func (s *Server) openWS(h *handshake) {
	r := &h.req
	if s.sess.Stopping() {
		h.fail(http.StatusServiceUnavailable, "server is shutting down; reconnect to another node")
		return
	}
	user, claims, refuse, bad := s.sess.Identify(r)
	if bad != "" {
		h.fail(http.StatusBadRequest, bad)
		return
	}
	ip := remoteIP(r.remote)
	admitted := false
	if refuse == nil {
		if refuse = s.admit(ip, user); refuse == nil {
			admitted = true
		}
	}
	nc, resp, early, err := s.upgrade(h)
	if err != nil {
		if admitted {
			s.release(ip, user)
		}
		return // upgrade has answered and logged
	}
	if refuse != nil {
		s.refuseOpened(nc, resp, r.remote, user, *refuse)
		return
	}
	s.sess.Open(nc, resp, early, r, user, ip, claims)
}

// refuseOpened refuses a connection after its upgrade, with a close code,
// because a browser cannot read the status of a failed handshake: it
// would only see 1006 and retry forever.
func (s *Server) refuseOpened(nc net.Conn, resp []byte, remote, user string, refuse protocol.Disconnect) {
	s.metrics.Refused.Add(1)
	s.log.Warn("connection refused", "remote", remote, "user", user, "code", int(refuse.Code), "reason", refuse.Reason)
	nc.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
	nc.Write(ws.AppendFrame(resp, ws.OpClose, transport.ClosePayload(refuse)))
	nc.Close()
}

// The opening request as the session reads it (session.Request).

func (r *wsRequest) Query(name string) string { return r.query(name) }
func (r *wsRequest) ClientID() (string, bool) { return r.clientID, r.withID }
func (r *wsRequest) Tether() bool             { return r.tether }
func (r *wsRequest) Remote() string           { return r.remote }
func (r *wsRequest) Cookie() string           { return r.cookie }
func (r *wsRequest) Origin() string           { return r.origin }
func (r *wsRequest) Authorization() string    { return r.authorization }
