-- The directory's sends to clients, uids and groups on Redis (see directory.lua for the keys
-- and directory.rs for the calls): a script of its own, the hot path. A script's top level
-- runs on every call and each `local function` is a closure made anew, so the sends to one
-- uid (a batch's consecutive ones in one call) return before any is made; there is no sweep (every other operation and each link's timer
-- sweep, and a send counts only workers whose node event has a subscriber). A send to
-- everyone needs every worker's subscription count: the main script does it.
--
-- KEYS[1]: the set of workers with entries (routes the call to the directory's slot).
-- ARGV[1]: 'send' (or 'uid_sends', 'uid_resend', below); ARGV[2]: 'P' (PUBLISH) or 'S' (a Cluster:
-- SPUBLISH); ARGV[3]: the bytes forwarded to the nodes; ARGV[4]: the target, then its
-- arguments: 'clients', ids | 'uids', uids | 'groups', #groups, groups, excluded ids (names
-- and ids each once). Answer: connections reached, at subscribed nodes.

local D = '@PREFIX@'
local NODE = '@NODE@'

local data, to = ARGV[3], ARGV[4]
local PUB = 'PUBLISH'
if ARGV[2] == 'S' then
  PUB = 'SPUBLISH'
end

if ARGV[1] == 'uid_sends' then
  -- Sends to one uid each (the usual push), the consecutive ones of a batch in one call, in
  -- order: ARGV[3] is empty, ARGV[4], ARGV[5] are the first one's uid and the bytes
  -- forwarded, and so on. Answer: each send's count.
  local counts = {}
  for i = 4, #ARGV - 1, 2 do
    local r = redis.call('HGETALL', D .. 'uw:' .. ARGV[i])
    local n = 0
    for j = 1, #r, 2 do
      -- A worker's count (the uid's client ids, with a '-', are fields too).
      local k = tonumber(r[j + 1]) or 0
      if k > 0 and redis.call(PUB, NODE .. r[j], ARGV[i + 1]) > 0 then
        n = n + k
      end
    end
    counts[#counts + 1] = n
  end
  return counts
end

if ARGV[1] == 'uid_resend' then
  -- One send to one uid made from a link's cached copy of its holders that changed before
  -- it ran (uid_cache.rs): ARGV[4] the uid, ARGV[5] the bytes forwarded, ARGV[6..] the
  -- workers it reached. Forwarded to the holders not reached; every holder reached, either
  -- time, counts. Answer: connections reached.
  local reached = {}
  for i = 6, #ARGV do
    reached[ARGV[i]] = true
  end
  local r = redis.call('HGETALL', D .. 'uw:' .. ARGV[4])
  local n = 0
  for j = 1, #r, 2 do
    local k = tonumber(r[j + 1]) or 0
    if k > 0 and (reached[r[j]] or redis.call(PUB, NODE .. r[j], ARGV[5]) > 0) then
      n = n + k
    end
  end
  return n
end

-- Targets per worker, the workers in the order first met.
local per, order = {}, {}
local function add(w, k)
  if not per[w] then
    per[w] = 0
    order[#order + 1] = w
  end
  per[w] = per[w] + k
end
local function add_counts(hash)
  local r = redis.call('HGETALL', hash)
  for j = 1, #r, 2 do
    local k = tonumber(r[j + 1])
    if k then
      add(r[j], k)
    end
  end
end

local at = 5
if to == 'clients' then
  for i = at, #ARGV do
    local w = string.match(ARGV[i], '^(%d+)%-')
    if w and redis.call('HEXISTS', D .. 'c:' .. w, ARGV[i]) == 1 then
      add(w, 1)
    end
  end
elseif to == 'uids' then
  for i = at, #ARGV do
    add_counts(D .. 'uw:' .. ARGV[i])
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
    add_counts(D .. 'gw:' .. g)
    for i = at, #ARGV do
      if redis.call('SISMEMBER', D .. 'g:' .. g, ARGV[i]) == 1 then
        add(string.match(ARGV[i], '^(%d+)%-'), -1)
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
          add(string.match(id, '^(%d+)%-'), 1)
        end
      end
    end
  end
else
  return redis.error_reply('send.lua: target ' .. tostring(to) .. ' is the main script\'s')
end
local n = 0
for _, w in ipairs(order) do
  if per[w] > 0 and redis.call(PUB, NODE .. w, data) > 0 then
    n = n + per[w]
  end
end
return n
