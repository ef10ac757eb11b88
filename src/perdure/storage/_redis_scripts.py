"""The Redis backend's key layout and its Lua scripts (see `perdure.storage.redis` for what they store).

Why a module of its own: the key names and the scripts are the backend's storage format on the
server, kept together because each per-execution script addresses its keys by position in the list
`Keys.execution` builds; the client side (`perdure.storage.redis`) only passes keys and arguments and
reads the replies. Every write is one script, so the fence check, the seq check, the journal append,
the head write and the index updates happen atomically, and the Lua tables of statuses are built
from the Python enum so the two can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..records import ExecutionStatus

__all__ = ["SCRIPTS", "STATUSES", "Keys"]

STATUSES = [s.value for s in ExecutionStatus]
_FINISHED = (ExecutionStatus.COMPLETED.value, ExecutionStatus.CANCELLED.value)

# Per-execution scripts get KEYS = head, journal, lease, idx:all, idx:expiry, idx:status:<s>... in
# `STATUSES` order, tomb, idx:tombstones, the change channel, and cancel (a pending cancel request)
# (see `Keys.execution`; a channel is not a key, but passing it here keeps every name of the layout
# out of the scripts' text).

# Lua tables built from the Python enums, so the scripts can never disagree with them.
_LUA_TABLES = (
    f"local STATUS_INDEX = {{{', '.join(f'[{name!r}] = {i}' for i, name in enumerate(STATUSES))}}}\n"
    f"local FINISHED = {{{', '.join(f'[{name!r}] = true' for name in _FINISHED)}}}\n"
)

_LUA_COMMON = (
    _LUA_TABLES
    + f"local TOMB_KEY = {6 + len(STATUSES)}\n"
    + """local FIRST_STATUS_KEY = 6
local TOMB_INDEX = TOMB_KEY + 1
local CHANNEL = TOMB_KEY + 2
local CANCEL = TOMB_KEY + 3

-- Announce a change of this execution to the storage's change feeds (delivered with the write:
-- a script is atomic). An empty channel name announces nothing (the benchmark's baseline).
local function announce(id)
  if KEYS[CHANNEL] ~= '' then
    redis.call('PUBLISH', KEYS[CHANNEL], id)
  end
end

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The holder of an unexpired lease that is not `owner`, or nil when `owner` may write.
local function fence(owner)
  local held = redis.call('HMGET', KEYS[3], 'o', 'e')
  if held[1] and held[1] ~= owner and tonumber(held[2]) > now_us() then
    return held[1]
  end
  return nil
end

-- Why a write of this id must not go ahead: 'deleted' (tombstoned), or 'missing' when the head is
-- gone and the write may not create it (a step append, a write of a running attempt); nil if it may.
local function refusal(must_exist)
  if redis.call('EXISTS', KEYS[1]) == 1 then
    return nil
  end
  if redis.call('EXISTS', KEYS[TOMB_KEY]) == 1 then
    return 'deleted'
  end
  if must_exist then
    return 'missing'
  end
  return nil
end

-- The reply refusing a head write or step append of this id ({'deleted'}, {'missing'}, or
-- {'lease', holder} when another owner's unexpired lease fences it), or nil when it may go ahead.
local function blocked(must_exist, owner)
  local refused = refusal(must_exist)
  if refused then
    return {refused}
  end
  local holder = fence(owner)
  if holder then
    return {'lease', holder}
  end
  return nil
end

-- Remove the id from the execution indexes (all, expiry, statuses).
local function unindex(id)
  for i = 4, TOMB_KEY - 1 do
    redis.call('ZREM', KEYS[i], id)
  end
end

-- Write the head and keep the indexes and the TTL of the execution's keys in step with its status.
local function put_head(id, codec, payload, status, score, ttl_ms)
  local old = redis.call('HGET', KEYS[1], 's')
  redis.call('HSET', KEYS[1], 'c', codec, 'd', payload, 's', status)
  if old ~= status then
    -- Remove from every other status index, not only the stored one: a head that expired or was
    -- replaced by a raw write leaves no trustworthy old status behind.
    for name, offset in pairs(STATUS_INDEX) do
      if name ~= status then
        redis.call('ZREM', KEYS[FIRST_STATUS_KEY + offset], id)
      end
    end
  end
  redis.call('ZADD', KEYS[4], score, id)
  if STATUS_INDEX[status] then
    redis.call('ZADD', KEYS[FIRST_STATUS_KEY + STATUS_INDEX[status]], score, id)
  end
  if ttl_ms > 0 and FINISHED[status] then
    for _, i in ipairs({1, 2, 3, CANCEL}) do
      redis.call('PEXPIRE', KEYS[i], ttl_ms)
    end
    redis.call('ZADD', KEYS[5], string.format('%.0f', now_ms() + ttl_ms), id)
  elseif old and FINISHED[old] then
    for _, i in ipairs({1, 2, 3, CANCEL}) do
      redis.call('PERSIST', KEYS[i])
    end
    redis.call('ZREM', KEYS[5], id)
  end
end
"""
)

# ARGV: id, owner, codec, payload, status, score, ttl_ms
_LUA_SAVE = (
    _LUA_COMMON
    + """
local refused = blocked(ARGV[2] ~= '', ARGV[2])
if refused then
  return refused
end
put_head(ARGV[1], ARGV[3], ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7]))
announce(ARGV[1])
return {'ok'}
"""
)

# ARGV: id, owner, codec, payload, status, score, ttl_ms, seq of the first entry, entry... (one entry
# for a step, several for a batch: consecutive seqs from the first).
_LUA_APPEND = (
    _LUA_COMMON
    + """
local refused = blocked(true, ARGV[2])
if refused then
  return refused
end
local seq = tonumber(ARGV[8])
local count = #ARGV - 8
local length = redis.call('LLEN', KEYS[2])
if length ~= seq then
  -- A client retry of this very write whose reply was lost finds its own entries last: done already.
  if length ~= seq + count then
    return {'conflict', length}
  end
  local stored = redis.call('LRANGE', KEYS[2], seq, -1)
  for i = 1, count do
    if stored[i] ~= ARGV[8 + i] then
      return {'conflict', length}
    end
  end
else
  -- RPUSH takes many values; pushed in slices so that no batch outgrows Lua's stack for `unpack`.
  for first = 9, #ARGV, 256 do
    redis.call('RPUSH', KEYS[2], unpack(ARGV, first, math.min(first + 255, #ARGV)))
  end
end
put_head(ARGV[1], ARGV[3], ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7]))
announce(ARGV[1])
return {'ok'}
"""
)

# ARGV: id, only_if_gone ('1': forget index entries of an execution whose head expired), force ('1':
# delete even under an unexpired lease), tombstone ttl_ms, max_score ('' or: delete only if the
# execution's `updated_at` score is below it, for cleanup), kept statuses ('' or ',failed,paused,':
# for cleanup, never delete an execution whose head has one of them). Replies {'ok', existed} or
# {'leased', owner, expiry}.
_LUA_DELETE = (
    _LUA_COMMON
    + """
if ARGV[2] == '1' then
  if redis.call('EXISTS', KEYS[1]) == 1 then
    local pttl = redis.call('PTTL', KEYS[1])
    if pttl > 0 then
      redis.call('ZADD', KEYS[5], string.format('%.0f', now_ms() + pttl), ARGV[1])
    else
      redis.call('ZREM', KEYS[5], ARGV[1])
    end
    return {'ok', 0}
  end
  -- The head expired: forget what is left, without a tombstone (an expiry is not a delete).
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[CANCEL])
  unindex(ARGV[1])
  return {'ok', 0}
end
if redis.call('EXISTS', KEYS[1], KEYS[2]) == 0 then
  unindex(ARGV[1])
  return {'ok', 0}
end
if ARGV[5] ~= '' then
  local score = redis.call('ZSCORE', KEYS[4], ARGV[1])
  if score and tonumber(score) >= tonumber(ARGV[5]) then
    return {'ok', 0}
  end
end
if ARGV[6] and ARGV[6] ~= '' then
  local status = redis.call('HGET', KEYS[1], 's')
  if status and status ~= '' and string.find(ARGV[6], ',' .. status .. ',', 1, true) then
    return {'ok', 0}
  end
end
if ARGV[3] ~= '1' then
  local held = redis.call('HMGET', KEYS[3], 'o', 'e')
  if held[1] and tonumber(held[2]) > now_us() then
    return {'leased', held[1], held[2]}
  end
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[CANCEL])
unindex(ARGV[1])
local now = now_us()
local ttl_ms = tonumber(ARGV[4])
redis.call('SET', KEYS[TOMB_KEY], string.format('%.0f', now), 'PX', ttl_ms)
redis.call('ZADD', KEYS[TOMB_INDEX], string.format('%.0f', now), ARGV[1])
-- Forget index entries of tombstones that expired on their own.
redis.call('ZREMRANGEBYSCORE', KEYS[TOMB_INDEX], '-inf', '(' .. string.format('%.0f', now - ttl_ms * 1000))
announce(ARGV[1])
return {'ok', 1}
"""
)

# KEYS: idx:tombstones, tomb:<id>... ARGV: cutoff (microseconds), id... Purges the tombstones of the
# given ids that are older than the cutoff; returns how many.
_LUA_PURGE = """
local purged = 0
for i = 2, #KEYS do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) < tonumber(ARGV[1]) then
    redis.call('DEL', KEYS[i])
    redis.call('ZREM', KEYS[1], ARGV[i])
    purged = purged + 1
  end
end
return purged
"""

# KEYS: head, lease. ARGV: owner, ttl_us, steal ('1' to take the lease from ARGV[4] too), steal_from
_LUA_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'missing'}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local held = redis.call('HMGET', KEYS[2], 'o', 'e')
local stealable = ARGV[3] == '1' and held[1] == ARGV[4]
if held[1] and held[1] ~= ARGV[1] and not stealable and tonumber(held[2]) > now then
  return {'leased', held[1], held[2]}
end
local expires = string.format('%.0f', now + tonumber(ARGV[2]))
redis.call('HSET', KEYS[2], 'o', ARGV[1], 'e', expires)
local pttl = redis.call('PTTL', KEYS[1])
if pttl > 0 then
  redis.call('PEXPIRE', KEYS[2], pttl)
end
local head = redis.call('HMGET', KEYS[1], 'c', 'd')
return {'ok', expires, head[1], head[2]}
"""

# KEYS: head, lease. ARGV: owner, ttl_us
_LUA_RENEW = """
local holder = redis.call('HGET', KEYS[2], 'o')
if redis.call('EXISTS', KEYS[1]) == 0 or holder ~= ARGV[1] then
  return {'lost', holder or ''}
end
local t = redis.call('TIME')
local expires = string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2]) + tonumber(ARGV[2]))
redis.call('HSET', KEYS[2], 'e', expires)
return {'ok', expires}
"""

# KEYS: lease. ARGV: owner
_LUA_RELEASE = """
if redis.call('HGET', KEYS[1], 'o') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

# KEYS: head, cancel, channel ('' announces nothing). ARGV: id, reason. The first request stays (its
# time is the server's, in microseconds); it expires with the head. Replies 1, or 0 without a head.
_LUA_CANCEL = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  local t = redis.call('TIME')
  local now = string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2]))
  redis.call('HSET', KEYS[2], 't', now, 'r', ARGV[2])
  local pttl = redis.call('PTTL', KEYS[1])
  if pttl > 0 then
    redis.call('PEXPIRE', KEYS[2], pttl)
  end
end
if KEYS[3] ~= '' then
  redis.call('PUBLISH', KEYS[3], ARGV[1])
end
return 1
"""

# KEYS: idx:expiry, idx:status:<s>... ARGV: batch. Counts, or the executions due for forgetting first.
_LUA_STATS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
if #due > 0 then
  return {'due', due}
end
local counts = {}
for i = 2, #KEYS do
  counts[i - 1] = redis.call('ZCARD', KEYS[i])
end
return {'ok', counts}
"""

SCRIPTS = {
    "save": _LUA_SAVE,
    "append": _LUA_APPEND,
    "delete": _LUA_DELETE,
    "purge": _LUA_PURGE,
    "acquire": _LUA_ACQUIRE,
    "renew": _LUA_RENEW,
    "release": _LUA_RELEASE,
    "stats": _LUA_STATS,
    "cancel": _LUA_CANCEL,
}


@dataclass(frozen=True)
class Keys:
    """Key names of one storage prefix (and the name of its change channel)."""

    prefix: str
    announce: bool = True
    """Whether writes publish on `channel` (False only to measure what publishing costs)."""

    @property
    def channel(self) -> str:
        """The pub/sub channel the write scripts announce changed execution ids on."""
        return f"{self.prefix}changes"

    def head(self, execution_id: str) -> str:
        return f"{self.prefix}head:{execution_id}"

    def journal(self, execution_id: str) -> str:
        return f"{self.prefix}journal:{execution_id}"

    def lease(self, execution_id: str) -> str:
        return f"{self.prefix}lease:{execution_id}"

    def tomb(self, execution_id: str) -> str:
        return f"{self.prefix}tomb:{execution_id}"

    def cancel(self, execution_id: str) -> str:
        return f"{self.prefix}cancel:{execution_id}"

    @property
    def tombstones(self) -> str:
        return f"{self.prefix}idx:tombstones"

    @property
    def all(self) -> str:
        return f"{self.prefix}idx:all"

    @property
    def expiry(self) -> str:
        return f"{self.prefix}idx:expiry"

    def status(self, status: str) -> str:
        return f"{self.prefix}idx:status:{status}"

    def statuses(self) -> list[str]:
        return [self.status(s) for s in STATUSES]

    def execution(self, execution_id: str) -> list[str]:
        """KEYS of the per-execution scripts, in the order `_LUA_COMMON` expects."""
        return [
            self.head(execution_id),
            self.journal(execution_id),
            self.lease(execution_id),
            self.all,
            self.expiry,
            *self.statuses(),
            self.tomb(execution_id),
            self.tombstones,
            self.channel if self.announce else "",
            self.cancel(execution_id),
        ]
