-- rate-sync: acquire (or peek) every limit of one call atomically, in one round trip.
--
-- KEYS   one per limit, all under one hash tag.
-- ARGV   [1] now ('' = server clock; tests only: a number, or '@' .. number, see clock())
--        [2] cost   [3] max_wait ('inf' allowed)   [4] mode: 'a' acquire, 'p' peek
--        then per limit: kind ('t' token bucket, 's' sliding, 'f' fixed, 'q' quota), p1, p2
-- Returns {allowed (1/0), wait, remaining, reset_after, limit}: whole numbers as integers, the
-- others as strings (Redis truncates Lua numbers to integers); a reservation adds the server time
-- it was made at.

local base, now = clock(ARGV[1])
local cost = tonumber(ARGV[2])
local max_wait = arg_float(ARGV[3])
local n = #KEYS
local specs = {}
local states = {}
for i = 1, n do
  local j = 2 + 3 * i
  local spec = { ARGV[j], tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2]) }
  specs[i] = spec
  states[i] = read_state(KEYS[i], spec, base, now)
end

local d
if ARGV[4] == 'p' then
  -- What a call of cost 1 would be told, charging nothing; remaining counts it unspent.
  d = decide(states, now, 1, specs, 0.0, base)
  if d[1] then
    d = D(true, 0.0, d[3] + 1, d[4], d[5])
  end
else
  local new_states
  d, new_states = decide(states, now, cost, specs, max_wait, base)
  if d[1] then
    for i = 1, n do
      if states[i] ~= nil or new_states[i] ~= nil then
        write_state(KEYS[i], new_states[i], specs[i], now, base)
      end
    end
  end
end

-- Whole numbers go back as integer replies (exact, and no formatting); others as strings.
local function out(x)
  if x == floor(x) and x > -1e15 and x < 1e15 then
    return x
  end
  return num(x)
end

local allowed = 0
if d[1] then
  allowed = 1
end
if d[1] and d[2] > 0 then
  -- A reservation also says when it was made (server clock): the client counts the wait from
  -- then, not from when it read the reply.
  return { allowed, out(d[2]), out(d[3]), out(d[4]), out(d[5]), num(base + now) }
end
return { allowed, out(d[2]), out(d[3]), out(d[4]), out(d[5]) }
