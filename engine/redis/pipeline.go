package redis

import (
	"context"
	"sync"
	"sync/atomic"

	goredis "github.com/redis/go-redis/v9"

	"github.com/tether-chat/tether/engine"
)

// Automatic pipelining. Every single command the engine sends (GET, HMGET,
// EVALSHA, PUBLISH ...) goes through autoPipe, a go-redis hook: the command
// is queued and one of a few sender goroutines writes everything queued so
// far as one pipeline, reads the replies into the waiting commands and
// wakes their callers. When Redis is idle a command goes out at once, alone
// (a pipeline of one, plus two goroutine hand-offs); when thousands of
// connections resume together, a few hundred commands share one write()
// and one read() on both sides instead of one each, which is most of what
// a small command costs Redis and the node. Callers still wait for their
// own reply, so a command's order relative to the caller's next one is
// unchanged; commands of different callers were never ordered.
//
// Explicit pipelines (SaveSessions) and the pub/sub connection do not pass
// through it.

const (
	pipeSenders  = 8    // pipelines in flight at once
	pipeMaxBatch = 512  // commands per pipeline at most
	pipeQueue    = 4096 // commands waiting for a sender before callers block
)

type pipeCall struct {
	ctx  context.Context
	cmd  goredis.Cmder
	done chan struct{}
}

type autoPipe struct {
	rdb *goredis.Client
	ctx context.Context // the engine's: cancelled by Close

	mu     sync.RWMutex // held (read) while queueing; Close takes it to close the queue
	closed bool
	queue  chan *pipeCall

	cmds, pipelines atomic.Uint64
}

func newAutoPipe(ctx context.Context, rdb *goredis.Client) *autoPipe {
	p := &autoPipe{rdb: rdb, ctx: ctx, queue: make(chan *pipeCall, pipeQueue)}
	rdb.AddHook(p)
	return p
}

// start runs the senders; they return once close has been called and the
// queue is empty.
func (p *autoPipe) start(wg *sync.WaitGroup) {
	for range pipeSenders {
		wg.Go(p.send)
	}
}

// close refuses new commands; the senders finish the queued ones.
func (p *autoPipe) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.closed {
		p.closed = true
		close(p.queue)
	}
}

func (p *autoPipe) DialHook(next goredis.DialHook) goredis.DialHook { return next }

func (p *autoPipe) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return next
}

// ProcessHook queues the command for a sender instead of sending it on a
// connection of its own, and waits for its reply. Once queued, a command
// is the sender's until it is done (go-redis reads the result from it as
// soon as this returns), so the caller waits for it even if its context
// ends meanwhile; the sender skips a command whose context has ended, and
// the client's read and write timeouts bound the rest.
func (p *autoPipe) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		call := &pipeCall{ctx: ctx, cmd: cmd, done: make(chan struct{})}
		p.mu.RLock()
		if p.closed {
			p.mu.RUnlock()
			cmd.SetErr(engine.ErrClosed)
			return engine.ErrClosed
		}
		select {
		case p.queue <- call:
		case <-ctx.Done():
			p.mu.RUnlock()
			cmd.SetErr(ctx.Err())
			return ctx.Err()
		}
		p.mu.RUnlock()
		<-call.done
		return cmd.Err()
	}
}

// send takes one queued command, waiting if need be, then every other one
// queued by then (up to pipeMaxBatch), and sends them as one pipeline.
func (p *autoPipe) send() {
	batch := make([]*pipeCall, 0, pipeMaxBatch)
	for {
		call, ok := <-p.queue
		if !ok {
			return
		}
		batch = append(batch, call)
	more:
		for len(batch) < pipeMaxBatch {
			select {
			case call, ok := <-p.queue:
				if !ok {
					break more
				}
				batch = append(batch, call)
			default:
				break more
			}
		}
		pipe := p.rdb.Pipeline()
		for _, call := range batch {
			if err := call.ctx.Err(); err != nil {
				call.cmd.SetErr(err)
				continue
			}
			pipe.Process(p.ctx, call.cmd)
		}
		if n := pipe.Len(); n > 0 {
			pipe.Exec(p.ctx) // each command carries its own result or error
			p.cmds.Add(uint64(n))
			p.pipelines.Add(1)
		}
		for i, call := range batch {
			close(call.done)
			batch[i] = nil
		}
		batch = batch[:0]
	}
}

// PipelineStats reports the commands sent through automatic pipelining and
// the pipelines (round trips) they took: commands / pipelines is how many
// shared a round trip on average.
func (e *Engine) PipelineStats() (commands, pipelines uint64) {
	return e.pipe.cmds.Load(), e.pipe.pipelines.Load()
}
