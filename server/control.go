package server

import (
	"context"
	"time"

	"github.com/tether-chat/tether/engine"
	"github.com/tether-chat/tether/protocol"
	"github.com/tether-chat/tether/server/hub"
	"github.com/tether-chat/tether/server/session"
	"github.com/tether-chat/tether/server/transport"
)

// Control messages: the server API's disconnect and unsubscribe, published
// (ephemerally, as hub.TypeControl) on the user's inbox stream so that
// they reach every node holding a connection of the user. They are never
// sent to clients.
const (
	ctlDisconnect  = "disconnect"  // Count: the close code; Text: the reason
	ctlUnsubscribe = "unsubscribe" // Room
)

// hubNode is the node as its hub sees it (hub.Node).
type hubNode Server

var _ hub.Node = (*hubNode)(nil)

func (n *hubNode) Joined(user, room string) {
	(*Server)(n).hook(HookEvent{Type: "join", User: user, Room: room})
}

func (n *hubNode) Left(user, room string) {
	(*Server)(n).hook(HookEvent{Type: "leave", User: user, Room: room})
}

func (n *hubNode) Delivered(typ string, ts int64) { n.metrics.observeDelivery(typ, ts) }

func (n *hubNode) Panicked(where string, r any) { (*Server)(n).panicked(where, r, nil) }

func (n *hubNode) EngineFailed(op string, err error) error {
	return (*Server)(n).sess.EngineFailed(op, err)
}

func (n *hubNode) OpContext(d time.Duration) (context.Context, context.CancelFunc) {
	return (*Server)(n).opContext(d)
}

// Control carries out a control message for user's connections on this
// node. It runs on the engine's delivery: the work that waits on the
// engine runs on a goroutine of its own.
func (n *hubNode) Control(user string, p *engine.Publication) {
	s := (*Server)(n)
	conns := s.hub.ConnsOf(user)
	switch p.Action {
	case ctlDisconnect:
		s.log.Info("disconnected by the application", "user", user, "connections", len(conns), "code", p.Count)
		for _, c := range conns {
			c.Close(protocol.Disconnect{Code: protocol.CloseCode(p.Count), Reason: p.Text}, transport.CloseDrain)
		}
	case ctlUnsubscribe:
		if len(conns) == 0 {
			return
		}
		go func() {
			defer s.recoverPanic("unsubscribe", nil)
			ctx, cancel := s.opContext(10 * time.Second)
			defer cancel()
			frame := protocol.Encode(protocol.TypeUnsubscribed, "", protocol.Unsubscribed{Room: p.Room})
			for _, m := range conns {
				c := m.(*session.Conn)
				if !s.hub.IsMember(c, p.Room) {
					continue
				}
				s.hub.Leave(ctx, c, p.Room)
				s.sess.SaveSession(ctx, c)
				c.Send(frame)
			}
		}()
	}
}
