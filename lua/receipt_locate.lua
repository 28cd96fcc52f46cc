--[[
  Find, for each seq, the join entry that created it and that batch's receipt signature
  (read-only). The join entries are indexed by the first seq they created (a batch's
  seqs are consecutive), so the entry is the one with the largest first seq <= seq; the
  caller checks the seq is really in it (a pre-queue chunk not sealed yet is not indexed).
  KEYS[1] join entries   fg:{c}:rjoin   zset: entry index scored by its first seq
  KEYS[2] signatures     fg:{c}:rsig    hash: entry index -> "kid:sig"
  ARGV[1..n] seqs
  Returns {entry_1, sig_1, ..., entry_n, sig_n}: entry 0 when none, sig '' when none.
]]
local rcall = redis.call
local reply = {}
for i = 1, #ARGV do
  local seq = tonumber(ARGV[i])
  if seq == nil or seq < 1 then error('bad argument: seq ' .. i) end
  local found = rcall('ZREVRANGEBYSCORE', KEYS[1], seq, '-inf', 'LIMIT', 0, 1)
  if found[1] then
    reply[#reply + 1] = tonumber(found[1])
    reply[#reply + 1] = rcall('HGET', KEYS[2], found[1]) or ''
  else
    reply[#reply + 1] = 0
    reply[#reply + 1] = ''
  end
end
return reply
