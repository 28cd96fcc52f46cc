--[[
  Drop sealed entries from the head of the audit list once they are in segment files.
  KEYS[1] fence counter   fg:{c}:sealer_fence
  KEYS[2] frontier hash   fg:{c}:frontier      (size = entries sealed)
  KEYS[3] meta hash       fg:{c}:meta          audit_trimmed = entries no longer in Redis
  KEYS[4] audit list      fg:{c}:audit
  ARGV[1] fencing token   ARGV[2] audit_trimmed the caller saw   ARGV[3] new audit_trimmed
  Returns {OK, new} when trimmed, or {REFUSED, reason}: FENCED (a newer sealer holds the
  lease), MOVED (audit_trimmed is not what the caller saw), NOT_GROWING, UNSEALED (past
  the sealed size).
]]
--!include lib/replies.lua
local rcall = redis.call
local fence = tonumber(ARGV[1])
local old, new = tonumber(ARGV[2]), tonumber(ARGV[3])
if fence == nil or old == nil or new == nil then error('bad argument: numbers') end
if tonumber(rcall('GET', KEYS[1]) or '0') ~= fence then return {REFUSED, FENCED} end
if tonumber(rcall('HGET', KEYS[3], 'audit_trimmed') or '0') ~= old then return {REFUSED, MOVED} end
if new <= old then return {REFUSED, NOT_GROWING} end
if new > tonumber(rcall('HGET', KEYS[2], 'size') or '0') then return {REFUSED, UNSEALED} end
rcall('LTRIM', KEYS[4], new - old, -1)
rcall('HSET', KEYS[3], 'audit_trimmed', new)
return {OK, new}
