--[[
  Take, keep or give back a campaign's rate-controller lease: one gate process drives a
  campaign's adaptive rate at a time (gate/controller.py). A lapsed holder that writes
  anyway is harmless: every change it makes is conditional on the rate it read
  (campaign_update.lua's if_rate), so two controllers never stack their changes.
  KEYS[1] lease    fg:{c}:controller    token, with a TTL
  ARGV[1] token (random, per process)   ARGV[2] TTL in ms   ARGV[3] 'acquire' | 'release'
  Returns {OK, held}: held 1 when this token holds the lease now, else 0.
]]
--!include lib/replies.lua
--!include lib/lease.lua
local held = lease(KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[3])
if held == 'taken' or held == 'kept' then return {OK, 1} end
return {OK, 0}
