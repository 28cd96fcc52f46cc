--[[
  Store one chunk of a closed ballot's allocation; the last chunk reveals the seed.
  Chunks are fenced by index, so two processes that computed the same (deterministic)
  allocation cannot write a chunk twice.
  KEYS[1] meta hash        fg:{c}:meta
  KEYS[2] allocations      fg:{c}:alloc     seq -> amount
  KEYS[3] audit list       fg:{c}:audit
  ARGV[1] chunk index (0, 1, ...)   ARGV[2] last chunk (0|1)
  ARGV[3] the ballot's seed (64 hex digits), revealed with the last chunk: Redis does not
          hold it (gate/seeds.py), and none written there is ever read; '' on the others.
  ARGV[4..] seq, amount pairs
  Returns {OK, next_chunk} when stored, {REFUSED, expected_chunk} when this chunk is not
  the next one (already stored by another process; 'done' after the last),
  {UNKNOWN_CAMPAIGN}, {NOT_CLOSED} (not closed yet), or {NOT_BALLOT}.
]]
--!include lib/common.lua
--!include lib/money.lua
--!include lib/replies.lua
local chunk = int_arg(ARGV[1], 0, 'chunk')
local last = ARGV[2]
if last ~= '0' and last ~= '1' then error('bad argument: last') end
local seed = ARGV[3]
if seed ~= '' and not string.match(seed, '^' .. string.rep('%x', 64) .. '$') then
  error('bad argument: seed')
end
if (#ARGV - 3) % 2 ~= 0 then error('bad argument: seq/amount pairs') end
for i = 4, #ARGV, 2 do
  int_arg(ARGV[i], 1, 'seq')
  if not money_ok(ARGV[i + 1]) then error('bad argument: amount') end
end
local m = rcall('HMGET', KEYS[1], 'state', 'policy', 'alloc_next', 'alloc_sum', 'q_total')
if not m[1] then return {UNKNOWN_CAMPAIGN} end
if m[1] ~= 'closed' then return {NOT_CLOSED} end
if m[2] ~= 'ballot' then return {NOT_BALLOT} end
local expected = tonumber(m[3] or '0')
if chunk ~= expected or m[3] == 'done' then return {REFUSED, m[3] or '0'} end
if last == '1' and seed == '' then error('bad argument: the last chunk reveals the seed') end
local sum = m[4] or '0'
local pairs_ = {}
for i = 4, #ARGV, 2 do
  sum = money_add(sum, ARGV[i + 1])
  pairs_[#pairs_ + 1] = tonumber(ARGV[i])
  pairs_[#pairs_ + 1] = ARGV[i + 1]
end
if money_cmp(sum, m[5]) > 0 then error('ballot allocation exceeds the total') end
local now = now_us()
if #pairs_ > 0 then
  rcall('HSET', KEYS[2], unpack(ARGV, 4))
  audit(KEYS[1], KEYS[3], now, {k = 'allot', n = chunk, s = pairs_})
end
rcall('HSET', KEYS[1], 'alloc_sum', sum)
if last == '1' then
  rcall('HSET', KEYS[1], 'alloc_next', 'done')
  audit(KEYS[1], KEYS[3], now, {k = 'ballot-result', seed = seed, m = sum})
else
  rcall('HSET', KEYS[1], 'alloc_next', chunk + 1)
end
return {OK, chunk + 1}
