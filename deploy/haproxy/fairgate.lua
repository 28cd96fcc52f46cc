--[[
  fairgate for HAProxy 2.6 (Debian's haproxy, Lua 5.3): what nginx does with
  auth_request, with core.httpclient and no other module.

  Actions (http-request lua.NAME ARG):
    fairgate_login URL   the bank's session check: GET URL with the client's cookies;
                         a 2xx answer names the customer in X-Authenticated-Customer,
                         kept in txn.fairgate_customer (nothing set otherwise)
    fairgate_pass URL    the gate's pass check (/gate/auth) for txn.fairgate_customer
                         (with the proxy secret; or the client's bearer token, for a
                         gate with identity = "jwt") and txn.fairgate_campaign; sets
                         txn.fairgate_auth (the status, "0" when the gate did not answer),
                         txn.fairgate_seq and txn.fairgate_digest; on 200 it removes
                         the pass (X-Gate-Pass, the fg_pass cookie) from the request, so
                         the core system never sees it
    fairgate_edge URL    the pass checked here, with no call to the gate per request
                         (FAIRGATE_PASS_CHECK=edge; docs/proxy.md): sets the same
                         variables as fairgate_pass, and txn.fairgate_refused (why: the
                         gate's error code); a pass's first use goes to the gate's
                         /gate/auth (URL) once, and txn.fairgate_arrived is then the
                         arrival mark for the fg_arrived cookie
  Converter:
    fairgate_escape      a string made safe as one query parameter value (the original
                         URL carried to the waiting page as ?return=)
  Environment:
    FAIRGATE_PROXY_SECRET  the gate's proxy_secret
    FAIRGATE_PASS_CHECK    "gate" (fairgate_pass asks /gate/auth) or "edge"; with "edge":
    FAIRGATE_EDGE_KEYS     the key file of `gate keys edge` (read at start and reload)
    FAIRGATE_GATE, FAIRGATE_CAMPAIGN  where the revocation list is fetched, and for what
]]

local SECRET = os.getenv("FAIRGATE_PROXY_SECRET") or ""
local PASS_COOKIE = "fg_pass"
local ARRIVED_COOKIE = "fg_arrived"
-- Per try: HAProxy 2.6's httpclient tries 4 times, so a silent peer costs 2 s at most.
local TIMEOUT_MS = 500

-- Header values as a list (request headers arrive indexed from 0).
local function values(headers, name)
  local found = {}
  local entry = headers[name]
  if entry == nil then
    return found
  end
  for index = 0, #entry do
    if entry[index] ~= nil then
      found[#found + 1] = entry[index]
    end
  end
  return found
end

local function first(headers, name)
  return values(headers, name)[1]
end

-- Connection: close: the httpclient's idle connections cannot be bounded in HAProxy 2.6
-- (they lived 15 s, the gate's own keep-alive bound), so none is left behind.
local function get(url, headers)
  local client = core.httpclient()
  headers["connection"] = { "close" }
  return client:get({ url = url, headers = headers, timeout = TIMEOUT_MS })
end

core.register_converters("fairgate_escape", function(text)
  return (text:gsub("[^%w%-%._~/?=:@,]", function(c)
    return string.format("%%%02X", c:byte())
  end))
end)

core.register_action("fairgate_login", { "http-req" }, function(txn, url)
  local cookies = values(txn.http:req_get_headers(), "cookie")
  if #cookies == 0 then
    return
  end
  local answer = get(url, { ["cookie"] = cookies })
  if answer == nil or answer.status == nil or answer.status < 200 or answer.status > 299 then
    return
  end
  local customer = first(answer.headers or {}, "x-authenticated-customer")
  if customer ~= nil and customer ~= "" then
    txn:set_var("txn.fairgate_customer", customer)
  end
end, 1)

-- The Cookie header without the pass (nor the edge check's arrival mark); nil when
-- nothing else is left.
local function without_pass(cookies)
  local kept = {}
  for _, header in ipairs(cookies) do
    for pair in header:gmatch("[^;]+") do
      local name = pair:match("^%s*([^=%s]+)")
      if name ~= nil and name ~= PASS_COOKIE and name ~= ARRIVED_COOKIE then
        kept[#kept + 1] = pair:match("^%s*(.-)%s*$")
      end
    end
  end
  if #kept == 0 then
    return nil
  end
  return table.concat(kept, "; ")
end

-- The gate's pass check (/gate/auth): sets txn.fairgate_auth and, on 200, the seq and
-- digest, and takes the pass out of the request.
local function ask_gate(txn, url)
  local request = txn.http:req_get_headers()
  local cookies = values(request, "cookie")
  local headers = {
    ["x-gate-campaign"] = { txn:get_var("txn.fairgate_campaign") or "" },
    ["x-original-uri"] = { txn.sf:pathq() or "/" },
  }
  local customer = txn:get_var("txn.fairgate_customer")
  if customer ~= nil then
    headers["x-customer-id"] = { customer }
    headers["x-gate-proxy-secret"] = { SECRET }
  end
  if #cookies > 0 then
    headers["cookie"] = cookies
  end
  -- the pass, and the bank's login token when the gate checks it (identity = "jwt")
  for _, name in ipairs({ "x-gate-pass", "authorization" }) do
    local value = first(request, name)
    if value ~= nil then
      headers[name] = { value }
    end
  end
  local answer = get(url, headers)
  local status = (answer ~= nil and answer.status) or 0
  txn:set_var("txn.fairgate_auth", tostring(status))
  if status ~= 200 then
    return
  end
  txn:set_var("txn.fairgate_seq", first(answer.headers, "x-gate-seq") or "")
  txn:set_var("txn.fairgate_digest", first(answer.headers, "x-gate-customer") or "")
  txn.http:req_del_header("x-gate-pass")
  local kept = without_pass(cookies)
  txn.http:req_del_header("cookie")
  if kept ~= nil then
    txn.http:req_set_header("cookie", kept)
  end
end

core.register_action("fairgate_pass", { "http-req" }, ask_gate, 1)

-- -- The pass checked at the edge (FAIRGATE_PASS_CHECK=edge) ----------------------------
-- What deploy/nginx/fairgate-edge.js does, in HAProxy's Lua: the pass verified as
-- /gate/auth verifies it (gate/tokens.py, gate/http/checks.py), by the gate's clock (Redis
-- time, from the revocation list), against the revocation list a background task fetches
-- every REFRESH_MS (GET /gate/revoked); no list fresher than the gate's stale limit:
-- every pass refused (401), as /gate/auth refuses with a stale cache.

local EDGE = os.getenv("FAIRGATE_PASS_CHECK") == "edge"
local MAX_TOKEN_CHARS = 512
local MAX_CUSTOMER_ID = 256
local MAX_INT = 9007199254740991 -- 2^53 - 1: beyond it the gate issues nothing
local REFRESH_MS = 250
local ARRIVED_LABEL = "fairgate-arrived\0"
local B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
local B64INDEX = {}
for i = 1, #B64URL do
  B64INDEX[B64URL:byte(i)] = i - 1
end

-- The bytes of canonical unpadded base64url, else nil (gate/base64url.py).
local function b64url_decode(text)
  local n = #text
  if n % 4 == 1 then
    return nil
  end
  local out = {}
  for at = 1, n, 4 do
    local chunk = 0
    local count = 0
    for j = at, math.min(at + 3, n) do
      local value = B64INDEX[text:byte(j)]
      if value == nil then
        return nil
      end
      chunk = chunk * 64 + value
      count = count + 1
    end
    if count == 4 then
      out[#out + 1] = string.char((chunk >> 16) & 255, (chunk >> 8) & 255, chunk & 255)
    elseif count == 3 then -- 18 bits: 2 bytes and 2 unused bits
      if chunk & 3 ~= 0 then
        return nil
      end
      out[#out + 1] = string.char((chunk >> 10) & 255, (chunk >> 2) & 255)
    else -- 12 bits: 1 byte and 4 unused bits
      if chunk & 15 ~= 0 then
        return nil
      end
      out[#out + 1] = string.char((chunk >> 4) & 255)
    end
  end
  return table.concat(out)
end

local function b64url_encode(data)
  local out = {}
  for at = 1, #data, 3 do
    local a, b, c = data:byte(at, at + 2)
    local chunk = (a << 16) | ((b or 0) << 8) | (c or 0)
    local chars = (c ~= nil and 4) or (b ~= nil and 3) or 2
    for k = 1, chars do
      local value = (chunk >> (18 - 6 * (k - 1))) & 63
      out[#out + 1] = B64URL:sub(value + 1, value + 1)
    end
  end
  return table.concat(out)
end

-- A base64url key as the standard base64 that HAProxy's hmac converter takes.
local function b64_std(key)
  local text = key:gsub("-", "+"):gsub("_", "/")
  return text .. string.rep("=", (4 - #text % 4) % 4)
end

local function valid_text(s)
  return utf8.len(s) ~= nil and not s:find("\237[\160-\191]") -- no UTF-16 surrogates
end

-- The msgpack list of a token's payload: every field a string, an integer or bytes,
-- else nil (what Python's msgpack and gate/tokens.py refuse, this refuses too).
local function unpack_token(data)
  local pos = 1
  local function need(n)
    if pos + n - 1 > #data then
      error("short", 0)
    end
  end
  local function read(format, n)
    need(n)
    local value = string.unpack(format, data, pos)
    pos = pos + n
    return value
  end
  local function bytes(n)
    need(n)
    local out = data:sub(pos, pos + n - 1)
    pos = pos + n
    return out
  end
  local function text(n)
    if n > 128 then
      return nil
    end
    local s = bytes(n)
    if not valid_text(s) then
      return nil
    end
    return { text = s }
  end
  local function int(value)
    if value > MAX_INT or value < -MAX_INT then
      return nil
    end
    return { int = value }
  end
  local function item()
    local b = read("B", 1)
    if b <= 0x7f then return { int = b } end
    if b >= 0xe0 then return { int = b - 256 } end
    if b >= 0xa0 and b <= 0xbf then return text(b - 0xa0) end
    if b == 0xcc then return int(read(">I1", 1)) end
    if b == 0xcd then return int(read(">I2", 2)) end
    if b == 0xce then return int(read(">I4", 4)) end
    if b == 0xcf then
      local value = read(">i8", 8) -- a uint64 past 2^63 reads negative: refused
      return value >= 0 and int(value) or nil
    end
    if b == 0xd0 then return int(read(">i1", 1)) end
    if b == 0xd1 then return int(read(">i2", 2)) end
    if b == 0xd2 then return int(read(">i4", 4)) end
    if b == 0xd3 then return int(read(">i8", 8)) end
    if b == 0xd9 then return text(read(">I1", 1)) end
    if b == 0xda then return text(read(">I2", 2)) end
    if b == 0xdb then return text(read(">I4", 4)) end
    if b == 0xc4 or b == 0xc5 or b == 0xc6 then
      local n = read((b == 0xc4 and ">I1") or (b == 0xc5 and ">I2") or ">I4",
        (b == 0xc4 and 1) or (b == 0xc5 and 2) or 4)
      if n > 64 then
        return nil
      end
      return { bin = bytes(n) }
    end
    return nil -- nil, bool, float, array, map, ext: no field of a token
  end
  local ok, fields = pcall(function()
    local head = read("B", 1)
    local count
    if head >= 0x90 and head <= 0x9f then
      count = head - 0x90
    elseif head == 0xdc then
      count = read(">I2", 2)
    elseif head == 0xdd then
      count = read(">I4", 4)
    else
      return nil
    end
    if count ~= 6 and count ~= 7 then
      return nil
    end
    local list = {}
    for i = 1, count do
      list[i] = item()
      if list[i] == nil then
        return nil
      end
    end
    if pos ~= #data + 1 then
      return nil
    end
    return list
  end)
  if not ok then
    return nil
  end
  return fields
end

-- The edge key file (`gate keys edge`): JSON with two flat objects of kid -> base64url.
local function load_edge_keys(path)
  local file = io.open(path or "", "r")
  if file == nil then
    error("fairgate edge: cannot read the key file FAIRGATE_EDGE_KEYS=" .. tostring(path))
  end
  local text = file:read("a")
  file:close()
  local keys = {}
  for _, section in ipairs({ "pass_keys", "digest_keys" }) do
    local body = text:match('"' .. section .. '"%s*:%s*(%b{})')
    if body == nil then
      error("fairgate edge: " .. path .. ": no " .. section)
    end
    keys[section] = {}
    for kid, key in body:gmatch('"([%w_-]+)"%s*:%s*"([%w_-]+)"') do
      keys[section][kid] = b64_std(key)
    end
  end
  return keys
end

local function now_ms()
  local now = core.now()
  return now.sec * 1000 + now.usec // 1000
end

local KEYS = nil
local LIST = nil -- the campaign's revocation list, replaced whole by the task

local function parse_list(body, campaign, fetched)
  local lines = {}
  local first_line = body:match("^([^\n]*)\n")
  if first_line ~= "fairgate-revoked 1" then
    return nil
  end
  for name, value in body:gmatch("([%w_]+) ([^\n]*)") do
    lines[name] = value
  end
  local time_ms = tonumber(lines.time_ms)
  local stale = tonumber(lines.stale_after_ms)
  if lines.campaign ~= campaign or not lines.digest_key or not lines.state
      or time_ms == nil or stale == nil or lines.revoked == nil then
    return nil
  end
  local revoked = {}
  for seq in lines.revoked:gmatch("%d+") do
    revoked[tonumber(seq)] = true
  end
  return {
    fetched_ms = fetched,
    offset_ms = time_ms - fetched,
    stale_after_ms = stale,
    state = lines.state,
    digest_key = lines.digest_key,
    revoked = revoked,
  }
end

if EDGE then
  if os.getenv("FAIRGATE_IDENTITY") == "jwt" then
    -- the customer is then in the bank's token, which only the gate checks
    error("fairgate edge: FAIRGATE_PASS_CHECK=edge needs FAIRGATE_IDENTITY=header")
  end
  KEYS = load_edge_keys(os.getenv("FAIRGATE_EDGE_KEYS"))
  local campaign = os.getenv("FAIRGATE_CAMPAIGN") or ""
  local url = "http://" .. (os.getenv("FAIRGATE_GATE") or "127.0.0.1:8080")
      .. "/gate/revoked?campaign=" .. campaign
  core.register_task(function()
    while true do
      local started = now_ms()
      local ok, answer = pcall(get, url, { ["x-gate-proxy-secret"] = { SECRET } })
      if ok and answer ~= nil and answer.status == 200 and answer.body ~= nil then
        local fetched = (started + now_ms()) // 2
        local list = parse_list(answer.body, campaign, fetched)
        if list ~= nil then
          LIST = list
        else
          core.Alert("fairgate edge: the revocation list is not one for " .. campaign)
        end
      end
      local waited = now_ms() - started
      core.msleep(math.max(10, REFRESH_MS - waited))
    end
  end)
end

local function cookie_value(cookies, wanted)
  for _, header in ipairs(cookies) do
    for pair in header:gmatch("[^;]+") do
      local name, value = pair:match("^%s*([^=%s]+)%s*=%s*(.-)%s*$")
      if name == wanted then
        return value
      end
    end
  end
  return nil
end

local function hex(data)
  return (data:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

-- Passes that passed every check of their own (canonical text, msgpack shape, MAC under
-- the key their kid names, kind, seq, digest length), by their text, as the gate keeps
-- them (gate/tokens.py): what a customer's next requests would verify again. Each entry
-- also keeps what the pass's later requests use: its arrival mark and digest in hex.
-- The keys never change in this Lua state (a reload starts a new one). Bounded: emptied
-- when full, as the gate's caches are.
local CACHE_SIZE = 16384
local verified, verified_count = {}, 0
-- The keyed digest of (digest key id, campaign, customer): an HMAC per customer.
local digests, digests_count = {}, 0

-- The pass's fields when its shape and MAC are good (cached), else nil.
local function verified_pass(txn, text)
  local found = verified[text]
  if found ~= nil then
    return found
  end
  local body, mac_text = text:match("^([^.]*)%.([^.]*)$")
  if #text > MAX_TOKEN_CHARS or body == nil then
    return nil
  end
  local payload, mac = b64url_decode(body), b64url_decode(mac_text)
  if payload == nil or mac == nil then
    return nil
  end
  local fields = unpack_token(payload)
  if fields == nil then
    return nil
  end
  local kind, kid, token_campaign = fields[1].text, fields[2].text, fields[3].text
  local seq, digest, exp = fields[4].int, fields[5].bin, fields[6].int
  local not_before = 0
  if #fields == 7 then
    not_before = fields[7].int
    if not_before == nil or not (kind == "p" and not_before > 0) then
      return nil
    end
  end
  if kind == nil or kid == nil or token_campaign == nil or seq == nil or digest == nil
      or exp == nil then
    return nil
  end
  local key = KEYS.pass_keys[kid]
  if key == nil or txn.c:hmac(payload, "sha256", key) ~= mac then
    return nil
  end
  if kind ~= "p" or seq < 1 or #digest ~= 16 then
    return nil
  end
  found = {
    campaign = token_campaign,
    seq = seq,
    digest = digest,
    exp = exp,
    not_before = not_before,
    digest_hex = hex(digest),
    stamp = b64url_encode(txn.c:hmac(ARRIVED_LABEL .. text, "sha256", key):sub(1, 16)),
  }
  if verified_count >= CACHE_SIZE then
    verified, verified_count = {}, 0
  end
  verified[text] = found
  verified_count = verified_count + 1
  return found
end

local function customer_digest(txn, kid, key, campaign, customer)
  local name = kid .. "\0" .. campaign .. "\0" .. customer
  local found = digests[name]
  if found == nil then
    found = txn.c:hmac(campaign .. "\0" .. customer, "sha256", key):sub(1, 16)
    if digests_count >= CACHE_SIZE then
      digests, digests_count = {}, 0
    end
    digests[name] = found
    digests_count = digests_count + 1
  end
  return found
end

-- The verdict: "200" with the pass's fields, or the status ("401", "403") and the code.
local function edge_verdict(txn, campaign, request, cookies)
  local customer = txn:get_var("txn.fairgate_customer")
  customer = customer and customer:match("^%s*(.-)%s*$") or ""
  if customer == "" then
    return "401", "no_identity"
  end
  if #customer > MAX_CUSTOMER_ID or customer:find("[%c\127]") then
    return "401", "bad_customer"
  end
  local text = first(request, "x-gate-pass")
  if text == nil or text == "" then
    text = cookie_value(cookies, PASS_COOKIE) or ""
  end
  if text == "" then
    return "401", "no_pass"
  end
  local pass = verified_pass(txn, text)
  if pass == nil then
    return "401", "bad_pass"
  end
  local list = LIST
  local local_ms = now_ms()
  -- Expiry and not_before by the gate's clock (Redis time), as the list measured it.
  local now = local_ms + ((list and list.offset_ms) or 0)
  if pass.exp * 1000 <= now then
    return "401", "pass_expired"
  end
  if pass.not_before > now * 1000 then
    return "401", "pass_not_yet"
  end
  if pass.campaign ~= campaign then
    return "403", "wrong_campaign"
  end
  if list == nil or local_ms - list.fetched_ms > list.stale_after_ms then
    return "401", "unavailable" -- fail closed: nothing proves the pass not revoked
  end
  local digest_key = KEYS.digest_keys[list.digest_key]
  if digest_key == nil then
    core.Alert("fairgate edge: digest key " .. list.digest_key .. " is not in the key file")
    return "401", "unavailable"
  end
  if customer_digest(txn, list.digest_key, digest_key, campaign, customer) ~= pass.digest then
    return "403", "wrong_customer"
  end
  if list.state == "closed" then
    return "403", "campaign_closed"
  end
  if list.revoked[pass.seq] then
    return "403", "revoked"
  end
  return "200", nil, pass.seq, pass.digest_hex, pass.stamp
end

core.register_action("fairgate_edge", { "http-req" }, function(txn, url)
  local request = txn.http:req_get_headers()
  local cookies = values(request, "cookie")
  local campaign = txn:get_var("txn.fairgate_campaign") or ""
  local status, code, seq, digest, stamp = edge_verdict(txn, campaign, request, cookies)
  if status ~= "200" then
    txn:set_var("txn.fairgate_auth", status)
    txn:set_var("txn.fairgate_refused", code)
    return
  end
  if cookie_value(cookies, ARRIVED_COOKIE) ~= stamp then
    -- The first use: the gate's door meters it (and checks the pass once more).
    ask_gate(txn, url)
    if txn:get_var("txn.fairgate_auth") ~= "200" then
      return
    end
    txn:set_var("txn.fairgate_arrived", stamp)
  end
  txn:set_var("txn.fairgate_auth", "200")
  txn:set_var("txn.fairgate_seq", tostring(seq))
  txn:set_var("txn.fairgate_digest", digest)
  txn.http:req_del_header("x-gate-pass")
  local kept = without_pass(cookies)
  txn.http:req_del_header("cookie")
  if kept ~= nil then
    txn.http:req_set_header("cookie", kept)
  end
end, 1)
