package transport

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Flusher coalesces a busy room's deliveries (Config.WriteDelay). A
// delivery normally writes to each member's socket at once, one write()
// per message per member; at 200 messages a second that is 200 writes a
// second per member, and the write, not the encoding or queueing, is what
// a delivery costs. With a write delay, a member whose socket was written
// less than the delay ago is parked instead: its frames wait in its queue
// (it keeps the writer role, so nothing else writes) and the flusher
// writes everything queued for every parked member once the delay has
// passed, several messages per write().
//
// A member that has not been written to within the delay is written at
// once, so a quiet room gets no added latency; only a connection that is
// being written more often than once per delay waits, never longer than
// the delay (or than it takes to gather parkedMax frames), and while it
// waits everything else to it (acks, pongs, private messages) waits too.
// Like Nagle's algorithm this suits streams and costs lock-step traffic,
// which never has a second message to coalesce (docs/benchmarks.md).
type Flusher struct {
	delay   int64 // nanoseconds
	delayed *atomic.Int64
	mu      sync.Mutex
	list    *Batch // parked connections, written at the next flush
	wake    chan struct{}
	done    chan struct{}
}

// NewFlusher starts the write delay's flusher; it ends, after a last
// flush, when ctx is done (then Done is closed). delayed counts the
// deliveries it parks.
func NewFlusher(ctx context.Context, delay time.Duration, delayed *atomic.Int64) *Flusher {
	f := &Flusher{delay: int64(delay), delayed: delayed, list: NewBatch(),
		wake: make(chan struct{}, 1), done: make(chan struct{})}
	go f.run(ctx)
	return f
}

// Done is closed when the flusher has ended.
func (f *Flusher) Done() <-chan struct{} { return f.done }

// StartOrPark starts the writers of the connections in later (whose
// writer role the callers of SendTo took) that were not written within the
// delay, and parks the others until the next flush; then it puts later
// back for reuse. With all, every connection is
// parked: for deliveries that nobody waits for (a big room's periodic
// count), so that they share a write with whatever else comes within the
// delay (the counts of the member's other big rooms, flushed together).
func (f *Flusher) StartOrPark(later *Batch, all bool) {
	now := time.Now().UnixNano()
	conns := later.conns
	n := 0
	var parked []*Conn
	for _, c := range conns {
		if (all || now-c.lastWrite.Load() < f.delay) && c.park() {
			parked = append(parked, c)
		} else {
			conns[n] = c
			n++
		}
	}
	if len(parked) > 0 {
		f.delayed.Add(int64(len(parked)))
		f.mu.Lock()
		f.list.conns = append(f.list.conns, parked...)
		f.mu.Unlock()
		select {
		case f.wake <- struct{}{}:
		default:
		}
	}
	clear(conns[n:])
	later.conns = conns[:n]
	later.Start()
}

// run flushes: after a connection is parked, it waits the delay (more
// connections and messages gather) and then starts every parked writer.
// It ends, after a last flush, when ctx is done.
func (f *Flusher) run(ctx context.Context) {
	defer close(f.done)
	t := time.NewTimer(0)
	<-t.C
	for {
		select {
		case <-f.wake:
		case <-ctx.Done():
			f.flush()
			return
		}
		t.Reset(time.Duration(f.delay))
		select {
		case <-t.C:
		case <-ctx.Done():
		}
		f.flush()
	}
}

// flush starts the writers of the parked connections that are still
// parked (an enqueue may have taken one back, see parkedMax).
func (f *Flusher) flush() {
	f.mu.Lock()
	list := f.list
	f.list = NewBatch()
	f.mu.Unlock()
	conns := list.conns
	n := 0
	for _, c := range conns {
		c.mu.Lock()
		if c.parked {
			c.parked = false
			conns[n] = c
			n++
		}
		c.mu.Unlock()
	}
	clear(conns[n:])
	list.conns = conns[:n]
	list.Start()
}

// park marks a connection whose writer role the caller holds as parked,
// unless its queue is long enough for a write already.
func (c *Conn) park() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.queueFull() {
		return false
	}
	c.parked = true
	return true
}

// queueFull says whether the queue holds enough for one write already;
// c.mu must be held.
func (c *Conn) queueFull() bool {
	return len(c.queue) >= parkedMax || c.queued >= maxBatchBytes/2
}

// parkedMax is how many frames a parked connection gathers before it is
// written without waiting for the delay: 64 frames in one write() cost
// about a tenth of a microsecond each, and a burst faster than the queue
// limit per delay must not overflow the queue while it waits.
const parkedMax = 64

// Parked says whether the connection's writer is parked for the write
// delay (a delivery waits in its queue).
func (c *Conn) Parked() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.parked
}

// A Batch collects the connections whose writers a delivery must start
// (SendTo) once it has released its locks.
type Batch struct{ conns []*Conn }

var batches = sync.Pool{New: func() any { return &Batch{conns: make([]*Conn, 0, 64)} }}

// NewBatch is an empty batch from a pool; Start (or StartOrPark) puts it
// back.
func NewBatch() *Batch { return batches.Get().(*Batch) }

// writersPerGoroutine is how many connections one goroutine writes to when
// a delivery fans out: a few in the delivering goroutine itself, more in
// batches (the delivering goroutine may hold the engine's stream lock, and
// batches write in parallel on several cores).
const writersPerGoroutine = 256

// Start starts the writer of every connection in b, then puts b back in
// the pool. A panic while writing to one connection closes that one only.
func (b *Batch) Start() {
	conns := b.conns
	if len(conns) <= writersPerGoroutine/4 {
		for _, c := range conns {
			c.startWriterSafely()
		}
	} else {
		// Large fan-out: batches of writersPerGoroutine, each goroutine
		// with its own copy of its slice (the list goes back to the pool).
		for rest := conns; len(rest) > 0; {
			n := min(len(rest), writersPerGoroutine)
			part := append([]*Conn(nil), rest[:n]...)
			rest = rest[n:]
			go func() {
				for _, c := range part {
					c.startWriterSafely()
				}
			}()
		}
	}
	clear(conns)
	b.conns = conns[:0]
	batches.Put(b)
}
