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
-- One read of every field this script needs: with many pods each calls it
-- at every occurrence, so its cost is multiplied by the pod count.
local h = redis.call('HMGET', KEYS[1], 'next_ms', 'interval_ms', 'last_due_ms', 'last_task_id',
  'claim_occ', 'claim_until', 'claim_by')
local lastID = h[4] or ''
local nextAt = tonumber(h[1] or '')
local storedInterval = tonumber(h[2] or '')
if not nextAt then
  nextAt = now + tonumber(ARGV[2])
  storedInterval = interval
  redis.call('HSET', KEYS[1], 'next_ms', string.format('%d', nextAt), 'interval_ms', ARGV[3],
    'created_ms', ARGV[1])
end
if storedInterval ~= interval then
  -- An operator changed the interval: the next occurrence is one new
  -- interval after the last one (at once if that has passed), so a shorter
  -- interval applies now and a longer one never fires early. A task that
  -- never ran keeps its initial delay, capped at one new interval.
  local last = tonumber(h[3] or '')
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
  local untilMS = tonumber(h[6] or '') or 0
  if h[5] == occ and untilMS > now and h[7] ~= ARGV[5] then
    return {'0', string.format('%d', untilMS), lastID}
  end
  redis.call('HSET', KEYS[1], 'claim_occ', occ, 'claim_until', string.format('%d', now + tonumber(ARGV[4])), 'claim_by', ARGV[5])
  due = '1'
end
return {due, string.format('%d', nextAt), lastID}
