package server

import (
	"context"

	"github.com/tether-chat/tether/engine"
	"github.com/tether-chat/tether/protocol"
	"github.com/tether-chat/tether/server/session"
)

// sessionNode is the node as its sessions see it (session.Node).
type sessionNode Server

var _ session.Node = (*sessionNode)(nil)

func (n *sessionNode) Admit(ip, user string) *protocol.Disconnect {
	return (*Server)(n).admit(ip, user)
}
func (n *sessionNode) Rename(ip, from, to string) *protocol.Disconnect {
	return (*Server)(n).rename(ip, from, to)
}
func (n *sessionNode) Release(ip, user string)    { (*Server)(n).release(ip, user) }
func (n *sessionNode) AllowFile(user string) bool { return (*Server)(n).allowFile(user) }

func (n *sessionNode) CheckConnect(c *session.Conn, cookie, origin string, resume bool) (string, error) {
	return (*Server)(n).checkConnect(c, cookie, origin, resume)
}

func (n *sessionNode) CheckMessage(ctx context.Context, c *session.Conn, p *engine.Publication) error {
	return (*Server)(n).checkMessage(ctx, c, p)
}

func (n *sessionNode) Connected(c *session.Conn, resumed bool) {
	(*Server)(n).hook(HookEvent{Type: "connect", User: c.User(), Conn: c.ID(), Remote: c.Remote(), Resumed: resumed})
}

func (n *sessionNode) Disconnected(c *session.Conn, code protocol.CloseCode) {
	(*Server)(n).hook(HookEvent{Type: "disconnect", User: c.User(), Conn: c.ID(), Remote: c.Remote(), Code: int(code)})
}

func (n *sessionNode) Published(p *engine.Publication) { (*Server)(n).hookPublished(p) }

func (n *sessionNode) Panicked(where string, r any, c *session.Conn) {
	(*Server)(n).panicked(where, r, c)
}

// sessionConfig is what the sessions need of the node's configuration.
func sessionConfig(c *Config) session.Config {
	return session.Config{AuthSecret: c.AuthSecret, AutoJoin: c.AutoJoin, MaxMessageSize: c.MaxMessageSize,
		MaxText: c.MaxText, MaxFileSize: c.MaxFileSize, FilesPerMinute: c.FilesPerMinute, ImagesOnly: c.ImagesOnly,
		HistoryTTL: c.HistoryTTL, MembersMax: c.MembersMax, PresenceEventsMax: c.PresenceEventsMax,
		PresenceGrace: c.PresenceGrace, PresenceGraceAway: c.PresenceGraceAway, ResumeWindow: c.ResumeWindow,
		RateLimit: c.RateLimit, RateBurst: c.RateBurst, RateStrikes: c.RateStrikes, SendQueueMessages: c.SendQueueMessages,
		WriteTimeout: c.WriteTimeout, PingInterval: c.PingInterval, PongTimeout: c.PongTimeout,
		WSDialect: c.WSDialect, WSIDDialect: c.WSIDDialect}
}
