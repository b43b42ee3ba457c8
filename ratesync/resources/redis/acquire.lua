-- rate-sync: acquire (or peek) every limit of one call atomically, in one round trip.
--
-- KEYS   one per limit, all under one hash tag.
-- ARGV   [1] now ('' = server clock; tests only: a number, or '@' .. number, see clock())
--        [2] cost   [3] max_wait ('inf' allowed)   [4] mode: 'a' acquire, 'p' peek, 'b' batch
--        then per limit: kind ('t' token bucket, 's' sliding, 'f' fixed, 'q' quota), p1, p2
--        batch: [2] is the number of calls k, and k pairs (cost, max_wait) follow the limits.
-- Returns allowed (1/0), wait, remaining, reset_after, limit as five little-endian doubles packed
-- in one string (Redis would truncate Lua numbers to integers; packing is exact, and cheaper for
-- the server than formatting numbers or returning a table); a reservation adds a sixth, the
-- server time it was made at. A batch returns the server time, then five doubles per call.

local base, now = clock(ARGV[1])
local mode = ARGV[4]
local n = #KEYS
local specs = {}
local states = {}
for i = 1, n do
  local j = 2 + 3 * i
  local spec = { ARGV[j], tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2]) }
  specs[i] = spec
  states[i] = read_state(KEYS[i], spec, base, now)
end

local function write_all(new_states)
  for i = 1, n do
    if states[i] ~= nil or new_states[i] ~= nil then
      write_state(KEYS[i], new_states[i], specs[i], now, base)
    end
  end
end

if mode == 'b' then
  -- k calls of one process, in their order, at this one instant: exactly what k calls arriving
  -- together would be told one after the other, for the cost of one round trip.
  local reply = { base + now }
  local current = states
  local charged = false
  local j = 5 + 3 * n
  for _ = 1, tonumber(ARGV[2]) do
    local d, new_states = decide(current, now, tonumber(ARGV[j]), specs, arg_float(ARGV[j + 1]), base)
    j = j + 2
    if d[1] then
      current = new_states
      charged = true
    end
    local r = #reply
    reply[r + 1] = d[1] and 1 or 0
    reply[r + 2] = d[2]
    reply[r + 3] = d[3]
    reply[r + 4] = d[4]
    reply[r + 5] = d[5]
  end
  if charged then
    write_all(current)
  end
  return struct.pack('<' .. string.rep('d', #reply), unpack(reply))
end

local d
if mode == 'p' then
  -- What a call of cost 1 would be told, charging nothing; remaining counts it unspent.
  d = decide(states, now, 1, specs, 0.0, base)
  if d[1] then
    d = D(true, 0.0, d[3] + 1, d[4], d[5])
  end
else
  local new_states
  d, new_states = decide(states, now, tonumber(ARGV[2]), specs, arg_float(ARGV[3]), base)
  if d[1] then
    write_all(new_states)
  end
end

local allowed = 0
if d[1] then
  allowed = 1
end
if d[1] and d[2] > 0 then
  -- A reservation also says when it was made (server clock): the client counts the wait from
  -- then, not from when it read the reply.
  return struct.pack('<dddddd', allowed, d[2], d[3], d[4], d[5], base + now)
end
return struct.pack('<ddddd', allowed, d[2], d[3], d[4], d[5])
