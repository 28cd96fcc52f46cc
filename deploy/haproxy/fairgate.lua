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
  Converter:
    fairgate_escape      a string made safe as one query parameter value (the original
                         URL carried to the waiting page as ?return=)
  Environment:
    FAIRGATE_PROXY_SECRET  the gate's proxy_secret
]]

local SECRET = os.getenv("FAIRGATE_PROXY_SECRET") or ""
local PASS_COOKIE = "fg_pass"
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

-- The Cookie header without the pass; nil when nothing else is left.
local function without_pass(cookies)
  local kept = {}
  for _, header in ipairs(cookies) do
    for pair in header:gmatch("[^;]+") do
      local name = pair:match("^%s*([^=%s]+)")
      if name ~= nil and name ~= PASS_COOKIE then
        kept[#kept + 1] = pair:match("^%s*(.-)%s*$")
      end
    end
  end
  if #kept == 0 then
    return nil
  end
  return table.concat(kept, "; ")
end

core.register_action("fairgate_pass", { "http-req" }, function(txn, url)
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
end, 1)
