--[[
  Pre-queue helpers (a campaign whose meta pq_shuffle is '1'), included by join.lua and
  prequeue_assign.lua.
  Before opens_at, joins go into the pre-queue set (no seq). The first join or
  prequeue_assign call at or after opens_at (Redis time) freezes it:
  prequeue_seed(seed)
    The caller's seed argument: '' or 64 hex digits (else the script fails, writing nothing).
  prequeue_freeze(meta, set, log, now, seed)
    P = the set's size; seqs 1..P are reserved for it (meta seq jumps from 0 to P, so every
    later join gets a seq > P); the pre-queue seed committed at creation (hq) is revealed in the log
    ({k="reveal", seed=<hex>, p=P}); meta pq_state becomes 'assigning' ('done' when P = 0),
    pq_total = P, pq_next = 0 (how many have their seq). Returns the new pq_state.
    Redis does not hold the seed (gate/seeds.py): the caller gives it (`seed`, hex). When it
    gave '' (it did not know this call would freeze), nothing is written and nil is returned:
    the script answers {SEED_NEEDED} and the caller comes back with the seed. No seed is
    ever read from Redis: one written there by someone with Redis access is ignored.
]]
--!include lib/common.lua
local function prequeue_seed(seed)
  if seed ~= '' and not string.match(seed, '^' .. string.rep('%x', 64) .. '$') then
    error('bad argument: seed')
  end
  return seed
end

local function prequeue_freeze(meta_key, set_key, log_key, now, seed)
  if seed == '' then return nil end
  local m = rcall('HMGET', meta_key, 'seq')
  -- Nobody gets a seq before the freeze in a shuffled campaign; if someone had, 1..P
  -- would collide with it, so refuse loudly rather than hand out a seq twice.
  if m[1] ~= '0' then error('prequeue: seq already ' .. tostring(m[1]) .. ' at freeze') end
  local p = rcall('SCARD', set_key)
  local state = 'assigning'
  if p == 0 then state = 'done' end
  rcall('HSET', meta_key, 'pq_state', state, 'pq_total', p, 'pq_next', 0, 'seq', p)
  audit(meta_key, log_key, now, {k = 'reveal', seed = seed, p = p})
  return state
end
