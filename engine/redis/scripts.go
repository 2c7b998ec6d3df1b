package redis

import goredis "github.com/redis/go-redis/v9"

// publishScript assigns a stream's next sequence, retains the message in
// the stream's bounded history and publishes it, atomically: one round
// trip per message, and the order of PUBLISH is the order of sequences.
//
// KEYS[1] meta hash (seq, epoch)   KEYS[2] history zset (score = seq)
// ARGV[1] channel  ARGV[2] message JSON without seq/epoch ("{...}")
// ARGV[3] epoch to use if the stream has none  ARGV[4] history size
// ARGV[5] history TTL ms  ARGV[6] meta TTL ms
// Returns {seq, epoch}.
var publishScript = goredis.NewScript(`
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
return {seq, epoch}
`)

// presenceAddScript records that node holds user in a presence set.
//
// KEYS[1] zset of "user\x00node" (score = expiry ms)  KEYS[2] hash user -> holders
// KEYS[3] set of all presence sets
// ARGV[1] member  ARGV[2] user  ARGV[3] expiry ms  ARGV[4] set name
// Returns {added (0/1), count}.
var presenceAddScript = goredis.NewScript(`
redis.call('SADD', KEYS[3], ARGV[4])
local new = redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
local added = 0
if new == 1 then
  if redis.call('HINCRBY', KEYS[2], ARGV[2], 1) == 1 then added = 1 end
end
return {added, redis.call('HLEN', KEYS[2])}
`)

// presenceRemoveScript drops node's hold of user.
//
// KEYS as presenceAddScript; ARGV[1] member  ARGV[2] user
// Returns {removed (0/1), count}.
var presenceRemoveScript = goredis.NewScript(`
local removed = 0
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  if redis.call('HINCRBY', KEYS[2], ARGV[2], -1) <= 0 then
    redis.call('HDEL', KEYS[2], ARGV[2])
    removed = 1
  end
end
return {removed, redis.call('HLEN', KEYS[2])}
`)

// presenceSweepScript removes holds whose node stopped refreshing them (a
// node that died) and returns the users who are gone from the set, then
// the set's size.
//
// KEYS as presenceAddScript; ARGV[1] now ms
var presenceSweepScript = goredis.NewScript(`
local gone = {}
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, member in ipairs(expired) do
  redis.call('ZREM', KEYS[1], member)
  local user = string.match(member, '^(.-)%z')
  if user and redis.call('HINCRBY', KEYS[2], user, -1) <= 0 then
    redis.call('HDEL', KEYS[2], user)
    table.insert(gone, user)
  end
end
table.insert(gone, tostring(redis.call('HLEN', KEYS[2])))
return gone
`)

// reserveScript starts processing a client message id of a session.
//
// KEYS[1] session key  KEYS[2] ids hash  KEYS[3] ids order list
// ARGV[1] id  ARGV[2] window
// Returns {state, seq}: 0 new, 1 done, 2 in flight.
var reserveScript = goredis.NewScript(`
local ttl = redis.call('PTTL', KEYS[1])
if ttl <= 0 then return {0, 0} end
local v = redis.call('HGET', KEYS[2], ARGV[1])
if v then
  if v == 'p' then return {2, 0} end
  return {1, tonumber(v)}
end
redis.call('HSET', KEYS[2], ARGV[1], 'p')
redis.call('RPUSH', KEYS[3], ARGV[1])
if redis.call('LLEN', KEYS[3]) > tonumber(ARGV[2]) then
  redis.call('HDEL', KEYS[2], redis.call('LPOP', KEYS[3]))
end
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
return {0, 0}
`)

// completeScript records the sequence a processed id got.
var completeScript = goredis.NewScript(`
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return 1
`)

// releaseScript forgets an id whose processing failed.
var releaseScript = goredis.NewScript(`
if redis.call('HGET', KEYS[1], ARGV[1]) == 'p' then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return 1
`)

// saveSessionScript stores a session and extends its remembered ids.
//
// KEYS[1] session key  KEYS[2] ids hash  KEYS[3] ids order
// ARGV[1] session JSON  ARGV[2] ttl ms
var saveSessionScript = goredis.NewScript(`
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
return 1
`)
