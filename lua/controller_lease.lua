--[[
  Take, keep or give back a campaign's rate-controller lease: one gate process drives a
  campaign's adaptive rate at a time (gate/controller.py). A lapsed holder that writes
  anyway is harmless: every change it makes is conditional on the rate it read
  (campaign_update.lua's if_rate), so two controllers never stack their changes.
  KEYS[1] lease    fg:{c}:controller    token, with a TTL
  ARGV[1] token (random, per process)   ARGV[2] TTL in ms   ARGV[3] 'acquire' | 'release'
  Returns {OK, held}: held 1 when this token holds the lease now, else 0.
]]
--!include lib/replies.lua
local rcall = redis.call
local token, mode = ARGV[1], ARGV[3]
local ttl = tonumber(ARGV[2])
if not token or string.len(token) < 8 then error('bad argument: token') end
if ttl == nil or ttl < 1 or ttl ~= math.floor(ttl) then error('bad argument: ttl') end
local holder = rcall('GET', KEYS[1])
if mode == 'release' then
  if holder == token then rcall('DEL', KEYS[1]) end
  return {OK, 0}
elseif mode ~= 'acquire' then
  error('bad argument: mode')
end
if holder == token then
  rcall('PEXPIRE', KEYS[1], ttl)
  return {OK, 1}
elseif not holder then
  rcall('SET', KEYS[1], token, 'PX', ttl)
  return {OK, 1}
end
return {OK, 0}
