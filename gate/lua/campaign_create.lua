--[[
  Create a campaign. Validates every argument before the first write.
  KEYS[1] meta hash      fg:{c}:meta
  KEYS[2] audit list     fg:{c}:audit
  ARGV[1] campaign id
  ARGV[2] spec (JSON, stored as given)
  ARGV[3] opens_at_us    ARGV[4] closes_at_us    ARGV[5] prequeue_from_us
  ARGV[6] rate_per_s     ARGV[7] burst           ARGV[8] max_active
  ARGV[9] pass_ttl_us    ARGV[10] actor (operator token name)
  Returns {1, now_us} when created, {0, "exists"} when the id is taken.
]]
--!include lib/common.lua
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
if closes <= opens or prequeue > opens then error('bad argument: window') end
if id == nil or id == '' or spec == nil or actor == nil then error('bad argument: id/spec/actor') end

if rcall('EXISTS', KEYS[1]) == 1 then return {0, 'exists'} end
local now = now_us()
rcall('HSET', KEYS[1],
  'id', id, 'spec', spec, 'state', 'open',
  'opens_at_us', opens, 'closes_at_us', closes, 'prequeue_from_us', prequeue,
  'rate', ARGV[6], 'burst', burst, 'max_active', max_active, 'pass_ttl_us', pass_ttl,
  'seq', 0, 'cursor', 0, 'tokens', 0, 'bucket_us', now,
  'admitted', 0, 'expired', 0, 'skipped', 0, 'rev', 0, 'created_us', now)
audit(KEYS[1], KEYS[2], now, {k = 'admin-create', a = actor, spec = spec})
return {1, int_str(now)}
