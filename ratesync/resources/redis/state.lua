-- rate-sync: state in Redis, expiring with its meaning (after prelude.lua).

-- Seconds after which a state means the same as no state (keys expire by it).
local function state_ttl(state, now, spec)
  if state == nil then
    return 0.0
  end
  local kind = spec[1]
  if kind == 't' then
    return max(0.0, state - now)
  elseif kind == 's' then
    local n = #state
    if n == 0 then
      return 0.0
    end
    return max(0.0, state[n - 1] + spec[3] - now)
  elseif kind == 'f' then
    return max(0.0, state[1] + spec[3] - now)
  end
  return max(0.0, state[1] + (state[4] or 0.0) - now)
end

-- Storage, one Redis-native layout per algorithm (times absolute, server clock):
--   token bucket  string  't' then the TAT as 8 bytes, a little-endian IEEE double (struct '<c1d')
--   sliding       string  MessagePack array [time1, cost1, time2, cost2, ...]
--   fixed window  string  "<window_start>:<count>"
--   quota         hash    r = reset_at, n = remaining, l = limit, w = window (l, w optional)
-- A key holding another layout (a limiter whose algorithm changed) reads as no state and is
-- overwritten; reads use pcall so a key of another Redis type does the same.
-- The token bucket is binary because it is the hot path (token_bucket.lua reads and writes it
-- too): packing a double is exact and costs the server a fraction of formatting ("%.17g") and
-- parsing one. The 't' tells it from the other layouts (none starts with it and is 9 bytes long).

local function decode_state(key, spec, base)
  local kind = spec[1]
  if kind == 'q' then
    local v = redis.pcall('HMGET', key, 'r', 'n', 'l', 'w')
    if type(v) ~= 'table' or v.err or not v[1] or not v[2] then
      return nil
    end
    local r, n = tonumber(v[1]), tonumber(v[2])
    if r == nil or n == nil then
      return nil
    end
    local l, w = nil, nil
    if v[3] then
      l = tonumber(v[3])
    end
    if v[4] then
      w = tonumber(v[4])
    end
    return { r - base, n, l, w }
  end
  local v = redis.pcall('GET', key)
  if type(v) ~= 'string' then
    return nil
  end
  if kind == 't' then
    if #v ~= 9 then
      return nil
    end
    local tag, tat = struct.unpack('<c1d', v)
    if tag ~= 't' then
      return nil
    end
    return tat - base
  elseif kind == 'f' then
    local s, c = string.match(v, '^([^:]+):([^:]+)$')
    s, c = tonumber(s), tonumber(c)
    if s == nil or c == nil then
      return nil
    end
    return { s - base, c }
  end
  local ok, entries = pcall(cmsgpack.unpack, v)
  if not ok or type(entries) ~= 'table' then
    return nil
  end
  for i = 1, #entries, 2 do
    entries[i] = entries[i] - base
  end
  return entries
end

-- The state under `key`, relative to `base`; nil if absent or if it has expired at `now` (the
-- key itself expires up to a millisecond later, or later still under a test clock).
local function read_state(key, spec, base, now)
  local state = decode_state(key, spec, base)
  -- An expired bucket, log or window already reads as empty to its algorithm; a quota mirror
  -- does not (it would roll forward), so it must be dropped here.
  if spec[1] == 'q' and state ~= nil and not (state_ttl(state, now, spec) > 0) then
    return nil
  end
  return state
end

local function write_state(key, state, spec, now, base)
  local ttl = state_ttl(state, now, spec)
  if not (ttl > 0) then
    redis.call('DEL', key)
    return
  end
  -- Milliseconds, rounded up: a key must not expire before its state means nothing.
  -- (A whole Lua number goes to Redis as an integer string: no formatting needed.)
  local px = min(math.ceil(ttl * 1000), 1e15) + px_slack
  local kind = spec[1]
  if kind == 't' then
    redis.call('SET', key, struct.pack('<c1d', 't', state + base), 'PX', px)
  elseif kind == 'f' then
    redis.call('SET', key, num(state[1] + base) .. ':' .. num(state[2]), 'PX', px)
  elseif kind == 's' then
    local flat = {}
    for i = 1, #state, 2 do
      flat[i] = state[i] + base
      flat[i + 1] = state[i + 1]
    end
    redis.call('SET', key, cmsgpack.pack(flat), 'PX', px)
  else
    redis.call('DEL', key)
    local fields = { 'r', num(state[1] + base), 'n', num(state[2]) }
    if state[3] ~= nil then
      fields[#fields + 1] = 'l'
      fields[#fields + 1] = num(state[3])
    end
    if state[4] ~= nil then
      fields[#fields + 1] = 'w'
      fields[#fields + 1] = num(state[4])
    end
    redis.call('HSET', key, unpack(fields))
    redis.call('PEXPIRE', key, px)
  end
end
