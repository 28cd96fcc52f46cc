--[[
  Pause, resume or close a campaign; allowed at Redis's maxmemory (see below).
  KEYS[1] meta hash      fg:{c}:meta
  KEYS[2] audit list     fg:{c}:audit
  ARGV[1] action: pause | resume | close
  ARGV[2] actor
  Returns {OK, new_state}, {BAD_STATE, current_state} when the move is not allowed, or
  {UNKNOWN_CAMPAIGN}.
  A campaign held after a failover (meta failover_hold, reconcile.lua) is released by resume
  or close, which drop the hold; one whose log cannot continue (failover_log_broken) refuses
  every move with {BAD_STATE, HELD}: an entry appended now would take a sealed index.
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
if rcall('HEXISTS', KEYS[1], 'failover_log_broken') == 1 then return {BAD_STATE, HELD} end
local target = moves[action][state]
if target == nil then return {BAD_STATE, state} end
local now = now_us()
-- An operator must be able to stop a campaign while Redis is at its maxmemory under
-- noeviction. Redis 7 has the allow-oom flag (gate/room/scripts.py); Redis 6.2 refuses a
-- script's first write that may grow memory, but not once the script has written (it
-- cannot stop a script halfway). HDEL of a field that never exists is a write that is
-- never refused and changes nothing (nothing is replicated or logged for it), so the
-- writes below, and the audit entry with them, run as one step on 6.2 too.
rcall('HDEL', KEYS[1], '\0oom-guard')
rcall('HSET', KEYS[1], 'state', target)
if action ~= 'pause' then rcall('HDEL', KEYS[1], 'failover_hold') end
audit(KEYS[1], KEYS[2], now, {k = 'admin-' .. action, a = actor})
return {OK, target}
