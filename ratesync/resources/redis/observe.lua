-- rate-sync: fold one upstream response's rate-limit headers into a quota mirror.
--
-- KEYS   [1] the quota key
-- ARGV   [1] now ('' = server clock; tests: see clock())   [2] remaining   [3] reset_after
--        [4] limit ('' = not said)   [5] window ('' = not said)   [6] max_cooldown

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
  if window ~= nil and window <= 0 then
    window = nil  -- a window of zero or less says nothing
  end
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
    if reset_at < state[1] - tolerance then
      -- About an earlier window than the mirror's: the mirror has moved on (reservations rolled
      -- it into a later window, or a later response was folded in first). Only what it says of
      -- the limit and the window is kept.
      return { state[1], state[2], limit, window }
    end
    if reset_at <= state[1] + tolerance then
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

local base, now = clock(ARGV[1])
local spec = { 'q', tonumber(ARGV[6]) }
local obs = { tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]) }
local state = read_state(KEYS[1], spec, base, now)
local new_state = quota_observe(state, now, obs, spec)
if new_state ~= nil then
  write_state(KEYS[1], new_state, spec, now, base)
end
return 1
