# SPDX-License-Identifier: MIT
"""The Redis scripts behind the shared limits: each one atomic, each timed by Redis's clock.

Every script reads ``TIME`` on the Redis server, so nodes whose clocks disagree still
agree on when a lease lapses or a token comes due. Numbers written back are formatted
with ``%.0f``: Lua's own number-to-string keeps only 14 digits, too few for
microseconds since the epoch.

Keys (``P`` is ``[cluster] prefix``):
  ``P conn:<dest>``  sorted set of connection leases, member ``node:n``, score = expiry (ms)
  ``P want:<dest>``  present while a node was lately refused a lease of the destination
  ``P rate:<dest>``  the GCRA "theoretical arrival time" of the destination (µs)
  ``P suspend``      hash dest → ``"<until ms> <code> <enhanced> <class> <text>"``
  ``P limit``        hash dest → ``"<until ms> <connections> <rate>"``
  ``P nodes``        sorted set node id → last heartbeat (ms)
  ``P suppress``     hash entry key → ``"<ms> +<reason>"`` or ``"<ms> -"`` (the suppression list)
  ``P suppress:log`` stream of the suppression changes that took, fields ``k`` and ``v``

The suppression scripts alone take their times from the change (the node that made
it): a change made while Redis was away must keep its place in the order.
"""

from __future__ import annotations

_NOW_MS = "local t = redis.call('TIME'); local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"

# KEYS: lease set, want flag; ARGV: limit, ttl ms, want flag life ms, members wanted. Returns
# the members granted; a refusal raises the want flag, so holders give leases back for turns.
ACQUIRE = (
    _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local free = tonumber(ARGV[1]) - redis.call('ZCARD', KEYS[1])
local granted = {}
if free <= 0 then redis.call('SET', KEYS[2], '1', 'PX', ARGV[3]) end
for i = 4, #ARGV do
  if free <= 0 then break end
  redis.call('ZADD', KEYS[1], string.format('%.0f', now + tonumber(ARGV[2])), ARGV[i])
  granted[#granted + 1] = ARGV[i]
  free = free - 1
end
if #granted > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return granted
"""
)

# KEYS: lease set, want flag; ARGV: ttl ms, "XX" or "", members held. Pushes their expiry out.
# With "XX" only members still there (one released meanwhile stays released); with "" it re-adds
# those that lapsed while Redis was away: their connections are open, so they count. Returns
# 1 when another node was lately refused a lease (the want flag is up), else 0.
RENEW = (
    _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local exp = string.format('%.0f', now + tonumber(ARGV[1]))
for i = 3, #ARGV do
  if ARGV[2] == 'XX' then redis.call('ZADD', KEYS[1], 'XX', exp, ARGV[i])
  else redis.call('ZADD', KEYS[1], exp, ARGV[i]) end
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return redis.call('EXISTS', KEYS[2])
"""
)

# GCRA (generic cell rate algorithm) token bucket. KEYS[1] the destination's arrival time;
# ARGV: emission interval T (µs per message), burst (tokens), wanted n.
# Grants k = min(n, floor((now + burst·T − tat) / T)) tokens and moves tat by k·T, so over
# any window W at most W/T + burst tokens leave, whoever takes them. Returns {k, 0}, or
# {0, µs until n tokens are there}: a refused node comes back for a whole batch.
TAKE = """
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local T = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local n = tonumber(ARGV[3])
local k = math.floor((now + burst * T - tat) / T)
if k > n then k = n end
if k < 1 then return {0, tat + n * T - burst * T - now} end
tat = tat + k * T
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
return {k, 0}
"""

# KEYS[1] hash; ARGV: field, duration ms, the rest of the value. Keeps the later end.
HOLD = (
    _NOW_MS
    + """
local ends = now + tonumber(ARGV[2])
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local old_until = tonumber(string.match(old, '^(%d+)'))
  if old_until and old_until >= ends then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], string.format("%.0f", ends) .. ' ' .. ARGV[3])
return 1
"""
)

# KEYS: nodes set, suspend hash, limit hash; ARGV: node id, horizon ms (nodes seen within it).
# The heartbeat, the node count and every live suspension and limit, as time left (ms):
# {nodes, {dest, ms left, rest, …}, {dest, ms left, rest, …}}. Ended entries are removed.
TICK = (
    _NOW_MS
    + """
redis.call('ZADD', KEYS[1], string.format('%.0f', now), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
local out = {redis.call('ZCARD', KEYS[1])}
for h = 2, 3 do
  local live = {}
  local all = redis.call('HGETALL', KEYS[h])
  for i = 1, #all, 2 do
    local ends, rest = string.match(all[i + 1], '^(%d+) (.*)$')
    if ends and tonumber(ends) > now then
      live[#live + 1] = all[i]
      live[#live + 1] = tonumber(ends) - now
      live[#live + 1] = rest
    else
      redis.call('HDEL', KEYS[h], all[i])
    end
  end
  out[#out + 1] = live
end
return out
"""
)

# KEYS: the suppression hash and its log stream; ARGV: the log's approximate length, then
# (entry key, "<ms> +reason" | "<ms> -") pairs. A change takes only over an older one (a
# removal also over an add of the same ms, and of two adds of one ms the greater value, so
# every order of the same changes ends alike; the same change again does nothing), and only a
# change that took is logged: replaying the log gives the hash. Returns {took, {entry key,
# value, …}}: the value that beat each refused change, for the node that made it to take.
SUPPRESS = """
local took, beaten = 0, {}
for i = 2, #ARGV, 2 do
  local ms, op = string.match(ARGV[i + 1], '^(%d+) ([+-])')
  if ms then
    ms = tonumber(ms)
    local take = true
    local old = redis.call('HGET', KEYS[1], ARGV[i])
    if old then
      local old_ms, old_op = string.match(old, '^(%d+) ([+-])')
      old_ms = tonumber(old_ms)
      if old_ms and old_ms > ms then take = false end
      if old_ms == ms and (old_op == '-' or (op == '+' and old >= ARGV[i + 1])) then take = false end
    end
    if take then
      redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'k', ARGV[i], 'v', ARGV[i + 1])
      took = took + 1
    elseif old ~= ARGV[i + 1] then
      beaten[#beaten + 1] = ARGV[i]
      beaten[#beaten + 1] = old
    end
  end
end
return {took, beaten}
"""
