package redis

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/redis/rueidis"

	"github.com/tether-chat/tether/engine"
)

// Sessions are one string each, with the resume window as TTL. Saving is
// idempotent (SET), so a save whose reply was lost is simply saved again.

func (e *Engine) sessionKey(id string) string { return e.cfg.Prefix + "se:{" + id + "}" }

func (e *Engine) saveCmd(s *engine.Session, ttl time.Duration) (rueidis.Completed, error) {
	b, err := json.Marshal(s)
	if err != nil {
		return rueidis.Completed{}, err
	}
	return e.client.B().Set().Key(e.sessionKey(s.ID)).Value(rueidis.BinaryString(b)).PxMilliseconds(max(ttl.Milliseconds(), 1)).Build(), nil
}

// SaveSession implements engine.Engine.
func (e *Engine) SaveSession(ctx context.Context, s *engine.Session, ttl time.Duration) error {
	return e.idempotent(ctx, "save session", func() error {
		cmd, err := e.saveCmd(s, ttl)
		if err != nil {
			return err
		}
		return e.do(ctx, cmd).Error()
	})
}

// sessionBatch is how many sessions SaveSessions sends in one pipeline.
const sessionBatch = 512

// SaveSessions implements engine.Engine: the saves go in pipelines of
// sessionBatch, one round trip each instead of one per session.
func (e *Engine) SaveSessions(ctx context.Context, ss []*engine.Session, ttl time.Duration) error {
	for len(ss) > 0 {
		n := min(len(ss), sessionBatch)
		batch := make(rueidis.Commands, 0, n)
		for _, s := range ss[:n] {
			cmd, err := e.saveCmd(s, ttl)
			if err != nil {
				return err
			}
			batch = append(batch, cmd)
		}
		err := e.idempotent(ctx, "save sessions", func() error {
			e.stats.commands.Add(uint64(len(batch)))
			for _, r := range e.client.DoMulti(ctx, batch...) {
				if err := r.Error(); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("%d sessions not saved: %w", len(ss), err)
		}
		ss = ss[n:]
	}
	return nil
}

// LoadSession implements engine.Engine.
func (e *Engine) LoadSession(ctx context.Context, id string) (*engine.Session, error) {
	var b []byte
	err := e.idempotent(ctx, "load session", func() error {
		var err error
		b, err = e.do(ctx, e.client.B().Get().Key(e.sessionKey(id)).Build()).AsBytes()
		return err
	})
	if rueidis.IsRedisNil(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var s engine.Session
	if json.Unmarshal(b, &s) != nil {
		return nil, nil // unreadable: treat as expired
	}
	return &s, nil
}

// DeleteSession implements engine.Engine.
func (e *Engine) DeleteSession(ctx context.Context, id string) error {
	return e.idempotent(ctx, "delete session", func() error {
		return e.do(ctx, e.client.B().Del().Key(e.sessionKey(id)).Build()).Error()
	})
}
