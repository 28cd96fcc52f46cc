--[[
  Pre-queue helpers (a campaign whose meta pq_shuffle is '1'), included by join.lua and
  prequeue_assign.lua.
  Before opens_at, joins go into the pre-queue set (no seq). The first join or
  prequeue_assign call at or after opens_at (Redis time) freezes it:
  prequeue_freeze(meta, set, log, now)
    P = the set's size; seqs 1..P are reserved for it (meta seq jumps from 0 to P, so every
    later join gets a seq > P); the pre-queue seed committed at creation (hq) is revealed in the log
    ({k="reveal", seed=<hex>, p=P}); meta pq_state becomes 'assigning' ('done' when P = 0),
    pq_total = P, pq_next = 0 (how many have their seq). Returns the new pq_state.
]]
--!include lib/common.lua
local function prequeue_freeze(meta_key, set_key, log_key, now)
  local m = rcall('HMGET', meta_key, 'seq', 'pq_seed')
  -- Nobody gets a seq before the freeze in a shuffled campaign; if someone had, 1..P
  -- would collide with it, so refuse loudly rather than hand out a seq twice.
  if m[1] ~= '0' then error('prequeue: seq already ' .. tostring(m[1]) .. ' at freeze') end
  local p = rcall('SCARD', set_key)
  local state = 'assigning'
  if p == 0 then state = 'done' end
  rcall('HSET', meta_key, 'pq_state', state, 'pq_total', p, 'pq_next', 0, 'seq', p)
  audit(meta_key, log_key, now, {k = 'reveal', seed = m[2], p = p})
  return state
end
