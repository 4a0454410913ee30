"""The Lua scripts that make admission and registration atomic in Redis.

Keys (``P`` = ``cluster.key_prefix``):

- ``P:workers``        set of worker ids (members whose info has expired are pruned lazily)
- ``P:w:<worker>``     hash: the worker's registration (url, engine, slots, ...), with a TTL
- ``P:c:<worker>``     hash: call id -> claim time (ms), one entry per slot or queue place
                        taken on that worker; same TTL, so a dead worker's slots free themselves
- ``P:call:<call id>`` string: the worker that owns the call (routes GET/DELETE by call id)
- ``P:tok:<token id>`` string: the call a call token started (a token starts one call in the
                        whole cluster); it lasts as long as a token lives
- ``P:k:<key name>``   hash: call id -> worker, the calls an API key (or its tokens) holds, for
                        the key's ``max_calls`` across the cluster; an entry whose claim has
                        left ``P:c:<worker>`` no longer counts and is pruned at the key's next
                        claim

Every script runs on one Redis (not Redis Cluster): they read keys they compute.
"""

from __future__ import annotations

CLAIM = """
local p, call = ARGV[1], ARGV[2]
local max_queue, owner_ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
local key, key_max, token, token_ttl = ARGV[5], tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if token ~= '' then
  local started = redis.call('GET', p .. ':tok:' .. token)
  if started and started ~= call then return {'token_used', '', '', 0, 0} end
end
local kkey = p .. ':k:' .. key
if key_max > 0 then
  local held = redis.call('HGETALL', kkey)
  local live = 0
  for i = 1, #held, 2 do
    if held[i] ~= call and redis.call('HEXISTS', p .. ':c:' .. held[i + 1], held[i]) == 1 then
      live = live + 1
    else
      redis.call('HDEL', kkey, held[i])
    end
  end
  if live >= key_max then return {'key_limit', '', '', 0, 0} end
end
local excluded = {}
for i = 9, #ARGV do excluded[ARGV[i]] = true end
local ids = redis.call('SMEMBERS', p .. ':workers')
local best, best_free, q_best, q_load = nil, 0, nil, nil
local queued_total = 0
for _, id in ipairs(ids) do
  local w = redis.call('HMGET', p .. ':w:' .. id, 'slots', 'max_queue', 'ready')
  if not w[1] then
    redis.call('SREM', p .. ':workers', id)
  else
    local slots, mq = tonumber(w[1]), tonumber(w[2])
    local used = redis.call('HLEN', p .. ':c:' .. id)
    local queued = math.max(0, used - slots)
    queued_total = queued_total + queued
    if w[3] == '1' and slots > 0 and not excluded[id] then
      local free = slots - used
      if free > best_free then
        best, best_free = id, free
      elseif free <= 0 and queued < mq then
        local load = (queued + 1) / slots
        if q_load == nil or load < q_load then q_best, q_load = id, load end
      end
    end
  end
end
local kind, id, position = 'full', nil, 0
if best then
  kind, id = 'slot', best
elseif q_best and queued_total < max_queue then
  kind, id = 'queued', q_best
end
if not id then return {kind, '', '', 0, queued_total} end
local ckey = p .. ':c:' .. id
local w = redis.call('HMGET', p .. ':w:' .. id, 'url', 'ttl_ms', 'slots')
redis.call('HSET', ckey, call, now)
redis.call('PEXPIRE', ckey, tonumber(w[2]))
redis.call('SET', p .. ':call:' .. call, id, 'PX', owner_ttl)
if kind == 'queued' then
  position = redis.call('HLEN', ckey) - tonumber(w[3])
  queued_total = queued_total + 1
end
if token ~= '' then redis.call('SET', p .. ':tok:' .. token, call, 'PX', token_ttl) end
if key_max > 0 then
  redis.call('HSET', kkey, call, id)
  redis.call('PEXPIRE', kkey, owner_ttl)
end
return {kind, id, w[1], position, queued_total}
"""
"""ARGV: prefix, call id, cluster max queue, owner TTL (ms), API key name, the key's
max_calls (0: no limit), call token id ('' without one), token TTL (ms), then worker ids to
pass over.  Returns [kind ('slot' | 'queued' | 'full' | 'token_used' | 'key_limit'), worker
id, worker url, queue position, calls queued in the cluster].  A token that started another
call, or a key at its limit, claims nothing.  A free slot goes to the ready worker with the
most free slots; with none free, a queue place on the worker with the shortest queue per
slot.  A claim that retries for the same call id (a worker passed over) keeps its token and
counts once against its key."""

HEARTBEAT = """
local p, id = ARGV[1], ARGV[2]
local ttl, grace, owner_ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local nfields = tonumber(ARGV[6])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wkey, ckey = p .. ':w:' .. id, p .. ':c:' .. id
local fields = {}
for i = 7, 6 + 2 * nfields do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', wkey, unpack(fields))
redis.call('PEXPIRE', wkey, ttl)
redis.call('SADD', p .. ':workers', id)
local live = {}
for i = 7 + 2 * nfields, #ARGV do
  local call = ARGV[i]
  live[call] = true
  redis.call('HSETNX', ckey, call, now)
  redis.call('SET', p .. ':call:' .. call, id, 'PX', owner_ttl)
end
local pruned = 0
local claims = redis.call('HGETALL', ckey)
for i = 1, #claims, 2 do
  if not live[claims[i]] and now - tonumber(claims[i + 1]) > grace then
    redis.call('HDEL', ckey, claims[i])
    pruned = pruned + 1
  end
end
if redis.call('EXISTS', ckey) == 1 then redis.call('PEXPIRE', ckey, ttl) end
return pruned
"""
"""ARGV: prefix, worker id, TTL (ms), claim grace (ms), owner TTL (ms), number of info
fields, the fields as name, value pairs, then the ids of the worker's live calls.
Registers (or re-registers, after Redis lost its data) the worker and its live calls, and
frees the claims it does not hold that are older than the grace (a gateway that claimed a
slot and never delivered the offer, a release that failed).  Returns the claims freed."""

RELEASE = """
local p, id, call, ended_ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local token = ARGV[5]
local freed = redis.call('HDEL', p .. ':c:' .. id, call)
if redis.call('GET', p .. ':call:' .. call) == id then
  redis.call('PEXPIRE', p .. ':call:' .. call, ended_ttl)
end
if token ~= '' and redis.call('GET', p .. ':tok:' .. token) == call then
  redis.call('DEL', p .. ':tok:' .. token)
end
return freed
"""
"""ARGV: prefix, worker id, call id, TTL of the owner record of an ended call (ms), and the
id of a call token to give back ('' for none: a call that started keeps its token spent).
Frees the call's slot (or queue place); GET /v1/calls/<id> still reaches its worker a while."""
