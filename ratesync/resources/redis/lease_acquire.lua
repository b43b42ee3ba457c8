-- rate-sync: take one of `limit` concurrency slots as lease `lease_id` (port of lease_acquire).
--
-- KEYS   [1] the lease set: a sorted set of lease ids scored by expiry (server time)
-- ARGV   [1] now ('' = server clock; tests: see clock())   [2] limit   [3] lease_seconds
--        [4] lease_id
-- Returns {acquired (1/0), active, retry_after (string)}.
--
-- Expired leases (a holder that died without releasing) are pruned here, so their slots come
-- back once they expire; a release removes exactly its own member (ZREM, no script needed).

local base, rel = clock(ARGV[1])
local now = base + rel
local key = KEYS[1]
local limit = tonumber(ARGV[2])
local expires = now + tonumber(ARGV[3])
local lease_id = ARGV[4]

redis.call('ZREMRANGEBYSCORE', key, '-inf', num(now))
local active = redis.call('ZCARD', key)
local mine = redis.call('ZSCORE', key, lease_id)
if mine or active < limit then
  redis.call('ZADD', key, num(expires), lease_id)
  if not mine then
    active = active + 1
  end
  -- The set lives as long as its longest lease.
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  local ttl = tonumber(last[2]) - now
  if ttl > 0 then
    redis.call('PEXPIRE', key, min(math.ceil(ttl * 1000), 1e15) + px_slack)
  else
    redis.call('DEL', key)
  end
  return { 1, active, '0' }
end
local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
return { 0, active, num(tonumber(first[2]) - now) }
