-- The directory on Redis (see directory.rs, and docs/channel.md "Directory on Redis"): one
-- script, one call per operation, atomic (the sends but those to everyone have their own, send.lua). Every key and every node event's channel carries the
-- hash tag {werkmann:dir}, so on a Redis Cluster all of them sit in one slot and this script
-- may touch and publish to them all.
--
-- KEYS[1]: the set of workers with entries (routes the call to the directory's slot).
-- ARGV[1]: the operation; ARGV[2]: 'P' (one Redis: PUBLISH, PUBSUB NUMSUB) or 'S' (a Cluster:
-- SPUBLISH, PUBSUB SHARDNUMSUB); ARGV[3]: the bytes forwarded to the nodes (the operation as
-- it came, a PHP string); then the operation's arguments (directory.rs, `script_args`).
--
-- Keys (D = the prefix):
--   D c:W      hash: worker W's client ids -> their uid ('' for none)
--   D cg:ID    set: client ID's groups              D cs:ID  hash: session key -> JSON value
--   D uw:UID   hash: the client ids bound to UID -> '', and each worker holding some of
--              them -> how many (a field with a '-' is a client id, one without a worker)
--   D g:G      set: client ids in group G           D gw:G   hash: worker -> how many of them
--   D uc       how many uids are bound              D gs     set: groups with members
--   D workers  set: workers with entries            D alive:W  the link registering for W
--   D swept    exists for @SWEEP_MS@ ms after a sweep
--   D p:G      hash: presence group G's keys -> their connections in it
--   D pi:G     hash: key -> its info (JSON)   D pr:G  hash: key -> published when it goes
--   D pe:G     the channel G's announcements are published to
--   D pq:G     the stream its hooks are added to   D ph:G  hash: key -> hooked when it goes
--   D cp:ID    hash: the presence groups of client ID -> its key in each
--   D pgs      set: the presence groups with members

local D = '@PREFIX@'
local NODE = '@NODE@'
local ALL = '@ALL@'

local op, mode, data = ARGV[1], ARGV[2], ARGV[3]
local PUB, NUMSUB = 'PUBLISH', 'NUMSUB'
if mode == 'S' then
  PUB, NUMSUB = 'SPUBLISH', 'SHARDNUMSUB'
end
local at = 4
local function nextarg()
  local v = ARGV[at]
  at = at + 1
  return v
end
local function nextint()
  return tonumber(nextarg())
end

local function worker_of(id)
  return string.match(id, '^(%d+)%-')
end

-- A registered client's worker and uid ('' for none); false if not registered.
local function client_record(id)
  local w = worker_of(id)
  if not w then
    return false
  end
  local u = redis.call('HGET', D .. 'c:' .. w, id)
  if not u then
    return false
  end
  return w, u
end

-- The worker of a registered client, or false.
local function client_worker(id)
  return (client_record(id))
end

-- Forward the operation to worker w's node: how many subscribers it reached.
local function forward(w)
  return redis.call(PUB, NODE .. w, data)
end

-- Which of `workers` have a subscriber to their node event: a set.
local function subscribed(workers)
  local out = {}
  for i = 1, #workers, 200 do
    local last = math.min(i + 199, #workers)
    local chans = {}
    for j = i, last do
      chans[#chans + 1] = NODE .. workers[j]
    end
    local r = redis.call('PUBSUB', NUMSUB, unpack(chans))
    for j = i, last do
      if tonumber(r[2 * (j - i) + 2]) > 0 then
        out[workers[j]] = true
      end
    end
  end
  return out
end

-- Add client id (of worker w) to group `name`.
local function link(name, id, w)
  if redis.call('SADD', D .. 'g:' .. name, id) == 1 then
    redis.call('HINCRBY', D .. 'gw:' .. name, w, 1)
    redis.call('SADD', D .. 'gs', name)
  end
end

-- Take client id (of worker w) out of group `name`.
local function unlink(name, id, w)
  if redis.call('SREM', D .. 'g:' .. name, id) == 1 then
    if redis.call('HINCRBY', D .. 'gw:' .. name, w, -1) <= 0 then
      redis.call('HDEL', D .. 'gw:' .. name, w)
    end
    if redis.call('EXISTS', D .. 'g:' .. name) == 0 then
      redis.call('SREM', D .. 'gs', name)
    end
  end
end

-- Bind client id (of worker w) to uid `uid` (one hash holds both its clients and their
-- workers' counts: a third of the memory of a set and a hash per uid).
local function link_uid(uid, id, w)
  local uw = D .. 'uw:' .. uid
  if redis.call('HSETNX', uw, id, '') == 1 then
    if redis.call('HINCRBY', uw, w, 1) == 1 and redis.call('HLEN', uw) == 2 then
      redis.call('INCR', D .. 'uc')
    end
  end
end

-- Unbind client id (of worker w) from uid `uid`.
local function unlink_uid(uid, id, w)
  local uw = D .. 'uw:' .. uid
  if redis.call('HDEL', uw, id) == 1 then
    if redis.call('HINCRBY', uw, w, -1) <= 0 then
      redis.call('HDEL', uw, w)
    end
    if redis.call('EXISTS', uw) == 0 and redis.call('DECR', D .. 'uc') <= 0 then
      redis.call('DEL', D .. 'uc')
    end
  end
end

-- Add `item` to the stream of queue `stream` (as the channel's queues do), unless empty.
local function hook(stream, item)
  if stream and stream ~= '' and item and item ~= '' then
    redis.call('XADD', stream, 'MAXLEN', '~', 1000000, '*', 'd', item)
  end
end

-- Publish `payload` on `chan`, unless empty.
local function announce(chan, payload)
  if chan and payload and payload ~= '' then
    redis.call(PUB, chan, payload)
  end
end

-- Client id leaves presence group g: 1 if it was in it. Its key's last connection out
-- publishes the key's `removed` (and hooks its hook's).
local function presence_leave(id, g)
  local cp = D .. 'cp:' .. id
  local key = redis.call('HGET', cp, g)
  if not key then
    return 0
  end
  redis.call('HDEL', cp, g)
  local p = D .. 'p:' .. g
  if redis.call('HINCRBY', p, key, -1) <= 0 then
    redis.call('HDEL', p, key)
    local removed = redis.call('HGET', D .. 'pr:' .. g, key)
    local hooked = redis.call('HGET', D .. 'ph:' .. g, key)
    redis.call('HDEL', D .. 'pr:' .. g, key)
    redis.call('HDEL', D .. 'ph:' .. g, key)
    redis.call('HDEL', D .. 'pi:' .. g, key)
    announce(redis.call('GET', D .. 'pe:' .. g), removed)
    hook(redis.call('GET', D .. 'pq:' .. g), hooked)
    if redis.call('EXISTS', p) == 0 then
      redis.call('DEL', D .. 'pe:' .. g, D .. 'pq:' .. g)
      redis.call('SREM', D .. 'pgs', g)
    end
  end
  return 1
end

-- Forget client id: 1 if it was registered.
local function remove_client(id)
  local w, u = client_record(id)
  if not w then
    return 0
  end
  if u ~= '' then
    unlink_uid(u, id, w)
  end
  local cg = D .. 'cg:' .. id
  for _, g in ipairs(redis.call('SMEMBERS', cg)) do
    unlink(g, id, w)
  end
  for _, g in ipairs(redis.call('HKEYS', D .. 'cp:' .. id)) do
    presence_leave(id, g)
  end
  redis.call('DEL', cg, D .. 'cs:' .. id)
  redis.call('HDEL', D .. 'c:' .. w, id)
  if redis.call('EXISTS', D .. 'c:' .. w) == 0 then
    redis.call('SREM', D .. 'workers', w)
  end
  return 1
end

-- Forget every client of worker w, and who registered them: how many.
local function drop_worker(w)
  local ids = redis.call('HKEYS', D .. 'c:' .. w)
  for _, id in ipairs(ids) do
    remove_client(id)
  end
  redis.call('SREM', D .. 'workers', w)
  redis.call('DEL', D .. 'alive:' .. w)
  return #ids
end

-- Set `n` session keys (next arguments: key, JSON value) of client id.
local function set_pairs(id, n)
  local s = D .. 'cs:' .. id
  for _ = 1, n do
    local k = nextarg()
    local v = nextarg()
    redis.call('HSET', s, k, v)
  end
end

-- At most once per @SWEEP_MS@ ms, by whichever call comes first: forget the clients of every
-- worker whose node is gone: its node event has no subscriber (the node's connection closed),
-- (once its registration is not fresh), or the link that registered it stopped renewing its
-- alive key (the node vanished).
local function sweep()
  if redis.call('EXISTS', D .. 'workers') == 0 then
    return 0
  end
  if not redis.call('SET', D .. 'swept', '1', 'PX', @SWEEP_MS@, 'NX') then
    return 0
  end
  local workers = redis.call('SMEMBERS', D .. 'workers')
  local subs = subscribed(workers)
  local n = 0
  for _, w in ipairs(workers) do
    -- Milliseconds its alive key has left (-2: none). Registered or renewed in the last
    -- moments, a worker's node may not have subscribed yet: not swept for that.
    local left = redis.call('PTTL', D .. 'alive:' .. w)
    if left == -2 or (not subs[w] and left <= @FRESH_FROM_MS@) then
      n = n + drop_worker(w)
    end
  end
  return n
end

if op == 'drop' then
  -- A link closes: the workers it registered, where it still is the one (ARGV: link, workers).
  local me = nextarg()
  local n = 0
  for i = at, #ARGV do
    if redis.call('GET', D .. 'alive:' .. ARGV[i]) == me then
      n = n + drop_worker(ARGV[i])
    end
  end
  return n
elseif op == 'release' then
  -- Worker ids given up (ARGV: workers).
  local n = 0
  for i = at, #ARGV do
    n = n + drop_worker(ARGV[i])
  end
  return n
end

local swept = sweep()

if op == 'sweep' then
  return swept
elseif op == 'refresh' or op == 'check' then
  -- The link renews the alive keys of the workers it registered (ARGV: link, TTL ms,
  -- workers); 'check' only looks, leaving a live key's time as it is (a worker registered
  -- moments ago stays swept-if-unsubscribed after its fresh seconds). Per worker: 0 renewed
  -- (or nothing to do), 1 it had expired or been swept and the node is subscribed (register
  -- again: its alive key set anew), 2 another link registered it since.
  local me, ttl = nextarg(), nextarg()
  local out = {}
  local workers = {}
  for i = at, #ARGV do
    workers[#workers + 1] = ARGV[i]
  end
  local subs = subscribed(workers)
  for i, w in ipairs(workers) do
    local key = D .. 'alive:' .. w
    local holder = redis.call('GET', key)
    if holder == me then
      if op == 'refresh' then
        redis.call('PEXPIRE', key, ttl)
      end
      out[i] = 0
    elseif holder then
      out[i] = 2
    elseif subs[w] then
      redis.call('SET', key, me, 'PX', ttl)
      out[i] = 1
    else
      out[i] = 0
    end
  end
  return out
elseif op == 'register' then
  -- ARGV: link, TTL ms, count, then per client: id, uid or '', #groups, groups,
  -- #session keys, (key, JSON value)s. A client registered again is replaced.
  local me, ttl = nextarg(), nextarg()
  local count = nextint()
  local seen = {}
  for _ = 1, count do
    local id = nextarg()
    local uid = nextarg()
    local w = worker_of(id)
    remove_client(id)
    redis.call('HSET', D .. 'c:' .. w, id, uid)
    if uid ~= '' then
      link_uid(uid, id, w)
    end
    for _ = 1, nextint() do
      local g = nextarg()
      if redis.call('SADD', D .. 'cg:' .. id, g) == 1 then
        link(g, id, w)
      end
    end
    set_pairs(id, nextint())
    seen[w] = true
  end
  -- After every client is in: one registered twice in a call was removed (its worker, if it
  -- held no other, taken out of the workers) before it was added again.
  for w in pairs(seen) do
    redis.call('SADD', D .. 'workers', w)
    redis.call('SET', D .. 'alive:' .. w, me, 'PX', ttl)
  end
  return count
elseif op == 'presence_join' then
  -- Answer: -1 for an unknown client, 0 when the group is full, else its members (key, info).
  local id, g, key, info, chan, added, removed = nextarg(), nextarg(), nextarg(), nextarg(),
    nextarg(), nextarg(), nextarg()
  local max = nextint()
  local stream, hook_added, hook_removed = nextarg(), nextarg(), nextarg()
  local quiet = nextarg() == '1'
  if not client_worker(id) then
    return -1
  end
  local cp = D .. 'cp:' .. id
  if redis.call('HEXISTS', cp, g) == 0 then
    local p = D .. 'p:' .. g
    if redis.call('HEXISTS', p, key) == 0 then
      if redis.call('HLEN', p) >= max then
        return 0
      end
      -- A group's event and queue are its first join's while it has members.
      if redis.call('EXISTS', p) == 0 then
        redis.call('SET', D .. 'pe:' .. g, chan)
        if stream ~= '' then
          redis.call('SET', D .. 'pq:' .. g, stream)
        else
          redis.call('DEL', D .. 'pq:' .. g)
        end
      end
      redis.call('HSET', D .. 'pi:' .. g, key, info)
      redis.call('HSET', D .. 'pr:' .. g, key, removed)
      if stream ~= '' then
        redis.call('HSET', D .. 'ph:' .. g, key, hook_removed)
      end
      announce(redis.call('GET', D .. 'pe:' .. g), added)
      hook(redis.call('GET', D .. 'pq:' .. g), hook_added)
    end
    redis.call('HINCRBY', p, key, 1)
    redis.call('SADD', D .. 'pgs', g)
    redis.call('HSET', cp, g, key)
  end
  if quiet then
    return 1
  end
  return redis.call('HGETALL', D .. 'pi:' .. g)
elseif op == 'presence_leave' then
  local id = nextarg()
  return presence_leave(id, nextarg())
elseif op == 'get_presence' then
  return redis.call('HGETALL', D .. 'pi:' .. nextarg())
elseif op == 'get_presence_counts' then
  local counts = redis.call('HVALS', D .. 'p:' .. nextarg())
  local conns = 0
  for _, c in ipairs(counts) do
    conns = conns + tonumber(c)
  end
  return { #counts, conns }
elseif op == 'list_presence_groups' then
  local prefix = nextarg()
  local out = {}
  for _, g in ipairs(redis.call('SMEMBERS', D .. 'pgs')) do
    if string.sub(g, 1, #prefix) == prefix then
      out[#out + 1] = g
    end
  end
  return out
elseif op == 'unregister' then
  local n = 0
  for i = at, #ARGV do
    n = n + remove_client(ARGV[i])
  end
  return n
elseif op == 'bind_uid' then
  local id, uid = nextarg(), nextarg()
  local w, old = client_record(id)
  if not w then
    return 0
  end
  if old ~= uid then
    if old ~= '' then
      unlink_uid(old, id, w)
    end
    redis.call('HSET', D .. 'c:' .. w, id, uid)
    link_uid(uid, id, w)
  end
  forward(w)
  return 1
elseif op == 'unbind_uid' then
  local id, uid = nextarg(), nextarg()
  local w, old = client_record(id)
  if not w or old ~= uid then
    return 0
  end
  unlink_uid(uid, id, w)
  redis.call('HSET', D .. 'c:' .. w, id, '')
  forward(w)
  return 1
elseif op == 'join_group' then
  local id, g = nextarg(), nextarg()
  local w = client_worker(id)
  if not w then
    return 0
  end
  if redis.call('SADD', D .. 'cg:' .. id, g) == 1 then
    link(g, id, w)
  end
  forward(w)
  return 1
elseif op == 'leave_group' then
  local id, g = nextarg(), nextarg()
  local w = client_worker(id)
  if not w or redis.call('SREM', D .. 'cg:' .. id, g) == 0 then
    return 0
  end
  unlink(g, id, w)
  forward(w)
  return 1
elseif op == 'ungroup' then
  -- Members removed, counted where their node is subscribed.
  local g = nextarg()
  local members = redis.call('SMEMBERS', D .. 'g:' .. g)
  if #members == 0 then
    return 0
  end
  for _, id in ipairs(members) do
    redis.call('SREM', D .. 'cg:' .. id, g)
  end
  local per = redis.call('HGETALL', D .. 'gw:' .. g)
  redis.call('DEL', D .. 'g:' .. g, D .. 'gw:' .. g)
  redis.call('SREM', D .. 'gs', g)
  local n = 0
  for i = 1, #per, 2 do
    if forward(per[i]) > 0 then
      n = n + tonumber(per[i + 1])
    end
  end
  return n
elseif op == 'set_session' or op == 'update_session' then
  -- ARGV: id, #keys, (key, JSON value)s.
  local id = nextarg()
  local w = client_worker(id)
  if not w then
    return 0
  end
  if op == 'set_session' then
    redis.call('DEL', D .. 'cs:' .. id)
  end
  set_pairs(id, nextint())
  forward(w)
  return 1
elseif op == 'close_client' then
  local w = client_worker(nextarg())
  if not w then
    return 0
  end
  if forward(w) > 0 then
    return 1
  end
  return 0
elseif op == 'send' then
  -- To everyone (the other sends are send.lua's). ARGV: 'all', excluded ids. Connections
  -- reached, at subscribed nodes.
  local to = nextarg()
  if to == 'all' then
    redis.call(PUB, ALL, data)
    local workers = redis.call('SMEMBERS', D .. 'workers')
    local subs = subscribed(workers)
    local n = 0
    for _, w in ipairs(workers) do
      if subs[w] then
        n = n + redis.call('HLEN', D .. 'c:' .. w)
      end
    end
    for i = at, #ARGV do
      local w = client_worker(ARGV[i])
      if w and subs[w] then
        n = n - 1
      end
    end
    return n
  end
  return redis.error_reply('send: target ' .. tostring(to) .. ' is send.lua\'s')
elseif op == 'is_online' then
  if client_worker(nextarg()) then
    return 1
  end
  return 0
elseif op == 'is_uid_online' then
  return redis.call('EXISTS', D .. 'uw:' .. nextarg())
elseif op == 'get_client_id_by_uid' then
  local ids = {}
  for _, f in ipairs(redis.call('HKEYS', D .. 'uw:' .. nextarg())) do
    if string.find(f, '-', 1, true) then
      ids[#ids + 1] = f
    end
  end
  return ids
elseif op == 'get_uid_by_client_id' then
  local _, u = client_record(nextarg())
  if not u or u == '' then
    return false
  end
  return u
elseif op == 'get_client_id_count_by_group' then
  return redis.call('SCARD', D .. 'g:' .. nextarg())
elseif op == 'get_client_id_list_by_group' then
  return redis.call('SMEMBERS', D .. 'g:' .. nextarg())
elseif op == 'get_uid_list_by_group' or op == 'get_uid_count_by_group' then
  -- The members' uids, as found (the link sorts and counts them once each).
  local uids = {}
  for _, id in ipairs(redis.call('SMEMBERS', D .. 'g:' .. nextarg())) do
    local _, u = client_record(id)
    if u and u ~= '' then
      uids[#uids + 1] = u
    end
  end
  return uids
elseif op == 'get_all_client_id_count' then
  local n = 0
  for _, w in ipairs(redis.call('SMEMBERS', D .. 'workers')) do
    n = n + redis.call('HLEN', D .. 'c:' .. w)
  end
  return n
elseif op == 'get_all_uid_count' then
  return tonumber(redis.call('GET', D .. 'uc') or '0')
elseif op == 'get_all_group_id_list' then
  return redis.call('SMEMBERS', D .. 'gs')
elseif op == 'get_session' then
  -- {1, key, JSON value, …}, or nothing for an unknown client.
  local id = nextarg()
  if not client_worker(id) then
    return false
  end
  local out = { 1 }
  for _, v in ipairs(redis.call('HGETALL', D .. 'cs:' .. id)) do
    out[#out + 1] = v
  end
  return out
end
return redis.error_reply('unknown directory operation ' .. tostring(op))
