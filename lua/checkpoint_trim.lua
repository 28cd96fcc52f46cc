--[[
  Drop the oldest signed checkpoints from Redis once they are in a checkpoints file.
  KEYS[1] fence counter   fg:{c}:sealer_fence
  KEYS[2] checkpoints     fg:{c}:checkpoints   list of JSON, sizes strictly growing
  KEYS[3] meta hash       fg:{c}:meta          checkpoints_trimmed = checkpoints no longer in Redis
  ARGV[1] fencing token   ARGV[2] checkpoints_trimmed the caller saw
  ARGV[3] how many to drop from the head of the list
  Returns {OK, new checkpoints_trimmed} when trimmed, or {REFUSED, reason}: FENCED (a
  newer sealer holds the lease), MOVED (checkpoints_trimmed is not what the caller saw),
  NOT_GROWING (nothing to drop, or not fewer than the list holds: the latest stays).
]]
--!include lib/replies.lua
local rcall = redis.call
local fence = tonumber(ARGV[1])
local old, count = tonumber(ARGV[2]), tonumber(ARGV[3])
if fence == nil or old == nil or count == nil then error('bad argument: numbers') end
if tonumber(rcall('GET', KEYS[1]) or '0') ~= fence then return {REFUSED, FENCED} end
if tonumber(rcall('HGET', KEYS[3], 'checkpoints_trimmed') or '0') ~= old then
  return {REFUSED, MOVED}
end
if count < 1 or count >= rcall('LLEN', KEYS[2]) then return {REFUSED, NOT_GROWING} end
rcall('LTRIM', KEYS[2], count, -1)
rcall('HSET', KEYS[3], 'checkpoints_trimmed', old + count)
return {OK, old + count}
