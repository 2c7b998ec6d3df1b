package redis

import (
	"context"
	"encoding/json"
	"strconv"
	"time"

	"github.com/redis/rueidis"

	"github.com/tether-chat/tether/engine"
)

// Enter implements engine.Engine: every entry is one enterScript and the
// session one SET, all sent together in one pipeline — one round trip for
// everything a connection needs when it is set up or joins a room.
func (e *Engine) Enter(ctx context.Context, entries []engine.Entry, save *engine.Session, ttl time.Duration) ([]engine.Entered, error) {
	type call struct{ keys, args []string }
	calls := make([]call, len(entries))
	exp := strconv.FormatInt(time.Now().Add(e.cfg.PresenceTTL).UnixMilli(), 10)
	for i, en := range entries {
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
		stream, read, replay := en.Stream, "0", "0"
		if stream != "" {
			read = "1"
			if en.Replay {
				replay = "1"
			}
		} else {
			stream = engine.RoomStream(en.Set) // not read; a key in the same slot as the set's stream
		}
		calls[i] = call{
			keys: []string{e.usersKey(en.Set), e.holdsKey(e.instance), e.nodesKey(), e.meta(stream), e.hist(stream)},
			args: []string{en.User, en.Set, e.instance, exp, flag(en.Add), announce, strconv.Itoa(en.AnnounceMax),
				e.channel(engine.RoomStream(en.Set)), strconv.Itoa(en.List), read, replay,
				strconv.FormatUint(en.After, 10), strconv.Itoa(e.cfg.HistorySize)},
		}
	}
	var res []rueidis.RedisResult
	err := e.idempotent(ctx, "enter", func() error {
		b := e.client.B()
		cmds := make(rueidis.Commands, 0, len(calls)+1)
		for _, c := range calls {
			cmds = append(cmds, enterScript.evalsha(b, c.keys, c.args))
		}
		if save != nil {
			cmd, err := e.saveCmd(save, ttl)
			if err != nil {
				return err
			}
			cmds = append(cmds, cmd)
		}
		e.stats.commands.Add(uint64(len(cmds)))
		res = e.client.DoMulti(ctx, cmds...)
		for i, c := range calls {
			if re, ok := rueidis.IsRedisErr(res[i].Error()); ok && re.IsNoScript() {
				res[i] = enterScript.Exec(ctx, e.client, c.keys, c.args) // Redis lost its scripts (a restart)
			}
		}
		for _, r := range res {
			if err := r.Error(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := make([]engine.Entered, len(entries))
	for i, en := range entries {
		vals, err := res[i].ToArray()
		if err != nil || len(vals) != 7 {
			return nil, unavailable("enter", err)
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
