-- rate-sync: fold one upstream response's rate-limit headers into a quota mirror.
--
-- KEYS   [1] the quota key
-- ARGV   [1] now ('' = server clock; tests: see clock())   [2] remaining   [3] reset_after
--        [4] limit ('' = not said)   [5] window ('' = not said)   [6] max_cooldown

local base, now = clock(ARGV[1])
local spec = { 'q', tonumber(ARGV[6]) }
local obs = { tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]) }
local state = read_state(KEYS[1], spec, base, now)
local new_state = quota_observe(state, now, obs, spec)
if new_state ~= nil then
  write_state(KEYS[1], new_state, spec, now, base)
end
return 1
