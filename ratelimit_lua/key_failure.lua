#!lua
--[[
key_failure: records one wrong secret presented for an existing key id and quarantines the
key when too many arrive within the period (a brute-force or leaked-prefix signal).

KEYS (all share the account's hash tag)
  1 key hash   2 key failures zset (member "<ip_tag>#<attempt_id>", score = ms)
  3 events stream
ARGV
  1 now_ms   2 attempt_id (unique per attempt)   3 period_ms   4 threshold (count)
  5 key_id   6 ip_tag   7 events_maxlen (approximate)
RETURNS {outcome, failures_in_period}
  outcome: "recorded" | "quarantined" (just now) | "missing" (no such key) |
           "inactive" (already revoked or quarantined: nothing recorded)
]]

local now = tonumber(ARGV[1])
local period_ms = tonumber(ARGV[3])
local threshold = tonumber(ARGV[4])

local function int(n)
  return string.format('%d', n)
end

if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'missing', 0}
end
local status = redis.call('HGET', KEYS[1], 'status') or 'active'
if status ~= 'active' then
  return {'inactive', 0}
end

redis.call('ZADD', KEYS[2], int(now), ARGV[6] .. '#' .. ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', int(now - period_ms))
redis.call('PEXPIRE', KEYS[2], period_ms)
local failures = redis.call('ZCARD', KEYS[2])
if failures < threshold then
  return {'recorded', failures}
end

local seen, ips = {}, {}
for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local tag = string.match(member, '^(.*)#[^#]*$') or member
  if not seen[tag] then
    seen[tag] = true
    ips[#ips + 1] = tag
  end
end
local span = period_ms % 60000 == 0 and (int(period_ms / 60000) .. ' min')
  or (int(period_ms / 1000) .. ' s')
local reason = int(failures) .. ' wrong secrets were presented for this key within ' .. span
redis.call('HSET', KEYS[1], 'status', 'quarantined', 'quarantine_reason', reason,
  'quarantined_ms', int(now))
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', 'type', 'key_quarantined',
  'key_id', ARGV[5], 'at_ms', int(now), 'reason', reason, 'ips', table.concat(ips, ','))
redis.call('DEL', KEYS[2])
return {'quarantined', failures}
