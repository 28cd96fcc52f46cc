--[[
  Amounts as decimal strings (Lua numbers are doubles, exact only below 2^53).
  A valid amount is "0" or digits without a leading zero, at most 30 of them.
  money_ok(a)          true when `a` is a valid amount string
  money_cmp(a, b)      -1, 0 or 1
  money_add(a, b)      a + b
  money_sub(a, b)      a - b, for a >= b (errors otherwise)
  money_mod(a, m)      a mod m, for a small integer m (m < 2^46)
  money_div(a, m)      floor(a / m) as a string, for a small integer m
  money_mul(a, n)      a x n, for a small integer n (0 <= n < 10^8)
  money_min(a, b)      the smaller
]]
local LIMB = 10000000  -- 7 digits per limb: sums and carries stay far below 2^53

local function money_ok(a)
  return type(a) == 'string' and #a >= 1 and #a <= 30 and string.find(a, '^%d+$') ~= nil
    and (a == '0' or string.sub(a, 1, 1) ~= '0')
end

local function money_cmp(a, b)
  if #a ~= #b then return #a < #b and -1 or 1 end
  if a == b then return 0 end
  return a < b and -1 or 1
end

local function to_limbs(a)
  local limbs = {}
  local i = #a
  while i >= 1 do
    local j = math.max(1, i - 6)
    limbs[#limbs + 1] = tonumber(string.sub(a, j, i))
    i = j - 1
  end
  return limbs
end

local function from_limbs(limbs)
  local n = #limbs
  while n > 1 and limbs[n] == 0 do n = n - 1 end
  local parts = {string.format('%d', limbs[n])}
  for i = n - 1, 1, -1 do parts[#parts + 1] = string.format('%07d', limbs[i]) end
  return table.concat(parts)
end

local function money_add(a, b)
  local x, y, out, carry = to_limbs(a), to_limbs(b), {}, 0
  for i = 1, math.max(#x, #y) do
    local s = (x[i] or 0) + (y[i] or 0) + carry
    out[i] = s % LIMB
    carry = math.floor(s / LIMB)
  end
  if carry > 0 then out[#out + 1] = carry end
  return from_limbs(out)
end

local function money_sub(a, b)
  if money_cmp(a, b) < 0 then error('money_sub: negative result') end
  local x, y, out, borrow = to_limbs(a), to_limbs(b), {}, 0
  for i = 1, #x do
    local d = x[i] - (y[i] or 0) - borrow
    if d < 0 then d = d + LIMB; borrow = 1 else borrow = 0 end
    out[i] = d
  end
  return from_limbs(out)
end

local function money_mod(a, m)
  local r = 0
  for i = 1, #a do r = (r * 10 + string.byte(a, i) - 48) % m end
  return r
end

local function money_div(a, m)
  local r, digits = 0, {}
  for i = 1, #a do
    r = r * 10 + string.byte(a, i) - 48
    local q = math.floor(r / m)
    digits[#digits + 1] = string.char(48 + q)
    r = r - q * m
  end
  local s = string.gsub(table.concat(digits), '^0+', '')
  if s == '' then s = '0' end
  return s
end

local function money_mul(a, n)
  if n == 0 then return '0' end
  local x, out, carry = to_limbs(a), {}, 0
  for i = 1, #x do
    local p = x[i] * n + carry  -- below 10^7 x 10^8 + carry: exact in a double
    out[i] = p % LIMB
    carry = math.floor(p / LIMB)
  end
  while carry > 0 do
    out[#out + 1] = carry % LIMB
    carry = math.floor(carry / LIMB)
  end
  return from_limbs(out)
end

local function money_min(a, b)
  return money_cmp(a, b) <= 0 and a or b
end
