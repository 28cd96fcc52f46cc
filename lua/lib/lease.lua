--[[
  A lease one gate process holds on a campaign's job (the sealer, the rate controller):
  the key holds the holder's token, with a TTL.
  lease(key, token, ttl, mode)  mode 'acquire' takes a free lease or renews the caller's
                                own, 'release' gives the caller's back; returns 'taken',
                                'kept', 'other' (another token holds it) or 'released';
                                a script error for a bad token, TTL or mode
]]
local function lease(key, token, ttl, mode)
  if not token or string.len(token) < 8 then error('bad argument: token') end
  if ttl == nil or ttl < 1 or ttl ~= math.floor(ttl) then error('bad argument: ttl') end
  local holder = redis.call('GET', key)
  if mode == 'release' then
    if holder == token then redis.call('DEL', key) end
    return 'released'
  elseif mode ~= 'acquire' then
    error('bad argument: mode')
  end
  if holder == token then
    redis.call('PEXPIRE', key, ttl)
    return 'kept'
  elseif not holder then
    redis.call('SET', key, token, 'PX', ttl)
    return 'taken'
  end
  return 'other'
end
