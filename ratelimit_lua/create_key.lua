#!lua
--[[
create_key: adds a key to an account unless the account already holds as many keys as its
plan allows. Atomic, so two creations racing for the last place get exactly one key.
Revoked keys do not count; quarantined ones do (an operator may release them).

The caller passes the hashes of the keys it saw in the account's key-id set (key names are
never built here); if the set changed since, the answer is "stale" and the caller reads it
again.

KEYS (all share the account's hash tag)
  1 account hash   2 account's key-id set   3 the new key's hash
  4.. the hashes of the keys in the set, as the caller read it
ARGV
  1 key_id   2 default_max_keys (plan snapshot without a cap)
  3.. the new key's hash fields as field, value pairs
RETURNS {"created", active_keys} (including the new one) | {"key_limit", active_keys,
  max_keys} | {"stale"} (the set changed: read it again) | {"missing"} (no such account)
]]

if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'missing'}
end
if redis.call('SCARD', KEYS[2]) ~= #KEYS - 3 then
  return {'stale'}
end
local cap = tonumber(redis.call('HGET', KEYS[1], 'max_keys')) or tonumber(ARGV[2])
local active = 0
for i = 4, #KEYS do
  local status = redis.call('HGET', KEYS[i], 'status')
  if status and status ~= 'revoked' then
    active = active + 1
  end
end
if active >= cap then
  return {'key_limit', active, cap}
end
local fields = {}
for i = 3, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', KEYS[3], unpack(fields))
redis.call('SADD', KEYS[2], ARGV[1])
return {'created', active + 1}
