--[[
  Join a batch of customers, or return their existing tickets (idempotent per customer).
  KEYS[1] meta hash      fg:{c}:meta
  KEYS[2] tickets hash   fg:{c}:tickets   digest -> seq
  KEYS[3] blocked set    fg:{c}:blocked
  KEYS[4] audit list     fg:{c}:audit
  ARGV[1..n] customer digests, 16 raw bytes each
  Returns {status, now_us, seq_1, created_1, ..., seq_n, created_n}
    status 1 ok; -1 no such campaign; -2 closed; -3 not open for joining yet.
    seq_i 0 with created_i 0 means customer i is blocked.
  One audit entry per batch lists the new tickets: {k="join", s={seq, digest, ...}}.
]]
--!include lib/common.lua
for i = 1, #ARGV do
  if string.len(ARGV[i]) ~= 16 then error('bad argument: digest ' .. i) end
end
local m = rcall('HMGET', KEYS[1], 'state', 'prequeue_from_us', 'closes_at_us')
if not m[1] then return {-1} end
local now = now_us()
if m[1] == 'closed' or now >= tonumber(m[3]) then return {-2, int_str(now)} end
if now < tonumber(m[2]) then return {-3, int_str(now)} end

local reply = {1, int_str(now)}
local created = {}
local has_blocked = rcall('SCARD', KEYS[3]) > 0
for i = 1, #ARGV do
  local digest = ARGV[i]
  -- a blocked customer is refused even when they already hold a ticket
  local blocked = has_blocked and rcall('SISMEMBER', KEYS[3], digest) == 1
  local seq = rcall('HGET', KEYS[2], digest)
  if blocked then
    reply[#reply + 1] = 0
    reply[#reply + 1] = 0
  elseif seq then
    reply[#reply + 1] = tonumber(seq)
    reply[#reply + 1] = 0
  else
    local new_seq = rcall('HINCRBY', KEYS[1], 'seq', 1)
    rcall('HSET', KEYS[2], digest, new_seq)
    created[#created + 1] = new_seq
    created[#created + 1] = digest
    reply[#reply + 1] = new_seq
    reply[#reply + 1] = 1
  end
end
if #created > 0 then
  audit(KEYS[1], KEYS[4], now, {k = 'join', s = created})
end
return reply
