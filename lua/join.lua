--[[
  Join a batch of customers, or return their existing tickets (idempotent per customer).
  KEYS[1] meta hash      fg:{c}:meta
  KEYS[2] tickets hash   fg:{c}:tickets   digest -> seq
  KEYS[3] blocked set    fg:{c}:blocked
  KEYS[4] audit list     fg:{c}:audit
  KEYS[5] pre-queue set  fg:{c}:prequeue  (used only when meta pq_shuffle is '1')
  KEYS[6] signatures     fg:{c}:rsig      hash: join entry index -> "kid:sig"
  KEYS[7] join entries   fg:{c}:rjoin     zset: join entry index scored by its first seq
  ARGV[1] the pre-queue's seed (64 hex digits) when the caller was asked for it, else ''
  ARGV[2] r, how many receipt records of earlier batches this call carries (issue 15: the
    receipt of a batch is signed after its call and recorded by the next one, so a
    batch costs one round trip); ARGV[3..2+3r] r triples (entry index, its first seq,
    "kid:sig"), each written as receipts.py's record() does (HSETNX, ZADD NX: the
    first signature recorded for an entry stays) whatever this call's answer, unless
    the campaign does not exist
  ARGV[3+3r..] customer digests, 16 raw bytes each
  Returns {OK, now_us, seq_1, created_1, ..., seq_n, created_n[, entry]},
    {CAMPAIGN_CLOSED, now_us}, {NOT_OPEN_YET, now_us} (before prequeue_from),
    {CAMPAIGN_NOT_PUBLISHED, now_us} (meta commit_pending: the checkpoint that covers the
    campaign's creation, its rules and commitments, is not published yet), {SEED_NEEDED} (this call
    would freeze the pre-queue, which reveals its seed: call again with ARGV[1], the
    seed, which Redis does not hold), or {UNKNOWN_CAMPAIGN}.
    entry (present only when a ticket was created) is the join audit entry's index.
    seq_i 0 with created_i 0 means customer i is blocked.
    seq_i -1 means customer i is in the pre-queue and gets a seq when it is shuffled
    (created_i 1 when this call put them there).
  One audit entry per batch lists the new tickets: {k="join", s={seq, digest, ...}}.
  Pre-queue (pq_shuffle '1'): before opens_at a join only adds the digest to the pre-queue
  set, logged as {k="prejoin", c={digest, ...}}. The first call at or after opens_at
  freezes the set (lib/prequeue.lua: seqs 1..P reserved, seed revealed), so every later
  join gets a seq > P; while prequeue_assign.lua is still giving out 1..P, a customer
  who is in the pre-queue gets -1 again (their seq is in 1..P), never a second seq.
]]
--!include lib/common.lua
--!include lib/prequeue.lua
--!include lib/replies.lua
local seed = prequeue_seed(ARGV[1])
local records = int_arg(ARGV[2], 0, 'records')
local first = 3 + 3 * records  -- the first digest's ARGV index
for i = 3, first - 1, 3 do
  int_arg(ARGV[i], 1, 'record entry')
  int_arg(ARGV[i + 1], 1, 'record seq')
  if not string.find(ARGV[i + 2] or '', ':', 1, true) then error('bad argument: record sig') end
end
for i = first, #ARGV do
  if string.len(ARGV[i]) ~= 16 then error('bad argument: digest ' .. (i - first + 1)) end
end
local m = rcall('HMGET', KEYS[1], 'state', 'prequeue_from_us', 'closes_at_us', 'opens_at_us',
  'pq_shuffle', 'pq_state', 'seq', 'audit_n', 'commit_pending')
if not m[1] then return {UNKNOWN_CAMPAIGN} end
for i = 3, first - 1, 3 do
  rcall('HSETNX', KEYS[6], ARGV[i], ARGV[i + 2])
  rcall('ZADD', KEYS[7], 'NX', ARGV[i + 1], ARGV[i])
end
local now = now_us()
if m[1] == 'closed' or now >= tonumber(m[3]) then return {CAMPAIGN_CLOSED, int_str(now)} end
if now < tonumber(m[2]) then return {NOT_OPEN_YET, int_str(now)} end
if m[9] then return {CAMPAIGN_NOT_PUBLISHED, int_str(now)} end

local reply = {OK, int_str(now)}
local has_blocked = rcall('SCARD', KEYS[3]) > 0
local pq_state = m[6]
if m[5] == '1' and not pq_state then
  if now < tonumber(m[4]) then
    -- Before opening: no seq yet, only a place in the set that is shuffled at opening.
    local added = {}
    for i = first, #ARGV do
      local digest = ARGV[i]
      if has_blocked and rcall('SISMEMBER', KEYS[3], digest) == 1 then
        reply[#reply + 1] = 0
        reply[#reply + 1] = 0
      else
        local new = rcall('SADD', KEYS[5], digest)
        if new == 1 then added[#added + 1] = digest end
        reply[#reply + 1] = -1
        reply[#reply + 1] = new
      end
    end
    if #added > 0 then
      audit(KEYS[1], KEYS[4], now, {k = 'prejoin', c = added})
    end
    return reply
  end
  pq_state = prequeue_freeze(KEYS[1], KEYS[5], KEYS[4], now, seed)
  if not pq_state then return {SEED_NEEDED} end
  local counters = rcall('HMGET', KEYS[1], 'seq', 'audit_n')  -- the freeze moved both
  m[7], m[8] = counters[1], counters[2]
end
local assigning = pq_state == 'assigning'

-- seq and audit_n are read with the meta above and written back once per batch (one HSET)
-- rather than a HINCRBY per customer and one per entry: Redis calls are most of a join's
-- cost (bench/auditcost.py: a batch of 100 got ~30% cheaper, the audit write stays small).
local last_seq = tonumber(m[7])
local created = {}
for i = first, #ARGV do
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
  elseif assigning and rcall('SISMEMBER', KEYS[5], digest) == 1 then
    reply[#reply + 1] = -1
    reply[#reply + 1] = 0
  else
    last_seq = last_seq + 1
    rcall('HSET', KEYS[2], digest, last_seq)
    created[#created + 1] = last_seq
    created[#created + 1] = digest
    reply[#reply + 1] = last_seq
    reply[#reply + 1] = 1
  end
end
if #created > 0 then
  local index = tonumber(m[8] or '0') + 1
  rcall('HSET', KEYS[1], 'seq', last_seq, 'audit_n', index)
  -- the entry's index closes the reply (odd length): the batch's receipt names it
  reply[#reply + 1] = audit_at(KEYS[4], index, now, {k = 'join', s = created})
end
return reply
