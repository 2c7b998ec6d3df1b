//go:build unix

package bench

import (
	"syscall"
	"time"
)

// selfCPU is the CPU time (user + system) this process has used so far,
// from getrusage: readProc's /proc clock ticks (10 ms) are too coarse for a
// small run.
func selfCPU() (time.Duration, bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}
