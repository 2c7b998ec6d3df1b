package redis

import (
	"context"
	"encoding/json"
	"hash/fnv"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/redis/rueidis"

	"github.com/tether-chat/tether/engine"
	"github.com/tether-chat/tether/protocol"
)

// Presence. A user is in a set (a room, or "" for online anywhere) while
// at least one node instance holds them there: the set's users hash
// counts the holding instances per user, and each instance lists its
// holds in a set of its own. An instance renews its liveness in
// Ppr:nodes every PresenceTTL/3; once it has not for PresenceTTL, any node
// sweeps its holds (presenceSweepScript) and announces the users who are
// then gone. A single liveness entry per instance replaces a renewal per
// hold (19,000 users on a node: one command every 10 s, not 19,000), and
// the sweep looks only at dead instances instead of scanning every set.

func (e *Engine) usersKey(set string) string  { return e.cfg.Prefix + "pr:{" + set + "}:users" }
func (e *Engine) holdsKey(inst string) string { return e.cfg.Prefix + "pr:node:" + inst }
func (e *Engine) nodesKey() string            { return e.cfg.Prefix + "pr:nodes" }
func (e *Engine) goneKey() string             { return e.cfg.Prefix + "pr:gone" }
func (e *Engine) sweptKey() string            { return e.cfg.Prefix + "pr:swept:" + e.instance }

// partnersKey is the set of a user's private-conversation partners, in
// the hash slot of the user's inbox stream (publishScript adds to it).
func (e *Engine) partnersKey(user string) string {
	return e.cfg.Prefix + "{" + engine.UserStream(user) + "}:pt"
}

// partnersTTL is how long a partner is remembered after the last private
// message between the two: the partners told when a dead node's user is
// swept are those of the last day.
const partnersTTL = 24 * time.Hour

// PresenceAdd implements engine.Engine.
func (e *Engine) PresenceAdd(ctx context.Context, set, user string) (bool, int, error) {
	l := e.holdLock(set, user)
	l.Lock()
	defer l.Unlock()
	exp := strconv.FormatInt(time.Now().Add(e.cfg.PresenceTTL).UnixMilli(), 10)
	keys := []string{e.usersKey(set), e.holdsKey(e.instance), e.nodesKey()}
	var res []int64
	err := e.idempotent(ctx, "presence", func() error {
		e.stats.commands.Add(1)
		var err error
		res, err = presenceAddScript.Exec(ctx, e.client, keys, []string{user, set, e.instance, exp}).AsIntSlice()
		return err
	})
	if err != nil || len(res) != 2 {
		return false, 0, err
	}
	e.mu.Lock()
	if e.holds[set] == nil {
		e.holds[set] = map[string]bool{}
	}
	e.holds[set][user] = true
	e.mu.Unlock()
	return res[0] == 1, int(res[1]), nil
}

// PresenceRemove implements engine.Engine.
func (e *Engine) PresenceRemove(ctx context.Context, set, user string) (bool, int, error) {
	l := e.holdLock(set, user)
	l.Lock()
	defer l.Unlock()
	e.mu.Lock()
	delete(e.holds[set], user)
	if len(e.holds[set]) == 0 {
		delete(e.holds, set)
	}
	e.mu.Unlock()
	keys := []string{e.usersKey(set), e.holdsKey(e.instance)}
	var res []int64
	err := e.idempotent(ctx, "presence", func() error {
		e.stats.commands.Add(1)
		var err error
		res, err = presenceRemoveScript.Exec(ctx, e.client, keys, []string{user, set}).AsIntSlice()
		return err
	})
	if err != nil || len(res) != 2 {
		return false, 0, err
	}
	return res[0] == 1, int(res[1]), nil
}

// holdLock orders this instance's presence calls for one (set, user): a
// hold being put back after a sweep (reassert) never overtakes its
// removal. The hub already orders its own calls per (room, user).
func (e *Engine) holdLock(set, user string) *sync.Mutex {
	return &e.holdLocks[e.holdStripe(set, user)]
}

// holdStripe is the index of holdLock's mutex.
func (e *Engine) holdStripe(set, user string) int {
	h := fnv.New32a()
	h.Write([]byte(set))
	h.Write([]byte{0})
	h.Write([]byte(user))
	return int(h.Sum32() % uint32(len(e.holdLocks)))
}

// reassert puts every hold of this instance back after a sweep released
// them (see renew), announces the users this brings back to their rooms,
// and then clears the sweep's marker. It reports whether it finished.
func (e *Engine) reassert(ctx context.Context) bool {
	e.mu.Lock()
	var holds [][2]string
	for set, users := range e.holds {
		for u := range users {
			holds = append(holds, [2]string{set, u})
		}
	}
	e.mu.Unlock()
	e.log.Warn("this node's presence was swept as if it had died (Redis out of reach for longer than the presence TTL); asserting it again", "holds", len(holds))
	exp := strconv.FormatInt(time.Now().Add(e.cfg.PresenceTTL).UnixMilli(), 10)
	for _, h := range holds {
		set, user := h[0], h[1]
		l := e.holdLock(set, user)
		l.Lock()
		e.mu.Lock()
		still := e.holds[set][user]
		e.mu.Unlock()
		var res []int64
		var err error
		if still {
			keys := []string{e.usersKey(set), e.holdsKey(e.instance), e.nodesKey()}
			e.stats.commands.Add(1)
			res, err = presenceAddScript.Exec(ctx, e.client, keys, []string{user, set, e.instance, exp}).AsIntSlice()
		}
		l.Unlock()
		if err != nil {
			return false
		}
		if len(res) == 2 && res[0] == 1 && set != "" {
			e.publishPresence(ctx, set, user, protocol.PresenceJoin, int(res[1]))
		}
	}
	return e.do(ctx, e.client.B().Del().Key(e.sweptKey()).Build()).Error() == nil
}

// PresenceMembers implements engine.Engine.
func (e *Engine) PresenceMembers(ctx context.Context, set string, limit int) ([]string, error) {
	var users []string
	err := e.idempotent(ctx, "presence", func() error {
		var err error
		users, err = e.do(ctx, e.client.B().Hkeys().Key(e.usersKey(set)).Build()).AsStrSlice()
		return err
	})
	if err != nil {
		return nil, err
	}
	sort.Strings(users)
	if limit > 0 && len(users) > limit {
		users = users[:limit]
	}
	return users, nil
}

// PresenceHas implements engine.Engine.
func (e *Engine) PresenceHas(ctx context.Context, set, user string) (bool, error) {
	var ok bool
	err := e.idempotent(ctx, "presence", func() error {
		var err error
		ok, err = e.do(ctx, e.client.B().Hexists().Key(e.usersKey(set)).Field(user).Build()).AsBool()
		return err
	})
	return ok, err
}

// PresenceCount implements engine.Engine.
func (e *Engine) PresenceCount(ctx context.Context, set string) (int, error) {
	var n int64
	err := e.idempotent(ctx, "presence", func() error {
		var err error
		n, err = e.do(ctx, e.client.B().Hlen().Key(e.usersKey(set)).Build()).AsInt64()
		return err
	})
	return int(n), err
}

// upkeep renews this instance's liveness and sweeps dead instances'
// holds, every PresenceTTL/3, each round bounded by a deadline of its own.
func (e *Engine) upkeep() {
	defer e.wg.Done()
	t := time.NewTicker(e.cfg.PresenceTTL / 3)
	defer t.Stop()
	for {
		ctx, cancel := context.WithTimeout(e.ctx, e.cfg.PresenceTTL/3)
		e.renew(ctx)
		e.sweep(ctx)
		cancel()
		select {
		case <-e.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// renew extends this instance's liveness. If a sweep took the instance
// for dead meanwhile (Redis was out of its reach for longer than
// PresenceTTL) its users were announced gone and its holds released: it
// puts them back.
func (e *Engine) renew(ctx context.Context) {
	exp := strconv.FormatInt(time.Now().Add(e.cfg.PresenceTTL).UnixMilli(), 10)
	e.stats.commands.Add(1)
	swept, err := renewScript.Exec(ctx, e.client, []string{e.nodesKey(), e.sweptKey()}, []string{exp, e.instance}).AsInt64()
	if err != nil {
		if ctx.Err() == nil {
			e.log.Warn("presence liveness not renewed", "err", err)
		}
		return
	}
	if swept == 1 {
		e.reassert(ctx)
	}
}

// sweptTTL bounds a swept instance's marker: an instance that never comes
// back does not read it.
var sweptTTL = strconv.FormatInt((24 * time.Hour).Milliseconds(), 10)

// sweep releases the holds of dead instances, a batch per script run,
// announces the users who left a room, tells the partners of those who
// went offline, and tells this node's handler of each (SweepHandler).
func (e *Engine) sweep(ctx context.Context) {
	keys := []string{e.nodesKey(), e.goneKey()}
	for range 1000 { // bounded: 1000 batches of 1000 holds per round
		now := strconv.FormatInt(time.Now().UnixMilli(), 10)
		e.stats.commands.Add(1)
		res, err := presenceSweepScript.Exec(ctx, e.client, keys, []string{now, e.cfg.Prefix, "1000", randomHex(4), sweptTTL}).AsStrSlice()
		if err != nil {
			if ctx.Err() == nil {
				e.log.Warn("presence sweep failed", "err", err)
			}
			return
		}
		if len(res) == 0 {
			return
		}
		var offline []string
		sh, _ := e.handler.(engine.SweepHandler)
		for i := 1; i+2 < len(res); i += 3 {
			set, user := res[i], res[i+1]
			count, _ := strconv.Atoi(res[i+2])
			if sh != nil {
				sh.Swept(set, user)
			}
			if set == "" {
				offline = append(offline, user)
				continue
			}
			e.log.Info("presence expired (node gone)", "room", set, "user", user)
			e.publishPresence(ctx, set, user, protocol.PresenceLeave, count)
		}
		e.tellPartners(ctx, offline)
	}
}

// tellPartners sends `left` to the private-conversation partners of
// users whose dead node's holds were just swept and whom no node holds
// any more: the node that would have told them is gone. The partners are
// those the publish script noted (partnersKey). One round trip reads
// every user's partners, one more publishes the notices.
func (e *Engine) tellPartners(ctx context.Context, users []string) {
	if len(users) == 0 {
		return
	}
	reads := make(rueidis.Commands, len(users))
	for i, u := range users {
		reads[i] = e.client.B().Smembers().Key(e.partnersKey(u)).Build()
	}
	e.stats.commands.Add(uint64(len(reads)))
	var notices rueidis.Commands
	for i, res := range e.client.DoMulti(ctx, reads...) {
		partners, err := res.AsStrSlice()
		if err != nil {
			e.log.Warn("partners not read; no left notice", "user", users[i], "err", err)
			continue
		}
		e.log.Info("offline (node gone)", "user", users[i], "partners", len(partners))
		for _, p := range partners {
			left := &engine.Publication{Stream: engine.UserStream(p), Type: protocol.TypeLeft, User: users[i], TS: time.Now().UnixMilli()}
			body, err := json.Marshal(left)
			if err != nil {
				continue
			}
			notices = append(notices, e.client.B().Publish().Channel(e.channel(left.Stream)).Message(rueidis.BinaryString(body)).Build())
		}
	}
	if len(notices) == 0 {
		return
	}
	e.stats.commands.Add(uint64(len(notices)))
	for _, res := range e.client.DoMulti(ctx, notices...) {
		if err := res.Error(); err != nil {
			e.log.Warn("left notice not published", "err", err)
		}
	}
}

func (e *Engine) publishPresence(ctx context.Context, room, user, action string, count int) {
	p := &engine.Publication{Stream: engine.RoomStream(room), Type: protocol.TypePresence, Room: room,
		User: user, Action: action, Count: count, TS: time.Now().UnixMilli()}
	if _, err := e.Publish(ctx, p, engine.PublishOptions{Ephemeral: true}); err != nil {
		e.log.Warn("presence event not published", "room", room, "user", user, "err", err)
	}
}
