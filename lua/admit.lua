--[[
  Admit the next customers in seq order. Any number of gate processes call this every
  ~50 ms; the token bucket and the active cap hold whatever their number.
  First expires held reservations past their deadline (their amount returns to the pool)
  and active entries past theirs (bounded, logged), then advances the cursor by
  k = min(bucket tokens, free active slots, waiting, max_per_call, customers the quota
  can still serve, max each for those admitted who have not claimed: o in the entry,
  unless overbooked),
  skipping revoked seqs (logged in the same entry). A first_come
  campaign admits nobody while what is left is below the per-customer minimum, and a
  campaign with a shuffled pre-queue nobody until its seqs are all given out (pq_state).
  KEYS[1] meta hash      fg:{c}:meta
  KEYS[2] active zset    fg:{c}:active    seq -> pass deadline (us)
  KEYS[3] revoked set    fg:{c}:revoked
  KEYS[4] audit list     fg:{c}:audit
  KEYS[5] reservations   fg:{c}:res
  KEYS[6] expiries zset  fg:{c}:resexp
  KEYS[7] holds hash     fg:{c}:holds
  KEYS[8] spent hash     fg:{c}:spent
  KEYS[9] not-before     fg:{c}:nb        seq -> paced arrival (us; pass.lua), trimmed here
  ARGV[1] max_per_call   most customers admitted by this call
  ARGV[2] expire_limit   most active entries expired by this call
  Returns {OK, admitted, cursor, active, expired, state}, or {UNKNOWN_CAMPAIGN} when there
  is no such campaign.
  The bucket (lib/common.lua refill) adds rate x the Redis time elapsed since the last
  call (at most 3 s of it, lib/common.lua) to a carry of at most `burst`, so the
  configured rate is delivered however late this call runs (issue 12); when the admitted
  customers arrive at the core is paced separately, as their passes are issued (pass.lua).
]]
--!include lib/common.lua
--!include lib/money.lua
--!include lib/replies.lua
--!include lib/reservations.lua
local max_per_call = int_arg(ARGV[1], 0, 'max_per_call')
local expire_limit = int_arg(ARGV[2], 1, 'expire_limit')

local m = rcall('HMGET', KEYS[1], 'state', 'opens_at_us', 'closes_at_us', 'rate', 'burst',
  'max_active', 'pass_ttl_us', 'seq', 'cursor', 'tokens', 'bucket_us', 'policy', 'pq_shuffle',
  'pq_state')
if not m[1] then return {UNKNOWN_CAMPAIGN} end
local state = m[1]
local now = now_us()
if state ~= 'closed' and now >= tonumber(m[3]) then
  state = 'closed'
  rcall('HSET', KEYS[1], 'state', state)
  audit(KEYS[1], KEYS[4], now, {k = 'close', a = 'schedule'})
end

local expired = {}
-- Held reservations past their deadline go back to the pool, even after close.
local stale = rcall('ZRANGEBYSCORE', KEYS[6], '-inf', now, 'LIMIT', 0, expire_limit)
if #stale > 0 then
  local k = {meta = KEYS[1], active = KEYS[2], res = KEYS[5], resexp = KEYS[6],
             holds = KEYS[7], spent = KEYS[8]}
  local seqs, amounts = {}, {}
  for i = 1, #stale do
    local r = res_load(KEYS[5], stale[i])
    seqs[i], amounts[i] = r[1], r[2]
    res_finish(k, stale[i], r, 'expired')
  end
  audit(KEYS[1], KEYS[4], now, {k = 'expire-res', r = stale, s = seqs, m = amounts})
end
if state ~= 'closed' then
  expired = rcall('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, expire_limit)
  if #expired > 0 then
    for i = 1, #expired do expired[i] = tonumber(expired[i]) end
    for i = 1, #expired, 500 do
      rcall('ZREM', KEYS[2], unpack(expired, i, math.min(i + 499, #expired)))
    end
    rcall('HINCRBY', KEYS[1], 'expired', #expired)
    audit(KEYS[1], KEYS[4], now, {k = 'expire', s = expired})
  end
end

-- Scheduled arrivals that have passed need no entry: an absent seq may pass at once.
rcall('ZREMRANGEBYSCORE', KEYS[9], '-inf', now)

if state == 'closed' then return {OK, 0, tonumber(m[9]), rcall('ZCARD', KEYS[2]), 0, state} end
local rate, burst = tonumber(m[4]), tonumber(m[5])
local tokens = refill(tonumber(m[10]), tonumber(m[11]), rate, burst, now)
local last_seq, cursor = tonumber(m[8]), tonumber(m[9])
local active = rcall('ZCARD', KEYS[2])
-- A shuffled pre-queue holds seqs 1..P: nobody is admitted before all of them are given
-- out (prequeue_assign.lua), so the cursor never passes a seq that has no customer yet.
local prequeue_pending = m[13] == '1' and m[14] ~= 'done'
if state ~= 'open' or now < tonumber(m[2]) or prequeue_pending then
  rcall('HSET', KEYS[1], 'tokens', tostring(tokens), 'bucket_us', now)
  return {OK, 0, cursor, active, #expired, state}
end

local k = math.min(math.floor(tokens), tonumber(m[6]) - active, last_seq - cursor, max_per_call)
local owed = nil  -- first_come: what the admitted customers who have not claimed may take
if m[12] == 'first_come' and k > 0 then
  -- Customers holding a reservation whose active entry is gone (revoked, blocked) still
  -- count in `holding`: never let them make room for more admissions than can be served.
  local q = rcall('HMGET', KEYS[1], 'q_total', 'q_min', 'held', 'confirmed', 'holding',
    'overbook', 'q_max')
  local left = money_sub(q[1], money_add(q[3], q[4]))
  local unclaimed = math.max(0, active - tonumber(q[5]))
  local overbook = tonumber(q[6] or '1')
  local can_serve = 0
  if overbook > 1 then
    -- Overbooked (the operator admits more than the quota serves, expecting no-shows):
    -- what is left serves at the minimum each, x overbook, less those admitted who have
    -- not claimed; their claims are served as they come (claim.lua).
    local servable = money_div(left, tonumber(q[2]))
    can_serve = #servable > 12 and 1e12 or tonumber(servable)
    if can_serve > 0 then can_serve = math.floor(can_serve * overbook) end
    can_serve = math.max(0, can_serve - unclaimed)
  else
    -- First come, strictly (issue 12): each admitted customer who has not claimed yet
    -- may still take up to max, so a newcomer is admitted only while what is left beyond
    -- that serves it at least the minimum (every one but the last in full). A claim then
    -- never finds its share taken by a customer admitted after it (claim.lua).
    owed = money_mul(q[7], unclaimed)
    if money_cmp(left, money_add(owed, q[2])) >= 0 then
      if #q[7] > 13 then
        can_serve = 1  -- a max of 10^13 or more: one at a time (money_div wants a small one)
      else
        local more = money_div(money_sub(left, money_add(owed, q[2])), tonumber(q[7]))
        can_serve = (#more > 12 and 1e12 or tonumber(more)) + 1
      end
    end
  end
  k = math.min(k, can_serve)
end
local admitted, skipped = {}, {}
local deadline = now + tonumber(m[7])
local has_revoked = rcall('SCARD', KEYS[3]) > 0
local s = cursor + 1
while #admitted < k and s <= last_seq do
  if has_revoked and rcall('SISMEMBER', KEYS[3], s) == 1 then
    skipped[#skipped + 1] = s
  else
    admitted[#admitted + 1] = s
  end
  s = s + 1
end
local new_cursor = s - 1
if new_cursor > cursor then
  local zargs = {}
  for i = 1, #admitted do
    zargs[#zargs + 1] = deadline
    zargs[#zargs + 1] = admitted[i]
    if #zargs >= 1000 then
      rcall('ZADD', KEYS[2], unpack(zargs))
      zargs = {}
    end
  end
  if #zargs > 0 then rcall('ZADD', KEYS[2], unpack(zargs)) end
  tokens = tokens - #admitted
  rcall('HSET', KEYS[1], 'cursor', new_cursor)
  rcall('HINCRBY', KEYS[1], 'admitted', #admitted)
  if #skipped > 0 then rcall('HINCRBY', KEYS[1], 'skipped', #skipped) end
  local entry = {k = 'admit', f = cursor + 1, l = new_cursor, n = #admitted, d = deadline}
  if owed then entry['o'] = owed end
  if #skipped > 0 then entry['x'] = skipped end
  audit(KEYS[1], KEYS[4], now, entry)
end
rcall('HSET', KEYS[1], 'tokens', tostring(tokens), 'bucket_us', now)
return {OK, #admitted, new_cursor, active + #admitted, #expired, state}
