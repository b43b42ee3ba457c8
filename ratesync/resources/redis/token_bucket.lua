-- rate-sync: acquire on one token bucket, the hot path, standalone (no prelude).
--
-- The same reply as acquire.lua in mode 'a' with one limit of kind 't', and the same decision bit
-- for bit: the steps of prelude.lua's clock(), state.lua's read_state/write_state and
-- algorithms.lua's token_bucket, inlined. The golden and property tests run both scripts on the
-- same calls and compare them.
--
-- KEYS   the bucket.
-- ARGV   [1] now, as acquire.lua's (production: '', the server's clock)
--        [2] cost, max_wait, rate_per_second and burst: four little-endian doubles (struct '<dddd')
--
-- Why a second script: every EVALSHA runs the whole chunk, and the general script defines some
-- thirty functions and tables before it decides anything. On the path nearly every call takes,
-- that costs the server more than the commands themselves; here the chunk is the decision.
--
-- Numbers travel packed, through Redis's struct library, exact both ways: the arguments, the stored
-- TAT ('t' and a double, as state.lua writes it) and the reply (as acquire.lua's). Measured on
-- Redis 7.0 (INFO commandstats): formatting a double ("%.17g", by string.format or by redis.call
-- on a Lua number) costs the server about as much as the GET, returning a table of five elements
-- as much again, and reading four numbers from seven decimal arguments about twice as much. With
-- decimals this script took 5.6 us a call, packed 3.6 us (`return 1`: 0.5 us).

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
local cost, max_wait, rate, burst = struct.unpack('<dddd', ARGV[2])
local interval = 1.0 / rate
local span = burst * interval

-- The stored TAT (absolute), relative to base; another layout or another type reads as none.
local key = KEYS[1]
local state = nil
local v = redis.pcall('GET', key)
if type(v) == 'string' and #v == 9 then
  local tag, tat = struct.unpack('<c1d', v)
  if tag == 't' then
    state = tat - base
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

-- max(0.0, x) is spelled `if not (x > 0.0) then x = 0.0 end`: the same value as math.max's
-- (its first argument unless the second is greater), without the call.
if wait <= max_wait + EPSILON then
  local remaining = 0.0
  if wait == 0.0 then
    remaining = math.floor((span - (new_tat - now)) / interval + EPSILON)
    if not (remaining > 0.0) then
      remaining = 0.0
    end
  end
  local ttl = new_tat - now
  if ttl > 0 then
    -- Milliseconds, rounded up: a key must not expire before its state means nothing.
    local px = math.ceil(ttl * 1000)
    if px > 1e15 then
      px = 1e15
    end
    redis.call('SET', key, struct.pack('<c1d', 't', new_tat + base), 'PX', px + px_slack)
  elseif state ~= nil then
    redis.call('DEL', key)
  end
  if wait > 0 then
    return struct.pack('<dddddd', 1, wait, remaining, new_tat - now, burst, base + now)
  end
  return struct.pack('<ddddd', 1, 0, remaining, new_tat - now, burst)
end
local remaining = math.floor((span - (tat - now)) / interval + EPSILON)
if not (remaining > 0.0) then
  remaining = 0.0
end
return struct.pack('<ddddd', 0, wait, remaining, tat - now, burst)
