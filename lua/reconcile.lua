--[[
  After a failover: compare what the gate processes acknowledged with what this primary
  holds, and where something is missing, hold the campaign so nothing is issued twice.
  KEYS[1] meta hash      fg:{c}:meta
  KEYS[2] audit list     fg:{c}:audit
  KEYS[3] marks hash     fg:{c}:fo_marks   process token -> "seq,res_n,audit_n,sealed,old run id"
  KEYS[4] revoked set    fg:{c}:revoked    the lost seqs join it: admission passes them over
  KEYS[5] restored hash  fg:{c}:fo_restored  emptied when a new report starts (gate/failover.py
                         fills it with the confirmations and releases it did again)
  KEYS[6] gone string    fg:{c}:fo_gone    the report of a campaign this primary lacks whole
  ARGV[1] this primary's run id
  ARGV[2] when the failover was first seen (microseconds, Redis time)
  Returns {OK, 0} when nothing acknowledged is missing, {OK, 1, report} when something is
  (report: meta field failover_hold, a json object; or fo_gone's, below), or
  {UNKNOWN_CAMPAIGN} when neither this primary nor any mark knows the campaign.
  A primary that lacks the whole campaign (no meta: a replica promoted before the primary
  streamed it anything) while the marks show something acknowledged keeps a tombstone
  instead of forgetting: fo_gone holds the report {campaign_missing=true, primary,
  previous_primary, seqs={1, highest}, reservations={1, highest}, audit={1, highest},
  sealed, log_broken (sealed > 0), at_us, seen_at_us} (a range only where its highest is
  above 0). While it exists the gate holds the campaign (every request 503 campaign_held)
  and campaign_create.lua refuses the id, so no seq is given out twice. A later call with
  marks beyond it widens it; one with none beyond it answers {OK, 0}. Where meta exists
  (a primary restored from a copy that has the campaign), the tombstone's highest values
  count as marks and it is deleted: what the copy still lacks is held as below.
  Every process's marks are read and the hash is deleted, so the first process to run this
  after the settle window reconciles for all of them; a later call finds what is left.
  When something is missing: seq and res_n are raised to the marks (no seq and no
  reservation id is given out again), the lost seqs are revoked (no ticket holds them
  here: admission passes them over), an open campaign is paused (an operator resumes it),
  meta failover_hold holds the report (ranges merged with an earlier report of the same
  primary), and one audit entry records it, {k='failover-lost', n=run id, p=paused(0|1),
  sr={first, last seq lost}, rr={first, last reservation number}, xr={first, last audit
  index}} (the ranges only where something of that kind is missing), unless sealed entries lie
  beyond this primary's log: an entry appended now would take the index of a sealed one,
  so nothing is appended, failover_log_broken is set and the campaign stays held (pause,
  resume and close refuse it; campaign_state.lua).
]]
--!include lib/common.lua
--!include lib/replies.lua
local new_run = ARGV[1]
local seen_at = int_arg(ARGV[2], 0, 'seen at')
local m = rcall('HMGET', KEYS[1], 'state', 'seq', 'res_n', 'audit_n', 'failover_hold')
local marks = rcall('HGETALL', KEYS[3])
local gone_text = rcall('GET', KEYS[6])
local gone = nil
if gone_text then gone = cjson.decode(gone_text) end
local ms, mr, ma, mz, old_run = 0, 0, 0, 0, ''
for i = 2, #marks, 2 do
  local s, r, a, z, o = string.match(marks[i], '^(%d+),(%d+),(%d+),(%d+),(.*)$')
  if s == nil then error('bad argument: marks ' .. marks[i - 1]) end
  ms = math.max(ms, tonumber(s))
  mr = math.max(mr, tonumber(r))
  ma = math.max(ma, tonumber(a))
  mz = math.max(mz, tonumber(z))
  if o ~= '' and o ~= new_run then old_run = o end
end
rcall('DEL', KEYS[3])
if gone then
  local function last(range)
    if type(range) == 'table' and range[2] then return tonumber(range[2]) end
    return 0
  end
  local gs, gr, ga, gz = last(gone.seqs), last(gone.reservations), last(gone.audit),
    tonumber(gone.sealed or 0)
  local grew = ms > gs or mr > gr or ma > ga or mz > gz
  ms, mr, ma, mz = math.max(ms, gs), math.max(mr, gr), math.max(ma, ga), math.max(mz, gz)
  if old_run == '' then old_run = gone.previous_primary or '' end
  if m[1] then
    rcall('DEL', KEYS[6])
  elseif not grew then
    return {OK, 0}
  end
end
if not m[1] then
  if ms == 0 and mr == 0 and ma == 0 and mz == 0 then return {UNKNOWN_CAMPAIGN} end
  local now = now_us()
  local lost = {campaign_missing = true, primary = new_run, previous_primary = old_run,
                at_us = int_str(now), seen_at_us = int_str(seen_at), sealed = mz,
                log_broken = mz > 0}
  if gone then
    lost.primary, lost.at_us, lost.seen_at_us = gone.primary, gone.at_us, gone.seen_at_us
  end
  if ms > 0 then lost.seqs = {1, ms} end
  if mr > 0 then lost.reservations = {1, mr} end
  if math.max(ma, mz) > 0 then lost.audit = {1, math.max(ma, mz)} end
  local text = cjson.encode(lost)
  rcall('SET', KEYS[6], text)
  return {OK, 1, text}
end
local seq, res_n, audit_n = tonumber(m[2] or '0'), tonumber(m[3] or '0'), tonumber(m[4] or '0')
local report = nil
if m[5] then report = cjson.decode(m[5]) end
-- Entries this reconciliation appended are not the primary's own: compare with the log
-- as the primary had it when this failover's first report was made.
local base = audit_n
if report and report.primary == new_run then base = tonumber(report.audit_base) end
local lost_seq, lost_res = ms > seq, mr > res_n
local lost_audit, broken = ma > base, mz > base
if not (lost_seq or lost_res or lost_audit or broken) then return {OK, 0} end

local function merged(name, from, to)
  local old = report and report.primary == new_run and report[name]
  if old and old ~= cjson.null then
    from, to = math.min(from, old[1]), math.max(to, old[2])
  end
  return {from, to}
end
local now = now_us()
if not (report and report.primary == new_run) then rcall('DEL', KEYS[5]) end
local new = {primary = new_run, audit_base = base, at_us = int_str(now),
             seen_at_us = int_str(seen_at), state_before = m[1],
             log_broken = broken or (report ~= nil and report.log_broken == true)}
new.previous_primary = old_run
if report and report.primary == new_run then
  new.state_before = report.state_before
  if old_run == '' then new.previous_primary = report.previous_primary end
end
if lost_seq then
  new.seqs = merged('seqs', seq + 1, ms)
  rcall('HSET', KEYS[1], 'seq', ms)
  -- No ticket holds these seqs here: admission skips them (as revoked) instead of
  -- admitting no one in their place.
  for s = seq + 1, ms do rcall('SADD', KEYS[4], s) end
elseif report and report.primary == new_run then
  new.seqs = report.seqs
end
if lost_res then
  new.reservations = merged('reservations', res_n + 1, mr)
  rcall('HSET', KEYS[1], 'res_n', mr)
elseif report and report.primary == new_run then
  new.reservations = report.reservations
end
if lost_audit or broken then
  new.audit = merged('audit', base + 1, math.max(ma, mz))
elseif report and report.primary == new_run then
  new.audit = report.audit
end
if broken then new.sealed_beyond = math.max(mz, tonumber(report and report.sealed_beyond or 0)) end
local paused = 0
if m[1] == 'open' then
  rcall('HSET', KEYS[1], 'state', 'paused')
  paused = 1
end
local text = cjson.encode(new)
rcall('HSET', KEYS[1], 'failover_hold', text)
if new.log_broken then
  rcall('HSET', KEYS[1], 'failover_log_broken', '1')
else
  local entry = {k = 'failover-lost', n = new_run, p = paused}
  if lost_seq then entry.sr = {seq + 1, ms} end
  if lost_res then entry.rr = {res_n + 1, mr} end
  if lost_audit then entry.xr = {base + 1, ma} end
  audit(KEYS[1], KEYS[2], now, entry)
end
return {OK, 1, text}
