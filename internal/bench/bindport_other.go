//go:build !linux

package bench

import "syscall"

// bindNoPort is Linux-only (IP_BIND_ADDRESS_NO_PORT).
func bindNoPort(network, address string, c syscall.RawConn) error { return nil }
