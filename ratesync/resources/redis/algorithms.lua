-- rate-sync: the limiter algorithms (after prelude.lua). See ratesync/_algorithms.py.

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
  if cost > limit then
    local used = 0
    for i = 2, n, 2 do
      used = used + entries[i]
    end
    return D(false, INF, max(0.0, limit - used), sw_reset(entries, now, window), limit), state
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
  -- Refused: the state is returned as it came (nothing is written).
  return D(false, wait, remaining, sw_reset(entries, now, window), limit), state
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
