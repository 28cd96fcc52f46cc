--[[
  Claim an amount (first_come): reserve it atomically, or refuse with a reason.
  Never oversells: held + confirmed <= total after every call (I1), and a customer's
  held + confirmed stays <= max.
  KEYS[1] meta hash         fg:{c}:meta
  KEYS[2] active zset       fg:{c}:active
  KEYS[3] revoked set       fg:{c}:revoked
  KEYS[4] reservations      fg:{c}:res       rid -> msgpack record
  KEYS[5] expiries zset     fg:{c}:resexp    rid -> expires_us
  KEYS[6] spent hash        fg:{c}:spent     seq -> amount held + confirmed
  KEYS[7] holds hash        fg:{c}:holds     seq -> rid of the customer's held reservation
  KEYS[8] idempotency hash  fg:{c}:idem      seq:key -> rid
  KEYS[9] audit list        fg:{c}:audit
  KEYS[10] tickets hash     fg:{c}:tickets   digest -> seq
  ARGV[1] seq   ARGV[2] customer digest (16 bytes)   ARGV[3] amount (decimal string)
  ARGV[4] idempotency key (1..64 bytes)
  ARGV[5] the reservation id's random part (8 of A-Z a-z 0-9 _ -): the id is
          'r' .. res_n .. '-' .. it, unique even when a failover sets res_n back
  First come, strictly (issue 12): what the customers admitted before this one and not
  claimed yet may still take (max each: they are active, hold nothing, and have not passed
  their deadline) is theirs; a claim takes from the rest. A claim larger than the rest
  waits for them (EARLIER_CLAIMS, detail: the rest now) unless what is left could not
  serve it anyway (then partial fill or SOLD_OUT, as when nobody is owed). So nobody
  admitted later books what an earlier customer could have had. The claim entry logs what
  was owed to the earlier customers (o), for the audit replay. An overbooked campaign
  (overbook > 1: more admitted than the quota serves) serves claims as they come, no o.
  Returns {OK, rid, amount, expires_us, replayed(0|1)[, entry]} when reserved (entry: the
          claim's audit index, when this call made it),
          {REFUSED, reason, detail} when refused, {UNKNOWN_CAMPAIGN}, or {TICKET_UNKNOWN}
          when Redis does not hold tickets[digest] == seq.
  Reasons: CLOSED, WRONG_POLICY, NOT_ADMITTED, BELOW_MINIMUM, BAD_STEP,
           OVER_CUSTOMER_LIMIT, SOLD_OUT, EARLIER_CLAIMS, RESERVATION_PENDING,
           IDEMPOTENCY_KEY_REUSED.
]]
--!include lib/common.lua
--!include lib/money.lua
--!include lib/replies.lua
--!include lib/reservations.lua
local seq = int_arg(ARGV[1], 1, 'seq')
local digest, amount, key, suffix = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if string.len(digest or '') ~= 16 then error('bad argument: digest') end
if not money_ok(amount) then error('bad argument: amount') end
if key == nil or #key < 1 or #key > 64 then error('bad argument: idempotency key') end
if suffix == nil or #suffix ~= 8 or string.find(suffix, '[^%w_%-]') then
  error('bad argument: reservation id suffix')
end

local m = rcall('HMGET', KEYS[1], 'state', 'policy', 'q_total', 'q_min', 'q_max', 'q_step',
  'partial', 'held', 'confirmed', 'res_ttl_us', 'res_n', 'overbook', 'closes_at_us')
if not m[1] then return {UNKNOWN_CAMPAIGN} end
if not ticket_held(KEYS[10], digest, seq) then return {TICKET_UNKNOWN} end
local idem_field = seq .. ':' .. key
local previous = rcall('HGET', KEYS[8], idem_field)
if previous then
  local r = res_load(KEYS[4], previous)
  if r[6] ~= amount then return {REFUSED, IDEMPOTENCY_KEY_REUSED, r[6]} end
  return {OK, previous, r[2], r[4], 1}
end
local now = now_us()
-- closed by its state, or by the clock before admit.lua has logged the close
if m[1] == 'closed' or now >= tonumber(m[13]) then return {REFUSED, CLOSED, ''} end
if m[2] ~= 'first_come' then return {REFUSED, WRONG_POLICY, m[2]} end
local deadline = rcall('ZSCORE', KEYS[2], seq)
if not deadline or tonumber(deadline) <= now or rcall('SISMEMBER', KEYS[3], seq) == 1 then
  return {REFUSED, NOT_ADMITTED, ''}
end
if rcall('HEXISTS', KEYS[7], seq) == 1 then
  return {REFUSED, RESERVATION_PENDING, rcall('HGET', KEYS[7], seq)}
end
local total, low, high, step = m[3], m[4], m[5], tonumber(m[6])
if money_cmp(amount, low) < 0 then return {REFUSED, BELOW_MINIMUM, low} end
if money_mod(amount, step) ~= 0 then return {REFUSED, BAD_STEP, m[6]} end
local spent = rcall('HGET', KEYS[6], seq) or '0'
if money_cmp(amount, high) > 0 or money_cmp(money_add(spent, amount), high) > 0 then
  return {REFUSED, OVER_CUSTOMER_LIMIT, money_sub(high, money_min(spent, high))}
end
local remaining = money_sub(total, money_add(m[8], m[9]))
-- Owed to the customers admitted before this one who have not claimed: max each (none
-- when overbooked: then claims are served as they come). Cheap bound first: with every
-- other active customer owed max, the amount still fits.
local owed = tonumber(m[12] or '1') <= 1 and '0' or nil
local others = rcall('ZCARD', KEYS[2]) - 1
if owed and money_cmp(money_add(amount, money_mul(high, others)), remaining) > 0 then
  local before = {}
  for _, s in ipairs(rcall('ZRANGEBYSCORE', KEYS[2], string.format('(%d', now), '+inf')) do
    if tonumber(s) < seq then before[#before + 1] = s end
  end
  local unclaimed = 0
  for i = 1, #before, 500 do
    local held = rcall('HMGET', KEYS[7], unpack(before, i, math.min(i + 499, #before)))
    for j = 1, #held do
      if not held[j] then unclaimed = unclaimed + 1 end
    end
  end
  owed = money_mul(high, unclaimed)
end
local grant = amount
if money_cmp(money_add(amount, owed or '0'), remaining) > 0 then
  if money_cmp(amount, remaining) > 0 then
    if m[7] ~= '1' then return {REFUSED, SOLD_OUT, remaining} end
    -- partial fill: the largest multiple of step that is left, if it reaches the minimum
    grant = money_sub(remaining, tostring(money_mod(remaining, step)))
    if money_cmp(grant, low) < 0 then return {REFUSED, SOLD_OUT, remaining} end
  end
  if owed and owed ~= '0' then
    local rest = money_cmp(remaining, owed) > 0 and money_sub(remaining, owed) or '0'
    return {REFUSED, EARLIER_CLAIMS, rest}
  end
end

-- The number alone would repeat after a failover that lost the counter's last steps (and
-- two customers would hold one id); the caller's random part keeps every id new.
local res_n = tonumber(m[11] or '0') + 1
local rid = 'r' .. res_n .. '-' .. suffix
if rcall('HEXISTS', KEYS[4], rid) == 1 then error('reservation id ' .. rid .. ' exists') end
rcall('HSET', KEYS[1], 'res_n', res_n)
local expires = now + tonumber(m[10])
rcall('HSET', KEYS[4], rid, cmsgpack.pack({seq, grant, 'held', expires, digest, amount}))
rcall('ZADD', KEYS[5], expires, rid)
rcall('HSET', KEYS[6], seq, money_add(spent, grant))
rcall('HSET', KEYS[7], seq, rid)
rcall('HSET', KEYS[8], idem_field, rid)
rcall('HSET', KEYS[1], 'held', money_add(m[8], grant))
rcall('HINCRBY', KEYS[1], 'holding', 1)
rcall('HINCRBY', KEYS[1], 'claims', 1)
-- the customer stays active (counts against max_active) until the core system answers
if tonumber(deadline) < expires then rcall('ZADD', KEYS[2], 'XX', expires, seq) end
local entry = audit(KEYS[1], KEYS[9], now, {k = 'claim', s = seq, c = digest, r = rid, m = grant,
  q = amount, e = expires, o = owed})
return {OK, rid, grant, expires, 0, entry}
