-- KEYS[1] the day's ledger (hash), KEYS[2] reservations in flight (zset),
-- KEYS[3] budget overrides (hash), KEYS[4] the chat-LLM kill switch
-- ARGV[1] reservation (call|day|task|tokens|usd_nano), ARGV[2] task,
-- ARGV[3] estimated tokens, ARGV[4] estimated nano-USD, ARGV[5] the task's
-- configured budget, ARGV[6] the cluster's ('t:N' tokens, 'u:N' nano-USD,
-- '' none), ARGV[7] lease (ms), ARGV[8] '1' when the kill switch applies,
-- ARGV[9] '1' when the switch is off for good (startup setting),
-- ARGV[10] ledger key prefix (of a day), ARGV[11] ledger TTL (s)
-- Returns {0} reserved, {1, 'kill_switch', what} or
-- {2, scope, unit, limit, used}: a budget would be crossed.
redis.replicate_commands()
local function off(v)
  v = string.lower((string.gsub(v, '^%s*(.-)%s*$', '%1')))
  return v == 'off' or v == 'false' or v == '0' or v == 'no' or v == 'disabled'
end
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
      for _, s in ipairs({task, '*'}) do
        redis.call('HINCRBY', k, 'held_tokens|' .. s, string.format('%d', -tonumber(tok)))
        redis.call('HINCRBY', k, 'held_usd_nano|' .. s, string.format('%d', -tonumber(usd)))
      end
      redis.call('HINCRBY', k, 'orphaned|' .. task, 1)
    end
  end
  redis.call('ZREM', KEYS[2], m)
end
local ov = redis.call('HMGET', KEYS[3], ARGV[2], '*')
local function over(scope, lim)
  if not lim or lim == '' then return nil end
  local unit, n = string.match(lim, '^([tu]):(%d+)$')
  if not unit then return nil end -- 'none', or not ours
  n = tonumber(n)
  local f, est = 'tokens', tonumber(ARGV[3])
  if unit == 'u' then f, est = 'usd_nano', tonumber(ARGV[4]) end
  local used = tonumber(redis.call('HGET', KEYS[1], 'spent_' .. f .. '|' .. scope) or '0')
    + tonumber(redis.call('HGET', KEYS[1], 'held_' .. f .. '|' .. scope) or '0')
  if n == 0 or used + est > n then
    return {2, scope, unit, tostring(n), string.format('%d', used)}
  end
  return nil
end
local r = over(ARGV[2], ov[1] or ARGV[5]) or over('*', ov[2] or ARGV[6])
if r then return r end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[7]), ARGV[1])
for _, s in ipairs({ARGV[2], '*'}) do
  redis.call('HINCRBY', KEYS[1], 'held_tokens|' .. s, ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'held_usd_nano|' .. s, ARGV[4])
end
redis.call('EXPIRE', KEYS[1], ARGV[11])
return {0}
