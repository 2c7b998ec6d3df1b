package memory

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tether-chat/tether/engine"
	"github.com/tether-chat/tether/engine/enginetest"
)

func TestContract(t *testing.T) {
	enginetest.Run(t, func(t *testing.T, o enginetest.Options) engine.Engine {
		return New(Config{HistorySize: o.HistorySize, KeyTTL: o.KeyTTL})
	})
}

func TestHistoryExpiresByAge(t *testing.T) {
	e := New(Config{HistorySize: 10, HistoryTTL: time.Minute})
	e.Start(context.Background(), enginetest.NewCollector())
	defer e.Close()
	ctx := context.Background()
	old := &engine.Publication{Stream: "room:a", Type: "chat", TS: time.Now().Add(-2 * time.Minute).UnixMilli()}
	fresh := &engine.Publication{Stream: "room:a", Type: "chat", TS: time.Now().UnixMilli()}
	e.Publish(ctx, old, engine.PublishOptions{})
	e.Publish(ctx, fresh, engine.PublishOptions{})
	h, err := e.History(ctx, "room:a", engine.HistoryQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if len(h.Pubs) != 1 || h.Pubs[0].Seq != 2 || h.Oldest != 2 || h.Top != 2 {
		t.Fatalf("history after expiry: %d pubs, oldest %d, top %d; want the fresh one only", len(h.Pubs), h.Oldest, h.Top)
	}
}

func TestNewEngineStartsNewEpoch(t *testing.T) {
	ctx := context.Background()
	a, b := New(Config{}), New(Config{})
	pa := &engine.Publication{Stream: "room:x", Type: "chat"}
	pb := &engine.Publication{Stream: "room:x", Type: "chat"}
	a.Publish(ctx, pa, engine.PublishOptions{})
	b.Publish(ctx, pb, engine.PublishOptions{})
	if pa.Epoch == pb.Epoch {
		t.Fatalf("two engines (a restart) gave stream the same epoch %q", pa.Epoch)
	}
}

// TestReadsCreateNoStream: reading a stream that never published (history,
// a key's record) leaves nothing behind; only a publish creates a stream,
// and the sweep forgets a stream once its history and keys have expired.
func TestReadsCreateNoStream(t *testing.T) {
	ctx := context.Background()
	e := New(Config{HistoryTTL: 40 * time.Millisecond, KeyTTL: 40 * time.Millisecond})
	e.Start(ctx, enginetest.NewCollector())
	defer e.Close()
	for i := range 1000 {
		e.History(ctx, fmt.Sprint("room:r", i), engine.HistoryQuery{})
		e.Recorded(ctx, fmt.Sprint("room:r", i), "k")
	}
	if n := e.streamCount(); n != 0 {
		t.Fatalf("%d streams after reading 1000 that never published; want 0", n)
	}
	e.Publish(ctx, &engine.Publication{Stream: "room:x", Type: "chat", TS: time.Now().UnixMilli()}, engine.PublishOptions{Key: "s:1"})
	if n := e.streamCount(); n != 1 {
		t.Fatalf("%d streams after one publish", n)
	}
	deadline := time.Now().Add(2 * time.Second)
	for e.streamCount() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("an expired stream was never forgotten")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestWindowKeepsTheNewest(t *testing.T) {
	var w window
	for i := 1; i <= 1000; i++ {
		w.push(&engine.Publication{Seq: uint64(i), TS: int64(i)}, 7)
		all := w.all()
		if len(all) != min(i, 7) || all[len(all)-1].Seq != uint64(i) || all[0].Seq != uint64(max(1, i-6)) {
			t.Fatalf("after %d pushes: %d retained, %d..%d", i, len(all), all[0].Seq, all[len(all)-1].Seq)
		}
		if cap(w.buf) > 64 {
			t.Fatalf("the buffer grew to %d for a window of 7", cap(w.buf))
		}
	}
	w.dropOlderThan(998)
	if all := w.all(); len(all) != 3 || all[0].Seq != 998 {
		t.Fatalf("after expiry: %v", len(all))
	}
	w.dropOlderThan(2000)
	if len(w.all()) != 0 {
		t.Fatal("expiry left publications behind")
	}
}

// TestFilesAreBoundedInBytes: past FileBytes the oldest files go first.
func TestFilesAreBoundedInBytes(t *testing.T) {
	e := New(Config{FileBytes: 10})
	ctx := context.Background()
	for _, id := range []string{"a", "b", "c"} {
		if err := e.PutFile(ctx, &engine.File{ID: id, Data: []byte("1234")}, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	if f, _ := e.GetFile(ctx, "a"); f != nil {
		t.Fatal("the oldest file outlived the bound")
	}
	for _, id := range []string{"b", "c"} {
		if f, _ := e.GetFile(ctx, id); f == nil {
			t.Fatalf("file %s is gone, within the bound", id)
		}
	}
}
