--[[
  Subscribe an amount (ballot policy): recorded during the window, allocated at close.
  KEYS[1] meta hash         fg:{c}:meta
  KEYS[2] active zset       fg:{c}:active
  KEYS[3] revoked set       fg:{c}:revoked
  KEYS[4] subscriptions     fg:{c}:subs      seq -> msgpack {amount, digest}
  KEYS[5] audit list        fg:{c}:audit
  KEYS[6] tickets hash      fg:{c}:tickets   digest -> seq
  ARGV[1] seq   ARGV[2] customer digest   ARGV[3] amount (decimal string)
  Returns {OK, amount, replayed(0|1), entry, t_us} (the subscription's audit entry index
  and time, from which the gate signs the customer's receipt; a replay gives those of the
  call that made it: the record is msgpack {amount, digest, entry, t}; 0, 0 for a record
  of before they were kept), {REFUSED, reason, detail}, {UNKNOWN_CAMPAIGN}, or
  {TICKET_UNKNOWN} when Redis does not hold tickets[digest] == seq.
  Reasons: CLOSED, WRONG_POLICY, NOT_ADMITTED, BELOW_MINIMUM, BAD_STEP,
           OVER_CUSTOMER_LIMIT, ALREADY_SUBSCRIBED.
]]
--!include lib/common.lua
--!include lib/money.lua
--!include lib/replies.lua
local seq = int_arg(ARGV[1], 1, 'seq')
local digest, amount = ARGV[2], ARGV[3]
if string.len(digest or '') ~= 16 then error('bad argument: digest') end
if not money_ok(amount) then error('bad argument: amount') end
local m = rcall('HMGET', KEYS[1], 'state', 'policy', 'q_min', 'q_max', 'q_step',
  'closes_at_us')
if not m[1] then return {UNKNOWN_CAMPAIGN} end
if not ticket_held(KEYS[6], digest, seq) then return {TICKET_UNKNOWN} end
local previous = rcall('HGET', KEYS[4], seq)
if previous then
  local sub = cmsgpack.unpack(previous)
  if sub[1] == amount then return {OK, amount, 1, sub[3] or 0, int_str(sub[4] or 0)} end
  return {REFUSED, ALREADY_SUBSCRIBED, sub[1]}
end
local now = now_us()
-- closed by its state, or by the clock before admit.lua has logged the close
if m[1] == 'closed' or now >= tonumber(m[6]) then return {REFUSED, CLOSED, ''} end
if m[2] ~= 'ballot' then return {REFUSED, WRONG_POLICY, m[2]} end
local deadline = rcall('ZSCORE', KEYS[2], seq)
if not deadline or tonumber(deadline) <= now or rcall('SISMEMBER', KEYS[3], seq) == 1 then
  return {REFUSED, NOT_ADMITTED, ''}
end
if money_cmp(amount, m[3]) < 0 then return {REFUSED, BELOW_MINIMUM, m[3]} end
if money_mod(amount, tonumber(m[5])) ~= 0 then return {REFUSED, BAD_STEP, m[5]} end
if money_cmp(amount, m[4]) > 0 then return {REFUSED, OVER_CUSTOMER_LIMIT, m[4]} end
rcall('HINCRBY', KEYS[1], 'subscriptions', 1)
rcall('HSET', KEYS[1], 'subscribed', money_add(rcall('HGET', KEYS[1], 'subscribed') or '0', amount))
rcall('ZREM', KEYS[2], seq)  -- done: the active slot goes to the next customer
local entry = audit(KEYS[1], KEYS[5], now, {k = 'subscribe', s = seq, c = digest, m = amount})
rcall('HSET', KEYS[4], seq, cmsgpack.pack({amount, digest, entry, now}))
return {OK, amount, 0, entry, int_str(now)}
