-- History on Redis (channel::history): KEYS = the name's meta hash (e: epoch, o: last offset,
-- t: ttl in ms, n: size) and its stream (entries `OFFSET-0` with fields t: kept at, in ms;
-- d: data). The stream is trimmed approximately (`MAXLEN ~`, whole nodes: cheap); a read
-- counts only the last `n` as kept, so the bound is exact as readers see it.
-- ARGV[1] = 'K' (keep publishes) or 'R' (read since a position).
--   K: ARGV = K, publish command, channel, size, ttl ms, a new epoch (used if none is kept),
--      the publisher's clock in ms, then the data of one or more publishes, in order; each is
--      published as `~pEPOCH:OFFSET:` .. data; answers the publishes' replies, in order.
--   R: ARGV = R, since epoch ('' for where it stands), since offset; answers the page, PHP
--      serialized: {epoch, top, recovered, items: {offset: data, ...}}.
local epoch = redis.call('HGET', KEYS[1], 'e')
if ARGV[1] == 'K' then
  local ttl = tonumber(ARGV[5])
  if not epoch then
    epoch = ARGV[6]
    redis.call('DEL', KEYS[2])
    redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0, 't', ttl, 'n', ARGV[4])
  end
  local n = #ARGV - 7
  local first = redis.call('HINCRBY', KEYS[1], 'o', n) - n
  local replies = {}
  for i = 1, n do
    local off = first + i
    local d = ARGV[7 + i]
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], off .. '-0', 't', ARGV[7], 'd', d)
    replies[i] = redis.call(ARGV[2], ARGV[3], '~p' .. epoch .. ':' .. off .. ':' .. d)
  end
  redis.call('PEXPIRE', KEYS[2], ttl)
  -- The epoch outlives the messages by an hour: a reader that missed nothing still recovers.
  redis.call('PEXPIRE', KEYS[1], ttl + 3600000)
  return replies
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local top = 0
if epoch then
  top = tonumber(redis.call('HGET', KEYS[1], 'o'))
else
  epoch = '0'
end
local items = {}
local recovered = false
if ARGV[2] ~= '' then
  local since = tonumber(ARGV[3])
  local size = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
  if ARGV[2] == epoch and since <= top and since + size >= top then
    if since == top then
      recovered = true
    else
      local ttl = tonumber(redis.call('HGET', KEYS[1], 't') or '0')
      local entries = redis.call('XRANGE', KEYS[2], (since + 1) .. '-0', '+')
      local e = entries[1]
      -- Recovered when the first message missed is still there, and young enough.
      if e and e[1] == (since + 1) .. '-0' and tonumber(e[2][2]) > now - ttl then
        recovered = true
        for _, m in ipairs(entries) do
          local o = string.sub(m[1], 1, -3)
          items[#items + 1] = 'i:' .. o .. ';' .. m[2][4]
        end
      end
    end
  end
end
return 'a:4:{s:5:"epoch";i:' .. epoch .. ';s:3:"top";i:' .. top ..
  ';s:9:"recovered";b:' .. (recovered and '1' or '0') .. ';s:5:"items";a:' .. #items ..
  ':{' .. table.concat(items) .. '}}'
