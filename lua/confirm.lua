--[[
  The core system booked the deposit: a held reservation becomes confirmed.
  KEYS[1] meta  KEYS[2] active  KEYS[3] reservations  KEYS[4] expiries  KEYS[5] holds
  KEYS[6] spent  KEYS[7] audit
  ARGV[1] reservation id   ARGV[2] actor (core token name)
  Returns {OK, state, seq, amount[, entry, held_us]} (state "confirmed"; a repeat returns the
          same without entry and held_us: entry is the audit index of the confirmation
          this call made, held_us how long the reservation was held, from its claim to
          now by Redis time: the core's latency, gate/health.py),
          {REFUSED, state, seq, amount} when it can no longer be confirmed (released,
          expired: the reservation's state, lib/reservations.lua),
          {UNKNOWN_RESERVATION}, or {UNKNOWN_CAMPAIGN}.
]]
--!include lib/common.lua
--!include lib/replies.lua
--!include lib/reservations.lua
local rid, actor = ARGV[1], ARGV[2]
if rid == nil or #rid < 2 or #rid > 32 or actor == nil then error('bad argument: rid/actor') end
if rcall('EXISTS', KEYS[1]) == 0 then return {UNKNOWN_CAMPAIGN} end
local r = res_load(KEYS[3], rid)
if not r then return {UNKNOWN_RESERVATION} end
if r[3] == 'confirmed' then return {OK, r[3], r[1], r[2]} end
if r[3] ~= 'held' then return {REFUSED, r[3], r[1], r[2]} end
local now = now_us()
local k = {meta = KEYS[1], active = KEYS[2], res = KEYS[3], resexp = KEYS[4], holds = KEYS[5],
           spent = KEYS[6]}
res_finish(k, rid, r, 'confirmed')
local entry = audit(KEYS[1], KEYS[7], now, {k = 'confirm', r = rid, s = r[1], m = r[2], a = actor})
-- a reservation's expiry is its claim time + res_ttl_us (a setting no update changes)
local claimed = tonumber(r[4]) - tonumber(rcall('HGET', KEYS[1], 'res_ttl_us') or '0')
return {OK, r[3], r[1], r[2], entry, int_str(math.max(now - claimed, 0))}
