--[[
window_frees: the one rule for "when does this window free capacity", included (not loaded
on its own) by admit.lua and usage.lua, so the 429's retry-after, the dashboard and
GET /v1/usage always name the same instant.

frees_at(flat, now, used, limit, window_ms, bucket_ms) -> ms, or -1 for an empty window
  flat: HGETALL of a window hash ("<bucket start ms>" -> milli-credits, plus "total"/"head");
  used: the milli-credits its live buckets hold. Buckets leave oldest first (a charge counts
  until bucket start + W + B); the answer is the first such exit after which the window is
  below its limit. Below the limit already, that is simply when the oldest charge leaves;
  with no limit at all (an account without a plan), when the window empties.
]]
local function frees_at(flat, now, used, limit, window_ms, bucket_ms)
  local cutoff = now - window_ms - bucket_ms
  local starts, amount = {}, {}
  for i = 1, #flat, 2 do
    local s = tonumber(flat[i])
    if s and s > cutoff then
      starts[#starts + 1] = s
      amount[s] = tonumber(flat[i + 1])
    end
  end
  table.sort(starts)
  local freed, last = 0, -1
  for _, s in ipairs(starts) do
    freed = freed + amount[s]
    last = s + window_ms + bucket_ms
    if used - freed < limit then
      return last
    end
  end
  return last
end
