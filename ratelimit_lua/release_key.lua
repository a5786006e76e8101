#!lua
--[[
release_key: an operator lifts a key's quarantine. Atomic so a release racing a revocation
can never turn a revoked key back on: only a key still quarantined becomes active. The leak
and brute-force signals recorded so far are cleared, or the next request would quarantine
the key again.

KEYS (all share the account's hash tag)
  1 key hash   2 key denied zset   3 key failures zset   4 events stream
ARGV
  1 now_ms   2 key_id (for the event log)   3 events_maxlen (approximate)
RETURNS {outcome}: "released" | "missing" (no such key) | the key's status when it is not
  quarantined ("active" | "revoked")
]]

if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'missing'}
end
local status = redis.call('HGET', KEYS[1], 'status') or 'active'
if status ~= 'quarantined' then
  return {status}
end
local reason = redis.call('HGET', KEYS[1], 'quarantine_reason') or ''
redis.call('HSET', KEYS[1], 'status', 'active')
redis.call('HDEL', KEYS[1], 'quarantine_reason', 'quarantined_ms')
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], '*', 'type', 'key_released',
  'key_id', ARGV[2], 'at_ms', ARGV[1], 'reason', reason)
return {'released'}
