--[[
  The core system booked the deposit: a held reservation becomes confirmed.
  KEYS[1] meta  KEYS[2] active  KEYS[3] reservations  KEYS[4] expiries  KEYS[5] holds
  KEYS[6] spent  KEYS[7] audit
  ARGV[1] reservation id   ARGV[2] actor (core token name)
  Returns {1, state, seq, amount} (state "confirmed"; a repeat returns the same),
          {0, state, seq, amount} when it can no longer be confirmed (released, expired),
          {-2} for no such reservation, {-1} for no such campaign.
]]
--!include lib/common.lua
--!include lib/reservations.lua
local rid, actor = ARGV[1], ARGV[2]
if rid == nil or #rid < 2 or #rid > 32 or actor == nil then error('bad argument: rid/actor') end
if rcall('EXISTS', KEYS[1]) == 0 then return {-1} end
local r = res_load(KEYS[3], rid)
if not r then return {-2} end
if r[3] == 'confirmed' then return {1, 'confirmed', r[1], r[2]} end
if r[3] ~= 'held' then return {0, r[3], r[1], r[2]} end
local now = now_us()
local k = {meta = KEYS[1], active = KEYS[2], res = KEYS[3], resexp = KEYS[4], holds = KEYS[5],
           spent = KEYS[6]}
res_finish(k, rid, r, 'confirmed')
audit(KEYS[1], KEYS[7], now, {k = 'confirm', r = rid, s = r[1], m = r[2], a = actor})
return {1, 'confirmed', r[1], r[2]}
