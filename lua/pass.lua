--[[
  Check an admitted customer before the gate signs a pass; logs `pass` once per seq.
  KEYS[1] meta hash      fg:{c}:meta
  KEYS[2] active zset    fg:{c}:active
  KEYS[3] revoked set    fg:{c}:revoked
  KEYS[4] passed set     fg:{c}:passed
  KEYS[5] audit list     fg:{c}:audit
  KEYS[6] holds hash     fg:{c}:holds
  KEYS[7] spent hash     fg:{c}:spent
  KEYS[8] subscriptions  fg:{c}:subs
  KEYS[9] tickets hash   fg:{c}:tickets   digest -> seq
  KEYS[10] not-before    fg:{c}:nb        seq -> scheduled arrival (us), future ones only
  KEYS[11] door          fg:{c}:door      seq -> when the door told it to come back
  Arrivals are paced here (issue 12), when a customer's pass is first issued: however the
  customers' polls bunch, the k-th pass issued is valid from nb = max(now, a), a being
  the arrival clock `arrive_us` first raised to now - floor((burst - 1) x 1e6 / rate);
  then arrive_us = a + ceil(1e6 / rate). Any 1-s window of Redis time thus holds at most
  rate + burst first arrivals. A pass valid only after the admission's deadline moves
  the deadline to nb + pass_ttl. The `pass` entry logs nb (and the deadline d).
  A customer the door at /gate/auth told to wait (arrive.lua) is answered that time as
  not_before, so the waiting page (where the proxy sends them back) comes back to the
  door then instead of at once.
  ARGV[1] seq            ARGV[2] customer digest (16 raw bytes, from the signed ticket)
  Returns {OK, state[, value]}: {OK, ADMITTED, deadline_us, not_before_us[, entry]}
  (not_before_us: when the customer may arrive, 0 if that has passed (issue 12); entry:
  the audit index of the `pass` entry, when this call logged it), {OK, WAITING, cursor},
  {OK, EXPIRED}, {OK, CLAIMED, amount} (held, confirmed or subscribed), {OK, REVOKED},
  {OK, CLOSED}; or {UNKNOWN_CAMPAIGN}, or {TICKET_UNKNOWN} when Redis does not hold
  tickets[digest] == seq (the ticket was lost, or the seq is another customer's).
]]
--!include lib/common.lua
--!include lib/replies.lua
local seq = int_arg(ARGV[1], 1, 'seq')
if string.len(ARGV[2] or '') ~= 16 then error('bad argument: digest') end
local m = rcall('HMGET', KEYS[1], 'state', 'cursor', 'rate', 'burst', 'pass_ttl_us',
  'arrive_us', 'closes_at_us')
if not m[1] then return {UNKNOWN_CAMPAIGN} end
if not ticket_held(KEYS[9], ARGV[2], seq) then return {TICKET_UNKNOWN} end
local now = now_us()
-- closed by its state, or by the clock before admit.lua has logged the close
if m[1] == 'closed' or now >= tonumber(m[7]) then return {OK, CLOSED} end
if rcall('SISMEMBER', KEYS[3], seq) == 1 then return {OK, REVOKED} end
if seq > tonumber(m[2]) then return {OK, WAITING, m[2]} end
local spent = rcall('HGET', KEYS[7], seq)
if rcall('HEXISTS', KEYS[6], seq) == 1 or (spent and spent ~= '0') then
  return {OK, CLAIMED, spent}
end
local sub = rcall('HGET', KEYS[8], seq)
if sub then return {OK, CLAIMED, cmsgpack.unpack(sub)[1]} end
local deadline = rcall('ZSCORE', KEYS[2], seq)
if not deadline or tonumber(deadline) <= now then return {OK, EXPIRED} end
if rcall('SADD', KEYS[4], seq) == 1 then
  local rate, burst = tonumber(m[3]), tonumber(m[4])
  local interval = 1000000 / rate
  local a = tonumber(m[6]) or 0
  local lull = now - math.floor(math.max(burst - 1, 0) * interval)
  if a < lull then a = lull end
  local nb = math.max(now, a)
  rcall('HSET', KEYS[1], 'arrive_us', int_str(a + math.ceil(interval)))
  deadline = tonumber(deadline)
  if nb > now then
    rcall('ZADD', KEYS[10], nb, seq)
    local ttl = tonumber(m[5])
    if nb + ttl > deadline then
      deadline = nb + ttl
      rcall('ZADD', KEYS[2], 'XX', deadline, seq)
    end
  end
  local entry = audit(KEYS[1], KEYS[5], now,
    {k = 'pass', s = seq, c = ARGV[2], d = deadline, nb = nb})
  return {OK, ADMITTED, int_str(deadline), int_str(nb > now and nb or 0), entry}
end
local nb = tonumber(rcall('ZSCORE', KEYS[10], seq) or '0')
local slot = tonumber(rcall('ZSCORE', KEYS[11], seq) or '0')
if slot > nb then nb = slot end
if nb <= now then nb = 0 end
return {OK, ADMITTED, int_str(tonumber(deadline)), int_str(nb)}
