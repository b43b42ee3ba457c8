-- rate-sync: acquire on one token bucket, the hot path, standalone (no prelude).
--
-- The same call and reply as acquire.lua in mode 'a' with one limit of kind 't' (ARGV: now, cost,
-- max_wait, 'a', 't', rate_per_second, burst), and the same decision bit for bit: the steps of
-- prelude.lua's clock(), state.lua's read_state/write_state and algorithms.lua's token_bucket,
-- inlined. The golden and property tests run both scripts on the same calls and compare them.
--
-- Why a second script: every EVALSHA runs the whole chunk, and the general script defines some
-- thirty functions and tables before it decides anything. On the path nearly every call takes,
-- that costs the server more than the commands themselves; here the chunk is the decision.

local EPSILON = 1e-9
local arg = ARGV[1]
local base, now, px_slack
if arg == '' then
  local t = redis.call('TIME')
  base, now, px_slack = tonumber(t[1]) + tonumber(t[2]) / 1000000, 0.0, 0
elseif string.sub(arg, 1, 1) == '@' then
  base, now, px_slack = tonumber(string.sub(arg, 2)), 0.0, 3600000
else
  base, now, px_slack = 0.0, tonumber(arg), 3600000
end
local cost = tonumber(ARGV[2])
local max_wait = ARGV[3]
if max_wait == 'inf' then
  max_wait = math.huge
else
  max_wait = tonumber(max_wait)
end
local burst = tonumber(ARGV[7])
local interval = 1.0 / tonumber(ARGV[6])
local span = burst * interval

-- The stored TAT (absolute), relative to base; another layout or another type reads as none.
local key = KEYS[1]
local state = nil
local v = redis.pcall('GET', key)
if type(v) == 'string' then
  state = tonumber(v)
  if state ~= nil then
    state = state - base
  end
end

local tat = now
if state ~= nil and state > now then
  tat = state
end
local new_tat = tat + cost * interval
local wait = new_tat - span - now
if wait <= EPSILON then
  wait = 0.0
end

local function out(x)
  if x == math.floor(x) and x > -1e15 and x < 1e15 then
    return x
  end
  return string.format('%.17g', x)
end

if wait <= max_wait + EPSILON then
  local remaining = 0.0
  if wait == 0.0 then
    remaining = math.max(0.0, math.floor((span - (new_tat - now)) / interval + EPSILON))
  end
  local ttl = math.max(0.0, new_tat - now)
  if ttl > 0 then
    -- Milliseconds, rounded up: a key must not expire before its state means nothing.
    local px = math.min(math.ceil(ttl * 1000), 1e15) + px_slack
    redis.call('SET', key, string.format('%.17g', new_tat + base), 'PX', px)
  elseif state ~= nil then
    redis.call('DEL', key)
  end
  if wait > 0 then
    return { 1, out(wait), out(remaining), out(new_tat - now), out(burst), string.format('%.17g', base + now) }
  end
  return { 1, 0, out(remaining), out(new_tat - now), out(burst) }
end
local remaining = math.max(0.0, math.floor((span - (tat - now)) / interval + EPSILON))
return { 0, out(wait), out(remaining), out(tat - now), out(burst) }
