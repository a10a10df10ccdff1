-- KEYS[1] prompt hash, KEYS[2] due zset, KEYS[3] finished zset
-- ARGV[1] prompt id, ARGV[2] now (unix ms)
-- Returns 0 not found, 1 cancelled, 2 not pending (a key that is not a
-- hash is not a pending prompt).
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'none' then return 0 end
if kind ~= 'hash' then return 2 end
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
if status ~= 'pending' then return 2 end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[2], 'updated_at', ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
return 1
