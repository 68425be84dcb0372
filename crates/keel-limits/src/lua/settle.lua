-- Settle a request: refund unused tokens (or charge extra ones as debt),
-- free its concurrency slot, and move its budget holds to spend.
--
-- KEYS: two per rule, as in admit.lua.
-- ARGV: now_ms, member, held_tokens, used_tokens, used_cost, then four per
-- rule: kind ('t', 'c' or 'b'), p1, p2, p3
--   t: limit, period_ms, -      c: -, -, -      b: -, window, window_end
-- Returns {spent_before_1, spent_after_1, ...} (zeros for non-budgets).
local now = tonumber(ARGV[1])
local member = ARGV[2]
local held_tokens = tonumber(ARGV[3])
local used_tokens = tonumber(ARGV[4])
local used_cost = tonumber(ARGV[5])
local out = {}

for i = 1, #KEYS / 2 do
  local k1, k2 = KEYS[2 * i - 1], KEYS[2 * i]
  local base = 5 + 4 * (i - 1)
  local kind = ARGV[base + 1]
  local before, after = 0, 0
  if kind == 't' then
    local limit, period = tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
    local emission = period / limit
    local tat = booked(redis.call('GET', k1), emission, now)
    local new_tat = tat - (held_tokens - used_tokens) * emission
    if new_tat > now then
      redis.call('SET', k1, string.format('%.3f|%.9f', new_tat, emission), 'PX', math.ceil(new_tat - now) + 1000)
    else
      redis.call('DEL', k1)
    end
  elseif kind == 'c' then
    redis.call('ZREM', k1, member)
  elseif kind == 'b' then
    local window, window_end = ARGV[base + 3], tonumber(ARGV[base + 4])
    redis.call('HDEL', k1, 'h:' .. member)
    redis.call('ZREM', k2, member)
    if redis.call('HGET', k1, 'w') ~= window then
      redis.call('HSET', k1, 'w', window, 'spent', 0)
    end
    before = tonumber(redis.call('HGET', k1, 'spent') or '0')
    after = redis.call('HINCRBY', k1, 'spent', used_cost)
    redis.call('PEXPIREAT', k1, window_end + 86400000)
  end
  out[#out + 1] = before
  out[#out + 1] = after
end
return out
