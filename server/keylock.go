package server

import (
	"hash/maphash"
	"sync"
)

// keyLocks is one mutex per key (a stream, a room and user pair), made
// when first wanted and dropped when no one holds or waits for it. The
// hub holds these across engine round trips, so two keys must never share
// a mutex: with a fixed set of striped mutexes, 19,000 users resuming at
// once queued ~300 deep behind each other's Redis round trips, and a room
// behind the users whose stripe it shared.
type keyLocks struct {
	seed   maphash.Seed
	shards [64]keyShard
}

type keyShard struct {
	mu sync.Mutex
	m  map[string]*keyMutex
}

type keyMutex struct {
	sync.Mutex
	refs int // holders and waiters; guarded by the shard's mu
}

func newKeyLocks() *keyLocks { return &keyLocks{seed: maphash.MakeSeed()} }

// keyLock is the lock of one key: Lock, then Unlock, once each.
type keyLock struct {
	shard *keyShard
	key   string
	m     *keyMutex
}

func (k *keyLocks) get(key string) keyLock {
	return keyLock{shard: &k.shards[maphash.String(k.seed, key)%uint64(len(k.shards))], key: key}
}

func (l *keyLock) Lock() {
	s := l.shard
	s.mu.Lock()
	m := s.m[l.key]
	if m == nil {
		if s.m == nil {
			s.m = make(map[string]*keyMutex)
		}
		m = &keyMutex{}
		s.m[l.key] = m
	}
	m.refs++
	s.mu.Unlock()
	m.Lock()
	l.m = m
}

func (l *keyLock) Unlock() {
	m := l.m
	l.m = nil
	m.Unlock()
	s := l.shard
	s.mu.Lock()
	if m.refs--; m.refs == 0 {
		delete(s.m, l.key)
	}
	s.mu.Unlock()
}
