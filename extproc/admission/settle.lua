-- The end of a hold (issue 23; docs/ARCHITECTURE.md, "Spend holds"), atomically per request.
-- Called by the ledger writer right after the request's ledger row committed (dead-lettered
-- rows included), and by the ext_proc or the reaper for a request that will never have a row.
-- In one step the hold leaves `live` and, when a charge was committed, the charge enters `done`
-- under the ledger version the commit produced: there is no moment at which a charge is
-- counted neither by a balance read (which sees versions up to its own) nor by the holds.
-- Idempotent: settling twice releases nothing twice (the hold is gone) and adds the same member.
--
-- KEYS: 4 per spend scope (live, held, done, done_at: see admit.lua).
-- ARGV: usage_id, retention_ms, then per scope: charged microdollars, version ("" when nothing
--       was committed in this scope; "+inf" when the commit's version is unknown: every read
--       subtracts it until it is pruned).
-- Returns the microdollars released from the first scope.

local usage_id = ARGV[1]
local retention = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local released = 0
for scope = 1, #KEYS / 4 do
  local live, held, done, done_at = KEYS[scope * 4 - 3], KEYS[scope * 4 - 2], KEYS[scope * 4 - 1], KEYS[scope * 4]
  local amount = redis.call('HGET', live, usage_id)
  if amount then
    redis.call('HDEL', live, usage_id)
    if redis.call('DECRBY', held, amount) <= 0 then redis.call('DEL', held) end
    if scope == 1 then released = tonumber(amount) end
  end
  local charged = ARGV[1 + scope * 2]
  local version = ARGV[2 + scope * 2]
  if version ~= '' and tonumber(charged) > 0 then
    local member = usage_id .. '|' .. charged
    redis.call('ZADD', done, version, member)
    redis.call('ZADD', done_at, now, member)
    redis.call('PEXPIRE', done, retention)
    redis.call('PEXPIRE', done_at, retention)
  end
end
return released
