--[[
  A customer's first pass through /gate/auth (their arrival at the core), metered so that
  any 1-s window of Redis time holds at most rate + burst arrivals, however late some
  customers come after their pass's not_before (issue 12). pass.lua's schedule tells each
  customer when to come; a customer who comes later arrives with the next ones due and
  would make their window hold more; this meter counts the arrivals themselves.
  A seq already arrived passes at once (the arrived set keeps its arrival time, Redis
  time, for pass_ttl: its pass expires no later, since a pass's deadline is at most its
  not_before + pass_ttl and nobody arrives before not_before).
  Otherwise the door's clock `in_us` (slots ceil(1e6 / rate) apart) is first raised to
  now - grace, grace = floor((burst - 1) x 1e6 / rate) (a lull gives back the burst);
  when it is not past now the customer is in and the clock moves on a slot. Every arrival
  let in at t thus took its own slot s with t - grace <= s <= t, so the k-th arrival of any
  1-s window follows the first by more than (k - burst) x 1e6 / rate: at most
  rate + burst a window.
  A customer who must wait is told when to come back: after the clock's next slot and one
  slot more for each customer already told to come back later (the door set holds those
  times), so a crowd of late comers returns spread at the rate instead of all at once; the
  time is a hint, not a booking (whoever is due when the clock is takes the slot), so a
  customer who comes back later than told is not sent to the end of a line, and the status
  answer shows it as not_before (pass.lua) for the waiting page the proxy sends them to.
  Nothing here changes a customer's place, pass or quota, so nothing is logged: the log
  holds the pass's schedule (nb); this door only delays a customer who came late.
  KEYS[1] meta hash      fg:{c}:meta      rate, burst, in_us (the door's clock), door_n (waits told)
  KEYS[2] arrived zset   fg:{c}:arrived   seq -> when it arrived (us), trimmed here
  KEYS[3] door zset      fg:{c}:door      seq -> when it was told to come back (us)
  ARGV[1] seq
  Returns {OK, wait_ms}: 0 when the customer is in, else how long to wait; or
  {UNKNOWN_CAMPAIGN}.
]]
--!include lib/common.lua
--!include lib/replies.lua
local seq = int_arg(ARGV[1], 1, 'seq')
local m = rcall('HMGET', KEYS[1], 'rate', 'burst', 'in_us', 'pass_ttl_us')
if not m[1] then return {UNKNOWN_CAMPAIGN} end
if rcall('ZSCORE', KEYS[2], seq) then return {OK, 0} end
local now = now_us()
local rate, burst = tonumber(m[1]), tonumber(m[2])
local interval = 1000000 / rate
local grace = math.floor(math.max(burst - 1, 0) * interval)
rcall('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(m[4]))
rcall('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local slot = math.max(tonumber(m[3]) or 0, now - grace)
if slot <= now then
  rcall('HSET', KEYS[1], 'in_us', int_str(slot + math.ceil(interval)))
  rcall('ZREM', KEYS[3], seq)
  rcall('ZADD', KEYS[2], now, seq)
  return {OK, 0}
end
local told = tonumber(rcall('ZSCORE', KEYS[3], seq) or '0')
if told <= now then
  local ahead = rcall('ZCOUNT', KEYS[3], '(' .. int_str(now), '+inf')
  told = slot + ahead * math.ceil(interval)
  rcall('ZADD', KEYS[3], told, seq)
  -- pass.lua now answers this seq with `told` as not_before: the count tells the gates'
  -- remembered passes (gate/pass_cache.py) to ask again
  rcall('HINCRBY', KEYS[1], 'door_n', 1)
end
return {OK, math.ceil((told - now) / 1000)}
