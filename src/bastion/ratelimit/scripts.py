"""The Redis side of the algorithms: one Lua script each, so a hit is one atomic round trip.

The arithmetic mirrors bastion.ratelimit.algorithms, in integer microseconds of the Redis server's clock
(`TIME`): every gateway node reads the same clock, so nodes with skewed clocks still share one limit.
Each script returns {allowed (0/1), remaining, reset_after_us, retry_after_us}. Redis 7 replicates
script effects, so reading TIME before writing is allowed.
"""

from __future__ import annotations

# KEYS[1]: the TAT (string, microseconds). ARGV: interval_us, tolerance_us, cost.
GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]))
local base = now
if tat and tat > now then base = tat end
local new_tat = base + cost * interval
local allow_at = new_tat - tolerance
if allow_at > now + 1e-9 * interval then
  local remaining = math.floor((now - (base - tolerance)) / interval + 1e-9)
  if remaining < 0 then remaining = 0 end
  return {0, remaining, math.ceil(base - now), math.ceil(allow_at - now)}
end
redis.call('SET', KEYS[1], string.format('%.17g', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
local remaining = math.floor((now - allow_at) / interval + 1e-9)
if remaining < 0 then remaining = 0 end
return {1, remaining, math.ceil(new_tat - now), 0}
"""

# KEYS[1]: a hash {i: current window index, p: previous window count, c: current window count}.
# ARGV: period_us, limit, cost.
SLIDING_WINDOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local period = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local index = math.floor(now / period)
local state = redis.call('HMGET', KEYS[1], 'i', 'p', 'c')
local stored = tonumber(state[1])
local previous, current = 0, 0
if stored == index then
  previous = tonumber(state[2]) or 0
  current = tonumber(state[3]) or 0
elseif stored == index - 1 then
  previous = tonumber(state[3]) or 0
end
local elapsed = now - index * period
local reset = period - elapsed
local estimate = previous * (1 - elapsed / period) + current
if estimate + cost <= limit + 1e-9 then
  redis.call('HSET', KEYS[1], 'i', string.format('%.0f', index), 'p', previous, 'c', current + cost)
  redis.call('PEXPIRE', KEYS[1], math.ceil((reset + period) / 1000) + 1)
  local remaining = math.floor(limit - estimate - cost + 1e-9)
  if remaining < 0 then remaining = 0 end
  return {1, remaining, math.ceil(reset), 0}
end
local room = limit - cost
local retry = 0
if room < 0 then
  retry = period
elseif current <= room then
  if previous > 0 then
    retry = period * (1 - (room - current) / previous) - elapsed
    if retry < 0 then retry = 0 end
  end
else
  retry = reset + period * (1 - room / current)
end
local remaining = math.floor(limit - estimate + 1e-9)
if remaining < 0 then remaining = 0 end
return {0, remaining, math.ceil(reset), math.ceil(retry)}
"""

# KEYS[1]: the units spent in one fixed window (a string; the caller's key names the window's start, so a new
# window is a new key and an old one simply expires). ARGV: window_end_us (UNIX time), limit, cost.
# The key outlives the window by 5 minutes, longer than any sane clock skew between nodes: a node whose clock
# lags still counts into the old window instead of recreating it empty.
FIXED_WINDOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window_end = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local spent = tonumber(redis.call('GET', KEYS[1])) or 0
local reset = window_end - now
if reset < 0 then reset = 0 end
if spent + cost <= limit then
  redis.call('INCRBY', KEYS[1], cost)
  redis.call('PEXPIRE', KEYS[1], math.ceil(reset / 1000) + 300000)
  return {1, limit - spent - cost, reset, 0}
end
local remaining = limit - spent
if remaining < 0 then remaining = 0 end
return {0, remaining, reset, reset}
"""
