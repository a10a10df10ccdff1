-- KEYS[1] the day's ledger (hash), KEYS[2] reservations in flight (zset),
-- KEYS[3] budget overrides (hash), KEYS[4] the chat-LLM kill switch
-- ARGV[1] reservation (call|day|task|tokens|usd_nano), ARGV[2] task,
-- ARGV[3] estimated tokens, ARGV[4] estimated nano-USD, ARGV[5] the task's
-- configured budget, ARGV[6] the cluster's ('t:N' tokens, 'u:N' nano-USD,
-- '' none), ARGV[7] lease (ms), ARGV[8] '1' when the kill switch applies,
-- ARGV[9] '1' when the switch is off for good (startup setting),
-- ARGV[10] ledger key prefix (of a day), ARGV[11] ledger TTL (s)
-- A scope's totals are one field, total|<scope>: "spent_tokens
-- spent_usd_nano held_tokens held_usd_nano orphaned" (few commands per
-- call: each costs the script more than its work).
-- Returns {0} reserved, {1, 'kill_switch', what} or
-- {2, scope, unit, limit, used}: a budget would be crossed.
redis.replicate_commands()
if ARGV[8] == '1' then
  if ARGV[9] == '1' then return {1, 'kill_switch', 'BACKGROUND_SCHEDULER_CHAT_LLM_ENABLED=false'} end
  local v = redis.call('GET', KEYS[4])
  if v and off(v) then return {1, 'kill_switch', v} end
end
-- A replayed script (a client retry of a reservation that went through)
-- reserves nothing twice.
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then return {0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Reservations whose worker died mid-call are released at their lease's
-- end and counted as orphaned: their usage was never reported.
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 32)) do
  local day, task, tok, usd = string.match(m, '^[^|]*|([^|]*)|([^|]*)|(%d+)|(%d+)$')
  if day then
    local k = ARGV[10] .. day
    if redis.call('EXISTS', k) == 1 then
      local v = redis.call('HMGET', k, 'total|' .. task, 'total|*')
      local a, c = parse(v[1], 5), parse(v[2], 5)
      a[3], a[4], a[5] = a[3] - tonumber(tok), a[4] - tonumber(usd), a[5] + 1
      c[3], c[4] = c[3] - tonumber(tok), c[4] - tonumber(usd)
      redis.call('HSET', k, 'total|' .. task, fmt(a), 'total|*', fmt(c))
    end
  end
  redis.call('ZREM', KEYS[2], m)
end
local ov = redis.call('HMGET', KEYS[3], ARGV[2], '*')
local cur = redis.call('HMGET', KEYS[1], 'total|' .. ARGV[2], 'total|*')
local mine, all = parse(cur[1], 5), parse(cur[2], 5)
local tok, usd = tonumber(ARGV[3]), tonumber(ARGV[4])
local function over(scope, lim, tt)
  if not lim or lim == '' then return nil end
  local unit, n = string.match(lim, '^([tu]):(%d+)$')
  if not unit then return nil end -- 'none', or not ours
  n = tonumber(n)
  local used, est = tt[1] + tt[3], tok
  if unit == 'u' then used, est = tt[2] + tt[4], usd end
  if n == 0 or used + est > n then
    return {2, scope, unit, tostring(n), string.format('%d', used)}
  end
  return nil
end
local r = over(ARGV[2], ov[1] or ARGV[5], mine) or over('*', ov[2] or ARGV[6], all)
if r then return r end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[7]), ARGV[1])
mine[3], mine[4] = mine[3] + tok, mine[4] + usd
all[3], all[4] = all[3] + tok, all[4] + usd
redis.call('HSET', KEYS[1], 'total|' .. ARGV[2], fmt(mine), 'total|*', fmt(all))
return {0}
