package redis

import "github.com/redis/rueidis"

// The engine's Lua scripts. Each one is a single atomic step in Redis, so
// a node that dies between two of them leaves nothing half-done, and each
// is safe to run again: running it twice (a reply lost, then a retry; a
// client's re-send; the same message on another node) has the effect of
// running it once. rueidis sends them as EVALSHA and falls back to EVAL
// when Redis does not know the script yet (after a restart), and never
// retries a write on its own.

// publishScript assigns a stream's next sequence, retains the message in
// the stream's bounded history, publishes it and, when the publish has an
// idempotency key, records the result under that key: all in one step.
// A key already recorded returns its result and does nothing else, so a
// publish with a key happens at most once however often it is run.
//
// A private message in a user's inbox also notes its other party in the
// user's partners set, so that a node that sweeps the user's presence
// after their node died can tell those partners they left (see sweep).
//
// KEYS[1] meta hash (seq, epoch)   KEYS[2] history zset (score = seq)
// KEYS[3] (optional) the key's record "seq:epoch", same hash slot
// then (when ARGV[8] is not "") the user's partners set, same hash slot
// ARGV[1] channel  ARGV[2] message JSON without seq/epoch ("{...}")
// ARGV[3] epoch to use if the stream has none  ARGV[4] history size
// ARGV[5] history TTL ms  ARGV[6] meta TTL ms  ARGV[7] key record TTL ms
// ARGV[8] the partner to note ("": none)  ARGV[9] the partners set's TTL ms
// Returns {seq, epoch, dup (0/1)}.
// publishSource is its text: a batch sends it whole (EVAL, see PublishBatch).
const publishSource = `
local record = #KEYS == 3
if ARGV[8] ~= '' then record = #KEYS == 4 end
if record then
  local rec = redis.call('GET', KEYS[3])
  if rec then
    local sep = string.find(rec, ':', 1, true)
    return {tonumber(string.sub(rec, 1, sep - 1)), string.sub(rec, sep + 1), 1}
  end
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[3]
  redis.call('HSET', KEYS[1], 'epoch', epoch)
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[6])
local msg = '{"q":' .. seq .. ',"e":"' .. epoch .. '",' .. string.sub(ARGV[2], 2)
redis.call('ZADD', KEYS[2], seq, msg)
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[4]) + 1))
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('PUBLISH', ARGV[1], msg)
if record then
  redis.call('SET', KEYS[3], seq .. ':' .. epoch, 'PX', ARGV[7])
end
if ARGV[8] ~= '' then
  redis.call('SADD', KEYS[#KEYS], ARGV[8])
  redis.call('PEXPIRE', KEYS[#KEYS], ARGV[9])
end
return {seq, epoch, 0}
`

var publishScript = rueidis.NewLuaScript(publishSource)

// presenceAddScript records that this node instance holds user in a
// presence set, and renews the instance's liveness (so no hold can exist
// without a liveness entry that expires if the instance dies). Running it
// twice is running it once: the instance's holds are a set.
//
// KEYS[1] hash user -> number of holding instances, of the presence set
// KEYS[2] set of this instance's holds ("set\0user")
// KEYS[3] zset instance -> liveness expiry ms
// ARGV[1] user  ARGV[2] set name  ARGV[3] instance  ARGV[4] expiry ms
// Returns {added (0/1: no instance held the user before), count}.
var presenceAddScript = rueidis.NewLuaScript(`
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
local added = 0
if redis.call('SADD', KEYS[2], ARGV[2] .. '\0' .. ARGV[1]) == 1 then
  if redis.call('HINCRBY', KEYS[1], ARGV[1], 1) == 1 then added = 1 end
end
return {added, redis.call('HLEN', KEYS[1])}
`)

// renewScript extends an instance's liveness and says whether a sweep
// took the instance for dead (and released its holds) since the instance
// last put them back: the marker stays until the instance has asserted
// its holds again and deleted it, so a lost reply loses no such news.
//
// KEYS[1] zset instance -> liveness expiry ms  KEYS[2] the instance's swept marker
// ARGV[1] expiry ms  ARGV[2] instance
// Returns 1 when the instance was swept.
var renewScript = rueidis.NewLuaScript(`
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
return redis.call('EXISTS', KEYS[2])
`)

// presenceRemoveScript drops this node instance's hold of user; the user
// leaves the set when no node holds them any more.
//
// KEYS[1], KEYS[2] as presenceAddScript; ARGV[1] user  ARGV[2] set name
// Returns {removed (0/1: no instance holds the user now), count}.
var presenceRemoveScript = rueidis.NewLuaScript(`
local removed = 0
if redis.call('SREM', KEYS[2], ARGV[2] .. '\0' .. ARGV[1]) == 1 then
  if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then
    redis.call('HDEL', KEYS[1], ARGV[1])
    removed = 1
  end
end
return {removed, redis.call('HLEN', KEYS[1])}
`)

// presenceSweepScript releases, a batch at a time, the holds of a node
// instance that stopped renewing its liveness (it died, or was stopped).
// First it claims one dead instance: its liveness entry is removed and
// its holds set renamed to a unique "gone" key listed in KEYS[2], so that
// if the instance was only stalled and comes back, it finds itself
// unknown and asserts its holds afresh instead of sharing a set with the
// sweep. Then it releases up to ARGV[3] holds of a gone key. Any node may
// run it at any time; a sweeper that dies half-way leaves the gone key
// listed for the next one.
//
// KEYS[1] zset instance -> liveness expiry ms  KEYS[2] set of gone keys
// ARGV[1] now ms  ARGV[2] key prefix  ARGV[3] batch  ARGV[4] random suffix
// ARGV[5] TTL ms of the swept marker (renewScript) left for the instance
// Returns {} when there is nothing to do, else {"-", set1, user1, count1,
// set2, …}: the users who left a set (no node holds them any more), with
// the set's size after.
var presenceSweepScript = rueidis.NewLuaScript(`
local gone = redis.call('SRANDMEMBER', KEYS[2])
if not gone then
  local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1)
  if #dead == 0 then return {} end
  redis.call('ZREM', KEYS[1], dead[1])
  redis.call('SET', ARGV[2] .. 'pr:swept:' .. dead[1], '1', 'PX', ARGV[5])
  local holds = ARGV[2] .. 'pr:node:' .. dead[1]
  if redis.call('EXISTS', holds) == 0 then return {'-'} end
  gone = ARGV[2] .. 'pr:gone:' .. dead[1] .. ':' .. ARGV[4]
  redis.call('RENAME', holds, gone)
  redis.call('SADD', KEYS[2], gone)
end
local out = {'-'}
for _, h in ipairs(redis.call('SPOP', gone, ARGV[3])) do
  local sep = string.find(h, '\0', 1, true)
  local set, user = string.sub(h, 1, sep - 1), string.sub(h, sep + 1)
  local users = ARGV[2] .. 'pr:{' .. set .. '}:users'
  if redis.call('HINCRBY', users, user, -1) <= 0 then
    redis.call('HDEL', users, user)
    table.insert(out, set)
    table.insert(out, user)
    table.insert(out, tostring(redis.call('HLEN', users)))
  end
end
if redis.call('SCARD', gone) == 0 then redis.call('SREM', KEYS[2], gone) end
return out
`)

// enterScript is one Engine.Enter call: for each entry, the presence add
// (as presenceAddScript) with its announcement, the set's size and, when
// small, its members, and a stream's position with, on request, its
// publications after a seq; the session being resumed; the session save.
// Running it twice is running it once: a second run adds nothing and so
// announces nothing.
//
// KEYS[1] this instance's holds  KEYS[2] zset instance -> liveness
// KEYS[3] the session to save  KEYS[4] the session to load (each unused
// when not asked for)
// per entry i = 0, 1, ...: KEYS[5+3i] hash user -> holding instances, of
// the set  KEYS[6+3i] the stream's meta  KEYS[7+3i] the stream's history
// ARGV[1] instance  ARGV[2] liveness expiry ms  ARGV[3] session JSON to
// save ("": none) when there is none to load  ARGV[4] its TTL ms
// ARGV[5] at most this many publications per replay  ARGV[6] "1" to load
// per entry, from a = 7+9i: ARGV[a] user  ARGV[a+1] set  ARGV[a+2] "1" to
// add  ARGV[a+3] announcement JSON without its count ("": none)
// ARGV[a+4] announce when the set has at most this many  ARGV[a+5] the
// channel to announce on  ARGV[a+6] list the members when at most this
// many (0: never)  ARGV[a+7] the stream: "0" not read, "1" its position,
// "2" and its oldest retained seq and publications after ARGV[a+8]
// Returns one flat array (Redis converts nested tables slowly: a dozen
// microseconds for a set-up's): the loaded session or false, then per
// entry added, count, the number of members listed (-1: not listed), seq,
// epoch, the oldest retained seq (false: none or not read), the number of
// publications, the members, the publications.
var enterScript = rueidis.NewLuaScript(`
local holds, nodes = KEYS[1], KEYS[2]
local page = tonumber(ARGV[5])
local live = false
local out = {false}
for i = 0, (#KEYS - 4) / 3 - 1 do
  local k, a = 5 + 3 * i, 7 + 9 * i
  local users, user, set = KEYS[k], ARGV[a], ARGV[a + 1]
  local added = 0
  if ARGV[a + 2] == '1' then
    if not live then
      redis.call('ZADD', nodes, ARGV[2], ARGV[1])
      live = true
    end
    if redis.call('SADD', holds, set .. '\0' .. user) == 1 then
      if redis.call('HINCRBY', users, user, 1) == 1 then added = 1 end
    end
  end
  local count = redis.call('HLEN', users)
  if added == 1 and ARGV[a + 3] ~= '' and count <= tonumber(ARGV[a + 4]) then
    redis.call('PUBLISH', ARGV[a + 5], '{"c":' .. count .. ',' .. string.sub(ARGV[a + 3], 2))
  end
  local members, listed = nil, -1
  local list = tonumber(ARGV[a + 6])
  if list > 0 and count <= list then
    members = redis.call('HKEYS', users)
    listed = #members
  end
  local seq, epoch, oldest, pubs = false, false, false, nil
  local mode = ARGV[a + 7]
  if mode ~= '0' then
    local meta = redis.call('HMGET', KEYS[k + 1], 'seq', 'epoch')
    seq, epoch = meta[1], meta[2]
    if mode == '2' then
      local low = redis.call('ZRANGE', KEYS[k + 2], 0, 0, 'WITHSCORES')
      if low[2] then oldest = low[2] end
      pubs = redis.call('ZRANGEBYSCORE', KEYS[k + 2], '(' .. ARGV[a + 8], '+inf', 'LIMIT', 0, page)
    end
  end
  local n = #out
  out[n + 1], out[n + 2], out[n + 3], out[n + 4] = added, count, listed, seq
  out[n + 5], out[n + 6], out[n + 7] = epoch, oldest, pubs and #pubs or 0
  if members then
    for j = 1, #members do out[#out + 1] = members[j] end
  end
  if pubs then
    for j = 1, #pubs do out[#out + 1] = pubs[j] end
  end
end
if ARGV[6] == '1' then
  out[1] = redis.call('GET', KEYS[4])
end
if ARGV[3] ~= '' and not out[1] then
  redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
end
return out
`)
