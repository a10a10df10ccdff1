-- KEYS[1] schedule state hash
-- ARGV[1] now (unix ms), ARGV[2] initial delay (ms), ARGV[3] interval (ms),
-- ARGV[4] claim (ms), ARGV[5] the caller's scheduler ID
-- A schedule seen for the first time starts after its initial delay. Returns
-- {due (0/1), next_ms, last_task_id}: the last occurrence's task ID lets
-- the caller check for overlap without another round trip.
-- A due occurrence is claimed for ARGV[4] ms by its first caller: the
-- others see it as not due until the claim ends (next_ms is then the
-- claim's end), so a fleet's schedulers do not all enqueue it, conflict and
-- fail the advance. The deterministic task ID, not the claim, is what keeps
-- an occurrence to one run; the claim only spares the herd, and its expiry
-- lets a peer handle an occurrence whose claimer died.
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
if nextAt <= now then
  local occ = string.format('%d', nextAt)
  local claim = redis.call('HMGET', KEYS[1], 'claim_occ', 'claim_until', 'claim_by')
  local untilMS = tonumber(claim[2] or '') or 0
  if claim[1] == occ and untilMS > now and claim[3] ~= ARGV[5] then
    return {'0', string.format('%d', untilMS), redis.call('HGET', KEYS[1], 'last_task_id') or ''}
  end
  redis.call('HSET', KEYS[1], 'claim_occ', occ, 'claim_until', string.format('%d', now + tonumber(ARGV[4])), 'claim_by', ARGV[5])
  due = '1'
end
return {due, string.format('%d', nextAt), redis.call('HGET', KEYS[1], 'last_task_id') or ''}
