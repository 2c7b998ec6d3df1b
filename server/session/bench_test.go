package session

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/tether-chat/tether/engine"
	"github.com/tether-chat/tether/engine/memory"
	"github.com/tether-chat/tether/protocol"
	"github.com/tether-chat/tether/server/hub"
	"github.com/tether-chat/tether/server/transport"
)

// quietNode is a hub.Node that does nothing: the benchmark's hub reports
// to nobody.
type quietNode struct{}

func (quietNode) Joined(string, string)                  {}
func (quietNode) Left(string, string)                    {}
func (quietNode) Delivered(string, int64)                {}
func (quietNode) Control(string, *engine.Publication)    {}
func (quietNode) Panicked(where string, r any)           { panic(fmt.Sprint(where, ": ", r)) }
func (quietNode) EngineFailed(_ string, err error) error { return err }
func (quietNode) OpContext(time.Duration) (context.Context, context.CancelFunc) {
	return context.WithCancel(context.Background())
}

// BenchmarkDeliverToRoom measures the fan-out path without sockets: one
// publication encoded once and enqueued, through the session's Deliver,
// to every member of a room. The members stay corked, so nothing is
// written and every queue keeps what the run delivered (bound the run
// with -benchtime=Nx for big rooms).
func BenchmarkDeliverToRoom(b *testing.B) {
	for _, n := range []int{100, 1000, 10000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			eng := memory.New(memory.Config{})
			defer eng.Close()
			h := hub.New(hub.Config{Engine: eng, Log: slog.New(slog.DiscardHandler), PresenceEventsMax: 100,
				MembersMax: 100, MaxRoomsPerConn: 8, PresenceInterval: time.Second}, quietNode{})
			if err := eng.Start(context.Background(), h); err != nil {
				b.Fatal(err)
			}
			tp := &transport.Options{QueueMessages: 1 << 30, QueueBytes: 1 << 30, WriteTimeout: time.Second, Counters: &transport.Counters{}}
			m := New(Config{SendQueueMessages: 1 << 30}, Deps{Engine: eng, Hub: h, Transport: tp, Log: slog.New(slog.DiscardHandler), Metrics: &Metrics{}})
			for i := 0; i < n; i++ {
				c := &Conn{id: uint64(i + 1), user: fmt.Sprint("u", i), m: m}
				c.Init(tp, nil, c, nil)                              // corked: no writer, measures the enqueue
				if err := h.Plan(c).Room("bench", nil); err != nil { // the hub's side of a join
					b.Fatal(err)
				}
			}
			p := &engine.Publication{Stream: engine.RoomStream("bench"), Type: protocol.TypeChat, Room: "bench",
				From: "alice", Text: strings.Repeat("x", 100), Seq: 1, Epoch: "e", TS: 1}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				h.Deliver(p)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/delivery")
		})
	}
}
