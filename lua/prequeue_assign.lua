--[[
  Give the pre-queue its seqs 1..P, one chunk per call, in the order the caller computed:
  ascending SHA-256(seed || digest), seed = the one committed at creation (Lua does no
  hashing; the order is checked by anyone from the log, docs/audit-format.md).
  Fenced: a chunk is written only when ARGV[1] equals meta pq_next (how many already have
  their seq), so gate processes racing each other can never give a seq twice.
  The first call at or after opens_at (Redis time), if no join came first, freezes the
  pre-queue (lib/prequeue.lua: seqs 1..P reserved, seed revealed) and assigns nothing:
  the caller reads the frozen set and comes back with chunks.
  KEYS[1] meta hash      fg:{c}:meta
  KEYS[2] pre-queue set  fg:{c}:prequeue
  KEYS[3] tickets hash   fg:{c}:tickets   digest -> seq
  KEYS[4] blocked set    fg:{c}:blocked
  KEYS[5] revoked set    fg:{c}:revoked
  KEYS[6] audit list     fg:{c}:audit
  ARGV[1] position: how many pre-queue customers already have a seq (0 for the first chunk)
  ARGV[2] the pre-queue's seed (64 hex digits), for a call that freezes; else ''
  ARGV[3..n+2] the digests at positions position+1 .. position+n of the shuffled order
  Returns {status, next, total, pq_state}:
    OK the chunk is written (next = position + n), FROZEN the pre-queue was frozen just
    now (nothing assigned, next = 0), REFUSED nothing written: another caller got there
    first or nothing is left (next = the real position);
    or {UNKNOWN_CAMPAIGN}, {NOT_OPEN_YET, now_us}, {NO_PREQUEUE} (the campaign does not
    shuffle a pre-queue), {SEED_NEEDED} (this call would freeze, which reveals the seed:
    call again with ARGV[2], the seed, which Redis does not hold).
  A digest that is blocked still takes its place (the order stays recomputable) and its
  seq goes into the revoked set at once, so admit skips it (logged in the chunk's `x`).
  Each chunk is one audit entry {k="prequeue", s={seq, digest, ...}, x={revoked seqs}}.
  The last chunk marks pq_state 'done' (admit.lua admits nobody before) and drops the set.
]]
--!include lib/common.lua
--!include lib/prequeue.lua
--!include lib/replies.lua
local position = int_arg(ARGV[1], 0, 'position')
local seed = prequeue_seed(ARGV[2])
local n = #ARGV - 2
if n > 10000 then error('bad argument: chunk of ' .. n .. ' digests, at most 10000') end
local seen = {}
for i = 3, #ARGV do
  if string.len(ARGV[i]) ~= 16 then error('bad argument: digest ' .. (i - 2)) end
  if seen[ARGV[i]] then error('bad argument: digest ' .. (i - 2) .. ' twice') end
  seen[ARGV[i]] = true
end

local m = rcall('HMGET', KEYS[1], 'state', 'opens_at_us', 'pq_shuffle', 'pq_state',
  'pq_total', 'pq_next')
if not m[1] then return {UNKNOWN_CAMPAIGN} end
if m[3] ~= '1' then return {NO_PREQUEUE} end
local now = now_us()
local pq_state = m[4]
if not pq_state then
  if now < tonumber(m[2]) then return {NOT_OPEN_YET, int_str(now)} end
  pq_state = prequeue_freeze(KEYS[1], KEYS[2], KEYS[6], now, seed)
  if not pq_state then return {SEED_NEEDED} end
  return {FROZEN, 0, rcall('SCARD', KEYS[2]), pq_state}
end
local total, done = tonumber(m[5]), tonumber(m[6])
if pq_state ~= 'assigning' or position ~= done or n == 0 then
  return {REFUSED, done, total, pq_state}
end
if position + n > total then error('bad argument: chunk ends past the pre-queue') end
for i = 3, #ARGV do
  if rcall('SISMEMBER', KEYS[2], ARGV[i]) == 0 then
    error('bad argument: digest ' .. (i - 2) .. ' is not in the pre-queue')
  end
  if rcall('HEXISTS', KEYS[3], ARGV[i]) == 1 then
    error('bad argument: digest ' .. (i - 2) .. ' already has a seq')
  end
end

local has_blocked = rcall('SCARD', KEYS[4]) > 0
local pairs_out, revoked = {}, {}
for i = 3, #ARGV do
  local digest = ARGV[i]
  local seq = position + i - 2
  rcall('HSET', KEYS[3], digest, seq)
  pairs_out[#pairs_out + 1] = seq
  pairs_out[#pairs_out + 1] = digest
  if has_blocked and rcall('SISMEMBER', KEYS[4], digest) == 1 then
    rcall('SADD', KEYS[5], seq)
    revoked[#revoked + 1] = seq
  end
end
local next_position = position + n
if next_position == total then
  pq_state = 'done'
  rcall('UNLINK', KEYS[2])
end
rcall('HSET', KEYS[1], 'pq_next', next_position, 'pq_state', pq_state)
if #revoked > 0 then rcall('HINCRBY', KEYS[1], 'rev', 1) end
local entry = {k = 'prequeue', s = pairs_out}
if #revoked > 0 then entry['x'] = revoked end
audit(KEYS[1], KEYS[6], now, entry)
return {OK, next_position, total, pq_state}
