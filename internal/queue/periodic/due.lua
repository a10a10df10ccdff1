-- KEYS[1] schedule state hash
-- ARGV[1] now (unix ms), ARGV[2] initial delay (ms), ARGV[3] interval (ms)
-- A schedule seen for the first time starts after its initial delay. Returns
-- {due (0/1), next_ms, last_task_id}: the last occurrence's task ID lets
-- the caller check for overlap without another round trip.
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[3])
local nextAt = tonumber(redis.call('HGET', KEYS[1], 'next_ms') or '')
if not nextAt then
  nextAt = now + tonumber(ARGV[2])
  redis.call('HSET', KEYS[1], 'next_ms', string.format('%d', nextAt), 'interval_ms', ARGV[3],
    'created_ms', ARGV[1])
end
if tonumber(redis.call('HGET', KEYS[1], 'interval_ms') or '') ~= interval then
  -- An operator changed the interval: the next occurrence is one new
  -- interval after the last one (at once if that has passed), so a shorter
  -- interval applies now and a longer one never fires early. A task that
  -- never ran keeps its initial delay, capped at one new interval.
  local last = tonumber(redis.call('HGET', KEYS[1], 'last_due_ms') or '')
  if last then
    nextAt = last + interval
  else
    nextAt = math.min(nextAt, now + interval)
  end
  redis.call('HSET', KEYS[1], 'interval_ms', ARGV[3], 'next_ms', string.format('%d', nextAt))
end
local due = '0'
if nextAt <= now then due = '1' end
return {due, string.format('%d', nextAt), redis.call('HGET', KEYS[1], 'last_task_id') or ''}
