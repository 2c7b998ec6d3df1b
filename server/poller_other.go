//go:build !linux

package server

// poller is Linux-only (epoll); elsewhere every connection has a reader
// goroutine of its own (readBlocking).
type poller struct{}

func getPoller() *poller                          { return nil }
func (p *poller) add(c *Conn) bool                { return false }
func (p *poller) remove(c *Conn)                  {}
func (p *poller) rearm(c *Conn)                   {}
func (c *Conn) rawRead([]byte, bool) (int, error) { panic("no poller") }
func (c *Conn) rawWrite([]byte) (int, error)      { panic("no poller") }
