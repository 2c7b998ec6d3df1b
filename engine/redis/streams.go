package redis

import (
	"context"
	"encoding/json"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"

	"github.com/tether-chat/tether/engine"
	"github.com/tether-chat/tether/protocol"
)

// Publish implements engine.Engine. A retained publish is publishScript:
// numbering, retention, PUBLISH and the idempotency record in one step.
// With a key it is retried here after a network error (the reply may
// have been lost after Redis ran it: the retry then returns the recorded
// result); without one it is never retried.
func (e *Engine) Publish(ctx context.Context, p *engine.Publication, opts engine.PublishOptions) (bool, error) {
	p.Seq, p.Epoch = 0, ""
	body, err := json.Marshal(p)
	if err != nil {
		return false, err
	}
	if opts.Ephemeral {
		cmd := e.client.B().Publish().Channel(e.channel(p.Stream)).Message(rueidis.BinaryString(body)).Build()
		return false, unavailable("publish", e.do(ctx, cmd).Error())
	}
	keys, args := e.publishArgs(p, opts, body)
	for attempt := 0; ; attempt++ {
		e.stats.commands.Add(1)
		vals, err := publishScript.Exec(ctx, e.client, keys, args).ToArray()
		if err == nil && len(vals) == 3 {
			seq, _ := vals[0].AsInt64()
			p.Epoch, _ = vals[1].ToString()
			dup, _ := vals[2].AsInt64()
			p.Seq = uint64(seq)
			return dup == 1, nil
		}
		if opts.Key == "" || !retryable(ctx, err) {
			return false, unavailable("publish", err)
		}
		e.stats.retries.Add(1)
		if !sleepCtx(ctx, backoff(attempt)) {
			return false, unavailable("publish", err)
		}
	}
}

// PublishBatch implements engine.Engine: the retained publications go to
// Redis as one pipeline on one connection, which Redis runs in order: one
// round trip for them all. They go as EVAL with the script's text, not
// EVALSHA: a script cache flushed between two of them would otherwise
// leave a hole that could only be filled after the later ones. An
// ephemeral publication among them (none is, from a client) sends the
// batch the slow way, one Publish each. When a reply is lost, that
// publication and every one after it are run again, in order, one at a
// time as Publish runs them: with a key each finds its first run if there
// was one, so nothing is published twice and the order holds; one without
// a key is not run again (its client gets unavailable, as from Publish).
func (e *Engine) PublishBatch(ctx context.Context, ps []*engine.Publication, opts []engine.PublishOptions) []engine.Published {
	if len(ps) < 2 {
		return engine.PublishEach(ctx, e, ps, opts)
	}
	out := make([]engine.Published, len(ps))
	cmds := make(rueidis.Commands, len(ps))
	for i, p := range ps {
		if opts[i].Ephemeral {
			return engine.PublishEach(ctx, e, ps, opts)
		}
		p.Seq, p.Epoch = 0, ""
		body, err := json.Marshal(p)
		if err != nil {
			return engine.PublishEach(ctx, e, ps, opts) // reports the error where it is
		}
		keys, args := e.publishArgs(p, opts[i], body)
		cmds[i] = e.client.B().Eval().Script(publishSource).Numkeys(int64(len(keys))).Key(keys...).Arg(args...).Build()
	}
	e.stats.commands.Add(uint64(len(ps)))
	for i, res := range e.client.DoMulti(ctx, cmds...) {
		vals, err := res.ToArray()
		if err == nil && len(vals) == 3 {
			seq, _ := vals[0].AsInt64()
			ps[i].Epoch, _ = vals[1].ToString()
			dup, _ := vals[2].AsInt64()
			ps[i].Seq, out[i].Dup = uint64(seq), dup == 1
			continue
		}
		if !retryable(ctx, err) {
			out[i].Err = unavailable("publish", err)
			continue
		}
		for j := i; j < len(ps); j++ {
			if opts[j].Key == "" {
				out[j].Err = unavailable("publish", err) // it may have run: never twice
				continue
			}
			out[j].Dup, out[j].Err = e.Publish(ctx, ps[j], opts[j])
		}
		return out
	}
	return out
}

// publishArgs are publishScript's keys and arguments for p (body is its
// JSON): a private message in a user's inbox notes its other party in the
// user's partners set.
func (e *Engine) publishArgs(p *engine.Publication, opts engine.PublishOptions, body []byte) (keys, args []string) {
	keys = []string{e.meta(p.Stream), e.hist(p.Stream)}
	if opts.Key != "" {
		keys = append(keys, e.recordKey(p.Stream, opts.Key))
	}
	partner := ""
	if p.Type == protocol.TypeDirect { // a room message does not parse its stream
		if kind, user, ok := engine.ParseStream(p.Stream); ok && kind == "user" {
			if partner = p.Partner(user); partner != "" {
				keys = append(keys, e.partnersKey(user))
			}
		}
	}
	args = []string{e.channel(p.Stream), string(body), randomHex(4), strconv.Itoa(e.cfg.HistorySize),
		ms(e.cfg.HistoryTTL), ms(e.cfg.MetaTTL), ms(e.cfg.KeyTTL), partner, ms(partnersTTL)}
	return keys, args
}

// backoff is the wait before retry attempt+1: 25ms doubling to 400ms.
func backoff(attempt int) time.Duration {
	return 25 * time.Millisecond << min(attempt, 4)
}

func ms(d time.Duration) string { return strconv.FormatInt(max(d.Milliseconds(), 1), 10) }

// Recorded implements engine.Engine.
func (e *Engine) Recorded(ctx context.Context, stream, key string) (uint64, string, bool, error) {
	var rec string
	err := e.idempotent(ctx, "read record", func() error {
		var err error
		rec, err = e.do(ctx, e.client.B().Get().Key(e.recordKey(stream, key)).Build()).ToString()
		return err
	})
	if rueidis.IsRedisNil(err) {
		return 0, "", false, nil
	}
	if err != nil {
		return 0, "", false, err
	}
	seqText, epoch, ok := strings.Cut(rec, ":")
	seq, perr := strconv.ParseUint(seqText, 10, 64)
	if !ok || perr != nil {
		return 0, "", false, nil
	}
	return seq, epoch, true, nil
}

// idempotent runs a call that is safe to run again (a read, a SET, an
// idempotent script), retrying it after a network error while ctx allows,
// up to three attempts. A Redis nil reply is returned as is.
func (e *Engine) idempotent(ctx context.Context, op string, f func() error) error {
	for attempt := 0; ; attempt++ {
		err := f()
		if err == nil || rueidis.IsRedisNil(err) {
			return err
		}
		if attempt == 2 || !retryable(ctx, err) || !sleepCtx(ctx, backoff(attempt)) {
			return unavailable(op, err)
		}
	}
}

// History implements engine.Engine, in one round trip: the stream's
// position, its oldest retained sequence and the page. It writes nothing.
func (e *Engine) History(ctx context.Context, stream string, q engine.HistoryQuery) (engine.History, error) {
	limit := q.Limit
	if limit <= 0 || limit > e.cfg.HistorySize {
		limit = e.cfg.HistorySize
	}
	lo, hi := "("+strconv.FormatUint(q.After, 10), "+inf"
	if q.Before > 0 {
		hi = "(" + strconv.FormatUint(q.Before, 10)
	}
	b := e.client.B()
	page := b.Zrange().Key(e.hist(stream)).Min(lo).Max(hi).Byscore().Limit(0, int64(limit)).Build()
	if q.Latest {
		page = b.Zrange().Key(e.hist(stream)).Min(hi).Max(lo).Byscore().Rev().Limit(0, int64(limit)).Build()
	}
	var res []rueidis.RedisResult
	err := e.idempotent(ctx, "history", func() error {
		e.stats.commands.Add(3)
		res = e.client.DoMulti(ctx,
			b.Hmget().Key(e.meta(stream)).Field("seq", "epoch").Build(),
			b.Zrange().Key(e.hist(stream)).Min("0").Max("0").Withscores().Build(),
			page)
		for _, r := range res {
			if err := r.Error(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return engine.History{}, err
	}
	meta, _ := res[0].ToArray()
	var low []string
	if z, _ := res[1].AsZScores(); len(z) == 1 {
		low = []string{z[0].Member, strconv.FormatFloat(z[0].Score, 'f', 0, 64)}
	}
	raw, _ := res[2].AsStrSlice()
	h := e.history(meta, low, raw, q.Latest)
	e.sub.noteBase(stream, h.Epoch, h.Top)
	return h, nil
}

// history makes a History from what Redis answered: the meta hash's seq
// and epoch, the oldest retained entry (member, score) if any, and a page
// of publications (newest first when latest). Publications older than
// HistoryTTL are not retained any more, whatever the zset still holds.
func (e *Engine) history(meta []rueidis.RedisMessage, low, page []string, latest bool) engine.History {
	var h engine.History
	if len(meta) == 2 {
		top, _ := meta[0].ToString()
		h.Top, _ = strconv.ParseUint(top, 10, 64)
		h.Epoch, _ = meta[1].ToString()
	}
	h.Oldest = h.Top + 1
	if len(low) == 2 {
		if oldest, err := strconv.ParseUint(low[1], 10, 64); err == nil {
			h.Oldest = oldest
		}
	}
	cut := time.Now().Add(-e.cfg.HistoryTTL).UnixMilli()
	for _, r := range page {
		var p engine.Publication
		if json.Unmarshal([]byte(r), &p) != nil {
			continue
		}
		if p.TS < cut {
			if p.Seq >= h.Oldest {
				h.Oldest = p.Seq + 1 // expired by age: no longer retained
			}
			continue
		}
		h.Pubs = append(h.Pubs, &p)
	}
	if latest {
		sort.Slice(h.Pubs, func(i, j int) bool { return h.Pubs[i].Seq < h.Pubs[j].Seq })
	}
	return h
}

func sortStrings(s []string) { sort.Strings(s) }
