-- KEYS[1] due zset, KEYS[2] finished zset, KEYS[3] fired stream
-- ARGV[1] now (unix ms), ARGV[2] limit, ARGV[3] hash key prefix, ARGV[4] stream maxlen
-- Returns two flat lists: {fired, malformed}. fired: prompt id, stream id,
-- scheduled-for ms, occurrence; malformed: prompt id, reason.
--
-- The bot writes the prompt keys: every field is untrusted. A pending
-- prompt that cannot be fired is marked invalid (status, invalid_reason)
-- and moved to the finished set, never raised on, so one bad prompt does
-- not stop the others. Nothing below may raise on any key content.
local now = tonumber(ARGV[1])
local fired, malformed = {}, {}

-- Times and counts stay below 1e15 (year 33658 in ms), where every integer
-- is exact in a double and formats with %d.
local LIMIT = 1e15

-- num parses a decimal field: digits, an optional fraction, nothing else
-- (no sign, exponent, hex, inf, nan or spaces). A missing field is 0
-- unless required. Returns the value or nil and a reason.
local function num(v, field, required)
  if not v then
    if required then return nil, field .. ' is missing' end
    return 0
  end
  if not string.find(v, '^%d+%.?%d*$') then return nil, field .. ' must be a non-negative decimal number' end
  local n = tonumber(v)
  if not n or n >= LIMIT then return nil, field .. ' is out of range' end
  return n
end

local function present(v) return v and string.find(v, '%S') ~= nil end

-- check returns the parsed prompt, or nil and why it cannot fire.
local function check(h)
  local p, err = {}, nil
  p.fire_at, err = num(h[2], 'fire_at', true)
  if err then return nil, err end
  local interval
  interval, err = num(h[3], 'interval_seconds', false)
  if err then return nil, err end
  p.interval = math.floor(interval * 1000)
  if p.interval >= LIMIT then return nil, 'interval_seconds is out of range' end
  p.end_at, err = num(h[4], 'end_at', false)
  if err then return nil, err end
  p.count, err = num(h[5], 'fire_count', false)
  if err then return nil, err end
  p.fire_at, p.end_at, p.count = math.floor(p.fire_at), math.floor(p.end_at), math.floor(p.count) + 1
  for i, field in ipairs({'platform', 'channel_id'}) do
    if not present(h[5 + i]) then return nil, field .. ' is missing' end
  end
  if not present(h[9]) then return nil, 'text is missing' end
  return p
end

local function finish(id, key, fields)
  redis.call('HSET', key, unpack(fields))
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZADD', KEYS[2], ARGV[1], id)
end

local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  local key = ARGV[3] .. id
  local kind = redis.call('TYPE', key).ok
  if kind == 'none' then
    -- The hash is gone: drop the stale index entry.
    redis.call('ZREM', KEYS[1], id)
  elseif kind ~= 'hash' then
    -- Not a prompt at all. It cannot carry a status, so it is only moved
    -- out of the due set; cleanup deletes it with the finished prompts.
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZADD', KEYS[2], ARGV[1], id)
    table.insert(malformed, id)
    table.insert(malformed, 'key is a ' .. kind .. ', not a hash')
  else
    local h = redis.call('HMGET', key, 'status', 'fire_at', 'interval_seconds', 'end_at', 'fire_count',
      'platform', 'channel_id', 'user_id', 'text')
    local p, reason
    if h[1] == 'pending' then
      p, reason = check(h)
    elseif not h[1] then
      reason = 'status is missing'
    end
    if not p and not reason then
      -- No longer pending: drop the stale index entry.
      redis.call('ZREM', KEYS[1], id)
    else
      if not p then
        finish(id, key, {'status', 'invalid', 'invalid_reason', reason, 'finished_at', ARGV[1], 'updated_at', ARGV[1]})
        table.insert(malformed, id)
        table.insert(malformed, reason)
      else
        local count = string.format('%d', p.count)
        local sid = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*',
          'prompt_id', id, 'platform', h[6], 'channel_id', h[7], 'user_id', h[8] or '',
          'text', h[9], 'scheduled_for', string.format('%d', p.fire_at), 'fired_at', ARGV[1],
          'occurrence', count, 'recurring', p.interval > 0 and '1' or '0')
        local nextAt = 0
        if p.interval > 0 then
          nextAt = p.fire_at + p.interval
          if nextAt <= now then
            nextAt = p.fire_at + (math.floor((now - p.fire_at) / p.interval) + 1) * p.interval
          end
          if (p.end_at > 0 and nextAt > p.end_at) or nextAt >= LIMIT then nextAt = 0 end
        end
        if nextAt > 0 then
          redis.call('HSET', key, 'fire_at', string.format('%d', nextAt), 'fire_count', count,
            'last_fired_at', ARGV[1], 'updated_at', ARGV[1])
          redis.call('ZADD', KEYS[1], string.format('%d', nextAt), id)
        else
          finish(id, key, {'status', 'executed', 'fire_count', count,
            'last_fired_at', ARGV[1], 'finished_at', ARGV[1], 'updated_at', ARGV[1]})
        end
        table.insert(fired, id)
        table.insert(fired, sid)
        table.insert(fired, string.format('%d', p.fire_at))
        table.insert(fired, count)
      end
    end
  end
end
return {fired, malformed}
