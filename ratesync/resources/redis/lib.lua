-- rate-sync: the limiter algorithms in Lua, ports of the pure functions in ratesync/_algorithms.py.
--
-- This file is prepended to every entry script (Redis scripts cannot `require`). Keep it a line by
-- line port: the golden and property tests in tests/redis compare these functions with the Python
-- reference, field by field.
--
-- Time. Every time is the server's (`TIME`), never the client's. The algorithms run on times
-- relative to a `base`: stored states hold absolute times, read as `stored - base` and written as
-- `relative + base`. In production `base` is the server time and `now` is 0, so arithmetic runs on
-- small numbers (an absolute epoch time in a double has a last bit of about 2.4e-7 s, above the
-- reference's EPSILON of 1e-9: computing on it directly would turn exact boundaries, such as a
-- fresh bucket's first call, into refusals of 1e-7 s). Tests pass `now` explicitly with base 0,
-- which makes every operation the same as the reference's, bit for bit.
--
-- Numbers returned to Redis are truncated to integers, so floats are returned as strings ("%.17g"
-- round-trips a double exactly; Python's float() reads "inf" too).

if redis.replicate_commands then
  -- Redis < 7 replicates scripts verbatim by default; a script that reads TIME must replicate its
  -- effects instead (the default, and a no-op, since Redis 7).
  redis.replicate_commands()
end

local EPSILON = 1e-9
local INF = math.huge
local floor = math.floor
local max = math.max
local min = math.min
local fmt = string.format

local function num(x)
  return fmt('%.17g', x)
end

local function floor_eps(x)
  return floor(x + EPSILON)
end

-- Added to every key's expiry. Tests that pass their own clock set it: their keys must not
-- expire in real time while the test's clock stands still (states that have expired by the
-- test's clock read as nothing anyway, see read_state).
local px_slack = 0

-- The clock. ARGV `now`: '' = the server's clock (production); a number = that time with base 0
-- (tests: the reference's arithmetic exactly); '@' .. number = base at that time and now 0
-- (tests: the production arithmetic with a chosen clock).
local function clock(arg)
  if arg == nil or arg == '' then
    local t = redis.call('TIME')
    return tonumber(t[1]) + tonumber(t[2]) / 1000000, 0.0
  end
  px_slack = 3600000
  if string.sub(arg, 1, 1) == '@' then
    return tonumber(string.sub(arg, 2)), 0.0
  end
  return 0.0, tonumber(arg)
end

local function arg_float(s)
  if s == 'inf' then
    return INF
  end
  return tonumber(s)
end

-- A decision: allowed (bool), wait, remaining, reset_after, limit.
local function D(allowed, wait, remaining, reset_after, limit)
  return { allowed, wait, remaining, reset_after, limit }
end

-- Token bucket (GCRA). spec = { 't', rate_per_second, burst }; state = TAT or nil.
local function token_bucket(state, now, cost, spec, max_wait)
  local burst = spec[3]
  local interval = 1.0 / spec[2]
  local span = burst * interval
  local tat = now
  if state ~= nil and state > now then
    tat = state
  end
  local new_tat = tat + cost * interval
  local wait = new_tat - span - now
  if wait <= EPSILON then
    wait = 0.0
  end
  if wait <= max_wait + EPSILON then
    local remaining = 0.0
    if wait == 0.0 then
      remaining = max(0.0, floor_eps((span - (new_tat - now)) / interval))
    end
    return D(true, wait, remaining, new_tat - now, burst), new_tat
  end
  local remaining = max(0.0, floor_eps((span - (tat - now)) / interval))
  return D(false, wait, remaining, tat - now, burst), state
end

-- Sliding window log. spec = { 's', limit, window_seconds }; state = flat array
-- { time1, cost1, time2, cost2, ... }, oldest first, or nil.
local function sw_reset(entries, now, window)
  local n = #entries
  if n == 0 then
    return 0.0
  end
  return entries[n - 1] + window - now
end

local function sliding_window(state, now, cost, spec, max_wait)
  local limit = spec[2]
  local window = spec[3]
  local entries = {}
  if state ~= nil then
    local horizon = now - window
    for i = 1, #state, 2 do
      if state[i] > horizon then
        entries[#entries + 1] = state[i]
        entries[#entries + 1] = state[i + 1]
      end
    end
  end
  local n = #entries
  local pruned = entries
  if n == 0 then
    pruned = nil
  end
  if cost > limit then
    local used = 0
    for i = 2, n, 2 do
      used = used + entries[i]
    end
    return D(false, INF, max(0.0, limit - used), sw_reset(entries, now, window), limit), pruned
  end
  local t0 = now
  if n > 0 then
    t0 = max(now, entries[n - 1])
  end
  local counted = {}
  local used = 0
  local horizon0 = t0 - window
  for i = 1, n, 2 do
    if entries[i] > horizon0 then
      counted[#counted + 1] = entries[i]
      counted[#counted + 1] = entries[i + 1]
      used = used + entries[i + 1]
    end
  end
  local at = t0
  if used + cost > limit then
    local need = used + cost - limit
    local freed = 0
    for i = 1, #counted, 2 do
      freed = freed + counted[i + 1]
      if freed >= need then
        at = counted[i] + window
        break
      end
    end
  end
  local wait = at - now
  if wait <= EPSILON then
    wait = 0.0
  end
  if wait <= max_wait + EPSILON then
    local kept = {}
    local used_at = 0
    local horizon_at = at - window
    for i = 1, n, 2 do
      if entries[i] > horizon_at then
        kept[#kept + 1] = entries[i]
        kept[#kept + 1] = entries[i + 1]
        used_at = used_at + entries[i + 1]
      end
    end
    kept[#kept + 1] = at
    kept[#kept + 1] = cost
    local remaining = 0.0
    if wait == 0.0 then
      remaining = limit - used_at - cost
    end
    return D(true, wait, max(0.0, remaining), at + window - now, limit), kept
  end
  local remaining = 0.0
  if not (t0 > now) then
    local now_used = 0
    for i = 1, n, 2 do
      if entries[i] <= now then
        now_used = now_used + entries[i + 1]
      end
    end
    remaining = max(0, limit - now_used)
  end
  return D(false, wait, remaining, sw_reset(entries, now, window), limit), pruned
end

-- Fixed window. spec = { 'f', limit, window_seconds }; state = { window_start, count } or nil.
-- Windows are aligned to multiples of window_seconds of the absolute clock, hence `base`.
local function fixed_window(state, now, cost, spec, max_wait, base)
  local limit = spec[2]
  local window = spec[3]
  local current = floor((base + now) / window) * window - base
  local start, count = current, 0
  if state ~= nil and state[1] >= current then
    start, count = state[1], state[2]
  end
  local room_now = 0.0
  if start <= now then
    room_now = max(0, limit - count)
  end
  if cost > limit then
    return D(false, INF, room_now, start + window - now, limit), state
  end
  if count + cost > limit then
    start, count = start + window, 0
  end
  local wait = max(0.0, start - now)
  if wait <= EPSILON then
    wait = 0.0
  end
  if wait <= max_wait + EPSILON then
    local remaining = 0.0
    if wait == 0.0 then
      remaining = limit - count - cost
    end
    return D(true, wait, remaining, start + window - now, limit), { start, count + cost }
  end
  return D(false, wait, room_now, wait, limit), state
end

-- Learned upstream quota. spec = { 'q', max_cooldown }; state = { reset_at, remaining, limit|nil,
-- window|nil } (a Lua table with holes: fields 3 and 4 may be nil) or nil.
local function quota(state, now, cost, spec, max_wait)
  if state == nil then
    return D(true, 0.0, INF, 0.0, INF), nil
  end
  local reset_at, remaining, limit, window = state[1], state[2], state[3], state[4]
  local start = -INF
  if window ~= nil then
    start = reset_at - window
  end
  local at = max(now, start)
  if at >= reset_at then
    if limit == nil or window == nil then
      -- The learned block is over and nothing says what comes next: admit, forget.
      return D(true, 0.0, INF, 0.0, INF), nil
    end
    -- Roll the mirror forward to the window that contains `at`.
    local skipped = floor((at - reset_at) / window) + 1
    reset_at = reset_at + skipped * window
    remaining = limit
  end
  local lim = INF
  if limit ~= nil then
    lim = limit
  end
  local wait, new_state
  if remaining >= cost then
    wait = max(0.0, at - now)
    new_state = { reset_at, remaining - cost, limit, window }
  elseif limit ~= nil and window ~= nil then
    -- Reserve in the next window (cost above the limit still goes then: better than never).
    wait = reset_at - now
    new_state = { reset_at + window, max(0.0, limit - cost), limit, window }
  else
    wait = reset_at - now
    new_state = { reset_at, 0.0, limit, window }
  end
  if wait <= EPSILON then
    wait = 0.0
  end
  if wait <= max_wait + EPSILON then
    local left = 0.0
    if wait == 0.0 then
      left = new_state[2]
    end
    return D(true, wait, left, max(0.0, new_state[1] - now), lim), new_state
  end
  local left = 0.0
  if at <= now then
    left = remaining
  end
  return D(false, wait, max(0.0, left), max(0.0, reset_at - now), lim), state
end

local ALGORITHMS = { t = token_bucket, s = sliding_window, f = fixed_window, q = quota }

local function run(state, now, cost, spec, max_wait, base)
  return ALGORITHMS[spec[1]](state, now, cost, spec, max_wait, base)
end

local function remaining_now(state, now, spec, base)
  local d = run(state, now, 1, spec, 0.0, base)
  if d[1] then
    return d[3] + 1
  end
  return d[3]
end

-- Several limits as one: admitted only when every limit admits, charged all or nothing, placed
-- at the latest of the limits' earliest times. Returns the decision and the new states (the old
-- ones when refused).
local function decide(states, now, cost, specs, max_wait, base)
  local n = #specs
  if n == 1 then
    local d, st = run(states[1], now, cost, specs[1], max_wait, base)
    return d, { st }
  end
  local at = -INF
  local binding = nil
  for i = 1, n do
    local d = run(states[i], now, cost, specs[i], INF, base)
    -- The first of the latest, as Python's max(key=...) picks.
    if binding == nil or d[2] > binding[2] then
      binding = d
    end
    if d[2] > at then
      at = d[2]
    end
  end
  if at > max_wait + EPSILON then
    local remaining = INF
    for i = 1, n do
      remaining = min(remaining, remaining_now(states[i], now, specs[i], base))
    end
    return D(false, at, remaining, binding[4], binding[5]), states
  end
  local new_states = {}
  local tightest = nil
  local latest_reset = -INF
  for i = 1, n do
    local d, st = run(states[i], now + at, cost, specs[i], 0.0, base)
    new_states[i] = st
    if tightest == nil or d[3] < tightest[3] then
      tightest = d
    end
    if d[4] > latest_reset then
      latest_reset = d[4]
    end
  end
  local remaining = 0.0
  if at == 0.0 then
    remaining = tightest[3]
  end
  return D(true, at, remaining, latest_reset + at, tightest[5]), new_states
end

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
--   token bucket  string  "<TAT>"
--   sliding       string  MessagePack array [time1, cost1, time2, cost2, ...]
--   fixed window  string  "<window_start>:<count>"
--   quota         hash    r = reset_at, n = remaining, l = limit, w = window (l, w optional)
-- A key holding another layout (a limiter whose algorithm changed) reads as no state and is
-- overwritten; reads use pcall so a key of another Redis type does the same.

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
    local tat = tonumber(v)
    if tat == nil then
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
  if state ~= nil and not (state_ttl(state, now, spec) > 0) then
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
  local px = fmt('%d', min(math.ceil(ttl * 1000), 1e15) + px_slack)
  local kind = spec[1]
  if kind == 't' then
    redis.call('SET', key, num(state + base), 'PX', px)
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

-- Fold an upstream's rate-limit headers into the quota mirror (port of quota_observe).
-- obs = { remaining, reset_after, limit|nil, window|nil }; spec = { 'q', max_cooldown }.
local function quota_observe(state, now, obs, spec)
  local max_cooldown = spec[2]
  local reset_after = min(max(0.0, obs[2]), max_cooldown)
  local reset_at = now + reset_after
  local remaining = max(0.0, floor(obs[1]))
  local limit = nil
  if obs[3] ~= nil and obs[3] >= remaining then
    limit = obs[3]
  end
  local window = obs[4]
  if state ~= nil then
    if window == nil and limit ~= nil then
      -- A response just after a reset shows nearly the whole window: the largest reset seen
      -- is the best estimate of the window's length the headers allow.
      window = max(state[4] or 0.0, reset_after)
      if window == 0 then
        window = nil
      end
    end
    if limit == nil then
      limit = state[3]
    end
    if window == nil then
      window = state[4]
    end
    local tolerance = 1.0
    if window ~= nil and window ~= 0 then
      tolerance = min(1.0, 0.5 * window)
    end
    if reset_at <= state[1] + tolerance then
      if reset_at < state[1] - tolerance and remaining >= state[2] then
        return { state[1], state[2], limit, window }
      end
      return { max(reset_at, state[1]), min(remaining, state[2]), limit, window }
    end
  elseif window == nil and limit ~= nil and reset_after > 0 then
    window = reset_after
  end
  if reset_after <= 0 and (limit == nil or window == nil) then
    return state
  end
  if window ~= nil then
    window = min(window, max_cooldown)
  end
  return { reset_at, remaining, limit, window }
end
