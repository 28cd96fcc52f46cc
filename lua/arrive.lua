--[[
  A customer's first pass through /gate/auth (their arrival at the core), metered so that
  any 1-s window of Redis time holds at most rate + burst arrivals, however late some
  customers come after their pass's not_before (issue 12). pass.lua's schedule tells each
  customer when to come; a customer who comes later arrives with the next ones due and
  would make their window hold more; this meter counts the arrivals themselves.
  A seq already arrived passes at once (it is in the arrived set until its pass expires).
  Otherwise the customer needs a slot of the door's clock `in_us` (slots ceil(1e6 / rate)
  apart): one they were given before, if it is due and at most `grace` = floor((burst - 1)
  x 1e6 / rate) old, or else the clock's next, first raised to now - grace (a lull gives
  back the burst). A due slot lets them in; a slot still ahead is kept for them (in the
  door set) and they are told how long to wait, so a crowd of late comers is given one
  slot each instead of all racing for the next. Every arrival let in at t used its own
  slot s with t - grace <= s <= t, so the k-th arrival of any 1-s window follows the first
  by more than (k - burst) x 1e6 / rate: at most rate + burst a window.
  Nothing here changes a customer's place, pass or quota, so nothing is logged: the log
  holds the pass's schedule (nb); this door only delays a customer who came late.
  KEYS[1] meta hash      fg:{c}:meta      rate, burst, in_us (the door's clock)
  KEYS[2] arrived zset   fg:{c}:arrived   seq -> pass expiry (us), trimmed here
  KEYS[3] door zset      fg:{c}:door      seq -> the slot kept for it (us), trimmed here
  ARGV[1] seq            ARGV[2] the pass's expiry (unix seconds, from the signed pass)
  Returns {OK, wait_ms}: 0 when the customer is in, else how long to wait for their slot;
  or {UNKNOWN_CAMPAIGN}.
]]
--!include lib/common.lua
--!include lib/replies.lua
local seq = int_arg(ARGV[1], 1, 'seq')
local exp_us = int_arg(ARGV[2], 0, 'exp') * 1000000
local m = rcall('HMGET', KEYS[1], 'rate', 'burst', 'in_us')
if not m[1] then return {UNKNOWN_CAMPAIGN} end
if rcall('ZSCORE', KEYS[2], seq) then return {OK, 0} end
local now = now_us()
local rate, burst = tonumber(m[1]), tonumber(m[2])
local interval = 1000000 / rate
local grace = math.floor(math.max(burst - 1, 0) * interval)
rcall('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local slot = tonumber(rcall('ZSCORE', KEYS[3], seq) or '-1')
if slot > now then return {OK, math.ceil((slot - now) / 1000)} end
rcall('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - grace - 1)
if slot < now - grace then  -- none, or missed: the clock's next
  slot = math.max(tonumber(m[3]) or 0, now - grace)
  rcall('HSET', KEYS[1], 'in_us', int_str(slot + math.ceil(interval)))
  if slot > now then
    rcall('ZADD', KEYS[3], slot, seq)
    return {OK, math.ceil((slot - now) / 1000)}
  end
end
rcall('ZREM', KEYS[3], seq)
rcall('ZADD', KEYS[2], exp_us, seq)
return {OK, 0}
