package hub

import (
	"hash/maphash"
	"sync"
)

// keyLocks is one mutex per key (a stream, a room and user pair), made
// when first wanted and dropped when no one holds or waits for it. The
// hub holds these across engine round trips, so two keys must never share
// a mutex: with a fixed set of striped mutexes, 19,000 users resuming at
// once queued ~300 deep behind each other's Redis round trips, and a room
// behind the users whose stripe it shared. Dropped mutexes are kept for
// reuse (a few per shard), so a set-up allocates none.
type keyLocks[K comparable] struct {
	seed   maphash.Seed
	hash   func(maphash.Seed, K) uint64 // picks the shard
	shards [64]keyShard[K]
}

type keyShard[K comparable] struct {
	mu   sync.Mutex
	m    map[K]*keyMutex
	free []*keyMutex // unused mutexes, for reuse
}

type keyMutex struct {
	sync.Mutex
	refs int // holders and waiters; guarded by the shard's mu
}

const keyFreeMax = 16 // unused mutexes kept per shard

func newKeyLocks[K comparable](hash func(maphash.Seed, K) uint64) *keyLocks[K] {
	return &keyLocks[K]{seed: maphash.MakeSeed(), hash: hash}
}

// keyLock is the lock of one key: Lock, then Unlock, once each.
type keyLock[K comparable] struct {
	shard *keyShard[K]
	key   K
	m     *keyMutex
}

func (k *keyLocks[K]) get(key K) keyLock[K] {
	return keyLock[K]{shard: &k.shards[k.hash(k.seed, key)%uint64(len(k.shards))], key: key}
}

func (l *keyLock[K]) Lock() {
	s := l.shard
	s.mu.Lock()
	m := s.m[l.key]
	if m == nil {
		if s.m == nil {
			s.m = make(map[K]*keyMutex)
		}
		if n := len(s.free); n > 0 {
			m, s.free = s.free[n-1], s.free[:n-1]
		} else {
			m = &keyMutex{}
		}
		s.m[l.key] = m
	}
	m.refs++
	s.mu.Unlock()
	m.Lock()
	l.m = m
}

func (l *keyLock[K]) Unlock() {
	m := l.m
	l.m = nil
	m.Unlock()
	s := l.shard
	s.mu.Lock()
	if m.refs--; m.refs == 0 {
		delete(s.m, l.key)
		if len(s.free) < keyFreeMax {
			s.free = append(s.free, m)
		}
	}
	s.mu.Unlock()
}

// roomUser is the key of a user's presence in one room.
type roomUser struct{ room, user string }

func hashString(seed maphash.Seed, s string) uint64 { return maphash.String(seed, s) }

// hashRoomUser spreads a room's users over the shards.
func hashRoomUser(seed maphash.Seed, k roomUser) uint64 { return maphash.String(seed, k.user) }
