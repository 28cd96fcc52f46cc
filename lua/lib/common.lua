--[[
  Shared helpers, included (not copied) into each script by the loader.
  now_us()                      Redis TIME in microseconds (exact in a double until year 2255)
  audit(meta, log, now, entry)  append one entry; the index comes from meta.audit_n (gap-free)
  audit_at(log, index, now, entry)  append one entry whose index the caller took from
                                meta.audit_n and writes back itself (with its other meta fields)
  int_arg(v, lo, name)          an integer ARGV, or a script error naming it
  ticket_held(tickets, digest, seq)  whether Redis holds the ticket a signed token names
]]
local rcall = redis.call

local function now_us()
  local t = rcall('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function audit(meta_key, log_key, now, entry)
  entry['i'] = rcall('HINCRBY', meta_key, 'audit_n', 1)
  entry['t'] = now
  rcall('RPUSH', log_key, cmsgpack.pack(entry))
  return entry['i']
end

local function audit_at(log_key, index, now, entry)
  entry['i'] = index
  entry['t'] = now
  rcall('RPUSH', log_key, cmsgpack.pack(entry))
  return index
end

-- A signed (seq, digest) proves what the gate once issued, not that Redis still holds it:
-- a failover to a replica that lacked the ticket loses it, and its seq may then be given
-- to another customer. Scripts that grant on a token check this first.
local function ticket_held(tickets_key, digest, seq)
  return tonumber(rcall('HGET', tickets_key, digest) or '0') == seq
end

local function int_arg(value, lo, name)
  local n = tonumber(value)
  if n == nil or n ~= math.floor(n) or n < lo or n > 9007199254740991 then
    error('bad argument ' .. name .. ': ' .. tostring(value))
  end
  return n
end

local function num_arg(value, lo, name)
  local n = tonumber(value)
  if n == nil or n ~= n or n < lo or n > 1e12 then
    error('bad argument ' .. name .. ': ' .. tostring(value))
  end
  return n
end

-- The longest span of Redis time whose tokens one call may still use (a stalled loop
-- catches up on at most this much). 3 s: every gate process starved at once for over
-- a second (four processes and a poll load on two cores) must not cost the rate; the
-- customers a catch-up admits still reach the core on the passes' schedule (pass.lua)
-- and through the door (arrive.lua) at the rate.
local ACCRUE_MAX_US = 3000000

-- Refill the admission bucket up to `now`; returns the new level. What was left from
-- before counts up to max(burst, 1), and everything accrued since (rate x elapsed, the
-- elapsed time capped at ACCRUE_MAX_US) is added whole: however rarely admit runs, it
-- admits rate x elapsed (issue 12), while one call never gets more than
-- burst + rate x min(elapsed, 3 s).
local function refill(tokens, bucket_us, rate, burst, now)
  local capacity = math.max(burst, 1)
  local elapsed = now - bucket_us
  if elapsed < 0 then elapsed = 0 end
  if elapsed > ACCRUE_MAX_US then elapsed = ACCRUE_MAX_US end
  if tokens > capacity then tokens = capacity end
  return tokens + rate * elapsed / 1000000
end

-- An integer as a decimal string (tostring would switch to 1.7e+15 notation).
local function int_str(n)
  return string.format('%.0f', n)
end
