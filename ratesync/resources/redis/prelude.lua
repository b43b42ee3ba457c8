-- rate-sync: what every script starts with (Redis scripts cannot `require`: the store joins
-- prelude.lua, then algorithms.lua and state.lua where needed, then the entry script).
--
-- The Lua files are line by line ports of the pure functions in ratesync/_algorithms.py: the
-- golden and property tests in tests/redis compare them with the Python reference, field by field.
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
-- round-trips a double exactly; Python's float() reads "inf" too), or, on the acquire path, packed
-- as doubles (struct '<d': exact, and cheaper for the server than formatting; see acquire.lua).

if not redis.REDIS_VERSION_NUM then
  -- Redis < 7 replicates scripts verbatim by default; a script that reads TIME must replicate its
  -- effects instead (the only way since Redis 7, which has REDIS_VERSION_NUM).
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
