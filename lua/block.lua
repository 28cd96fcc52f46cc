--[[
  Block a customer: they may not join, and their pass (if any) stops working.
  KEYS[1] meta hash      fg:{c}:meta
  KEYS[2] tickets hash   fg:{c}:tickets
  KEYS[3] blocked set    fg:{c}:blocked
  KEYS[4] revoked set    fg:{c}:revoked
  KEYS[5] active zset    fg:{c}:active
  KEYS[6] audit list     fg:{c}:audit
  ARGV[1] customer digest   ARGV[2] actor   ARGV[3] reason
  Returns {OK, newly_blocked(0|1), seq or 0}, or {UNKNOWN_CAMPAIGN}.
]]
--!include lib/common.lua
--!include lib/replies.lua
local digest, actor, reason = ARGV[1], ARGV[2], ARGV[3] or ''
if string.len(digest or '') ~= 16 or actor == nil then error('bad argument: digest/actor') end
if rcall('EXISTS', KEYS[1]) == 0 then return {UNKNOWN_CAMPAIGN} end
local now = now_us()
local added = rcall('SADD', KEYS[3], digest)
local seq = tonumber(rcall('HGET', KEYS[2], digest) or '0')
if seq > 0 then
  rcall('SADD', KEYS[4], seq)
  rcall('ZREM', KEYS[5], seq)
end
rcall('HINCRBY', KEYS[1], 'rev', 1)
audit(KEYS[1], KEYS[6], now, {k = 'block', c = digest, s = seq, a = actor, r = reason})
return {OK, added, seq}
