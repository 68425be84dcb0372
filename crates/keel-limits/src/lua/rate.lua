-- Shared by admit.lua and settle.lua (prepended to each).
--
-- A rate's stored value is "tat|emission_ms". When a rule's limit changed,
-- the time already booked is rescaled to the new emission interval, so what
-- was used still counts, no more and no less.
local function booked(stored, emission, now)
  if not stored then return now end
  local sep = string.find(stored, '|', 1, true)
  if not sep then return math.max(tonumber(stored) or now, now) end
  local tat = tonumber(string.sub(stored, 1, sep - 1))
  local old = tonumber(string.sub(stored, sep + 1))
  if tat <= now then return now end
  if old > 0 and old ~= emission then return now + (tat - now) * emission / old end
  return tat
end
