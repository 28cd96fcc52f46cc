--[[
  Reservations: quota held for a claim until confirmed, released, or expired.
  A record in the reservations hash is msgpack {seq, amount, state, expires_us, digest}.
  res_load(res_key, rid)                 the record, or nil
  res_finish(k, rid, r, to, now)         a held reservation becomes `to` (confirmed,
                                         released or expired): moves its amount out of
                                         `held`, frees the customer's active slot
  k is the table of keys {meta, active, resexp, holds, spent, res}.
]]
--!include lib/common.lua
--!include lib/money.lua
local function res_load(res_key, rid)
  local raw = rcall('HGET', res_key, rid)
  if not raw then return nil end
  return cmsgpack.unpack(raw)
end

local function res_finish(k, rid, r, to)
  local seq, amount = r[1], r[2]
  local held = rcall('HGET', k.meta, 'held')
  rcall('HSET', k.meta, 'held', money_sub(held, amount))
  if to == 'confirmed' then
    rcall('HSET', k.meta, 'confirmed', money_add(rcall('HGET', k.meta, 'confirmed'), amount))
  else
    -- the amount goes back to the pool and no longer counts against the customer's max
    local spent = rcall('HGET', k.spent, seq) or '0'
    rcall('HSET', k.spent, seq, money_sub(spent, amount))
    local field = to == 'released' and 'released' or 'expired_amount'
    rcall('HSET', k.meta, field, money_add(rcall('HGET', k.meta, field) or '0', amount))
  end
  rcall('HINCRBY', k.meta, to == 'confirmed' and 'confirms' or (to == 'released' and 'releases' or 'reservations_expired'), 1)
  rcall('HINCRBY', k.meta, 'holding', -1)
  rcall('ZREM', k.resexp, rid)
  rcall('HDEL', k.holds, seq)
  rcall('ZREM', k.active, seq)
  r[3] = to
  rcall('HSET', k.res, rid, cmsgpack.pack(r))
end
