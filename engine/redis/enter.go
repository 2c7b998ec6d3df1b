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
func (e *Engine) Enter(ctx context.Context, in engine.Entering) ([]engine.Entered, *engine.Session, error) {
	entries := in.Entries
	keys := make([]string, 4, 4+3*len(entries))
	args := make([]string, 6, 6+9*len(entries))
	keys[0], keys[1] = e.holdsKey(e.instance), e.nodesKey()
	keys[2], keys[3] = keys[0], keys[0] // unused unless a session is saved or loaded
	args[0] = e.instance
	args[1] = strconv.FormatInt(time.Now().Add(e.cfg.PresenceTTL).UnixMilli(), 10)
	args[4] = strconv.Itoa(e.cfg.HistorySize)
	args[5] = "0"
	if in.Save != nil {
		b, err := json.Marshal(in.Save)
		if err != nil {
			return nil, nil, err
		}
		keys[2], args[2], args[3] = e.sessionKey(in.Save.ID), string(b), ms(in.TTL)
	}
	if in.Load != "" {
		keys[3], args[5] = e.sessionKey(in.Load), "1"
	}
	for _, en := range entries {
		var announce string
		if en.Announce != nil {
			p := *en.Announce
			p.Seq, p.Epoch, p.Count = 0, "", 0
			b, err := json.Marshal(&p)
			if err != nil {
				return nil, nil, err
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
	if err == nil && len(res) < 1+7*len(entries) {
		err = unavailable("enter", fmt.Errorf("%d values for %d entries", len(res), len(entries)))
	}
	if err != nil {
		return nil, nil, err
	}
	var loaded *engine.Session
	if b, err := res[0].AsBytes(); err == nil {
		var s engine.Session
		if json.Unmarshal(b, &s) == nil { // unreadable: as if expired
			loaded = &s
		}
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
	at := 1
	for i, en := range entries {
		// added, count, listed (-1: not), seq, epoch, oldest, publications,
		// then the members and the publications.
		v := res[at : at+7]
		added, _ := v[0].AsInt64()
		count, _ := v[1].AsInt64()
		listed, _ := v[2].AsInt64()
		npubs, _ := v[6].AsInt64()
		at += 7
		if at+int(max(listed, 0))+int(npubs) > len(res) {
			return nil, nil, unavailable("enter", fmt.Errorf("a malformed result: %d values", len(res)))
		}
		r := &out[i]
		r.Added, r.Count, r.Listed = added == 1, int(count), listed >= 0
		if r.Listed {
			r.Members = make([]string, listed)
			for j := range r.Members {
				r.Members[j], _ = res[at+j].ToString()
			}
			at += int(listed)
			sortStrings(r.Members)
		}
		page := make([]string, npubs)
		for j := range page {
			page[j], _ = res[at+j].ToString()
		}
		at += int(npubs)
		if en.Stream != "" {
			var low []string
			if oldest, err := v[5].ToString(); err == nil {
				low = []string{"", oldest}
			}
			r.History = e.history(v[3:5], low, page, false)
			if !en.Replay {
				r.History.Oldest = 0 // not read
			}
			e.sub.noteBase(en.Stream, r.History.Epoch, r.History.Top)
		}
	}
	return out, loaded, nil
}

func flag(b bool) string {
	if b {
		return "1"
	}
	return "0"
}
