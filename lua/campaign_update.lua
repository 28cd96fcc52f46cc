--[[
  Change live settings of a campaign (rate, burst, max_active, closes_at, pass_ttl, mode).
  The bucket is first refilled at the old rate, so a change is never retroactive.
  KEYS[1] meta hash      fg:{c}:meta
  KEYS[2] audit list     fg:{c}:audit
  ARGV[1] actor
  ARGV[2] new spec JSON (stored as given; empty: the stored spec stays)
  ARGV[3..] field, value pairs; fields: rate, burst, max_active, closes_at_us, pass_ttl_us,
          overbook, mode (auto | manual | off: who moves the rate, gate/controller.py).
          Three more names are conditions and context, not fields (the rate controller's):
          if_mode M  change only while the meta field mode is M
          if_rate R  change only while the meta field rate is R (exactly as stored)
          why J      a JSON object, the signal behind the change, kept in the entry as `why`
  Returns {OK, now_us}, {REFUSED} when a condition does not hold (nothing written),
          {CAMPAIGN_CLOSED}, or {UNKNOWN_CAMPAIGN}.
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
  mode = function(v)
    if v ~= 'auto' and v ~= 'manual' and v ~= 'off' then error('bad argument: mode') end
  end,
}
local conditions = {}
local why = nil
local pairs_at = {}
if (#ARGV - 2) % 2 ~= 0 or #ARGV < 4 then error('bad argument: field/value pairs') end
for i = 3, #ARGV, 2 do
  local name, value = ARGV[i], ARGV[i + 1]
  if name == 'if_mode' or name == 'if_rate' then
    conditions[string.sub(name, 4)] = value
  elseif name == 'why' then
    local ok, decoded = pcall(cjson.decode, value)
    if not ok or type(decoded) ~= 'table' or next(decoded) == nil then error('bad argument: why') end
    why = decoded
  else
    local check = checks[name]
    if check == nil then error('bad argument: unknown field ' .. tostring(name)) end
    check(value)
    changes[#changes + 1] = name
    pairs_at[#pairs_at + 1] = i
  end
end
if #changes == 0 then error('bad argument: no field to change') end

local m = rcall('HMGET', KEYS[1], 'state', 'rate', 'burst', 'tokens', 'bucket_us', 'opens_at_us')
if not m[1] then return {UNKNOWN_CAMPAIGN} end
if m[1] == 'closed' then return {CAMPAIGN_CLOSED} end
for name, wanted in pairs(conditions) do
  if rcall('HGET', KEYS[1], name) ~= wanted then return {REFUSED} end
end
local now = now_us()
local level = refill(tonumber(m[4]), tonumber(m[5]), tonumber(m[2]), tonumber(m[3]), now)
local old = {}
for _, i in ipairs(pairs_at) do
  old[#old + 1] = rcall('HGET', KEYS[1], ARGV[i]) or false
end
local args = {'HSET', KEYS[1], 'tokens', tostring(level), 'bucket_us', now}
if spec ~= '' then
  args[#args + 1] = 'spec'
  args[#args + 1] = spec
end
local new = {}
for _, i in ipairs(pairs_at) do
  args[#args + 1] = ARGV[i]
  args[#args + 1] = ARGV[i + 1]
  new[#new + 1] = ARGV[i + 1]
end
rcall(unpack(args))
-- a lower burst also lowers what the bucket may hold now
local burst = tonumber(rcall('HGET', KEYS[1], 'burst'))
if level > math.max(burst, 1) then rcall('HSET', KEYS[1], 'tokens', tostring(math.max(burst, 1))) end
local entry = {k = 'admin-update', a = actor, f = changes, o = old, n = new}
if why ~= nil then entry['why'] = why end
audit(KEYS[1], KEYS[2], now, entry)
return {OK, int_str(now)}
