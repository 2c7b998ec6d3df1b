package redis

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"time"

	"github.com/redis/rueidis"

	"github.com/tether-chat/tether/engine"
)

// Files are one string each, P file:{id}: the file's description (JSON,
// after its length in 4 bytes) and its bytes, with the TTL it was stored
// for. Storing an id again replaces it with the same file.

func (e *Engine) fileKey(id string) string { return e.cfg.Prefix + "file:{" + id + "}" }

// PutFile implements engine.Engine.
func (e *Engine) PutFile(ctx context.Context, f *engine.File, ttl time.Duration) error {
	meta, err := json.Marshal(f)
	if err != nil {
		return err
	}
	v := make([]byte, 4, 4+len(meta)+len(f.Data))
	binary.BigEndian.PutUint32(v, uint32(len(meta)))
	v = append(append(v, meta...), f.Data...)
	return e.idempotent(ctx, "store file", func() error {
		e.stats.commands.Add(1)
		return e.do(ctx, e.client.B().Set().Key(e.fileKey(f.ID)).Value(rueidis.BinaryString(v)).PxMilliseconds(max(ttl.Milliseconds(), 1)).Build()).Error()
	})
}

// GetFile implements engine.Engine.
func (e *Engine) GetFile(ctx context.Context, id string) (*engine.File, error) {
	var v []byte
	err := e.idempotent(ctx, "read file", func() error {
		e.stats.commands.Add(1)
		var err error
		v, err = e.do(ctx, e.client.B().Get().Key(e.fileKey(id)).Build()).AsBytes()
		return err
	})
	if rueidis.IsRedisNil(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if len(v) < 4 {
		return nil, nil // unreadable: as if expired
	}
	n := int(binary.BigEndian.Uint32(v))
	var f engine.File
	if 4+n > len(v) || json.Unmarshal(v[4:4+n], &f) != nil {
		return nil, nil
	}
	f.Data = v[4+n:]
	return &f, nil
}
