package redis

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tether-chat/tether/engine"
	"github.com/tether-chat/tether/internal/bench"
	"github.com/tether-chat/tether/internal/testredis"
)

type nopHandler struct{}

func (nopHandler) Deliver(*engine.Publication) {}
func (nopHandler) Lost(string)                 {}

// benchEngine is a started engine on url, closed when b ends.
func benchEngine(b *testing.B, url string) *Engine {
	e, err := New(cfgFor(url, 100))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { e.Close() })
	e.Start(context.Background(), nopHandler{})
	return e
}

// BenchmarkPublish: one publish through a real redis-server, from one
// caller at a time (a client's messages are handled in order) and from
// many at once (rueidis pipelines them), with and without an idempotency
// key (a client message has one; the key adds a GET and a SET inside the
// same script).
func BenchmarkPublish(b *testing.B) {
	srv := testredis.Start(b)
	for _, parallel := range []bool{false, true} {
		for _, keyed := range []bool{false, true} {
			b.Run(fmt.Sprintf("parallel=%v/keyed=%v", parallel, keyed), func(b *testing.B) {
				e := benchEngine(b, srv.URL)
				ctx := context.Background()
				e.Subscribe(ctx, "room:b")
				var n atomic.Int64
				publish := func() {
					p := &engine.Publication{Stream: "room:b", Type: "chat", Text: "hello", TS: time.Now().UnixMilli()}
					var o engine.PublishOptions
					if keyed {
						o.Key = fmt.Sprint("s:", n.Add(1))
					}
					if _, err := e.Publish(ctx, p, o); err != nil {
						b.Error(err)
					}
				}
				b.ResetTimer()
				if parallel {
					b.SetParallelism(32)
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							publish()
						}
					})
					return
				}
				for range b.N {
					publish()
				}
			})
		}
	}
}

// BenchmarkEnter: a connection's set-up (online, two rooms with their
// positions, the session save) through a real redis-server, from 32
// callers at once, as a storm of connections makes it. The node's CPU per
// call is what -benchtime reports with -cpu and a CPU profile; Redis's is
// reported as redis-µs/op (its own CPU time, from INFO cpu).
func BenchmarkEnter(b *testing.B) {
	srv := testredis.Start(b)
	e := benchEngine(b, srv.URL)
	ctx := context.Background()
	var n atomic.Int64
	b.ReportAllocs()
	redisCPU := func() time.Duration {
		cpu, _, err := bench.RedisStats(srv.Addr)
		if err != nil {
			b.Fatal(err)
		}
		return cpu
	}
	before := redisCPU()
	b.Cleanup(func() {
		if b.N > 0 {
			b.ReportMetric(float64((redisCPU()-before).Microseconds())/float64(b.N), "redis-µs/op")
		}
	})
	b.ResetTimer()
	b.SetParallelism(32)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			u := fmt.Sprint("u", n.Add(1))
			_, _, err := e.Enter(ctx, engine.Entering{Entries: []engine.Entry{
				{Set: "", User: u, Add: true, Stream: engine.UserStream(u)},
				{Set: "general", User: u, Add: true, AnnounceMax: 100, List: 100, Stream: "room:general",
					Announce: &engine.Publication{Stream: "room:general", Type: "presence", Room: "general", User: u, Action: "join", TS: 1}},
				{Set: "bench", User: u, Add: true, AnnounceMax: 100, List: 100, Stream: "room:bench"},
			}, Save: &engine.Session{ID: "s" + u, User: u, Rooms: []string{"bench", "general"}}, TTL: time.Minute})
			if err != nil {
				b.Error(err)
			}
		}
	})
}
