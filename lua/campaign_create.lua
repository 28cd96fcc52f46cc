--[[
  Create a campaign. Validates every argument before the first write.
  KEYS[1] meta hash      fg:{c}:meta
  KEYS[2] audit list     fg:{c}:audit
  ARGV[1] campaign id
  ARGV[2] spec (JSON, stored as given)
  ARGV[3] opens_at_us    ARGV[4] closes_at_us    ARGV[5] prequeue_from_us
  ARGV[6] rate_per_s     ARGV[7] burst           ARGV[8] max_active
  ARGV[9] pass_ttl_us    ARGV[10] actor (operator token name)
  ARGV[11] policy (first_come | ballot)   ARGV[12] unit
  ARGV[13] quota total   ARGV[14] min   ARGV[15] max   ARGV[16] step (decimal strings)
  ARGV[17] partial fill (0|1)   ARGV[18] reservation_ttl_us
  ARGV[19] seed (hex; revealed at opening with a shuffled pre-queue, else at a ballot's close)
  ARGV[20] seed hash (hex; published now)
  ARGV[21] overbook (>= 1)
  ARGV[22] pre-queue shuffle (0|1; absent = 0): joins before opens_at go into a set that
           is shuffled into seqs 1..P at opening (join.lua, prequeue_assign.lua)
  Returns {1, now_us} when created, {0, "exists"} when the id is taken.
  ARGV[23] pre-queue seed (hex; revealed at opening)   ARGV[24] its hash (hex; published now)
]]
--!include lib/common.lua
--!include lib/money.lua
local id = ARGV[1]
local spec = ARGV[2]
local opens = int_arg(ARGV[3], 0, 'opens_at_us')
local closes = int_arg(ARGV[4], 0, 'closes_at_us')
local prequeue = int_arg(ARGV[5], 0, 'prequeue_from_us')
local rate = num_arg(ARGV[6], 0.001, 'rate_per_s')
local burst = int_arg(ARGV[7], 1, 'burst')
local max_active = int_arg(ARGV[8], 1, 'max_active')
local pass_ttl = int_arg(ARGV[9], 1000000, 'pass_ttl_us')
local actor = ARGV[10]
local policy, unit = ARGV[11], ARGV[12]
local total, low, high, step = ARGV[13], ARGV[14], ARGV[15], ARGV[16]
local res_ttl = int_arg(ARGV[18], 1000000, 'reservation_ttl_us')
local overbook = num_arg(ARGV[21], 1, 'overbook')
if policy ~= 'first_come' and policy ~= 'ballot' then error('bad argument: policy') end
if ARGV[17] ~= '0' and ARGV[17] ~= '1' then error('bad argument: partial') end
local pq_shuffle = ARGV[22] or '0'
if pq_shuffle ~= '0' and pq_shuffle ~= '1' then error('bad argument: pre-queue shuffle') end
for _, v in ipairs({total, low, high, step}) do
  if not money_ok(v) or v == '0' then error('bad argument: quota amount ' .. tostring(v)) end
end
-- min and step stay below 10^13 so money_mod and money_div work on Lua doubles
if money_cmp(high, low) < 0 or #step > 13 or #low > 13 then
  error('bad argument: quota bounds')
end
if #(ARGV[19] or '') ~= 64 or #(ARGV[20] or '') ~= 64 then error('bad argument: seed') end
-- The pre-queue has its own seed: revealing it at opening must not reveal the ballot's.
if #(ARGV[23] or '') ~= 64 or #(ARGV[24] or '') ~= 64 then error('bad argument: pre-queue seed') end
if closes <= opens or prequeue > opens then error('bad argument: window') end
if id == nil or id == '' or spec == nil or actor == nil then error('bad argument: id/spec/actor') end

if rcall('EXISTS', KEYS[1]) == 1 then return {0, 'exists'} end
local now = now_us()
rcall('HSET', KEYS[1],
  'id', id, 'spec', spec, 'state', 'open',
  'opens_at_us', opens, 'closes_at_us', closes, 'prequeue_from_us', prequeue,
  'rate', ARGV[6], 'burst', burst, 'max_active', max_active, 'pass_ttl_us', pass_ttl,
  'seq', 0, 'cursor', 0, 'tokens', 0, 'bucket_us', now,
  'admitted', 0, 'expired', 0, 'skipped', 0, 'rev', 0, 'created_us', now,
  'policy', policy, 'unit', unit, 'q_total', total, 'q_min', low, 'q_max', high,
  'q_step', step, 'partial', ARGV[17], 'res_ttl_us', res_ttl, 'held', '0', 'confirmed', '0',
  'released', '0', 'expired_amount', '0', 'holding', 0, 'claims', 0, 'confirms', 0,
  'releases', 0, 'reservations_expired', 0, 'seed', ARGV[19], 'seed_hash', ARGV[20], 'overbook', ARGV[21],
  'pq_shuffle', pq_shuffle, 'pq_seed', ARGV[23], 'pq_seed_hash', ARGV[24])
audit(KEYS[1], KEYS[2], now, {k = 'admin-create', a = actor, spec = spec, h = ARGV[20],
  hq = ARGV[24]})
return {1, int_str(now)}
