--[[
  Record that an operator looked a customer up (issue 13): who, how, about whom, when.
  The lookup itself reads the log; this entry makes it part of the log, so a customer's
  dispute account and an auditor see every lookup of that customer.
  KEYS[1] meta hash      fg:{c}:meta
  KEYS[2] audit list     fg:{c}:audit
  ARGV[1] actor (the operator's token name)
  ARGV[2] what: audit (the entries query) or dispute (the account)
  ARGV[3] the customer's digest (16 bytes)
  ARGV[4] the query's other parameters (text, at most 500 bytes; '' for none)
  Returns {OK, index} (the entry's index), or {UNKNOWN_CAMPAIGN}.
]]
--!include lib/common.lua
--!include lib/replies.lua
local actor, what, digest, params = ARGV[1], ARGV[2], ARGV[3], ARGV[4] or ''
if actor == nil or actor == '' or string.len(actor) > 200 then error('bad argument: actor') end
if what ~= 'audit' and what ~= 'dispute' then error('bad argument: what') end
if string.len(digest or '') ~= 16 then error('bad argument: digest') end
if string.len(params) > 500 then error('bad argument: params') end
if rcall('EXISTS', KEYS[1]) == 0 then return {UNKNOWN_CAMPAIGN} end
local entry = {k = 'admin-query', a = actor, q = what, c = digest}
if params ~= '' then entry['p'] = params end
return {OK, audit(KEYS[1], KEYS[2], now_us(), entry)}
