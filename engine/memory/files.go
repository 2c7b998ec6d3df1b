package memory

import (
	"context"
	"sync"
	"time"

	"github.com/tether-chat/tether/engine"
)

// fileStore keeps files until they expire, within a bound on their bytes:
// when it is reached, the oldest go first.
type fileStore struct {
	mu    sync.Mutex
	byID  map[string]*storedFile
	order []string // ids, oldest first (an id stored again keeps its place)
	bytes int64
}

type storedFile struct {
	f       engine.File
	expires time.Time
}

// PutFile implements engine.Engine.
func (e *Engine) PutFile(ctx context.Context, f *engine.File, ttl time.Duration) error {
	if e.isClosed() {
		return engine.ErrClosed
	}
	fs := &e.files
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.byID == nil {
		fs.byID = make(map[string]*storedFile)
	}
	now := time.Now()
	if old := fs.byID[f.ID]; old != nil {
		fs.bytes -= int64(len(old.f.Data))
	} else {
		fs.order = append(fs.order, f.ID)
	}
	c := *f
	c.Data = append([]byte(nil), f.Data...)
	fs.byID[f.ID] = &storedFile{f: c, expires: now.Add(ttl)}
	fs.bytes += int64(len(c.Data))
	for len(fs.order) > 1 && (fs.bytes > e.cfg.FileBytes || !fs.byID[fs.order[0]].expires.After(now)) {
		fs.dropOldest()
	}
	return nil
}

func (fs *fileStore) dropOldest() {
	id := fs.order[0]
	fs.order[0] = ""
	fs.order = fs.order[1:]
	fs.bytes -= int64(len(fs.byID[id].f.Data))
	delete(fs.byID, id)
}

// GetFile implements engine.Engine.
func (e *Engine) GetFile(ctx context.Context, id string) (*engine.File, error) {
	if e.isClosed() {
		return nil, engine.ErrClosed
	}
	fs := &e.files
	fs.mu.Lock()
	defer fs.mu.Unlock()
	sf := fs.byID[id]
	if sf == nil || !sf.expires.After(time.Now()) {
		return nil, nil
	}
	f := sf.f
	return &f, nil
}

func (e *Engine) isClosed() bool {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.closed
}

// Sets implements engine.Inspector.
func (e *Engine) Sets(ctx context.Context, limit int) ([]engine.SetSize, error) {
	e.mu.RLock()
	out := make([]engine.SetSize, 0, len(e.sets))
	for name, users := range e.sets {
		if name != "" && len(users) > 0 {
			out = append(out, engine.SetSize{Set: name, Count: len(users)})
		}
	}
	e.mu.RUnlock()
	return engine.TopSets(out, limit), nil
}

// Instances implements engine.Inspector: one node.
func (e *Engine) Instances(ctx context.Context) ([]string, error) { return nil, nil }
