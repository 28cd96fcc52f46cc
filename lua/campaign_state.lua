--[[
  Pause, resume or close a campaign.
  KEYS[1] meta hash      fg:{c}:meta
  KEYS[2] audit list     fg:{c}:audit
  ARGV[1] action: pause | resume | close
  ARGV[2] actor
  Returns {OK, new_state}, {BAD_STATE, current_state} when the move is not allowed, or
  {UNKNOWN_CAMPAIGN}.
]]
--!include lib/common.lua
--!include lib/replies.lua
local action = ARGV[1]
local actor = ARGV[2]
local moves = {pause = {open = 'paused'}, resume = {paused = 'open'},
               close = {open = 'closed', paused = 'closed'}}
if moves[action] == nil or actor == nil then error('bad argument: action') end
local state = rcall('HGET', KEYS[1], 'state')
if not state then return {UNKNOWN_CAMPAIGN} end
local target = moves[action][state]
if target == nil then return {BAD_STATE, state} end
local now = now_us()
rcall('HSET', KEYS[1], 'state', target)
audit(KEYS[1], KEYS[2], now, {k = 'admin-' .. action, a = actor})
return {OK, target}
