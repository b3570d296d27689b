-- Admission of one paid request, atomically, in one round trip (issue 23; docs/ARCHITECTURE.md,
-- "Spend holds"). Every key of a call shares one hash tag (the account's), so one Redis Cluster
-- slot. Integers only: money is microdollars, never a float.
--
-- Layout, so that further checks (operator rate limits) join the same script: parse the
-- arguments, CHECK every scope without writing anything, DECIDE, then WRITE every scope or none,
-- and return the binding scope.
--
-- A spend scope (a balance the request spends from) has four keys, in this order:
--   live     hash  usage_id -> microdollars held by a request whose ledger row is not committed
--   held     string: the sum of `live`
--   done     zset  "<usage_id>|<microdollars>" scored by the ledger version after its commit
--   done_at  zset  the same members scored by the Redis time (ms) of the commit, for pruning
-- A committed charge stays in `done` for `retention` ms: a balance read that did not see it
-- (its version is lower than the charge's) still subtracts it, so no charge is ever counted
-- neither in the balance read nor here (the writer moves a hold from `live` to `done` in one
-- step, settle.lua).
--
-- KEYS: 4 per spend scope.
-- ARGV: usage_id, bound (H), floor (the least hold worth sending upstream: the input plus the
--       minimum reply), retention_ms, then per spend scope: balance (microdollars, as read from
--       Postgres), version (the ledger counter that read saw).
-- Returns {held, binding, available}: held > 0 admitted with that hold (the bound, or less but
-- at least the floor: the caller lowers max_tokens to fit it); held = 0 refused. binding: the
-- 1-based scope with the least available (0: none), available: its microdollars after live
-- holds and unseen charges (before this request's hold).

local usage_id = ARGV[1]
local bound = tonumber(ARGV[2])
local floor = tonumber(ARGV[3])
local retention = tonumber(ARGV[4])
local scopes = #KEYS / 4
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function key(scope, part) return KEYS[(scope - 1) * 4 + part] end

-- Charges committed more than `retention` ago are in every balance read still in use.
local function prune(scope)
  local done, done_at = key(scope, 3), key(scope, 4)
  local old = redis.call('ZRANGEBYSCORE', done_at, '-inf', now - retention)
  if #old > 0 then
    redis.call('ZREM', done, unpack(old))
    redis.call('ZREMRANGEBYSCORE', done_at, '-inf', now - retention)
  end
end

-- What the scope has left for this request.
local function available(scope)
  local balance = tonumber(ARGV[4 + (scope - 1) * 2 + 1])
  local version = ARGV[4 + (scope - 1) * 2 + 2]
  local held = tonumber(redis.call('GET', key(scope, 2)) or '0')
  local unseen = 0
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', key(scope, 3), '(' .. version, '+inf')) do
    unseen = unseen + tonumber(string.match(member, '|(%d+)$'))
  end
  return balance - held - unseen
end

-- Admission is idempotent per usage id: a request already holding is not held twice.
if scopes > 0 and redis.call('HEXISTS', key(1, 1), usage_id) == 1 then
  return {tonumber(redis.call('HGET', key(1, 1), usage_id)), 0, 0}
end

-- CHECK: nothing is written yet.
local binding, least = 0, nil
for scope = 1, scopes do
  prune(scope)
  local left = available(scope)
  if least == nil or left < least then binding, least = scope, left end
end

-- DECIDE: the bound if it fits everywhere; else what is left if the floor fits; else nothing.
local hold = bound
if least ~= nil and least < bound then
  if least >= floor and least > 0 then hold = least else hold = 0 end
end
if hold <= 0 then return {0, binding, least or 0} end

-- WRITE: every scope, or (above) none.
for scope = 1, scopes do
  redis.call('HSET', key(scope, 1), usage_id, hold)
  redis.call('INCRBY', key(scope, 2), hold)
end
return {hold, binding, least or 0}
