-- KEYS[1] deferrals (hash: task -> record), KEYS[2] the task's parked runs
-- ARGV[1] task, ARGV[2] record (JSON), ARGV[3] a parked run ('' none),
-- ARGV[4] TTL of the parked runs' set (s)
-- Records the deferral, keeping the time it began if the task was already
-- deferred. Returns 1 for a new deferral, 0 for one that goes on.
local old = redis.call('HGET', KEYS[1], ARGV[1])
local rec = ARGV[2]
if old then
  local ok1, o = pcall(cjson.decode, old)
  local ok2, n = pcall(cjson.decode, rec)
  if ok1 and ok2 and type(o) == 'table' and type(n) == 'table' and tonumber(o.since_ms) then
    n.since_ms = o.since_ms
    rec = cjson.encode(n)
  end
end
redis.call('HSET', KEYS[1], ARGV[1], rec)
if ARGV[3] ~= '' then
  redis.call('SADD', KEYS[2], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
if old then return 0 end
return 1
