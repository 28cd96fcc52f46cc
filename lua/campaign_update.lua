--[[
  Change live settings of a campaign (rate, burst, max_active, closes_at, pass_ttl).
  The bucket is first refilled at the old rate, so a change is never retroactive.
  KEYS[1] meta hash      fg:{c}:meta
  KEYS[2] audit list     fg:{c}:audit
  ARGV[1] actor
  ARGV[2] new spec JSON (stored as given)
  ARGV[3..] field, value pairs; fields: rate, burst, max_active, closes_at_us, pass_ttl_us, overbook
  Returns {OK, now_us}, {CAMPAIGN_CLOSED}, or {UNKNOWN_CAMPAIGN}.
]]
--!include lib/common.lua
--!include lib/replies.lua
local actor = ARGV[1]
local spec = ARGV[2]
local changes = {}
local checks = {
  rate = function(v) return num_arg(v, 0.001, 'rate') end,
  burst = function(v) return int_arg(v, 1, 'burst') end,
  max_active = function(v) return int_arg(v, 1, 'max_active') end,
  closes_at_us = function(v) return int_arg(v, 0, 'closes_at_us') end,
  pass_ttl_us = function(v) return int_arg(v, 1000000, 'pass_ttl_us') end,
  overbook = function(v) return num_arg(v, 1, 'overbook') end,
}
if (#ARGV - 2) % 2 ~= 0 or #ARGV < 4 then error('bad argument: field/value pairs') end
for i = 3, #ARGV, 2 do
  local check = checks[ARGV[i]]
  if check == nil then error('bad argument: unknown field ' .. tostring(ARGV[i])) end
  check(ARGV[i + 1])
  changes[#changes + 1] = ARGV[i]
end

local m = rcall('HMGET', KEYS[1], 'state', 'rate', 'burst', 'tokens', 'bucket_us', 'opens_at_us')
if not m[1] then return {UNKNOWN_CAMPAIGN} end
if m[1] == 'closed' then return {CAMPAIGN_CLOSED} end
local now = now_us()
local level = refill(tonumber(m[4]), tonumber(m[5]), tonumber(m[2]), tonumber(m[3]), now)
local old = {}
for i = 3, #ARGV, 2 do
  old[#old + 1] = rcall('HGET', KEYS[1], ARGV[i]) or false
end
if ARGV[3] then
  local args = {'HSET', KEYS[1], 'tokens', tostring(level), 'bucket_us', now, 'spec', spec}
  for i = 3, #ARGV do args[#args + 1] = ARGV[i] end
  rcall(unpack(args))
end
-- a lower burst also lowers what the bucket may hold now
local burst = tonumber(rcall('HGET', KEYS[1], 'burst'))
if level > math.max(burst, 1) then rcall('HSET', KEYS[1], 'tokens', tostring(math.max(burst, 1))) end
local new = {}
for i = 4, #ARGV, 2 do new[#new + 1] = ARGV[i] end
audit(KEYS[1], KEYS[2], now, {k = 'admin-update', a = actor, f = changes, o = old, n = new})
return {OK, int_str(now)}
