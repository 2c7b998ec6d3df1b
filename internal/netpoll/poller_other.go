//go:build !linux

package netpoll

import (
	"net"
	"time"
)

// Poller is Linux-only (epoll); elsewhere Get returns nil and every
// connection has a reader goroutine of its own.
type Poller struct{}

// Socket is never made where there is no Poller.
type Socket struct{}

func Get() *Poller                                        { return nil }
func (p *Poller) Add(net.Conn, Waker) (*Socket, bool)     { return nil, false }
func (p *Poller) Rearm(*Socket)                           {}
func (p *Poller) Remove(*Socket, Waker)                   {}
func (s *Socket) Read([]byte, time.Duration) (int, error) { panic("netpoll: no poller") }
func (s *Socket) Write([]byte) (int, error)               { panic("netpoll: no poller") }
