-- Admit a request against every rule that covers it, all or nothing.
--
-- KEYS: two per rule (the second is only used by budgets).
-- ARGV: now_ms, member, lease_ms, tokens, cost, then four per rule:
--   kind ('r' requests, 't' tokens, 'c' concurrency, 'b' budget), p1, p2, p3
--   r/t: limit, period_ms, -      c: limit, -, -      b: cap, window, window_end
-- Returns {1, remaining_1, reset_ms_1, ...} when admitted, or
-- {0, rule_index, a, b} when refused (r/t: retry_ms or -1 for never;
-- b: spent, reserved).
local now = tonumber(ARGV[1])
local member = ARGV[2]
local lease = tonumber(ARGV[3])
local tokens = tonumber(ARGV[4])
local cost = tonumber(ARGV[5])
local n = #KEYS / 2
local plan = {}
local emissions = {}
local out = {1}

for i = 1, n do
  local k1, k2 = KEYS[2 * i - 1], KEYS[2 * i]
  local base = 5 + 4 * (i - 1)
  local kind = ARGV[base + 1]
  local p1, p2, p3 = tonumber(ARGV[base + 2]), ARGV[base + 3], ARGV[base + 4]
  if kind == 'r' or kind == 't' then
    local limit, period = p1, tonumber(p2)
    local want = 1
    if kind == 't' then want = tokens end
    local emission = period / limit
    local inc = emission * want
    if inc > period then return {0, i, -1, 0} end
    local tat = booked(redis.call('GET', k1), emission, now)
    local new_tat = tat + inc
    local allow_at = new_tat - period
    if allow_at > now then return {0, i, math.ceil(allow_at - now), 0} end
    plan[i] = new_tat
    emissions[i] = emission
    out[#out + 1] = math.floor((period - (new_tat - now)) / emission + 1e-9)
    out[#out + 1] = math.ceil(new_tat - now)
  elseif kind == 'c' then
    redis.call('ZREMRANGEBYSCORE', k1, '-inf', now)
    if redis.call('ZCARD', k1) >= p1 then return {0, i, 0, 0} end
    out[#out + 1] = 0
    out[#out + 1] = 0
  else
    -- Holds of crashed processes expire with their lease.
    local expired = redis.call('ZRANGEBYSCORE', k2, '-inf', now)
    for _, m in ipairs(expired) do redis.call('HDEL', k1, 'h:' .. m) end
    if #expired > 0 then redis.call('ZREMRANGEBYSCORE', k2, '-inf', now) end
    local spent = 0
    if redis.call('HGET', k1, 'w') == p2 then
      spent = tonumber(redis.call('HGET', k1, 'spent') or '0')
    end
    local reserved = 0
    local fields = redis.call('HGETALL', k1)
    for j = 1, #fields, 2 do
      if string.sub(fields[j], 1, 2) == 'h:' then reserved = reserved + tonumber(fields[j + 1]) end
    end
    if spent + reserved + cost > p1 then return {0, i, spent, reserved} end
    out[#out + 1] = 0
    out[#out + 1] = 0
  end
end

for i = 1, n do
  local k1, k2 = KEYS[2 * i - 1], KEYS[2 * i]
  local base = 5 + 4 * (i - 1)
  local kind = ARGV[base + 1]
  if kind == 'r' or kind == 't' then
    redis.call('SET', k1, string.format('%.3f|%.9f', plan[i], emissions[i]), 'PX', math.ceil(plan[i] - now) + 1000)
  elseif kind == 'c' then
    redis.call('ZADD', k1, now + lease, member)
    redis.call('PEXPIRE', k1, lease + 1000)
  else
    local window, window_end = ARGV[base + 3], tonumber(ARGV[base + 4])
    if redis.call('HGET', k1, 'w') ~= window then
      redis.call('HSET', k1, 'w', window, 'spent', 0)
    end
    redis.call('HINCRBY', k1, 'h:' .. member, cost)
    redis.call('ZADD', k2, now + lease, member)
    redis.call('PEXPIREAT', k1, math.max(window_end + 86400000, now + lease + 1000))
    redis.call('PEXPIRE', k2, lease + 1000)
  end
end
return out
