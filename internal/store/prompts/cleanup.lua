-- KEYS[1] finished zset
-- ARGV[1] cutoff (unix ms), ARGV[2] batch size, ARGV[3] hash key prefix
-- Deletes up to ARGV[2] prompts that finished at or before the cutoff and
-- returns how many index entries it removed.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  local key = ARGV[3] .. id
  local kind = redis.call('TYPE', key).ok
  -- A prompt re-added under the same id while pending must survive. A key
  -- that is not a hash is one the tick recorded as invalid: it goes too.
  if kind ~= 'hash' or redis.call('HGET', key, 'status') ~= 'pending' then
    redis.call('DEL', key)
  end
  redis.call('ZREM', KEYS[1], id)
end
return #ids
