-- KEYS[1] due zset, KEYS[2] finished zset, KEYS[3] fired stream
-- ARGV[1] now (unix ms), ARGV[2] limit, ARGV[3] hash key prefix, ARGV[4] stream maxlen
-- Returns a flat list: prompt id, stream id, scheduled-for ms, occurrence.
local now = tonumber(ARGV[1])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  local key = ARGV[3] .. id
  local h = redis.call('HMGET', key, 'status', 'fire_at', 'interval_seconds', 'end_at', 'fire_count',
    'platform', 'channel_id', 'user_id', 'text')
  if h[1] ~= 'pending' then
    -- The hash is gone or no longer pending: drop the stale index entry.
    redis.call('ZREM', KEYS[1], id)
  else
    local fire_at = tonumber(h[2])
    local interval = tonumber(h[3] or '0') * 1000
    local end_at = tonumber(h[4] or '0')
    local count = tonumber(h[5] or '0') + 1
    local sid = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*',
      'prompt_id', id, 'platform', h[6] or '', 'channel_id', h[7] or '', 'user_id', h[8] or '',
      'text', h[9] or '', 'scheduled_for', string.format('%d', fire_at), 'fired_at', ARGV[1],
      'occurrence', tostring(count), 'recurring', interval > 0 and '1' or '0')
    local nextAt = 0
    if interval > 0 then
      nextAt = fire_at + interval
      if nextAt <= now then
        nextAt = fire_at + (math.floor((now - fire_at) / interval) + 1) * interval
      end
      if end_at > 0 and nextAt > end_at then nextAt = 0 end
    end
    if nextAt > 0 then
      redis.call('HSET', key, 'fire_at', string.format('%d', nextAt), 'fire_count', tostring(count),
        'last_fired_at', ARGV[1], 'updated_at', ARGV[1])
      redis.call('ZADD', KEYS[1], string.format('%d', nextAt), id)
    else
      redis.call('HSET', key, 'status', 'executed', 'fire_count', tostring(count),
        'last_fired_at', ARGV[1], 'finished_at', ARGV[1], 'updated_at', ARGV[1])
      redis.call('ZREM', KEYS[1], id)
      redis.call('ZADD', KEYS[2], ARGV[1], id)
    end
    table.insert(out, id)
    table.insert(out, sid)
    table.insert(out, string.format('%d', fire_at))
    table.insert(out, tostring(count))
  end
end
return out
