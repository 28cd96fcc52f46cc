--[[
  Take, keep or give back a campaign's sealer lease; one sealer seals a campaign at a time.
  Each new holder gets a larger fencing token (INCR), which every write of the sealer
  carries, so a holder whose lease lapsed (paused, partitioned) cannot write after its
  successor started.
  KEYS[1] lease           fg:{c}:sealer        token, with a TTL
  KEYS[2] fence counter   fg:{c}:sealer_fence
  KEYS[3] meta hash       fg:{c}:meta
  KEYS[4] frontier hash   fg:{c}:frontier
  ARGV[1] token (random, per process)   ARGV[2] TTL in ms   ARGV[3] 'acquire' | 'release'
  Returns {fence, audit_n, state, sealed}: fence 0 when another process holds the lease
  (or after a release); audit_n the log's size; state the campaign's state ('' when the
  campaign does not exist); sealed the size of the last checkpoint.
]]
--!include lib/lease.lua
local rcall = redis.call
local fence = 0
local held = lease(KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[3])
if held == 'kept' then
  fence = tonumber(rcall('GET', KEYS[2]) or '0')
elseif held == 'taken' then
  fence = rcall('INCR', KEYS[2])
end
local m = rcall('HMGET', KEYS[3], 'audit_n', 'state')
local sealed = rcall('HGET', KEYS[4], 'size') or '0'
return {fence, tonumber(m[1] or '0'), m[2] or '', tonumber(sealed)}
