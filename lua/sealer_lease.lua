--[[
  Take, keep or give back a campaign's sealer lease; one sealer seals a campaign at a time.
  Each new holder gets a larger fencing token (INCR), which every write of the sealer
  carries, so a holder whose lease lapsed (paused, partitioned) cannot write after its
  successor started.
  Bounded sealing (docs/audit-format.md, "Seal bound"): a holder that finds the oldest
  unsealed entry older than the bound appends a seal-gap entry saying so (why: handover
  when it just took the lease, late when it held it), once per gap. 'reclaim' is for a
  lease tampered with in Redis: taken by a token no gate process made (the caller checked
  its MAC), or lost by its holder before it could have lapsed (overwritten or deleted):
  the caller takes it back (from ARGV[5], when that token still holds it; else as
  'acquire') and a seal-gap entry, why lease-stolen (the foreign token's SHA-1 in h) or
  lease-lost (ARGV[5] '': the lease vanished), names what was unsealed then. Both are in the log before the entries they
  concern are sealed. 'late' (ARGV[5] = 'first,last') is 'acquire' that also records a
  seal-gap entry, why late, for entries first..last that a checkpoint just sealed past the
  bound (the round itself took the time).
  KEYS[1] lease           fg:{c}:sealer        token, with a TTL
  KEYS[2] fence counter   fg:{c}:sealer_fence
  KEYS[3] meta hash       fg:{c}:meta
  KEYS[4] frontier hash   fg:{c}:frontier
  KEYS[5] audit list      fg:{c}:audit
  ARGV[1] token (random, per process)   ARGV[2] TTL in ms
  ARGV[3] 'acquire' | 'release' | 'reclaim' | 'late'
  ARGV[4] seal bound in microseconds (0: no check)
  ARGV[5] ('reclaim') the foreign token seen holding the lease ('': it was deleted);
          ('late') the entries sealed late, 'first,last'
  Returns {fence, audit_n, state, sealed, holder, gap, holder_ttl}: fence 0 when another process holds
  the lease (or after a release); audit_n the log's size (with a seal-gap entry appended);
  state the campaign's state ('' when the campaign does not exist); sealed the size of the
  last checkpoint; holder the other token holding the lease ('' otherwise); gap the index
  of the seal-gap entry appended now (0: none); holder_ttl the other holder's remaining lease time in ms
  (-1: none, a lease no gate process writes; 0 when there is no other holder).
]]
--!include lib/lease.lua
--!include lib/common.lua
local mode = ARGV[3]
local bound_us = tonumber(ARGV[4] or '0')
if bound_us == nil or bound_us < 0 then error('bad argument: bound') end
local fence = 0
local held
local foreign = ''
local stolen = false
local late_first, late_last = nil, nil
if mode == 'late' then
  local a, b = string.match(ARGV[5] or '', '^(%d+),(%d+)$')
  if not a then error('bad argument: late range') end
  late_first, late_last = tonumber(a), tonumber(b)
  held = lease(KEYS[1], ARGV[1], tonumber(ARGV[2]), 'acquire')
elseif mode == 'reclaim' then
  foreign = ARGV[5] or ''
  if foreign ~= '' and rcall('GET', KEYS[1]) == foreign then
    lease(KEYS[1], ARGV[1], tonumber(ARGV[2]), 'release')  -- validates token and TTL
    rcall('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
    held = 'taken'
  else
    held = lease(KEYS[1], ARGV[1], tonumber(ARGV[2]), 'acquire')
  end
  stolen = held ~= 'other'
else
  held = lease(KEYS[1], ARGV[1], tonumber(ARGV[2]), mode)
end
if held == 'kept' then
  fence = tonumber(rcall('GET', KEYS[2]) or '0')
elseif held == 'taken' then
  fence = rcall('INCR', KEYS[2])
end
local holder, holder_ttl = '', 0
if held == 'other' then
  holder = rcall('GET', KEYS[1]) or ''
  holder_ttl = rcall('PTTL', KEYS[1])
end
local m = rcall('HMGET', KEYS[3], 'audit_n', 'state', 'audit_trimmed')
local n = tonumber(m[1] or '0')
local sealed = tonumber(rcall('HGET', KEYS[4], 'size') or '0')
local gap = 0
if fence ~= 0 and m[2] then
  if stolen then
    local h = ''
    if foreign ~= '' then h = redis.sha1hex(foreign) end
    local why = 'lease-lost'  -- gone before it could have lapsed: deleted, or a failover
    if foreign ~= '' then why = 'lease-stolen' end
    gap = audit(KEYS[3], KEYS[5], now_us(), {k = 'seal-gap', w = why, f = sealed + 1,
      l = n, h = h, x = fence})
  elseif late_first then
    gap = audit(KEYS[3], KEYS[5], now_us(), {k = 'seal-gap', w = 'late', f = late_first,
      l = late_last, x = fence})
  elseif bound_us > 0 and n > sealed then
    local trimmed = tonumber(m[3] or '0')
    local first = rcall('LINDEX', KEYS[5], sealed - trimmed)
    if first then
      local now = now_us()
      local waited = now - cmsgpack.unpack(first)['t']
      if waited > bound_us then
        -- once per gap: not again while the last entry is this gap's record
        local last = cmsgpack.unpack(rcall('LINDEX', KEYS[5], -1))
        if not (last['k'] == 'seal-gap' and last['f'] == sealed + 1) then
          local why = 'late'
          if held == 'taken' then why = 'handover' end
          gap = audit(KEYS[3], KEYS[5], now, {k = 'seal-gap', w = why, f = sealed + 1, l = n,
            d = waited, x = fence})
        end
      end
    end
  end
end
if gap ~= 0 then n = gap end
return {fence, n, m[2] or '', sealed, holder, gap, holder_ttl}
