--[[
  Subscribe an amount (ballot policy): recorded during the window, allocated at close.
  KEYS[1] meta hash         fg:{c}:meta
  KEYS[2] active zset       fg:{c}:active
  KEYS[3] revoked set       fg:{c}:revoked
  KEYS[4] subscriptions     fg:{c}:subs      seq -> msgpack {amount, digest}
  KEYS[5] audit list        fg:{c}:audit
  ARGV[1] seq   ARGV[2] customer digest   ARGV[3] amount (decimal string)
  Returns {1, amount, replayed(0|1)}, {0, code, detail}, or {-1} for no such campaign.
  Codes: closed, wrong_policy, not_admitted, below_minimum, bad_step,
         over_customer_limit, already_subscribed.
]]
--!include lib/common.lua
--!include lib/money.lua
local seq = int_arg(ARGV[1], 1, 'seq')
local digest, amount = ARGV[2], ARGV[3]
if string.len(digest or '') ~= 16 then error('bad argument: digest') end
if not money_ok(amount) then error('bad argument: amount') end
local m = rcall('HMGET', KEYS[1], 'state', 'policy', 'q_min', 'q_max', 'q_step')
if not m[1] then return {-1} end
local previous = rcall('HGET', KEYS[4], seq)
if previous then
  local sub = cmsgpack.unpack(previous)
  if sub[1] == amount then return {1, amount, 1} end
  return {0, 'already_subscribed', sub[1]}
end
if m[1] == 'closed' then return {0, 'closed', ''} end
if m[2] ~= 'ballot' then return {0, 'wrong_policy', m[2]} end
local now = now_us()
local deadline = rcall('ZSCORE', KEYS[2], seq)
if not deadline or tonumber(deadline) <= now or rcall('SISMEMBER', KEYS[3], seq) == 1 then
  return {0, 'not_admitted', ''}
end
if money_cmp(amount, m[3]) < 0 then return {0, 'below_minimum', m[3]} end
if money_mod(amount, tonumber(m[5])) ~= 0 then return {0, 'bad_step', m[5]} end
if money_cmp(amount, m[4]) > 0 then return {0, 'over_customer_limit', m[4]} end
rcall('HSET', KEYS[4], seq, cmsgpack.pack({amount, digest}))
rcall('HINCRBY', KEYS[1], 'subscriptions', 1)
rcall('HSET', KEYS[1], 'subscribed', money_add(rcall('HGET', KEYS[1], 'subscribed') or '0', amount))
rcall('ZREM', KEYS[2], seq)  -- done: the active slot goes to the next customer
audit(KEYS[1], KEYS[5], now, {k = 'subscribe', s = seq, c = digest, m = amount})
return {1, amount, 0}
