--[[
  Create a campaign. Validates every field before the first write.
  KEYS[1] meta hash      fg:{c}:meta
  KEYS[2] audit list     fg:{c}:audit
  KEYS[3] gone string    fg:{c}:fo_gone   a failover lost a campaign of this id whole
                         (reconcile.lua): its seqs were acknowledged, the id is not free
  ARGV[1] the campaign: one msgpack map, each field stored in meta under its own name
          (a boolean as '0' or '1'); every field is required, no other is accepted:
    id, actor (operator token name), spec (JSON, stored as given)    strings
    opens_at_us, closes_at_us, prequeue_from_us, pass_ttl_us,
    res_ttl_us (reservation TTL), burst, max_active                  integers
    rate (per second), overbook (>= 1)                               decimal strings
    policy (first_come | ballot), unit                               strings
    q_total, q_min, q_max, q_step (the quota)                        amount strings
    partial (partial fill)                                           boolean
    seed_hash, pq_seed_hash: the commitments to the ballot's seed (revealed at close) and
      the pre-queue's (revealed at opening), published now            64 hex digits
    seed_kid, seed_nonce: what the seeds are derived from with the signing key file's
      secret (gate/seeds.py); the seeds themselves are never stored  strings
    pq_shuffle: joins before opens_at go into a set that is shuffled
      into seqs 1..P at opening (join.lua, prequeue_assign.lua)      boolean
    mode (optional; auto | manual: who moves the rate of a campaign with an adaptive
      block, gate/controller.py; campaign_update.lua changes it)     string
    commit_pending (optional, true): joins are refused (CAMPAIGN_NOT_PUBLISHED) until the
      checkpoint covering this entry is published (checkpoint_add.lua, or the witnesses'
      quorum: gate/audit/cosignatures.py)                            boolean
  Returns {OK, now_us} when created, {CAMPAIGN_EXISTS} when the id is taken, or
  {CAMPAIGN_LOST_IN_FAILOVER} when a failover lost a campaign of this id (creating it again
  would give its seqs 1..n to other customers).
]]
--!include lib/common.lua
--!include lib/money.lua
--!include lib/replies.lua
if #ARGV ~= 1 then error('bad argument: one msgpack map') end
local ok, a = pcall(cmsgpack.unpack, ARGV[1])
if not ok or type(a) ~= 'table' then error('bad argument: one msgpack map') end
local fields = {id = 1, spec = 1, actor = 1, opens_at_us = 1, closes_at_us = 1,
  prequeue_from_us = 1, pass_ttl_us = 1, res_ttl_us = 1, burst = 1, max_active = 1,
  rate = 1, overbook = 1, policy = 1, unit = 1, q_total = 1, q_min = 1, q_max = 1,
  q_step = 1, partial = 1, seed_kid = 1, seed_nonce = 1, seed_hash = 1, pq_shuffle = 1,
  pq_seed_hash = 1, mode = 1, commit_pending = 1}
for name in pairs(a) do
  if fields[name] == nil then error('bad argument: unknown field ' .. tostring(name)) end
end
local function text(name)
  if type(a[name]) ~= 'string' then error('bad argument: ' .. name) end
  return a[name]
end
local function flag(name)
  if type(a[name]) ~= 'boolean' then error('bad argument: ' .. name) end
  return a[name] and '1' or '0'
end
local function hex64(name)
  if type(a[name]) ~= 'string' or #a[name] ~= 64 then error('bad argument: ' .. name) end
  return a[name]
end
local id, spec, actor = text('id'), text('spec'), text('actor')
local opens = int_arg(a.opens_at_us, 0, 'opens_at_us')
local closes = int_arg(a.closes_at_us, 0, 'closes_at_us')
local prequeue = int_arg(a.prequeue_from_us, 0, 'prequeue_from_us')
local rate = text('rate')
num_arg(rate, 0.001, 'rate')
local burst = int_arg(a.burst, 1, 'burst')
local max_active = int_arg(a.max_active, 1, 'max_active')
local pass_ttl = int_arg(a.pass_ttl_us, 1000000, 'pass_ttl_us')
local policy, unit = text('policy'), text('unit')
local total, low, high, step = a.q_total, a.q_min, a.q_max, a.q_step
local res_ttl = int_arg(a.res_ttl_us, 1000000, 'res_ttl_us')
local overbook = text('overbook')
num_arg(overbook, 1, 'overbook')
if policy ~= 'first_come' and policy ~= 'ballot' then error('bad argument: policy') end
local partial = flag('partial')
local pq_shuffle = flag('pq_shuffle')
for _, v in ipairs({total, low, high, step}) do
  if not money_ok(v) or v == '0' then error('bad argument: quota amount ' .. tostring(v)) end
end
-- min and step stay below 10^13 so money_mod and money_div work on Lua doubles
if money_cmp(high, low) < 0 or #step > 13 or #low > 13 then
  error('bad argument: quota bounds')
end
local seed_hash = hex64('seed_hash')
-- The pre-queue has its own seed: revealing it at opening must not reveal the ballot's.
local pq_seed_hash = hex64('pq_seed_hash')
local seed_kid, seed_nonce = text('seed_kid'), text('seed_nonce')
if seed_kid == '' or #seed_nonce < 16 then error('bad argument: seed_kid, seed_nonce') end
local pending = a.commit_pending
if pending ~= nil and pending ~= true then error('bad argument: commit_pending') end
if closes <= opens or prequeue > opens then error('bad argument: window') end
if id == '' then error('bad argument: id') end
local mode = a.mode
if mode ~= nil and mode ~= 'auto' and mode ~= 'manual' then error('bad argument: mode') end

if rcall('EXISTS', KEYS[1]) == 1 then return {CAMPAIGN_EXISTS} end
if rcall('EXISTS', KEYS[3]) == 1 then return {CAMPAIGN_LOST_IN_FAILOVER} end
local now = now_us()
rcall('HSET', KEYS[1],
  'id', id, 'spec', spec, 'state', 'open',
  'opens_at_us', opens, 'closes_at_us', closes, 'prequeue_from_us', prequeue,
  'rate', rate, 'burst', burst, 'max_active', max_active, 'pass_ttl_us', pass_ttl,
  'seq', 0, 'cursor', 0, 'tokens', 0, 'bucket_us', now,
  'admitted', 0, 'expired', 0, 'skipped', 0, 'rev', 0, 'created_us', now,
  'policy', policy, 'unit', unit, 'q_total', total, 'q_min', low, 'q_max', high,
  'q_step', step, 'partial', partial, 'res_ttl_us', res_ttl, 'held', '0', 'confirmed', '0',
  'released', '0', 'expired_amount', '0', 'holding', 0, 'claims', 0, 'confirms', 0,
  'releases', 0, 'reservations_expired', 0, 'seed_kid', seed_kid, 'seed_nonce', seed_nonce,
  'seed_hash', seed_hash, 'overbook', overbook, 'pq_shuffle', pq_shuffle,
  'pq_seed_hash', pq_seed_hash)
if mode ~= nil then rcall('HSET', KEYS[1], 'mode', mode) end
if pending then rcall('HSET', KEYS[1], 'commit_pending', 1) end
audit(KEYS[1], KEYS[2], now, {k = 'admin-create', a = actor, spec = spec, h = seed_hash,
  hq = pq_seed_hash})
return {OK, int_str(now)}
