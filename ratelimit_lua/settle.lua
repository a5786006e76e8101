#!lua
--[[
settle: the one write after an upstream call. Releases the request's reservation (if it has
not expired already), charges the real cost into the current bucket of both rolling windows,
appends the request's usage metadata to the capped log stream, and bumps the dashboard
aggregates. Charging does not depend on the reservation: a request that outlived its
reservation is still billed.

Window layout and bucket rule: see admit.lua. Aggregates hash fields (UTC indexes):
  "h:<hours since epoch>"                          milli-credits charged in that hour
  "d:<days since epoch>:<model>:<n|in|out|cr|cw|mc>"  requests, input, output, cache-read,
                                                      cache-write tokens, milli-credits
  "last_h"                                          hour of the last prune
Entries older than aggregate_days are pruned once per hour.

KEYS (all share the account's hash tag)
  1 key hash   2 5-hour window hash   3 7-day window hash   4 inflight zset
  5 reserved hash   6 log stream   7 aggregates hash
ARGV
  1 now_ms   2 request_id   3 cost_mc (milli-credits, >= 0)
  4 window_5h_ms   5 bucket_5h_ms   6 window_7d_ms   7 bucket_7d_ms
  8 log_maxlen (approximate)   9 model   10 input_tokens   11 output_tokens
  12 cache_read_tokens   13 cache_write_tokens   14 aggregate_days
  15.. log record as field, value pairs (metadata only, never content)
RETURNS {released_mc}: the reservation released (0 if it had expired or never existed).
]]

local now = tonumber(ARGV[1])
local request_id = ARGV[2]
local cost = tonumber(ARGV[3])
local w5_ms, b5_ms = tonumber(ARGV[4]), tonumber(ARGV[5])
local w7_ms, b7_ms = tonumber(ARGV[6]), tonumber(ARGV[7])
local log_maxlen = ARGV[8]
local model = ARGV[9]
local days = tonumber(ARGV[14])

local function int(n)
  return string.format('%d', n)
end

local released = 0
if redis.call('ZREM', KEYS[4], request_id) == 1 then
  released = tonumber(redis.call('HGET', KEYS[5], request_id)) or 0
  redis.call('HDEL', KEYS[5], request_id)
  if redis.call('ZCARD', KEYS[4]) == 0 then
    redis.call('DEL', KEYS[5])
  else
    redis.call('HINCRBY', KEYS[5], 'total', int(-released))
  end
end

local function charge(wkey, window_ms, bucket_ms)
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

if cost > 0 then
  charge(KEYS[2], w5_ms, b5_ms)
  charge(KEYS[3], w7_ms, b7_ms)
end

if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'last_used_ms', int(now))
end

local record = {'at_ms', int(now)}
for i = 15, #ARGV do
  record[#record + 1] = ARGV[i]
end
redis.call('XADD', KEYS[6], 'MAXLEN', '~', log_maxlen, '*', unpack(record))

local agg = KEYS[7]
local hour = math.floor(now / 3600000)
local day = math.floor(now / 86400000)
if cost > 0 then
  redis.call('HINCRBY', agg, 'h:' .. int(hour), int(cost))
end
local prefix = 'd:' .. int(day) .. ':' .. model .. ':'
redis.call('HINCRBY', agg, prefix .. 'n', 1)
local counters = {{'in', ARGV[10]}, {'out', ARGV[11]}, {'cr', ARGV[12]}, {'cw', ARGV[13]},
  {'mc', ARGV[3]}}
for _, c in ipairs(counters) do
  local n = tonumber(c[2]) or 0
  if n > 0 then
    redis.call('HINCRBY', agg, prefix .. c[1], int(n))
  end
end

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

return {released}
