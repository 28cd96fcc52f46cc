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
local rcall = redis.call
local token, mode = ARGV[1], ARGV[3]
local ttl = tonumber(ARGV[2])
if not token or string.len(token) < 8 then error('bad argument: token') end
if ttl == nil or ttl < 1 or ttl ~= math.floor(ttl) then error('bad argument: ttl') end
local fence = 0
local holder = rcall('GET', KEYS[1])
if mode == 'release' then
  if holder == token then rcall('DEL', KEYS[1]) end
elseif mode == 'acquire' then
  if holder == token then
    rcall('PEXPIRE', KEYS[1], ttl)
    fence = tonumber(rcall('GET', KEYS[2]) or '0')
  elseif not holder then
    rcall('SET', KEYS[1], token, 'PX', ttl)
    fence = rcall('INCR', KEYS[2])
  end
else
  error('bad argument: mode')
end
local m = rcall('HMGET', KEYS[3], 'audit_n', 'state')
local sealed = rcall('HGET', KEYS[4], 'size') or '0'
return {fence, tonumber(m[1] or '0'), m[2] or '', tonumber(sealed)}
