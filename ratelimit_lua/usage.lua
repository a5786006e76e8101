#!lua flags=no-writes
--[[
usage: read-only view of one account's credit windows and in-flight reservations, for the
dashboard and the subscription-usage endpoint. Flagged no-writes so it runs through
EVALSHA_RO, on replicas too. It prunes nothing: expired buckets and reservations are
skipped here and removed by the next admit.

Window layout and bucket rule: see admit.lua (a bucket counts until start + W + B).

KEYS (all share the account's hash tag)
  1 account hash   2 5-hour window hash   3 7-day window hash   4 inflight zset
  5 reserved hash
ARGV
  1 now_ms   2 window_5h_ms   3 bucket_5h_ms   4 window_7d_ms   5 bucket_7d_ms
RETURNS {used5, limit5, resets5, used7, limit7, resets7, reserved, in_flight}
  used/limit/reserved in milli-credits; resets = ms when the window frees capacity (see
  window_frees.lua: the instant a full window's 429 names too), -1 when the window is empty.
]]

local now = tonumber(ARGV[1])

--#include window_frees

local function window(wkey, limit, window_ms, bucket_ms)
  local cutoff = now - window_ms - bucket_ms
  local flat = redis.call('HGETALL', wkey)
  local used = 0
  for i = 1, #flat, 2 do
    local s = tonumber(flat[i])
    if s and s > cutoff then
      used = used + tonumber(flat[i + 1])
    end
  end
  return used, frees_at(flat, now, used, limit, window_ms, bucket_ms)
end

local limits = redis.call('HMGET', KEYS[1], 'limit_5h', 'limit_7d')
local limit5, limit7 = tonumber(limits[1]) or 0, tonumber(limits[2]) or 0
local used5, resets5 = window(KEYS[2], limit5, tonumber(ARGV[2]), tonumber(ARGV[3]))
local used7, resets7 = window(KEYS[3], limit7, tonumber(ARGV[4]), tonumber(ARGV[5]))

local live = redis.call('ZRANGEBYSCORE', KEYS[4], '(' .. string.format('%d', now), '+inf')
local reserved = 0
if #live > 0 then
  local amounts = redis.call('HMGET', KEYS[5], unpack(live))
  for i = 1, #amounts do
    reserved = reserved + (tonumber(amounts[i]) or 0)
  end
end

return {used5, limit5, resets5, used7, limit7, resets7, reserved, #live}
