-- KEYS[1] schedule state hash
-- ARGV[1] now (unix ms), ARGV[2] occurrence (ms), ARGV[3] interval (ms),
-- ARGV[4] task id, ARGV[5] outcome
-- Moves next_ms past now on the occurrence grid, but only if no peer has
-- already done so (compare-and-set on next_ms). Occurrences missed while no
-- scheduler ran collapse into the one just handled. Returns the new next_ms
-- if advanced, 0 if a peer had.
local occ = tonumber(ARGV[2])
if tonumber(redis.call('HGET', KEYS[1], 'next_ms') or '-1') ~= occ then
  return 0
end
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[3])
local nextAt = occ + interval
if nextAt <= now then
  nextAt = occ + (math.floor((now - occ) / interval) + 1) * interval
end
redis.call('HSET', KEYS[1], 'next_ms', string.format('%d', nextAt), 'last_due_ms', ARGV[2],
  'last_task_id', ARGV[4], 'last_outcome', ARGV[5], 'last_enqueued_ms', ARGV[1])
return nextAt
