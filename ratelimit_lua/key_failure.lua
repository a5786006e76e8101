#!lua
--[[
key_failure: records one wrong secret presented for an existing key id and, once too many
arrive within the period, writes one `wrong_secrets` security event for the operator. It
never locks the key: key ids are visible, so a stranger could otherwise lock the owner out.

KEYS (all share the account's hash tag)
  1 key hash   2 key failures zset (member "<ip_tag>#<attempt_id>", score = ms)
  3 events stream   4 alert marker (string: ms of the last alert, expires after a period)
ARGV
  1 now_ms   2 attempt_id (unique per attempt)   3 period_ms   4 threshold (count)
  5 key_id   6 ip_tag   7 events_maxlen (approximate)
RETURNS {outcome, failures_in_period}
  outcome: "recorded" | "alerted" (event written just now) | "missing" (no such key) |
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
-- The marker holds the last alert's time (the injected clock, not the server's).
local last = tonumber(redis.call('GET', KEYS[4]) or '')
if failures < threshold or (last and now - last < period_ms) then
  return {'recorded', failures}
end

local seen, ips = {}, {}
for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local tag = string.match(member, '^(.*)#[^#]*$') or member
  if not seen[tag] then
    seen[tag] = true
    ips[#ips + 1] = tag
    if #ips >= 50 then
      break
    end
  end
end
local span = period_ms % 60000 == 0 and (int(period_ms / 60000) .. ' min')
  or (int(period_ms / 1000) .. ' s')
local reason = int(failures) .. ' wrong secrets were presented for this key within ' .. span
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', 'type', 'wrong_secrets',
  'key_id', ARGV[5], 'at_ms', int(now), 'reason', reason, 'ips', table.concat(ips, ','))
redis.call('SET', KEYS[4], int(now), 'PX', period_ms)
return {'alerted', failures}
