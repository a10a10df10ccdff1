-- KEYS[1] deferrals (hash: task -> record), KEYS[2] budget overrides,
-- KEYS[3] the chat-LLM kill switch, KEYS[4] today's ledger
-- ARGV[1] today (YYYY-MM-DD), ARGV[2] '1' when the switch is off for good,
-- ARGV[3] key prefix of a task's parked runs, ARGV[4] one task to look at
-- ('' every task, and lift the deferrals that ended), then the configured
-- budgets: scope, limit ('t:N' tokens, 'u:N' nano-USD), scope, limit...
-- Returns per deferral {task, held '1'/'0', record, parked runs of a
-- lifted one...}.
local cfg = {}
for i = 5, #ARGV, 2 do cfg[ARGV[i]] = ARGV[i + 1] end
-- held: the refusal that deferred the task would still be made.
local function held(raw)
  local ok, rec = pcall(cjson.decode, raw)
  if not ok or type(rec) ~= 'table' then return false end
  if rec.reason == 'kill_switch' then
    if ARGV[2] == '1' then return true end
    local v = redis.call('GET', KEYS[3])
    return v ~= false and off(v)
  end
  if rec.window ~= ARGV[1] or type(rec.scope) ~= 'string' then return false end
  local lim = redis.call('HGET', KEYS[2], rec.scope) or cfg[rec.scope]
  if not lim then return false end
  local unit, n = string.match(lim, '^([tu]):(%d+)$')
  if not unit then return false end
  n = tonumber(n)
  local need = tonumber(rec.need_tokens) or 1
  if unit == 'u' then need = tonumber(rec.need_usd_nano) or 0 end
  local t = parse(redis.call('HGET', KEYS[4], 'total|' .. rec.scope), 4)
  local used = t[1] + t[3]
  if unit == 'u' then used = t[2] + t[4] end
  return n == 0 or used + need > n
end
local out = {}
if ARGV[4] ~= '' then
  local raw = redis.call('HGET', KEYS[1], ARGV[4])
  if raw then out[1] = {ARGV[4], held(raw) and '1' or '0', raw} end
  return out
end
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local task, raw = all[i], all[i + 1]
  if held(raw) then
    out[#out + 1] = {task, '1', raw}
  else
    redis.call('HDEL', KEYS[1], task)
    local pk = ARGV[3] .. task
    local e = {task, '0', raw}
    for _, m in ipairs(redis.call('SMEMBERS', pk)) do e[#e + 1] = m end
    redis.call('DEL', pk)
    out[#out + 1] = e
  end
end
return out
