#!lua
--[[
admit: the one atomic check before an upstream call. Validates the key and the account,
binds or refuses the client IP, and (unless check_only) reserves the request's estimated
cost against both rolling credit windows and the account's concurrency cap.

Windows: one hash per window, fields "<bucket start ms>" -> milli-credits, plus "total"
(sum of the bucket fields) and "head" (start of the oldest bucket). A charge made at t lands
in bucket floor(t / B) * B and counts until bucket start + W + B, so the window never frees
early; it frees at most one bucket (B) late.

Clock: now_ms comes from the caller. On several gateway nodes their clocks must agree within
a bucket or so; skew only shifts when capacity frees, it cannot double-count or lose credits.

Admission (step 7): a window refuses only when it is full (settled usage >= limit), or when
requests in flight hold all that is left of it. A request whose estimate is larger than the
rest is admitted reserving just the rest; its real cost is settled as usual. Overshoot is
therefore bounded by the costs of the requests in flight beyond their reservations: at most
the concurrency cap x one request's cost (see limits.py).

Key sharing (step 3b): the distinct networks (IP tags) any key of the account was used from
within the sharing period are kept in a zset; more of them than max_keys x slots allow sets
a flag on the account hash for the operator (a flag, never a lock).

KEYS (all share the account's hash tag)
  1 account hash   2 key hash   3 key ips hash   4 key denied zset
  5 5-hour window hash   6 7-day window hash   7 inflight zset   8 reserved hash
  9 events stream   10 account networks zset   11 settled zset (see settle.lua)
ARGV
  1 now_ms              2 request_id (never "total")     3 estimate_mc (milli-credits)
  4 ip_tag              5 check_only (0|1)               6 key_id (for the event log)
  7 the limiter's settings, the same on every call, packed as ten integers joined by ":":
    window_5h_ms : bucket_5h_ms : window_7d_ms : bucket_7d_ms
    : reservation_ttl_ms (the lease; renewed by settle.lua) : ip_deny_period_ms
    : ip_deny_threshold (distinct refused IPs) : events_maxlen (approximate)
    : default_max_keys (accounts whose plan snapshot predates the key cap)
    : sharing_period_ms
RETURNS a flat array, first element the outcome:
  {"ok", ip_bound_now, flagged_now}                     check_only
  {"ok", ip_bound_now, used5, limit5, used7, limit7, reserved_total, in_flight, reservation,
   flagged_now}
  (flagged_now: 1 only from the call that raised the key-sharing flag, so exactly one caller
  reports it)
  {"revoked"}
  {"settled"}          the request id was already settled or released: an admission Valkey
                       ran late (its caller gave up) must not leave a reservation behind
  {"quarantined", quarantined_now (0|1), reason}
  {"no_plan", why ("missing"|"expired"|"zero_limit"|<account status>), period_end_ms}
  {"ip_limit", bound_ips, ip_slots}
  {"concurrency", in_flight, cap}
  {"5h"|"7d", frees_at_ms, used, limit}                  the window is full
  {"in_flight", "5h"|"7d", used, reserved_total, limit}  the rest is held by requests in flight
All amounts are milli-credits; all times are ms since the epoch.
]]

local now = tonumber(ARGV[1])
local request_id = ARGV[2]
local estimate = tonumber(ARGV[3])
local ip = ARGV[4]
local check_only = ARGV[5] == '1'
local key_id = ARGV[6]
local conf = {}
for field in string.gmatch(ARGV[7], '[^:]+') do
  conf[#conf + 1] = tonumber(field)
end
local w5_ms, b5_ms, w7_ms, b7_ms = conf[1], conf[2], conf[3], conf[4]
local ttl_ms, deny_period_ms, deny_threshold = conf[5], conf[6], conf[7]
local events_maxlen = tostring(conf[8])
local default_max_keys, sharing_ms = conf[9], conf[10]

--#include window_frees

-- Lua's default number formatting switches to exponents past 14 digits.
local function int(n)
  return string.format('%d', n)
end

-- 1. The key.
-- create_key.lua writes "status" with the key, so no status means no key (one command, not
-- an EXISTS besides).
local key = redis.call('HMGET', KEYS[2], 'status', 'quarantine_reason', 'extra_ip_slots')
local key_status = key[1]
if not key_status then
  return {'revoked'}
end
if key_status == 'quarantined' then
  return {'quarantined', 0, key[2] or ''}
end
if key_status ~= 'active' then
  return {'revoked'}
end

-- 2. The account's plan snapshot.
local acct = redis.call('HMGET', KEYS[1], 'status', 'period_end_ms', 'limit_5h', 'limit_7d',
  'ip_slots', 'extra_ip_slots', 'concurrency', 'max_keys', 'keys_extra_ip_slots',
  'shared_flag_ms')
local period_end = tonumber(acct[2])
if not acct[1] or not period_end then
  return {'no_plan', 'missing', 0}
end
if acct[1] ~= 'active' then
  return {'no_plan', acct[1], period_end}
end
if period_end <= now then
  return {'no_plan', 'expired', period_end}
end
local limit5, limit7 = tonumber(acct[3]) or 0, tonumber(acct[4]) or 0
if limit5 <= 0 or limit7 <= 0 then
  return {'no_plan', 'zero_limit', period_end}
end

-- 3. The client IP. Binding inside the script makes two new IPs racing for the last slot
-- resolve to exactly one winner.
local bound_now = 0
if redis.call('HEXISTS', KEYS[3], ip) == 0 then
  local slots = (tonumber(acct[5]) or 0) + (tonumber(acct[6]) or 0) + (tonumber(key[3]) or 0)
  local bound = redis.call('HLEN', KEYS[3])
  if bound < slots then
    redis.call('HSET', KEYS[3], ip, int(now))
    -- Bound now, so it is no longer evidence of a leak (an operator may have added the slot).
    redis.call('ZREM', KEYS[4], ip)
    bound_now = 1
  else
    redis.call('ZADD', KEYS[4], int(now), ip)
    redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', int(now - deny_period_ms))
    redis.call('PEXPIRE', KEYS[4], deny_period_ms)
    local denied = redis.call('ZCARD', KEYS[4])
    if denied < deny_threshold then
      return {'ip_limit', bound, slots}
    end
    -- Many distinct unbound IPs in a short time: the secret has most likely leaked.
    local ips = redis.call('ZRANGE', KEYS[4], 0, -1)
    local span = deny_period_ms % 60000 == 0 and (int(deny_period_ms / 60000) .. ' min')
      or (int(deny_period_ms / 1000) .. ' s')
    local reason = int(denied) .. ' distinct unbound IP addresses were refused within ' .. span
      .. '; the key may have leaked'
    redis.call('HSET', KEYS[2], 'status', 'quarantined', 'quarantine_reason', reason,
      'quarantined_ms', int(now))
    redis.call('XADD', KEYS[9], 'MAXLEN', '~', events_maxlen, '*', 'type', 'key_quarantined',
      'key_id', key_id, 'at_ms', int(now), 'reason', reason, 'ips', table.concat(ips, ','))
    redis.call('DEL', KEYS[4])
    return {'quarantined', 1, reason}
  end
end

-- 3b. Key sharing: only a network never seen in the period can change the count.
local account_slots = (tonumber(acct[5]) or 0) + (tonumber(acct[6]) or 0)
local flagged_now = 0
if redis.call('ZADD', KEYS[10], int(now), ip) == 1 then
  redis.call('ZREMRANGEBYSCORE', KEYS[10], '-inf', int(now - sharing_ms))
  local seen = redis.call('ZCARD', KEYS[10])
  local max_keys = tonumber(acct[8]) or default_max_keys
  local allowed = max_keys * account_slots + (tonumber(acct[9]) or 0)
  local flagged = tonumber(acct[10])
  if seen > allowed and (flagged == nil or flagged <= now - sharing_ms) then
    local hours = int(math.floor(sharing_ms / 3600000))
    local reason = int(seen) .. ' distinct networks used this account\'s keys within '
      .. hours .. ' h; the plan allows ' .. int(allowed) .. ' (' .. int(max_keys)
      .. ' keys x ' .. int(account_slots) .. ' IP slots); the keys may be shared'
    redis.call('HSET', KEYS[1], 'shared_flag_ms', int(now), 'shared_flag_reason', reason)
    flagged_now = 1
    redis.call('XADD', KEYS[9], 'MAXLEN', '~', events_maxlen, '*', 'type', 'account_flagged',
      'key_id', key_id, 'at_ms', int(now), 'reason', reason,
      'ips', table.concat(redis.call('ZRANGE', KEYS[10], 0, -1), ','))
  end
end
redis.call('PEXPIRE', KEYS[10], sharing_ms)

-- 4. count_tokens / models: key and IP checks only, nothing reserved.
if check_only then
  return {'ok', bound_now, flagged_now}
end

-- 4b. A late admission of a request that already ended reserves nothing.
if redis.call('ZSCORE', KEYS[11], request_id) then
  return {'settled'}
end

-- 5. Drop buckets that have left their window; the running total is rebuilt from what stays.
local function prune(wkey, window_ms, bucket_ms)
  local hv = redis.call('HMGET', wkey, 'head', 'total')
  local head, total = tonumber(hv[1]), tonumber(hv[2]) or 0
  local cutoff = now - window_ms - bucket_ms
  if head == nil or head > cutoff then
    return total
  end
  local flat = redis.call('HGETALL', wkey)
  local dead, new_head, kept = {}, nil, 0
  for i = 1, #flat, 2 do
    local s = tonumber(flat[i])
    if s then
      if s <= cutoff then
        dead[#dead + 1] = flat[i]
      else
        kept = kept + tonumber(flat[i + 1])
        if new_head == nil or s < new_head then
          new_head = s
        end
      end
    end
  end
  if new_head == nil then
    redis.call('DEL', wkey)
    return 0
  end
  if #dead > 0 then
    redis.call('HDEL', wkey, unpack(dead))
  end
  redis.call('HSET', wkey, 'head', int(new_head), 'total', int(kept))
  return kept
end

local used5 = prune(KEYS[5], w5_ms, b5_ms)
local used7 = prune(KEYS[6], w7_ms, b7_ms)

-- Reservations whose request died without settling expire here (score = expiry ms).
local expired = redis.call('ZRANGEBYSCORE', KEYS[7], '-inf', int(now))
if #expired > 0 then
  local amounts = redis.call('HMGET', KEYS[8], unpack(expired))
  local freed = 0
  for i = 1, #amounts do
    freed = freed + (tonumber(amounts[i]) or 0)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', int(now))
  redis.call('HDEL', KEYS[8], unpack(expired))
  redis.call('HINCRBY', KEYS[8], 'total', int(-freed))
end
local in_flight = redis.call('ZCARD', KEYS[7])
-- previous: this request id's own earlier reservation (a repeat replaces it), read in the
-- same command as the total.
local reserved, previous = 0, nil
if in_flight == 0 then
  redis.call('DEL', KEYS[8])
else
  local held = redis.call('HMGET', KEYS[8], 'total', request_id)
  reserved, previous = tonumber(held[1]) or 0, tonumber(held[2])
end

-- 6. Concurrency.
local cap = tonumber(acct[7]) or 0
if in_flight >= cap then
  return {'concurrency', in_flight, cap}
end

-- 7. Windows. A full window names the time it frees (the later one when both are full).
local full5, full7 = used5 >= limit5, used7 >= limit7
if full5 or full7 then
  local f5, f7 = -1, -1
  if full5 then
    f5 = frees_at(redis.call('HGETALL', KEYS[5]), now, used5, limit5, w5_ms, b5_ms)
  end
  if full7 then
    f7 = frees_at(redis.call('HGETALL', KEYS[6]), now, used7, limit7, w7_ms, b7_ms)
  end
  if f7 > f5 then
    return {'7d', f7, used7, limit7}
  end
  return {'5h', f5, used5, limit5}
end
-- A repeated request id replaces its earlier reservation.
if previous then
  reserved = reserved - previous
  in_flight = in_flight - 1
end
local free5, free7 = limit5 - used5 - reserved, limit7 - used7 - reserved
if free5 <= 0 then
  return {'in_flight', '5h', used5, reserved, limit5}
end
if free7 <= 0 then
  return {'in_flight', '7d', used7, reserved, limit7}
end
local reservation = math.min(estimate, free5, free7)

-- 8. Reserve.
reserved = reserved + reservation
redis.call('ZADD', KEYS[7], int(now + ttl_ms), request_id)
redis.call('HSET', KEYS[8], request_id, int(reservation), 'total', int(reserved))
-- Every live reservation expires within ttl of the newest one, so idle accounts clean up.
redis.call('PEXPIRE', KEYS[7], ttl_ms)
redis.call('PEXPIRE', KEYS[8], ttl_ms)
redis.call('HSET', KEYS[2], 'last_used_ms', int(now))
return {'ok', bound_now, used5, limit5, used7, limit7, reserved, in_flight + 1, reservation,
  flagged_now}
