package redis

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"

	"github.com/tether-chat/tether/engine"
)

// maxScan bounds the keys Sets looks at: listing rooms is for operators,
// and must not keep Redis busy for long on a huge cluster.
const maxScan = 200000

// Sets implements engine.Inspector: a SCAN of the presence hashes (at most
// maxScan keys looked at, in batches), then their sizes, in pipelines.
func (e *Engine) Sets(ctx context.Context, limit int) ([]engine.SetSize, error) {
	pattern := e.globPrefix() + "pr:{*}:users"
	head, tail := e.cfg.Prefix+"pr:{", "}:users"
	var names []string
	cursor, seen := uint64(0), 0
	for {
		e.stats.commands.Add(1)
		entry, err := e.do(ctx, e.client.B().Scan().Cursor(cursor).Match(pattern).Count(1000).Build()).AsScanEntry()
		if err != nil {
			return nil, unavailable("list rooms", err)
		}
		for _, k := range entry.Elements {
			if set, ok := strings.CutPrefix(k, head); ok {
				if set, ok = strings.CutSuffix(set, tail); ok && set != "" {
					names = append(names, set)
				}
			}
		}
		seen += len(entry.Elements)
		cursor = entry.Cursor
		if cursor == 0 || seen >= maxScan {
			break
		}
	}
	out := make([]engine.SetSize, 0, len(names))
	for len(names) > 0 {
		batch := names[:min(len(names), 512)]
		names = names[len(batch):]
		cmds := make([]rueidis.Completed, len(batch))
		for i, n := range batch {
			cmds[i] = e.client.B().Hlen().Key(e.usersKey(n)).Build()
		}
		e.stats.commands.Add(uint64(len(cmds)))
		for i, r := range e.client.DoMulti(ctx, cmds...) {
			n, err := r.AsInt64()
			if err != nil {
				return nil, unavailable("list rooms", err)
			}
			if n > 0 {
				out = append(out, engine.SetSize{Set: batch[i], Count: int(n)})
			}
		}
	}
	return engine.TopSets(out, limit), nil
}

// Instances implements engine.Inspector: the instances whose liveness has
// not run out.
func (e *Engine) Instances(ctx context.Context) ([]string, error) {
	now := strconv.FormatInt(time.Now().UnixMilli(), 10)
	e.stats.commands.Add(1)
	live, err := e.do(ctx, e.client.B().Zrangebyscore().Key(e.nodesKey()).Min("("+now).Max("+inf").Build()).AsStrSlice()
	if err != nil {
		return nil, unavailable("list nodes", err)
	}
	return live, nil
}
