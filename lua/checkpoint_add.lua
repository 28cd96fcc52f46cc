--[[
  Publish a signed checkpoint and the Merkle frontier it was computed from, together.
  Refused unless the caller holds the current fencing token, continues from the stored
  frontier, and grows the sealed size (never past the log's end).
  KEYS[1] fence counter   fg:{c}:sealer_fence
  KEYS[2] frontier hash   fg:{c}:frontier      size, frontier, fence
  KEYS[3] checkpoints     fg:{c}:checkpoints   list of JSON, sizes strictly growing
  KEYS[4] meta hash       fg:{c}:meta
  ARGV[1] fencing token   ARGV[2] sealed size it continued from   ARGV[3] new size
  ARGV[4] serialized frontier at the new size   ARGV[5] checkpoint JSON
  ARGV[6] '1': a signed checkpoint publishes the campaign's commitment (no witnesses are
          required): meta commit_pending goes, and joins may come (join.lua); '0': the
          witnesses' quorum publishes it (gate/audit/cosignatures.py)
  Returns {OK, new size} when published, or {REFUSED, reason}: FENCED (a newer sealer
  holds the lease), MOVED (the stored frontier is not where the caller started),
  NOT_GROWING, BEYOND_LOG.
]]
--!include lib/replies.lua
local rcall = redis.call
local fence = tonumber(ARGV[1])
local old_size, new_size = tonumber(ARGV[2]), tonumber(ARGV[3])
if fence == nil or old_size == nil or new_size == nil then error('bad argument: numbers') end
if string.len(ARGV[4]) < 8 or string.sub(ARGV[5], 1, 1) ~= '{' then
  error('bad argument: frontier or checkpoint')
end
if tonumber(rcall('GET', KEYS[1]) or '0') ~= fence then return {REFUSED, FENCED} end
if tonumber(rcall('HGET', KEYS[2], 'size') or '0') ~= old_size then return {REFUSED, MOVED} end
if new_size <= old_size then return {REFUSED, NOT_GROWING} end
if new_size > tonumber(rcall('HGET', KEYS[4], 'audit_n') or '0') then
  return {REFUSED, BEYOND_LOG}
end
rcall('HSET', KEYS[2], 'size', new_size, 'frontier', ARGV[4], 'fence', fence)
rcall('RPUSH', KEYS[3], ARGV[5])
-- every checkpoint covers entry 1, the admin-create entry with the rules and commitments
if ARGV[6] == '1' then rcall('HDEL', KEYS[4], 'commit_pending') end
return {OK, new_size}
