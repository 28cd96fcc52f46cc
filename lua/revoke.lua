--[[
  Revoke a customer's pass (or their future admission): their seq is never admitted
  again and a pass already issued stops working at the next cache refresh.
  KEYS[1] meta hash      fg:{c}:meta
  KEYS[2] tickets hash   fg:{c}:tickets
  KEYS[3] revoked set    fg:{c}:revoked
  KEYS[4] active zset    fg:{c}:active
  KEYS[5] audit list     fg:{c}:audit
  ARGV[1] customer digest   ARGV[2] actor   ARGV[3] reason
  Returns {OK, newly_revoked(0|1), seq}, {NO_TICKET} when the customer has no ticket, or
  {UNKNOWN_CAMPAIGN}.
]]
--!include lib/common.lua
--!include lib/replies.lua
local digest, actor, reason = ARGV[1], ARGV[2], ARGV[3] or ''
if string.len(digest or '') ~= 16 or actor == nil then error('bad argument: digest/actor') end
if rcall('EXISTS', KEYS[1]) == 0 then return {UNKNOWN_CAMPAIGN} end
local seq = tonumber(rcall('HGET', KEYS[2], digest) or '0')
if seq == 0 then return {NO_TICKET} end
local now = now_us()
local added = rcall('SADD', KEYS[3], seq)
rcall('ZREM', KEYS[4], seq)
rcall('HINCRBY', KEYS[1], 'rev', 1)
audit(KEYS[1], KEYS[5], now, {k = 'revoke', c = digest, s = seq, a = actor, r = reason})
return {OK, added, seq}
