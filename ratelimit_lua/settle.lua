#!lua
--[[
settle: one account's settlements and lease renewals, batched into one call. For each record
it releases the request's reservation (if still there), charges the real cost into the
current bucket of both rolling windows, appends the usage metadata to the capped log stream
and bumps the dashboard aggregates. Charging does not depend on the reservation: a request
that outlived its reservation is still billed.

Idempotent by request id: a settled id is remembered in a zset for settled_ttl_ms, and a
repeat (a retry after a timed-out write that did apply, a spool replay) changes nothing.
A release-only record (no log) frees a reservation whose admission outcome was unknown and
remembers the id too, so an admission Valkey executes late (after a hang) reserves nothing.

Renewals: a long request's reservation is a lease (score = expiry ms); a renewal moves the
expiry of a reservation still held to now + lease_ms.

Window layout and bucket rule: see admit.lua. Aggregates hash fields (UTC indexes):
  "h:<hours since epoch>"                          milli-credits charged in that hour
  "d:<days since epoch>:<model>:<n|in|out|cr|cw|mc>"  requests, input, output, cache-read,
                                                      cache-write tokens, milli-credits
  "last_h"                                          hour of the last prune
Entries older than aggregate_days are pruned once per hour.

KEYS (all share the account's hash tag)
  1 5-hour window hash   2 7-day window hash   3 inflight zset   4 reserved hash
  5 log stream   6 aggregates hash   7 settled zset   8.. key hashes named by the records
ARGV
  1 now_ms   2 window_5h_ms   3 bucket_5h_ms   4 window_7d_ms   5 bucket_7d_ms
  6 log_maxlen (approximate)   7 aggregate_days   8 settled_ttl_ms   9 lease_ms
  10 n (renewals)   11..10+n request ids to renew
  then one packed record per settlement, a JSON array:
    [request_id, cost_mc, key (index into KEYS, 0: none), log]
  log: a flat [field, value, ...] array of metadata (never content), or 0 for release-only;
  it holds "model", "input_tokens", "output_tokens", "cache_read_input_tokens",
  "cache_creation_input_tokens" for the aggregates.
A record whose key hash no longer exists (the account was erased while the request ran) is
acknowledged and dropped: settling must not recreate an erased account's usage keys.
RETURNS {applied, repeated}: records applied now, and records already settled before.
]]

local now = tonumber(ARGV[1])
local w5_ms, b5_ms = tonumber(ARGV[2]), tonumber(ARGV[3])
local w7_ms, b7_ms = tonumber(ARGV[4]), tonumber(ARGV[5])
local log_maxlen = ARGV[6]
local days = tonumber(ARGV[7])
local settled_ttl = tonumber(ARGV[8])
local lease_ms = tonumber(ARGV[9])
local n_renew = tonumber(ARGV[10])

local function int(n)
  return string.format('%d', n)
end

-- Renewals: only reservations still held move; every live one expires within lease_ms.
if n_renew > 0 then
  local renewed = 0
  for i = 11, 10 + n_renew do
    if redis.call('ZADD', KEYS[3], 'XX', 'CH', int(now + lease_ms), ARGV[i]) == 1 then
      renewed = renewed + 1
    end
  end
  if renewed > 0 then
    redis.call('PEXPIRE', KEYS[3], lease_ms)
    redis.call('PEXPIRE', KEYS[4], lease_ms)
  end
end

redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', int(now))

local function charge(wkey, window_ms, bucket_ms, cost)
  local start = now - now % bucket_ms
  redis.call('HINCRBY', wkey, 'total', int(cost))
  if redis.call('HINCRBY', wkey, int(start), int(cost)) ~= cost then
    return
  end
  -- A new bucket: it may be the oldest (clock skew) and it extends the window's lifetime;
  -- past start + window + bucket every bucket has left, so an idle window just vanishes.
  local head = tonumber(redis.call('HGET', wkey, 'head'))
  if head == nil or start < head then
    redis.call('HSET', wkey, 'head', int(start))
  end
  redis.call('PEXPIRE', wkey, window_ms + 2 * bucket_ms)
end

local agg = KEYS[6]
local hour = math.floor(now / 3600000)
local day = math.floor(now / 86400000)
local applied, repeated, erased = 0, 0, 0

for i = 11 + n_renew, #ARGV do
  local rec = cjson.decode(ARGV[i])
  local request_id, cost, key_index, log = rec[1], rec[2], rec[3], rec[4]
  if key_index > 0 and redis.call('EXISTS', KEYS[key_index]) == 0 then
    -- The key is gone: its account was erased while the request ran. Nothing of it may be
    -- written back (a deletion leaves no trace); the record counts as done.
    erased = erased + 1
  elseif redis.call('ZADD', KEYS[7], 'NX', int(now + settled_ttl), request_id) == 0 then
    repeated = repeated + 1
  else
    applied = applied + 1
    if redis.call('ZREM', KEYS[3], request_id) == 1 then
      local released = tonumber(redis.call('HGET', KEYS[4], request_id)) or 0
      redis.call('HDEL', KEYS[4], request_id)
      if redis.call('ZCARD', KEYS[3]) == 0 then
        redis.call('DEL', KEYS[4])
      else
        redis.call('HINCRBY', KEYS[4], 'total', int(-released))
      end
    end
    if type(log) == 'table' then
      if cost > 0 then
        charge(KEYS[1], w5_ms, b5_ms, cost)
        charge(KEYS[2], w7_ms, b7_ms, cost)
      end
      if key_index > 0 and redis.call('EXISTS', KEYS[key_index]) == 1 then
        redis.call('HSET', KEYS[key_index], 'last_used_ms', int(now))
      end
      local record, fields = {'at_ms', int(now)}, {}
      for j = 1, #log, 2 do
        local value = log[j + 1]
        if type(value) == 'number' then
          value = int(value)
        end
        record[#record + 1] = log[j]
        record[#record + 1] = value
        fields[log[j]] = value
      end
      redis.call('XADD', KEYS[5], 'MAXLEN', '~', log_maxlen, '*', unpack(record))
      if cost > 0 then
        redis.call('HINCRBY', agg, 'h:' .. int(hour), int(cost))
      end
      local prefix = 'd:' .. int(day) .. ':' .. (fields['model'] or 'unknown') .. ':'
      redis.call('HINCRBY', agg, prefix .. 'n', 1)
      local counters = {{'in', fields['input_tokens']}, {'out', fields['output_tokens']},
        {'cr', fields['cache_read_input_tokens']}, {'cw', fields['cache_creation_input_tokens']},
        {'mc', cost}}
      for _, c in ipairs(counters) do
        local n = tonumber(c[2]) or 0
        if n > 0 then
          redis.call('HINCRBY', agg, prefix .. c[1], int(n))
        end
      end
    end
  end
end
redis.call('PEXPIRE', KEYS[7], settled_ttl)

if applied > 0 then
  local last_hour = tonumber(redis.call('HGET', agg, 'last_h'))
  if last_hour ~= hour then
    redis.call('HSET', agg, 'last_h', int(hour))
    redis.call('PEXPIRE', agg, (days + 1) * 86400000)
    if last_hour ~= nil then
      local oldest_hour, oldest_day = hour - days * 24, day - days
      local dead = {}
      for _, field in ipairs(redis.call('HKEYS', agg)) do
        local kind, index = string.match(field, '^([hd]):(%d+)')
        index = tonumber(index)
        if (kind == 'h' and index < oldest_hour) or (kind == 'd' and index < oldest_day) then
          dead[#dead + 1] = field
        end
      end
      if #dead > 0 then
        redis.call('HDEL', agg, unpack(dead))
      end
    end
  end
end

return {applied + erased, repeated}
