package hub

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// TestKeyLocksNeverShareAMutex: a thousand keys held at once, each by its
// own goroutine, every one waiting for all the others to hold theirs. With
// a fixed set of striped mutexes this cannot finish.
func TestKeyLocksNeverShareAMutex(t *testing.T) {
	k := newKeyLocks(hashString)
	const n = 1000
	var held, release sync.WaitGroup
	held.Add(n)
	release.Add(1)
	var done sync.WaitGroup
	for i := range n {
		done.Go(func() {
			l := k.get(fmt.Sprint("user:", i))
			l.Lock()
			held.Done()
			release.Wait()
			l.Unlock()
		})
	}
	all := make(chan struct{})
	go func() { held.Wait(); close(all) }()
	select {
	case <-all:
	case <-time.After(10 * time.Second):
		t.Fatal("distinct keys blocked each other")
	}
	release.Done()
	done.Wait()
	checkNoKeysLeft(t, k)
}

// TestKeyLockExcludes: one key's holders take turns, and the key's mutex
// is gone once nobody holds or waits for it.
func TestKeyLockExcludes(t *testing.T) {
	k := newKeyLocks(hashString)
	inside, most := 0, 0
	var mu sync.Mutex // guards most (inside is guarded by the key lock)
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			for range 200 {
				l := k.get("room:lobby")
				l.Lock()
				inside++
				mu.Lock()
				most = max(most, inside)
				mu.Unlock()
				inside--
				l.Unlock()
			}
		})
	}
	wg.Wait()
	if most != 1 {
		t.Fatalf("%d holders of one key at once", most)
	}
	checkNoKeysLeft(t, k)
}

func checkNoKeysLeft(t *testing.T, k *keyLocks[string]) {
	t.Helper()
	for i := range k.shards {
		if n := len(k.shards[i].m); n != 0 {
			t.Fatalf("shard %d keeps %d mutexes nobody holds", i, n)
		}
	}
}
