-- The directory's sends on Redis (see directory.lua for the keys and directory.rs for the
-- calls): a script of its own, the hot path. It has no helper functions (a script's top level
-- runs on every call, and each `local function` is a closure made anew) and no sweep (every
-- other operation and each link's timer sweep; a send counts only workers whose node event
-- has a subscriber).
--
-- KEYS[1]: the set of workers with entries (routes the call to the directory's slot).
-- ARGV[1]: 'send'; ARGV[2]: 'P' (PUBLISH, PUBSUB NUMSUB) or 'S' (a Cluster: SPUBLISH, PUBSUB
-- SHARDNUMSUB); ARGV[3]: the bytes forwarded to the nodes; ARGV[4]: the target, then its
-- arguments: 'all', excluded ids | 'clients', ids | 'uids', uids | 'groups', #groups, groups,
-- excluded ids (names and ids each once). Answer: connections reached, at subscribed nodes.

local D = '@PREFIX@'
local NODE = '@NODE@'
local ALL = '@ALL@'

local data, to = ARGV[3], ARGV[4]
local PUB = 'PUBLISH'
if ARGV[2] == 'S' then
  PUB = 'SPUBLISH'
end

if to == 'uids' and #ARGV == 5 then
  -- One uid (the usual send): its workers, each forwarded once.
  local r = redis.call('HGETALL', D .. 'uw:' .. ARGV[5])
  local n = 0
  for j = 1, #r, 2 do
    local k = tonumber(r[j + 1])
    if k > 0 and redis.call(PUB, NODE .. r[j], data) > 0 then
      n = n + k
    end
  end
  return n
end

if to == 'all' then
  redis.call(PUB, ALL, data)
  local NUMSUB = 'NUMSUB'
  if ARGV[2] == 'S' then
    NUMSUB = 'SHARDNUMSUB'
  end
  local workers = redis.call('SMEMBERS', D .. 'workers')
  local subs = {}
  for i = 1, #workers, 200 do
    local last = math.min(i + 199, #workers)
    local chans = {}
    for j = i, last do
      chans[#chans + 1] = NODE .. workers[j]
    end
    local r = redis.call('PUBSUB', NUMSUB, unpack(chans))
    for j = i, last do
      if tonumber(r[2 * (j - i) + 2]) > 0 then
        subs[workers[j]] = true
      end
    end
  end
  local n = 0
  for _, w in ipairs(workers) do
    if subs[w] then
      n = n + redis.call('SCARD', D .. 'w:' .. w)
    end
  end
  for i = 5, #ARGV do
    local w = redis.call('HGET', D .. 'c:' .. ARGV[i], 'w')
    if w and subs[w] then
      n = n - 1
    end
  end
  return n
end

-- Targets per worker, the workers in the order first met.
local per, order = {}, {}
local at = 5
if to == 'clients' then
  for i = at, #ARGV do
    local w = redis.call('HGET', D .. 'c:' .. ARGV[i], 'w')
    if w then
      if not per[w] then
        per[w] = 0
        order[#order + 1] = w
      end
      per[w] = per[w] + 1
    end
  end
elseif to == 'uids' then
  for i = at, #ARGV do
    local r = redis.call('HGETALL', D .. 'uw:' .. ARGV[i])
    for j = 1, #r, 2 do
      local w = r[j]
      if not per[w] then
        per[w] = 0
        order[#order + 1] = w
      end
      per[w] = per[w] + tonumber(r[j + 1])
    end
  end
elseif to == 'groups' then
  local ng = tonumber(ARGV[at])
  local groups = {}
  for i = 1, ng do
    groups[i] = ARGV[at + i]
  end
  at = at + ng + 1
  if ng == 1 then
    local g = groups[1]
    local r = redis.call('HGETALL', D .. 'gw:' .. g)
    for j = 1, #r, 2 do
      local w = r[j]
      if not per[w] then
        per[w] = 0
        order[#order + 1] = w
      end
      per[w] = per[w] + tonumber(r[j + 1])
    end
    for i = at, #ARGV do
      if redis.call('SISMEMBER', D .. 'g:' .. g, ARGV[i]) == 1 then
        local w = string.match(ARGV[i], '^(%d+)%-')
        per[w] = per[w] - 1
      end
    end
  else
    local skip, seen = {}, {}
    for i = at, #ARGV do
      skip[ARGV[i]] = true
    end
    for _, g in ipairs(groups) do
      for _, id in ipairs(redis.call('SMEMBERS', D .. 'g:' .. g)) do
        if not skip[id] and not seen[id] then
          seen[id] = true
          local w = string.match(id, '^(%d+)%-')
          if not per[w] then
            per[w] = 0
            order[#order + 1] = w
          end
          per[w] = per[w] + 1
        end
      end
    end
  end
else
  return redis.error_reply('send: unknown target ' .. tostring(to))
end
local n = 0
for _, w in ipairs(order) do
  if per[w] > 0 and redis.call(PUB, NODE .. w, data) > 0 then
    n = n + per[w]
  end
end
return n
