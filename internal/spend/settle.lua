-- KEYS[1] the ledger of the reservation's day, KEYS[2] reservations in
-- flight (zset)
-- ARGV[1] reservation, ARGV[2] task, ARGV[3] purpose, ARGV[4] model,
-- ARGV[5] prompt tokens, ARGV[6] completion tokens, ARGV[7] nano-USD,
-- ARGV[8] '1' charged from an estimate, ARGV[9] '1' unpriced model,
-- ARGV[10] reserved tokens, ARGV[11] reserved nano-USD, ARGV[12] ledger
-- TTL (s), ARGV[13] items (messages) the call covered, ARGV[14] '1' when
-- the call was made and answered ('0': released without a charge)
-- A line (task, purpose, model) is one field, line|<task>|<purpose>|<model>:
-- "calls prompt completion usd_nano estimated unpriced items"; a scope's
-- totals are total|<scope> (reserve.lua).
-- Returns 1 when charged, 0 when the reservation was already settled (a
-- replayed script) or released at its lease's end: a call is charged once.
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return 0 end
local h, task = KEYS[1], ARGV[2]
local line = 'line|' .. task .. '|' .. ARGV[3] .. '|' .. ARGV[4]
local v = redis.call('HMGET', h, 'total|' .. task, 'total|*', line)
local prompt, completion, usd = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local charged = ARGV[14] == '1'
local out = {}
for i, s in ipairs({'total|' .. task, 'total|*'}) do
  local t = parse(v[i], 5)
  t[3], t[4] = t[3] - tonumber(ARGV[10]), t[4] - tonumber(ARGV[11])
  if charged then t[1], t[2] = t[1] + prompt + completion, t[2] + usd end
  out[#out + 1] = s
  out[#out + 1] = fmt(t)
end
if charged then
  local l = parse(v[3], 7)
  l[1], l[2], l[3], l[4] = l[1] + 1, l[2] + prompt, l[3] + completion, l[4] + usd
  if ARGV[8] == '1' then l[5] = l[5] + 1 end
  if ARGV[9] == '1' then l[6] = l[6] + 1 end
  l[7] = l[7] + tonumber(ARGV[13])
  out[#out + 1] = line
  out[#out + 1] = fmt(l)
end
redis.call('HSET', h, unpack(out))
redis.call('EXPIRE', h, ARGV[12])
return 1
