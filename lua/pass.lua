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
  ARGV[1] seq            ARGV[2] customer digest (16 raw bytes, from the signed ticket)
  Returns {OK, state[, value]}: {OK, ADMITTED, deadline_us[, entry]} (entry: the audit
  index of the `pass` entry, when this call logged it), {OK, WAITING, cursor},
  {OK, EXPIRED}, {OK, CLAIMED, amount} (held, confirmed or subscribed), {OK, REVOKED},
  {OK, CLOSED}; or {UNKNOWN_CAMPAIGN}, or {TICKET_UNKNOWN} when Redis does not hold
  tickets[digest] == seq (the ticket was lost, or the seq is another customer's).
]]
--!include lib/common.lua
--!include lib/replies.lua
local seq = int_arg(ARGV[1], 1, 'seq')
if string.len(ARGV[2] or '') ~= 16 then error('bad argument: digest') end
local m = rcall('HMGET', KEYS[1], 'state', 'cursor')
if not m[1] then return {UNKNOWN_CAMPAIGN} end
if not ticket_held(KEYS[9], ARGV[2], seq) then return {TICKET_UNKNOWN} end
if m[1] == 'closed' then return {OK, CLOSED} end
if rcall('SISMEMBER', KEYS[3], seq) == 1 then return {OK, REVOKED} end
if seq > tonumber(m[2]) then return {OK, WAITING, m[2]} end
local spent = rcall('HGET', KEYS[7], seq)
if rcall('HEXISTS', KEYS[6], seq) == 1 or (spent and spent ~= '0') then
  return {OK, CLAIMED, spent}
end
local sub = rcall('HGET', KEYS[8], seq)
if sub then return {OK, CLAIMED, cmsgpack.unpack(sub)[1]} end
local deadline = rcall('ZSCORE', KEYS[2], seq)
local now = now_us()
if not deadline or tonumber(deadline) <= now then return {OK, EXPIRED} end
if rcall('SADD', KEYS[4], seq) == 1 then
  local entry = audit(KEYS[1], KEYS[5], now,
    {k = 'pass', s = seq, c = ARGV[2], d = tonumber(deadline)})
  return {OK, ADMITTED, int_str(tonumber(deadline)), entry}
end
return {OK, ADMITTED, int_str(tonumber(deadline))}
