-- KEYS[1] the ledger of the reservation's day, KEYS[2] reservations in
-- flight (zset)
-- ARGV[1] reservation, ARGV[2] task, ARGV[3] purpose, ARGV[4] model,
-- ARGV[5] prompt tokens, ARGV[6] completion tokens, ARGV[7] nano-USD,
-- ARGV[8] '1' charged from an estimate, ARGV[9] '1' unpriced model,
-- ARGV[10] reserved tokens, ARGV[11] reserved nano-USD, ARGV[12] ledger
-- TTL (s), ARGV[13] items (messages) the call covered, ARGV[14] '1' when
-- the call was made and answered ('0': released without a charge)
-- Returns 1 when charged, 0 when the reservation was already settled (a
-- replayed script) or released at its lease's end: a call is charged once.
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return 0 end
local h, task = KEYS[1], ARGV[2]
local tokens = tonumber(ARGV[5]) + tonumber(ARGV[6])
for _, s in ipairs({task, '*'}) do
  redis.call('HINCRBY', h, 'held_tokens|' .. s, string.format('%d', -tonumber(ARGV[10])))
  redis.call('HINCRBY', h, 'held_usd_nano|' .. s, string.format('%d', -tonumber(ARGV[11])))
  if ARGV[14] == '1' then
    redis.call('HINCRBY', h, 'spent_tokens|' .. s, string.format('%d', tokens))
    redis.call('HINCRBY', h, 'spent_usd_nano|' .. s, ARGV[7])
  end
end
if ARGV[14] == '1' then
  local sfx = '|' .. task .. '|' .. ARGV[3] .. '|' .. ARGV[4]
  redis.call('HINCRBY', h, 'calls' .. sfx, 1)
  redis.call('HINCRBY', h, 'prompt' .. sfx, ARGV[5])
  redis.call('HINCRBY', h, 'completion' .. sfx, ARGV[6])
  redis.call('HINCRBY', h, 'usd_nano' .. sfx, ARGV[7])
  if ARGV[8] == '1' then redis.call('HINCRBY', h, 'estimated' .. sfx, 1) end
  if ARGV[9] == '1' then redis.call('HINCRBY', h, 'unpriced' .. sfx, 1) end
  if tonumber(ARGV[13]) > 0 then redis.call('HINCRBY', h, 'items' .. sfx, ARGV[13]) end
end
redis.call('EXPIRE', h, ARGV[12])
return 1
