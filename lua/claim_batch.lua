--[[
  Claim for several customers in one call (issue 15: claims batched per event-loop tick,
  as joins are). Each claim is made exactly as claim.lua alone would make it, in the order
  given: claim.lua's own text is the function claim_one here (the loader's --!function),
  so the two cannot differ, and each claim reads the state the claims before it left.
  A claim whose run raises an error (arguments claim.lua refuses; a reservation id that
  exists already) gets an empty reply and nothing is written for it (claim.lua raises
  before its first write); its caller then makes that claim alone, with claim.lua.
  KEYS[1..10] as claim.lua's KEYS[1..10]
  ARGV[1..5n] n claims, five arguments each, as claim.lua's ARGV[1..5]
  Returns {OK, reply_1, ..., reply_n}: reply_i is claim.lua's reply to claim i, or an
  empty table (see above).
]]
--!include lib/replies.lua
--!function claim_one claim.lua
if #ARGV == 0 or #ARGV % 5 ~= 0 then error('bad argument: five arguments a claim') end
local replies = {OK}
for i = 1, #ARGV, 5 do
  local done, reply = pcall(claim_one, KEYS, {ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3],
    ARGV[i + 4]})
  replies[#replies + 1] = done and reply or {}
end
return replies
