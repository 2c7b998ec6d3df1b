// Package netpoll tells connections when their sockets can be read, so
// that an idle connection needs no goroutine of its own, and runs the
// work that follows on a pool of reusable goroutines. On Linux one epoll
// instance serves the process (Poller); elsewhere Get returns nil and the
// caller gives each connection a reader goroutine.
package netpoll

import (
	"sync/atomic"
	"time"
)

// Pool runs jobs on goroutines that are reused: one that finishes a job
// waits a moment for the next. A fresh goroutine would start with a small
// stack and grow it (copy it) on every job that goes deep, as decoding and
// handling a message does; a reused one has grown it once. The pool only
// ever holds goroutines that are idle, so a job that blocks (on a store, a
// slow peer) never delays another: when no worker is idle, a new one
// starts.
type Pool[T any] struct {
	handoff chan T
	n       atomic.Int32 // workers, idle or not, that will wait for another job
	max     int32        // reusable workers; past this, workers are one-off
	run     func(T)
}

const (
	maxWorkers = 128             // reusable workers per pool (NewPool); past this, workers are one-off
	workerIdle = 2 * time.Second // a reusable worker with nothing to do for this long exits
)

// NewPool returns a pool that runs run for each job.
func NewPool[T any](run func(T)) *Pool[T] { return NewPoolOf(maxWorkers, run) }

// NewPoolOf returns a pool of at most max reusable workers that runs run
// for each job: a caller that never has more than max jobs running at
// once has every job run on a reused goroutine.
func NewPoolOf[T any](max int, run func(T)) *Pool[T] {
	return &Pool[T]{handoff: make(chan T), max: int32(max), run: run}
}

// Dispatch runs job on an idle worker, or a new one.
func (p *Pool[T]) Dispatch(job T) {
	select {
	case p.handoff <- job:
	default:
		go p.work(job)
	}
}

// Workers is how many reusable workers exist, busy or idle (an idle one
// exits after two seconds).
func (p *Pool[T]) Workers() int { return int(p.n.Load()) }

func (p *Pool[T]) work(job T) {
	if p.n.Add(1) > p.max {
		p.n.Add(-1)
		p.run(job)
		return
	}
	defer p.n.Add(-1)
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		p.run(job)
		idle.Reset(workerIdle)
		select {
		case job = <-p.handoff:
		case <-idle.C:
			return
		}
	}
}
