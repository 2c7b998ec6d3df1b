package redis

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/redis/rueidis"

	"github.com/tether-chat/tether/engine"
)

// Enter implements engine.Engine: one enterScript run — one command,
// one round trip — for every entry and the session save.
func (e *Engine) Enter(ctx context.Context, entries []engine.Entry, save *engine.Session, ttl time.Duration) ([]engine.Entered, error) {
	keys := make([]string, 3, 3+3*len(entries))
	args := make([]string, 5, 5+9*len(entries))
	keys[0], keys[1], keys[2] = e.holdsKey(e.instance), e.nodesKey(), keys[0]
	args[0] = e.instance
	args[1] = strconv.FormatInt(time.Now().Add(e.cfg.PresenceTTL).UnixMilli(), 10)
	args[4] = strconv.Itoa(e.cfg.HistorySize)
	if save != nil {
		b, err := json.Marshal(save)
		if err != nil {
			return nil, err
		}
		keys[2], args[2], args[3] = e.sessionKey(save.ID), string(b), ms(ttl)
	}
	for _, en := range entries {
		var announce string
		if en.Announce != nil {
			p := *en.Announce
			p.Seq, p.Epoch, p.Count = 0, "", 0
			b, err := json.Marshal(&p)
			if err != nil {
				return nil, err
			}
			announce = string(b)
		}
		stream, mode := en.Stream, "0"
		if stream != "" {
			mode = "1"
			if en.Replay {
				mode = "2"
			}
		} else {
			stream = engine.RoomStream(en.Set) // not read: a key in the slot of the set's stream
		}
		keys = append(keys, e.usersKey(en.Set), e.meta(stream), e.hist(stream))
		args = append(args, en.User, en.Set, flag(en.Add), announce, strconv.Itoa(en.AnnounceMax),
			e.channel(engine.RoomStream(en.Set)), strconv.Itoa(en.List), mode, strconv.FormatUint(en.After, 10))
	}
	// The holds this call adds are ordered against a reassert of them
	// (holdLock); the stripes are taken in order, so two calls never
	// wait for each other crosswise.
	var stripes []int
	for _, en := range entries {
		if en.Add {
			stripes = append(stripes, e.holdStripe(en.Set, en.User))
		}
	}
	slices.Sort(stripes)
	stripes = slices.Compact(stripes)
	for _, i := range stripes {
		e.holdLocks[i].Lock()
	}
	defer func() {
		for _, i := range stripes {
			e.holdLocks[i].Unlock()
		}
	}()
	var res []rueidis.RedisMessage
	err := e.idempotent(ctx, "enter", func() error {
		e.stats.commands.Add(1)
		var err error
		res, err = enterScript.Exec(ctx, e.client, keys, args).ToArray()
		return err
	})
	if err == nil && len(res) != len(entries) {
		err = unavailable("enter", fmt.Errorf("%d results for %d entries", len(res), len(entries)))
	}
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	for _, en := range entries {
		if en.Add {
			if e.holds[en.Set] == nil {
				e.holds[en.Set] = map[string]bool{}
			}
			e.holds[en.Set][en.User] = true
		}
	}
	e.mu.Unlock()
	out := make([]engine.Entered, len(entries))
	for i, en := range entries {
		vals, err := res[i].ToArray()
		if err != nil || len(vals) != 7 {
			return nil, unavailable("enter", fmt.Errorf("a malformed result: %v", err))
		}
		r := &out[i]
		added, _ := vals[0].AsInt64()
		count, _ := vals[1].AsInt64()
		listed, _ := vals[3].AsInt64()
		r.Added, r.Count, r.Listed = added == 1, int(count), listed == 1
		if r.Listed {
			r.Members, _ = vals[2].AsStrSlice()
			sortStrings(r.Members)
		}
		if en.Stream != "" {
			meta, _ := vals[4].ToArray()
			low, _ := vals[5].AsStrSlice()
			page, _ := vals[6].AsStrSlice()
			r.History = e.history(meta, low, page, false)
			if !en.Replay {
				r.History.Oldest = 0 // not read
			}
			e.sub.noteBase(en.Stream, r.History.Epoch, r.History.Top)
		}
	}
	return out, nil
}

func flag(b bool) string {
	if b {
		return "1"
	}
	return "0"
}
