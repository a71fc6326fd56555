-- berth.dynamic: dynamic upstreams for Berth's nginx.
--
-- lbagent pushes each app's endpoint set into the shared dict
-- berth_endpoints through the loopback control endpoint (control); the
-- balancer (balance) picks a peer from a per-worker cache of the decoded
-- sets, so endpoint changes need no reload. access answers 503 for an app
-- with no server, log releases least_conn counts and records passive
-- failures. init loads the snapshot file lbagent writes, so nginx never
-- starts with empty endpoints. lbagent's side of the contract (the push
-- format, status codes and rendered directives) is lbagent/internal/dynamic.
--
-- Requires lua-nginx-module >= 0.10.13 with lua-resty-core (ngx.balancer)
-- and lua-cjson (Debian: libnginx-mod-http-lua, lua-resty-core, lua-cjson).
--
-- Shared dict keys (dict berth_endpoints):
--   v             installed version (written last by a push)
--   g             generation, bumped after every write; workers' caches are keyed by it
--   n             the number of apps in the dict (their "a:" keys)
--   h:<host>      the route table of a host (lbagent --dynamic-routes): JSON
--                 array of [location, app], made from the routes of the apps'
--                 sets ("h:" is the default server: hosts with no entry)
--   a:<app>       the app's normalized set, JSON
--   c:<app>:<ad>  active requests on a peer (least_conn, random_two_least_conn)
--   f:<app>:<ad>  failures within fail_timeout (TTL fail_timeout)
--   d:<app>:<ad>  the peer is marked failed (TTL fail_timeout)
--   dn:<app>      some peer of the app may be marked failed (TTL fail_timeout)
--   lock          held by a push or by init while it writes
--   kc            while it lives, workers of a generation below it close each
--                 keep-alive connection after its answer (see keepalive)

local balancer = require "ngx.balancer"
local cjson = require("cjson.safe").new()

local ngx = ngx
local ngx_log, ERR, WARN, NOTICE = ngx.log, ngx.ERR, ngx.WARN, ngx.NOTICE
local type, pairs, ipairs, tonumber, tostring = type, pairs, ipairs, tonumber, tostring
local floor, random = math.floor, math.random
local sfind, smatch, sbyte, ssub, sformat = string.find, string.match, string.byte, string.sub, string.format
local concat, sort = table.concat, table.sort
local crc32 = ngx.crc32_short
local md5_bin = ngx.md5_bin

cjson.decode_invalid_numbers(false) -- no NaN, Infinity or hex numbers
cjson.decode_max_depth(16)
cjson.encode_sparse_array(false)

local _M = { _VERSION = "1" }

local DICT_NAME = "berth_endpoints"
local LIMIT_DICT = "berth_limits" -- the router's rate limits (limited)

-- Bounds on hostile input.
local MAX_APPS = 200000         -- apps in one batch (the shared dict is sized for them: 2 KiB an app, render.DictSize)
local MAX_SERVERS = 1000        -- servers of one app
local MAX_WEIGHT = 1000
local MAX_MAX_FAILS = 1000
local MAX_FAIL_TIMEOUT = 86400  -- seconds
local MAX_VERSION = 9007199254740991 -- 2^53-1: versions are exact in a double
local MAX_NAME = 63

-- Consistent hashing: points on the ring per weight unit, and a cap on the
-- points of one app's ring (weights are scaled down past it).
local POINTS_PER_WEIGHT = 160
local MAX_POINTS = 160000
local PEER_BITS = 1024          -- > MAX_SERVERS: a point packs hash*1024+peer

local METHODS = {
    round_robin = true, least_conn = true, ip_hash = true, hash = true,
    random_two_least_conn = true,
}
local COUNTED = { least_conn = true, random_two_least_conn = true }

local NO_BACKEND = '{"error":"no_backend","app":"%s","message":"no healthy instance"}\n'

local token           -- control token, read by init (in the master, inherited by workers)
local generation      -- the config generation this Lua VM was loaded for (init)
local cache = {}      -- per worker: app -> decoded set (see build)

local function shdict()
    return ngx.shared[DICT_NAME]
end

---------------------------------------------------------------------------
-- Validation of pushed input. Each check returns nil on success or the
-- reason; callers prefix the path.
---------------------------------------------------------------------------

local function is_int(v, lo, hi)
    return type(v) == "number" and v >= lo and v <= hi and v == floor(v)
end

-- decimal: 1..maxlen ASCII digits, no leading zero unless the value is 0.
local function decimal(s, maxlen)
    if s == nil or #s == 0 or #s > maxlen or sfind(s, "[^0-9]") then
        return nil
    end
    if #s > 1 and sbyte(s, 1) == 48 then
        return nil
    end
    return tonumber(s)
end

local function valid_ipv4(s)
    local a, b, c, d = smatch(s, "^([0-9]+)%.([0-9]+)%.([0-9]+)%.([0-9]+)$")
    if not a then
        return false
    end
    for _, o in ipairs({ a, b, c, d }) do
        local n = decimal(o, 3)
        if not n or n > 255 then
            return false
        end
    end
    return true
end

local function valid_ipv6(s)
    if #s < 2 or #s > 45 or sfind(s, "[^0-9a-fA-F:.]") then
        return false
    end
    local groups = 0
    local v4 = smatch(s, ":([0-9]+%.[0-9.]*)$")
    if v4 then
        if not valid_ipv4(v4) then
            return false
        end
        s = ssub(s, 1, #s - #v4) -- keeps the colon before the IPv4 tail
        if ssub(s, -2) ~= "::" then
            s = ssub(s, 1, #s - 1)
        end
        groups = 2
    elseif sfind(s, ".", 1, true) then
        return false
    end
    local dc = sfind(s, "::", 1, true)
    if dc and sfind(s, "::", dc + 1, true) then
        return false -- at most one "::"
    end
    if sfind(s, ":::", 1, true) then
        return false
    end
    local head, tail
    if dc then
        head, tail = ssub(s, 1, dc - 1), ssub(s, dc + 2)
    else
        head, tail = s, ""
    end
    for _, part in ipairs({ head, tail }) do
        if part ~= "" then
            -- colon-separated groups of 1-4 hex digits, no empty group
            if sfind(part, "^:") or sfind(part, ":$") then
                return false
            end
            for g in (part .. ":"):gmatch("([^:]*):") do
                if #g < 1 or #g > 4 then
                    return false
                end
                groups = groups + 1
            end
        end
    end
    if dc then
        return groups <= 7
    end
    return groups == 8
end

-- parse_address checks "a.b.c.d:port" or "[ipv6]:port" and returns the
-- host as set_current_peer wants it ("a.b.c.d" or "[ipv6]") and the port.
local function parse_address(s)
    if type(s) ~= "string" then
        return nil, nil, "must be a string"
    end
    if #s > 64 then
        return nil, nil, "is too long"
    end
    local host, port
    if sbyte(s, 1) == 91 then -- '['
        local inner, p = smatch(s, "^%[([^%]]*)%]:([^:]*)$")
        if not inner or not valid_ipv6(inner) then
            return nil, nil, "must be an IPv4 a.b.c.d:port or [IPv6]:port address"
        end
        host, port = "[" .. inner .. "]", p
    else
        local h, p = smatch(s, "^([^:]*):([^:]*)$")
        if not h or not valid_ipv4(h) then
            return nil, nil, "must be an IPv4 a.b.c.d:port or [IPv6]:port address"
        end
        host, port = h, p
    end
    local n = decimal(port, 5)
    if not n or n < 1 or n > 65535 then
        return nil, nil, "port must be 1..65535"
    end
    return host, n
end

local function valid_name(s)
    return type(s) == "string" and #s >= 1 and #s <= MAX_NAME
        and smatch(s, "^[a-z0-9][a-z0-9-]*$") ~= nil and ssub(s, -1) ~= "-"
end

local function is_object(v)
    return type(v) == "table" and getmetatable(v) == nil
end

-- is_array reports whether t is a JSON array (keys 1..n); an empty table
-- counts (cjson decodes [] and {} alike).
local function is_array(t)
    if not is_object(t) then
        return false
    end
    local n = 0
    for k in pairs(t) do
        if type(k) ~= "number" then
            return false
        end
        n = n + 1
    end
    return n == #t
end

local function unknown_field(t, known)
    for k in pairs(t) do
        if not known[k] then
            return tostring(k)
        end
    end
end

local APP_FIELDS = {
    method = true, hash = true, max_fails = true, fail_timeout = true, servers = true, splits = true,
    routes = true, rules = true, connect_timeout = true, read_timeout = true, tries = true, hash_key = true,
    max_body_size = true,
}
local ROUTE_FIELDS = { host = true, location = true, order = true, rule = true }
local RULE_FIELDS = { headers = true, split = true, response_headers = true, rate_limit = true }
local RATE_FIELDS = { rps = true, burst = true }
local MAX_RPS = 100000          -- rate_limit.rps and .burst (spec.MaxRateLimitRPS)
local MAX_RULES = 20            -- routing.rules of one app (spec.MaxRules)
local MAX_MATCH_HEADERS = 4     -- a rule's header match (spec.MaxMatchHeaders)
local MAX_RESPONSE_HEADERS = 16 -- a rule's response_headers (spec.MaxResponseHeaders)
local MAX_HEADER_NAME = 128     -- spec.MaxHeaderNameLen
local MAX_HEADER_VALUE = 4096   -- spec.MaxHeaderValueLen
local MAX_HEADER_MATCH = 100    -- an exact header match (spec.MaxHeaderMatchLen)
local MAX_REGEX = 256           -- spec.MaxRegexLen
local MAX_ORDER = 100000        -- an app's place among the apps of one host
local MAX_SPLIT_RULES, MAX_SHARES = 20, 4
local MAX_ROUTES = 20000        -- routes of one app: the spec's 100 hosts × 100 paths × 2 arguments (render.MaxRoutes)
local MAX_HOST = 253
local MAX_LOCATION = 1026       -- "= " and a path of at most 1024
local MAX_CONNECT_TIMEOUT = 75  -- seconds, as the spec allows
local MAX_READ_TIMEOUT = 86400
local MAX_TRIES = 100

-- valid_host checks a route table host key: "" (the default server) or
-- lower-case RFC 1123 labels joined by dots, optionally behind "*." (a
-- wildcard host).
local function valid_host(s)
    if type(s) ~= "string" or #s > MAX_HOST then
        return false
    end
    if s == "" then
        return true
    end
    return ngx.re.find(s, [[^(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\z]], "jo") ~= nil
end

-- compiles says whether re is a regex PCRE compiles (the spec checked its
-- grammar and that it cannot backtrack without bound; this is the second
-- look of a process that trusts no input).
local function compiles(re)
    local _, _, err = ngx.re.find("", re, "jo")
    return err == nil
end

-- valid_location checks a location argument as lbagent writes it: a
-- routing path ("/", "/api/") or "= " and one, in the spec's path
-- grammar, or "~ " and a rule's regex, in the spec's regex characters.
local function valid_location(s)
    if type(s) ~= "string" or #s > MAX_LOCATION then
        return false
    end
    if ssub(s, 1, 2) == "~ " then
        return #s <= MAX_REGEX + 2 and ngx.re.find(s, [[^~ [A-Za-z0-9/\-._~%!&*+,=:@^$()\[\]|?\\]+\z]], "jo") ~= nil
            and compiles(ssub(s, 3))
    end
    return ngx.re.find(s, [[^(= )?/[A-Za-z0-9\-._~%!&*+,=:@/]*\z]], "jo") ~= nil
end

local function valid_header_name(s)
    return type(s) == "string" and #s <= MAX_HEADER_NAME and ngx.re.find(s, [[^[A-Za-z0-9][A-Za-z0-9-]*\z]], "jo") ~= nil
end

-- printable says s is printable ASCII (no control character: nothing can
-- end a header line).
local function printable(s, lo, hi)
    return type(s) == "string" and #s >= lo and #s <= hi and ngx.re.find(s, [[^[\x20-\x7e]*\z]], "jo") ~= nil
end

-- check_rules validates an app's rules (splits: its normalized split
-- weights, by rule index) and returns them as a list of
-- { h = header match or false, sp = split apps or false, rh = response headers or false }.
-- A header match is a list of { variable, exact value lower-cased or
-- false, regex or false }: nginx's map compares exact values ignoring
-- case, and a regex with case.
local function check_rules(path, rules, splits)
    if not is_array(rules) or #rules > MAX_RULES then
        return nil, path .. ".rules: must be an array of at most " .. MAX_RULES .. " rules"
    end
    local out = {}
    for i, r in ipairs(rules) do
        local rp = path .. ".rules[" .. (i - 1) .. "]"
        if not is_object(r) then
            return nil, rp .. ": must be an object"
        end
        local bad = unknown_field(r, RULE_FIELDS)
        if bad then
            return nil, rp .. "." .. bad .. ": unknown field"
        end
        local rule = { h = false, sp = false, rh = false, rl = false }
        if r.rate_limit ~= nil and r.rate_limit ~= cjson.null then
            local rl = r.rate_limit
            if not is_object(rl) or unknown_field(rl, RATE_FIELDS) or not is_int(rl.rps, 1, MAX_RPS)
                or (rl.burst ~= nil and not is_int(rl.burst, 0, MAX_RPS)) then
                return nil, rp .. ".rate_limit: must be {rps: 1.." .. MAX_RPS .. ", burst: 0.." .. MAX_RPS .. "}"
            end
            rule.rl = { rl.rps, rl.burst or 0 }
        end
        if r.headers ~= nil and r.headers ~= cjson.null then
            if not is_object(r.headers) or #r.headers > 0 then
                return nil, rp .. ".headers: must be an object"
            end
            local names = {}
            for name in pairs(r.headers) do
                if not valid_header_name(name) then
                    return nil, rp .. ".headers: " .. tostring(name) .. " is not a header name"
                end
                names[#names + 1] = name
            end
            if #names > MAX_MATCH_HEADERS then
                return nil, rp .. ".headers: more than " .. MAX_MATCH_HEADERS .. " headers"
            end
            sort(names)
            local h = {}
            for _, name in ipairs(names) do
                local v = r.headers[name]
                local var = "http_" .. string.gsub(string.lower(name), "-", "_")
                if type(v) == "string" and ssub(v, 1, 1) == "~" then
                    local re = ssub(v, 2)
                    if not printable(re, 1, MAX_REGEX) or not compiles(re) then
                        return nil, rp .. ".headers." .. name .. ": must be \"~\" and a regex that compiles"
                    end
                    h[#h + 1] = { var, false, re }
                elseif printable(v, 1, MAX_HEADER_MATCH) then
                    h[#h + 1] = { var, string.lower(v), false }
                else
                    return nil, rp .. ".headers." .. name .. ": must be a value of 1.." .. MAX_HEADER_MATCH .. " printable characters, or \"~\" and a regex"
                end
            end
            if #h > 0 then
                rule.h = h
            end
        end
        if r.split ~= nil and r.split ~= cjson.null then
            local ws = splits and splits[tostring(i - 1)]
            if not is_array(r.split) or #r.split > MAX_SHARES or not ws or #ws ~= #r.split then
                return nil, rp .. ".split: must be an array of app names, one per weight of splits." .. (i - 1)
            end
            for j, app in ipairs(r.split) do
                if not valid_name(app) then
                    return nil, rp .. ".split[" .. (j - 1) .. "]: must be an app name"
                end
            end
            if #r.split > 0 then
                rule.sp = r.split
            end
        end
        if r.response_headers ~= nil and r.response_headers ~= cjson.null then
            local rh = r.response_headers
            if not is_array(rh) or #rh > MAX_RESPONSE_HEADERS then
                return nil, rp .. ".response_headers: must be an array of at most " .. MAX_RESPONSE_HEADERS .. " [name, value]"
            end
            for j, nv in ipairs(rh) do
                if not is_array(nv) or #nv ~= 2 or not valid_header_name(nv[1]) or not printable(nv[2], 0, MAX_HEADER_VALUE) then
                    return nil, rp .. ".response_headers[" .. (j - 1) .. "]: must be [a header name, a printable value]"
                end
            end
            if #rh > 0 then
                rule.rh = rh
            end
        end
        out[i] = rule
    end
    return out
end

-- check_routes validates an app's routes (rules: its checked rules) and
-- returns them as { host, location, order, rule, header match or false }.
local function check_routes(path, routes, rules)
    if not is_array(routes) or #routes > MAX_ROUTES then
        return nil, path .. ".routes: must be an array of at most " .. MAX_ROUTES .. " routes"
    end
    local out, seen = {}, {}
    for i, r in ipairs(routes) do
        local rp = path .. ".routes[" .. (i - 1) .. "]"
        if not is_object(r) then
            return nil, rp .. ": must be an object"
        end
        local bad = unknown_field(r, ROUTE_FIELDS)
        if bad then
            return nil, rp .. "." .. bad .. ": unknown field"
        end
        if not valid_host(r.host) then
            return nil, rp .. ".host: must be \"\" or a lower-case host name"
        end
        if not valid_location(r.location) then
            return nil, rp .. ".location: must be a path, \"= \" and a path, or \"~ \" and a regex"
        end
        local order, rule = r.order or 0, r.rule or 0
        if not is_int(order, 0, MAX_ORDER) then
            return nil, rp .. ".order: must be an integer 0.." .. MAX_ORDER
        end
        if not is_int(rule, 0, #rules) then
            return nil, rp .. ".rule: must be 0 or the number of one of the app's " .. #rules .. " rules"
        end
        local hm = rule > 0 and rules[rule].h or false
        -- One claim a location per host, unless header matches tell them
        -- apart (spec.Routing.Locations refuses the same arguments with
        -- the same condition).
        local key = r.host .. " " .. r.location .. " " .. (hm and cjson.encode(hm) or "")
        if seen[key] then
            return nil, rp .. ": duplicate route"
        end
        seen[key] = true
        out[i] = { r.host, r.location, order, rule, hm }
    end
    return out
end
local SERVER_FIELDS = { address = true, weight = true, backup = true }
local BATCH_FIELDS = { version = true, full = true, apps = true }

-- check_app validates one app and returns its normalized form.
local function check_app(name, a)
    local path = "apps." .. name
    if not is_object(a) then
        return nil, path .. ": must be an object or null"
    end
    local bad = unknown_field(a, APP_FIELDS)
    if bad then
        return nil, path .. "." .. bad .. ": unknown field"
    end
    if type(a.method) ~= "string" or not METHODS[a.method] then
        return nil, path .. ".method: must be one of round_robin, least_conn, ip_hash, hash, random_two_least_conn"
    end
    if a.hash ~= nil and type(a.hash) ~= "boolean" then
        return nil, path .. ".hash: must be a boolean"
    end
    -- hash_key (method hash, an app the router routes): the spec's grammar
    -- of variables joined by - _ : / (spec.CheckHashKey), evaluated per
    -- request (hash_key_of), never compiled into config.
    local hk
    if a.hash_key ~= nil then
        if type(a.hash_key) ~= "string" or #a.hash_key > 256 or not ngx.re.find(a.hash_key,
            [[^(?:[-_:/]*\$(?:remote_addr|binary_remote_addr|request_uri|uri|host|http_host|scheme|args|server_name|(?:http|cookie|arg)_[a-z0-9_]+))+\z]], "jo") then
            return nil, path .. ".hash_key: must be variables of the spec's hash_key grammar joined by - _ : /"
        end
        hk = {}
        for m in ngx.re.gmatch(a.hash_key, [[([-_:/]*)\$([a-z0-9_]+)]], "jo") do
            hk[#hk + 1] = { m[1], m[2] }
        end
    end
    local max_fails = a.max_fails
    if max_fails == nil then
        max_fails = 1
    elseif not is_int(max_fails, 0, MAX_MAX_FAILS) then
        return nil, path .. ".max_fails: must be an integer 0.." .. MAX_MAX_FAILS
    end
    local fail_timeout = a.fail_timeout
    if fail_timeout == nil then
        fail_timeout = 10
    elseif type(fail_timeout) ~= "number" or not (fail_timeout >= 0 and fail_timeout <= MAX_FAIL_TIMEOUT) then
        return nil, path .. ".fail_timeout: must be a number of seconds 0.." .. MAX_FAIL_TIMEOUT
    end
    local servers = a.servers
    if servers == nil or servers == cjson.null then
        servers = {}
    elseif not is_array(servers) then
        return nil, path .. ".servers: must be an array"
    end
    if #servers > MAX_SERVERS then
        return nil, path .. ".servers: more than " .. MAX_SERVERS .. " servers"
    end
    local out, seen = {}, {}
    for i, s in ipairs(servers) do
        local sp = path .. ".servers[" .. (i - 1) .. "]"
        if not is_object(s) then
            return nil, sp .. ": must be an object"
        end
        bad = unknown_field(s, SERVER_FIELDS)
        if bad then
            return nil, sp .. "." .. bad .. ": unknown field"
        end
        local host, _, why = parse_address(s.address)
        if not host then
            return nil, sp .. ".address: " .. why
        end
        if seen[s.address] then
            return nil, sp .. ".address: duplicate " .. s.address
        end
        seen[s.address] = true
        local w = s.weight
        if w == nil then
            w = 1
        elseif not is_int(w, 1, MAX_WEIGHT) then
            return nil, sp .. ".weight: must be an integer 1.." .. MAX_WEIGHT
        end
        if s.backup ~= nil and type(s.backup) ~= "boolean" then
            return nil, sp .. ".backup: must be a boolean"
        end
        out[i] = { a = s.address, w = w, b = s.backup == true }
    end
    -- splits: the weights of the app's rules' splits, by rule index.
    local splits = a.splits
    local sp
    if splits ~= nil and splits ~= cjson.null then
        if not is_object(splits) or #splits > 0 then
            return nil, path .. ".splits: must be an object"
        end
        sp = {}
        local n = 0
        for rule, ws in pairs(splits) do
            n = n + 1
            local rp = path .. ".splits." .. tostring(rule)
            if n > MAX_SPLIT_RULES or type(rule) ~= "string" or not ngx.re.find(rule, [[^[0-9]{1,2}\z]], "jo") then
                return nil, rp .. ": must be a rule index, at most " .. MAX_SPLIT_RULES
            end
            if not is_array(ws) or #ws > MAX_SHARES then
                return nil, rp .. ": must be an array of at most " .. MAX_SHARES .. " weights"
            end
            local sum = 0
            for i, w in ipairs(ws) do
                if not is_int(w, 0, 100) then
                    return nil, rp .. "[" .. (i - 1) .. "]: must be an integer 0..100"
                end
                sum = sum + w
            end
            if sum > 100 then
                return nil, rp .. ": weights add up to more than 100"
            end
            sp[rule] = ws
        end
    end
    local set = { m = a.method, mf = max_fails, ft = fail_timeout, s = out, sp = sp, hk = hk }
    if a.max_body_size ~= nil then
        if not is_int(a.max_body_size, 0, MAX_VERSION) then
            return nil, path .. ".max_body_size: must be a number of bytes, 0 for no limit"
        end
        set.mb = a.max_body_size
    end
    local rules = {}
    if a.rules ~= nil and a.rules ~= cjson.null then
        local err
        rules, err = check_rules(path, a.rules, sp)
        if not rules then
            return nil, err
        end
        if #rules > 0 then
            set.ru = rules
        end
    end
    if a.routes ~= nil and a.routes ~= cjson.null then
        local err
        set.r, err = check_routes(path, a.routes, rules)
        if not set.r then
            return nil, err
        end
    end
    if a.connect_timeout ~= nil then
        local v = a.connect_timeout
        if type(v) ~= "number" or not (v > 0 and v <= MAX_CONNECT_TIMEOUT) then
            return nil, path .. ".connect_timeout: must be a number of seconds above 0, at most " .. MAX_CONNECT_TIMEOUT
        end
        set.ct = v
    end
    if a.read_timeout ~= nil then
        local v = a.read_timeout
        if type(v) ~= "number" or not (v > 0 and v <= MAX_READ_TIMEOUT) then
            return nil, path .. ".read_timeout: must be a number of seconds above 0, at most " .. MAX_READ_TIMEOUT
        end
        set.rt = v
    end
    if a.tries ~= nil then
        if not is_int(a.tries, 0, MAX_TRIES) then
            return nil, path .. ".tries: must be an integer 0.." .. MAX_TRIES
        end
        set.t = a.tries
    end
    return set
end

-- check_batch validates a decoded push body. It returns the version, full,
-- and a map app -> normalized set or false (remove), or nil and the error.
local function check_batch(b)
    if not is_object(b) or #b > 0 then
        return nil, nil, nil, "body: must be a JSON object"
    end
    local bad = unknown_field(b, BATCH_FIELDS)
    if bad then
        return nil, nil, nil, bad .. ": unknown field"
    end
    if not is_int(b.version, 1, MAX_VERSION) then
        return nil, nil, nil, "version: must be an integer 1.." .. MAX_VERSION
    end
    if b.full ~= nil and type(b.full) ~= "boolean" then
        return nil, nil, nil, "full: must be a boolean"
    end
    if not is_object(b.apps) then
        return nil, nil, nil, "apps: must be an object"
    end
    local n, out = 0, {}
    for name, a in pairs(b.apps) do
        n = n + 1
        if n > MAX_APPS then
            return nil, nil, nil, "apps: more than " .. MAX_APPS .. " apps"
        end
        if not valid_name(name) then
            return nil, nil, nil, "apps." .. tostring(name) .. ": not a valid app name (a DNS label)"
        end
        if a == cjson.null then
            out[name] = false
        else
            local set, err = check_app(name, a)
            if not set then
                return nil, nil, nil, err
            end
            out[name] = set
        end
    end
    return b.version, b.full == true, out
end

---------------------------------------------------------------------------
-- Writing the dict.
---------------------------------------------------------------------------

-- incr adds by to key, creating it (with ttl) when missing. Unlike
-- dict:incr with an init value it never evicts other keys (app sets) when
-- the dict is full; it returns nil then.
local function incr(dict, key, by, ttl)
    local n = dict:incr(key, by)
    if n then
        return n
    end
    if dict:safe_add(key, by, ttl) then
        return by
    end
    return dict:incr(key, by)
end

local function installed_version(dict)
    return dict:get("v") or 0
end

-- app_names lists the apps in the dict, from their "a:" keys: for a full
-- push, or to count them once. It walks every key of the dict (under the
-- dict's lock), so a push that adds or removes an app keeps the count "n"
-- instead: at 10,000 apps, the JSON index of every name it replaced cost
-- a new app's push milliseconds of decoding, sorting and encoding.
local function app_names(dict)
    local out = {}
    for _, key in ipairs(dict:get_keys(0)) do
        if ssub(key, 1, 2) == "a:" then
            out[#out + 1] = ssub(key, 3)
        end
    end
    return out
end

-- app_count is the number of apps in the dict.
local function app_count(dict)
    return dict:get("n") or #app_names(dict)
end

local function forget_peer(dict, app, addr)
    dict:delete("c:" .. app .. ":" .. addr)
    dict:delete("f:" .. app .. ":" .. addr)
    dict:delete("d:" .. app .. ":" .. addr)
end

local function addresses(raw)
    local set = raw and cjson.decode(raw)
    local out = {}
    if type(set) == "table" and type(set.s) == "table" then
        for _, s in ipairs(set.s) do
            out[s.a] = true
        end
    end
    return out
end

-- routes_of returns the routes ({host, location, order, rule, header
-- match}) of a raw set.
local function routes_of(raw)
    local set = raw and cjson.decode(raw)
    if type(set) == "table" and type(set.r) == "table" then
        return set.r
    end
    return {}
end

-- claims_before orders a host's entries: by the app's place on the host
-- (claim order), then the order of its routes, then by app (a tie only
-- while two apps' sets disagree, between two pushes of one batch).
local function claims_before(a, b)
    if a[3] ~= b[3] then
        return a[3] < b[3]
    end
    if a[2] ~= b[2] then
        return a[2] < b[2]
    end
    return a[4] < b[4]
end

-- host_writes returns the route table entries ("h:<host>") that the app
-- writes change: every host an app routes on before or after, made again
-- from the entries of the apps not written and the new routes of those
-- written (host -> raw, or false to delete). An entry is
-- [location, app, order, index of the route in the app's set, rule,
-- header match or false], in claim order. Two apps routed on one
-- location of one host without a header match refuse the batch:
-- lbagent's route table grants a location once.
local function host_writes(dict, writes, old)
    local hosts, adds = {}, {}
    for name, raw in pairs(writes) do
        for _, r in ipairs(routes_of(old[name])) do
            hosts[r[1]] = true
        end
        if raw then
            for i, r in ipairs(routes_of(raw)) do
                local h = r[1]
                hosts[h] = true
                local list = adds[h]
                if not list then
                    list = {}
                    adds[h] = list
                end
                list[#list + 1] = { r[2], name, r[3] or 0, i, r[4] or 0, r[5] or false }
            end
        end
    end
    local out = {}
    for host in pairs(hosts) do
        local list, taken = {}, {}
        local cur = dict:get("h:" .. host)
        local entries = cur and cjson.decode(cur)
        if type(entries) == "table" then
            for _, e in ipairs(entries) do
                if writes[e[2]] == nil then
                    -- an entry written before rules were routed: [location, app]
                    e[3], e[4], e[5], e[6] = e[3] or 0, e[4] or 0, e[5] or 0, e[6] or false
                    list[#list + 1] = e
                    if not e[6] then
                        taken[e[1]] = e[2]
                    end
                end
            end
        end
        for _, e in ipairs(adds[host] or {}) do
            if not e[6] then
                if taken[e[1]] and taken[e[1]] ~= e[2] then
                    return nil, "routes: location " .. e[1] .. " on host " .. host .. " is routed to both app "
                        .. taken[e[1]] .. " and app " .. e[2]
                end
                taken[e[1]] = e[2]
            end
            list[#list + 1] = e
        end
        sort(list, claims_before)
        out[host] = #list > 0 and cjson.encode(list) or false
    end
    return out
end

-- apply writes a validated batch: app sets, removals, the count of apps,
-- then the version, then bumps the generation. safe_set never evicts; when
-- the dict is full the writes done so far are undone and an error is
-- returned. It returns the number of apps, or 0 when a push that changed
-- no app's presence left it unknown: the apps are listed only for a full
-- push (or a dict without a count), and a push that adds or removes apps
-- adds to the count, so an endpoint change or a new app costs its own
-- app's work.
local function apply(dict, version, full, apps)
    local writes = {} -- name -> new raw or false (delete)
    for name, set in pairs(apps) do
        writes[name] = set and cjson.encode(set) or false
    end
    if full then
        for _, name in ipairs(app_names(dict)) do
            if writes[name] == nil then
                writes[name] = false
            end
        end
    end

    -- Unchanged apps (most of a full push, a removal of an absent app) are
    -- not rewritten.
    local old = {}
    for name, raw in pairs(writes) do
        local before = dict:get("a:" .. name) or false
        if before == raw then
            writes[name] = nil
        else
            old[name] = before
        end
    end
    local hosts, herr = host_writes(dict, writes, old)
    if not hosts then
        return nil, herr, 400
    end
    local done, hdone = {}, {}
    local function undo()
        for _, name in ipairs(done) do
            if old[name] then
                dict:set("a:" .. name, old[name])
            else
                dict:delete("a:" .. name)
            end
        end
        for host, before in pairs(hdone) do
            if before then
                dict:set("h:" .. host, before)
            else
                dict:delete("h:" .. host)
            end
        end
        incr(dict, "g", 1)
    end
    -- put writes one key of the batch; when the dict is full it undoes
    -- the batch's writes and returns the error.
    local function put(key, value)
        local ok, err = dict:safe_set(key, value)
        if not ok then
            undo()
            return "shared dict " .. DICT_NAME .. ": " .. tostring(err)
                .. " (raise lua_shared_dict " .. DICT_NAME .. " size)"
        end
    end
    local renamed = false -- an app comes or goes
    for name, raw in pairs(writes) do
        if raw then
            local err = put("a:" .. name, raw)
            if err then
                return nil, err
            end
        else
            dict:delete("a:" .. name)
        end
        renamed = renamed or (raw == false) ~= (old[name] == false)
        done[#done + 1] = name
    end
    for host, raw in pairs(hosts) do
        hdone[host] = dict:get("h:" .. host) or false
        if raw then
            local err = put("h:" .. host, raw)
            if err then
                return nil, err
            end
        else
            dict:delete("h:" .. host)
        end
    end

    -- "w": the wildcard hosts with entries, for the router's fallback
    -- from a host without an entry of its own.
    local wild_changed = false
    for host in pairs(hosts) do
        wild_changed = wild_changed or ssub(host, 1, 2) == "*."
    end
    if wild_changed then
        local cur = dict:get("w")
        local set = {}
        for _, h in ipairs(cur and cjson.decode(cur) or {}) do
            set[h] = true
        end
        for host, raw in pairs(hosts) do
            if ssub(host, 1, 2) == "*." then
                set[host] = raw and true or nil
            end
        end
        local list = {}
        for h in pairs(set) do
            list[#list + 1] = h
        end
        sort(list)
        local err = put("w", #list > 0 and cjson.encode(list) or "[]")
        if err then
            return nil, err
        end
    end

    local count = 0
    local counted = dict:get("n")
    if full or not counted then
        count = #app_names(dict) -- the sets are written: their keys are the apps
        dict:delete("i") -- the index of every name that "n" replaced
    elseif renamed then
        count = counted
        for name, raw in pairs(writes) do
            if (raw == false) ~= (old[name] == false) then
                count = count + (raw and 1 or -1)
            end
        end
    end
    if full or not counted or renamed then
        local ok, err = dict:safe_set("n", count)
        if not ok then
            undo()
            return nil, "shared dict " .. DICT_NAME .. ": " .. tostring(err)
        end
    end
    local ok, err
    ok, err = dict:safe_set("v", version)
    if not ok then
        return nil, "shared dict " .. DICT_NAME .. ": " .. tostring(err)
    end
    incr(dict, "g", 1)

    -- Counters of peers and apps that are gone.
    for name, raw in pairs(writes) do
        local before = addresses(old[name])
        local after = raw and addresses(raw) or {}
        for addr in pairs(before) do
            if not after[addr] then
                forget_peer(dict, name, addr)
            end
        end
        if not raw then
            dict:delete("dn:" .. name)
        end
    end
    return count
end

local function lock(dict)
    return dict:safe_add("lock", true, 10)
end

local function unlock(dict)
    dict:delete("lock")
end

local function read_file(path)
    local f, err = io.open(path, "rb")
    if not f then
        return nil, err
    end
    local data = f:read("*a")
    f:close()
    return data
end

---------------------------------------------------------------------------
-- init (init_by_lua, in the master; again on every HUP reload).
---------------------------------------------------------------------------

function _M.init(snapshot_path, token_path, config_generation)
    generation = tonumber(config_generation)
    local t, err = read_file(token_path)
    if t then
        t = smatch(t, "^%s*(.-)%s*$")
    end
    if not t or t == "" then
        token = nil
        ngx_log(ERR, "berth.dynamic: no control token in ", token_path, ": ", err or "empty file",
            "; every control request is refused")
    else
        token = t
    end

    local dict = shdict()
    if not dict then
        ngx_log(ERR, "berth.dynamic: lua_shared_dict ", DICT_NAME, " is not configured")
        return
    end
    local data
    data, err = read_file(snapshot_path)
    if not data then
        ngx_log(WARN, "berth.dynamic: no endpoint snapshot ", snapshot_path, ": ", err,
            "; the shared dict keeps version ", installed_version(dict))
        return
    end
    local body
    body, err = cjson.decode(data)
    if body == nil then
        ngx_log(ERR, "berth.dynamic: endpoint snapshot ", snapshot_path, " is not JSON: ", err)
        return
    end
    local version, _, apps
    version, _, apps, err = check_batch(body)
    if not version then
        ngx_log(ERR, "berth.dynamic: endpoint snapshot ", snapshot_path, " refused: ", err)
        return
    end
    local installed = installed_version(dict)
    if installed >= version then
        ngx_log(NOTICE, "berth.dynamic: shared dict version ", installed,
            " is not older than snapshot version ", version, "; snapshot not loaded")
        return
    end
    if not lock(dict) then
        ngx_log(WARN, "berth.dynamic: a push holds the shared dict; snapshot not loaded")
        return
    end
    local n
    n, err = apply(dict, version, true, apps)
    unlock(dict)
    if not n then
        ngx_log(ERR, "berth.dynamic: load endpoint snapshot ", snapshot_path, ": ", err)
        return
    end
    ngx_log(NOTICE, "berth.dynamic: loaded endpoint snapshot version ", version, " with ", n, " apps")
end

---------------------------------------------------------------------------
-- Control endpoint (content_by_lua on the loopback status listener).
---------------------------------------------------------------------------

local function reply(status, body)
    ngx.status = status
    ngx.header["Content-Type"] = "application/json"
    ngx.header["Cache-Control"] = "no-store"
    ngx.print(body, "\n")
    return ngx.exit(ngx.HTTP_OK)
end

local function reply_error(status, msg)
    return reply(status, cjson.encode({ error = msg }))
end

-- same compares two strings in time independent of where they differ.
local function same(a, b)
    if type(a) ~= "string" or type(b) ~= "string" or #a ~= #b then
        return false
    end
    local bit = require "bit"
    local diff = 0
    for i = 1, #a do
        diff = bit.bor(diff, bit.bxor(sbyte(a, i), sbyte(b, i)))
    end
    return diff == 0
end

local function read_body()
    ngx.req.read_body()
    local body = ngx.req.get_body_data()
    if body then
        return body
    end
    local file = ngx.req.get_body_file()
    if file then
        return read_file(file)
    end
    return nil, "empty body"
end

-- authorize answers 403 (and ends the request) unless the caller is on
-- loopback or the unix socket and presents the control token; it returns
-- the shared dict.
local function authorize()
    local remote = ngx.var.remote_addr
    if remote ~= "127.0.0.1" and remote ~= "::1" and ssub(remote or "", 1, 5) ~= "unix:" then
        return reply_error(403, "forbidden: the control endpoint answers loopback clients only")
    end
    local given = ngx.var.http_x_berth_token
    if not token or not same(given, token) then
        return reply_error(403, "forbidden: missing or wrong X-Berth-Token")
    end
    local dict = shdict()
    if not dict then
        return reply_error(500, "lua_shared_dict " .. DICT_NAME .. " is not configured")
    end
    return dict
end

-- post_json returns the decoded body of a POST; any other method (GET is
-- answered before), an unreadable body or one that is not JSON is answered
-- here, and nil returned.
local function post_json()
    if ngx.req.get_method() ~= "POST" then
        ngx.header["Allow"] = "GET, POST"
        reply_error(405, "method not allowed: GET or POST")
        return nil
    end
    local data, err = read_body()
    if not data then
        reply_error(400, "body: " .. tostring(err))
        return nil
    end
    local body
    body, err = cjson.decode(data)
    if body == nil then
        reply_error(400, "body: not JSON: " .. tostring(err))
    end
    return body
end

local KEEPALIVE_FIELDS = { below = true, seconds = true }
local MAX_KEEPALIVE_SECONDS = 600

-- keepalive is the control endpoint's second location: lbagent posts
-- {"below": G, "seconds": S} before it reloads nginx into generation G.
-- For S seconds, workers of a generation below G answer every request on
-- a connection they then close ("Connection: close"), so that a client's
-- busy keep-alive connections end cleanly between two requests instead
-- of being cut while idle by the reload, where a request sent at that
-- moment is lost (a client that does not retry sees it fail). The new
-- generation's workers are not affected. S = 0 ends it; GET reads it.
function _M.keepalive()
    local dict = authorize()
    if not dict then
        return
    end
    if ngx.req.get_method() == "GET" then
        return reply(200, sformat('{"below":%d}', dict:get("kc") or 0))
    end
    local body = post_json()
    if body == nil then
        return
    end
    if not is_object(body) or #body > 0 then
        return reply_error(400, "body: want a JSON object")
    end
    local ok, err
    local bad = unknown_field(body, KEEPALIVE_FIELDS)
    if bad then
        return reply_error(400, bad .. ": unknown field (allowed: below, seconds)")
    end
    if not is_int(body.below, 1, MAX_VERSION) then
        return reply_error(400, "below: must be an integer 1.." .. MAX_VERSION)
    end
    if type(body.seconds) ~= "number" or body.seconds ~= body.seconds or body.seconds < 0
        or body.seconds > MAX_KEEPALIVE_SECONDS then
        return reply_error(400, "seconds: must be a number 0.." .. MAX_KEEPALIVE_SECONDS)
    end
    if body.seconds == 0 then
        dict:delete("kc")
    else
        ok, err = dict:safe_set("kc", body.below, body.seconds)
        if not ok then
            return reply_error(507, "shared dict " .. DICT_NAME .. ": " .. tostring(err))
        end
    end
    return reply(200, sformat('{"below":%d}', dict:get("kc") or 0))
end

function _M.control()
    local dict = authorize()
    if not dict then
        return
    end

    if ngx.req.get_method() == "GET" then
        return reply(200, sformat('{"version":%d,"apps":%d}', installed_version(dict), app_count(dict)))
    end
    local body = post_json()
    if body == nil then
        return
    end
    local version, full, apps, err
    version, full, apps, err = check_batch(body)
    if not version then
        return reply_error(400, err)
    end

    -- Another push may write right now (lbagent pushes one at a time, so
    -- this is rare): wait for it up to a second.
    local locked = lock(dict)
    for _ = 1, 200 do
        if locked then
            break
        end
        ngx.sleep(0.005)
        locked = lock(dict)
    end
    if not locked then
        return reply_error(503, "another push holds the shared dict; retry")
    end
    local installed = installed_version(dict)
    if version <= installed then
        unlock(dict)
        return reply(409, sformat('{"version":%d}', installed))
    end
    local n, status
    n, err, status = apply(dict, version, full, apps)
    -- Read back from the dict every worker reads: lbagent takes this, not
    -- its own number, as the version nginx has installed.
    installed = installed_version(dict)
    unlock(dict)
    if not n then
        ngx_log(ERR, "berth.dynamic: push version ", version, ": ", err)
        return reply_error(status or 507, err)
    end
    return reply(200, sformat('{"version":%d}', installed))
end

---------------------------------------------------------------------------
-- Per-worker cache of decoded sets.
---------------------------------------------------------------------------

-- build decodes an app's raw set into the worker's balancing state.
local function build(raw, g)
    local set = cjson.decode(raw)
    if type(set) ~= "table" then
        return nil
    end
    local e = {
        raw = raw, g = g, method = set.m, max_fails = set.mf, fail_timeout = set.ft,
        primary = {}, backup = {}, n = 0, splits = set.sp or {}, rules = set.ru or {}, hash_key = set.hk,
        max_body = set.mb,
        ct = set.ct, rt = set.rt, tries = set.t,
    }
    for _, s in ipairs(set.s or {}) do
        local host, port = parse_address(s.a)
        if host then
            local p = { id = s.a, host = host, port = port, weight = s.w, cw = 0 }
            local group = s.b and e.backup or e.primary
            group[#group + 1] = p
            e.n = e.n + 1
        end
    end
    return e
end

-- cached returns c[key] while it was made at the dict's generation g;
-- else decode(raw, g) makes it again from the dict's value at dkey,
-- unless that value is the one it was made from. nil (and dropped from
-- c) when the dict holds no value or it does not decode.
local function cached(c, key, dict, dkey, g, decode)
    local e = c[key]
    if e and e.g == g then
        return e
    end
    local raw = dict:get(dkey)
    if not raw then
        c[key] = nil
        return nil
    end
    if e and e.raw == raw then
        e.g = g
        return e
    end
    e = decode(raw, g)
    c[key] = e
    return e
end

-- lookup returns the app's cached set, refreshed when the dict's
-- generation moved and the app's raw set changed; nil when the app is
-- not in the dict.
local function lookup(dict, app)
    return cached(cache, app, dict, "a:" .. app, dict:get("g") or 0, build)
end

---------------------------------------------------------------------------
-- Peer choice.
---------------------------------------------------------------------------

-- smooth weighted round robin over the peers of list for which ok(p) holds.
local function pick_rr(list, ok)
    local best, total = nil, 0
    for i = 1, #list do
        local p = list[i]
        if ok(p) then
            p.cw = p.cw + p.weight
            total = total + p.weight
            if not best or p.cw > best.cw then
                best = p
            end
        end
    end
    if best then
        best.cw = best.cw - total
    end
    return best
end

local function conns(dict, app, p)
    return dict:get("c:" .. app .. ":" .. p.id) or 0
end

-- least_conn: fewest active requests relative to weight, ties by round robin.
local function pick_least_conn(dict, app, list, ok)
    local tied, best_c, best_w = {}, nil, nil
    for i = 1, #list do
        local p = list[i]
        if ok(p) then
            local c = conns(dict, app, p)
            if not best_c or c * best_w < best_c * p.weight then
                tied = { p }
                best_c, best_w = c, p.weight
            elseif c * best_w == best_c * p.weight then
                tied[#tied + 1] = p
            end
        end
    end
    if #tied <= 1 then
        return tied[1]
    end
    return pick_rr(tied, function() return true end)
end

local function pick_weighted_random(cands, total, skip)
    local r = random() * total
    for i = 1, #cands do
        local p = cands[i]
        if p ~= skip then
            r = r - p.weight
            if r < 0 then
                return p
            end
        end
    end
    for i = #cands, 1, -1 do
        if cands[i] ~= skip then
            return cands[i]
        end
    end
end

-- random_two_least_conn: two weighted-random peers, the less loaded one.
local function pick_random_two(dict, app, list, ok)
    local cands, total = {}, 0
    for i = 1, #list do
        local p = list[i]
        if ok(p) then
            cands[#cands + 1] = p
            total = total + p.weight
        end
    end
    if #cands <= 1 then
        return cands[1]
    end
    local a = pick_weighted_random(cands, total)
    local b = pick_weighted_random(cands, total - a.weight, a)
    local ca, cb = conns(dict, app, a), conns(dict, app, b)
    if cb * a.weight < ca * b.weight then
        return b
    end
    return a
end

-- ring builds (once per set and worker) the consistent hash ring of the
-- primaries: POINTS_PER_WEIGHT points per weight unit, scaled down to
-- MAX_POINTS, placed by md5 as ketama does; keys are placed by crc32.
local function ring(e)
    if e.ring then
        return e.ring
    end
    local list, total = e.primary, 0
    for i = 1, #list do
        total = total + list[i].weight
    end
    local scale = 1
    if total * POINTS_PER_WEIGHT > MAX_POINTS then
        scale = MAX_POINTS / (total * POINTS_PER_WEIGHT)
    end
    local points = {}
    for i = 1, #list do
        local p = list[i]
        local np = floor(p.weight * POINTS_PER_WEIGHT * scale)
        if np < 1 then
            np = 1
        end
        -- ketama: each md5 digest of "<address>-<k>" gives four points
        -- (crc32 of such similar strings clusters on the ring).
        local j = 0
        while j < np do
            local d = md5_bin(p.id .. "-" .. floor(j / 4))
            for o = 1, 13, 4 do
                if j >= np then
                    break
                end
                local b1, b2, b3, b4 = sbyte(d, o, o + 3)
                points[#points + 1] = (b1 + b2 * 256 + b3 * 65536 + b4 * 16777216) * PEER_BITS + i
                j = j + 1
            end
        end
    end
    sort(points)
    e.ring = points
    return points
end

-- pick_hash walks the ring from the key's point to the first usable peer.
local function pick_hash(e, key, ok)
    local points = ring(e)
    local n = #points
    if n == 0 then
        return nil
    end
    local h = crc32(key or "") * PEER_BITS
    local lo, hi = 1, n + 1
    while lo < hi do -- first point >= h
        local mid = floor((lo + hi) / 2)
        if points[mid] < h then
            lo = mid + 1
        else
            hi = mid
        end
    end
    local list, seen, distinct = e.primary, {}, 0
    local steps = n < 4096 and n or 4096
    for k = 0, steps - 1 do
        local pt = points[(lo - 1 + k) % n + 1]
        local idx = pt % PEER_BITS
        if not seen[idx] then
            seen[idx] = true
            local p = list[idx]
            if ok(p) then
                return p
            end
            distinct = distinct + 1
            if distinct >= #list then
                return nil
            end
        end
    end
    return pick_rr(list, ok)
end

local function choose(dict, app, e, list, ok)
    local m = e.method
    if m == "round_robin" or list ~= e.primary then
        return pick_rr(list, ok)
    elseif m == "least_conn" then
        return pick_least_conn(dict, app, list, ok)
    elseif m == "random_two_least_conn" then
        return pick_random_two(dict, app, list, ok)
    elseif m == "ip_hash" then
        return pick_hash(e, ngx.var.remote_addr, ok)
    elseif m == "hash" then
        return pick_hash(e, ngx.var.berth_hash_key, ok)
    end
    return pick_rr(list, ok)
end

local function is_down(dict, app, p)
    return dict:get("d:" .. app .. ":" .. p.id) ~= nil
end

-- record_failure counts a failure of peer id; at max_fails within
-- fail_timeout the peer is marked failed for fail_timeout.
local function record_failure(dict, app, e, id)
    local mf, ft = e.max_fails, e.fail_timeout
    if not mf or mf <= 0 or not ft or ft <= 0 then
        return
    end
    local key = "f:" .. app .. ":" .. id
    local n = incr(dict, key, 1, ft) or 1
    if n >= mf then
        dict:safe_set("d:" .. app .. ":" .. id, true, ft)
        dict:safe_set("dn:" .. app, true, ft)
        dict:delete(key)
        ngx_log(WARN, "berth.dynamic: app ", app, " peer ", id, " marked failed for ", ft, "s after ",
            n, " failures")
    end
end

local function count_conn(dict, app, id)
    incr(dict, "c:" .. app .. ":" .. id, 1)
end

local function release_conn(dict, app, id)
    local n = dict:incr("c:" .. app .. ":" .. id, -1)
    if n and n < 0 then
        dict:incr("c:" .. app .. ":" .. id, -n)
    end
end

-- balance is called by balancer_by_lua for every try of a request. tries
-- is the location's proxy_next_upstream_tries (0: one try per server);
-- without it, $berth_tries is read.
function _M.balance(app, tries, routed)
    local dict = shdict()
    local ctx = ngx.ctx
    local st = ctx.berth
    local e = lookup(dict, app) or routed
    if not e or e.n == 0 then
        ngx_log(ERR, "berth.dynamic: app ", app, " has no endpoints")
        return ngx.exit(502)
    end

    if not st then
        st = { tried = {}, order = {}, counted = COUNTED[e.method] }
        ctx.berth = st
        tries = tonumber(tries) or tonumber(ngx.var.berth_tries) or 1
        if tries <= 0 or tries > e.n then
            tries = e.n
        end
        if tries > 1 then
            local ok, err = balancer.set_more_tries(tries - 1)
            if not ok then
                ngx_log(ERR, "berth.dynamic: set_more_tries: ", err)
            end
        end
    else
        local state = balancer.get_last_failure()
        if state == "failed" then
            record_failure(dict, app, e, st.order[#st.order])
        end
    end

    local tried = st.tried
    local check_down = dict:get("dn:" .. app) ~= nil
    local down = {}
    local function usable(p)
        if tried[p.id] or down[p.id] then
            return false
        end
        return true
    end
    local function untried(p)
        return not tried[p.id]
    end

    local p
    for _, list in ipairs({ e.primary, e.backup }) do
        if #list > 0 then
            while true do
                p = choose(dict, app, e, list, usable)
                if not p or not check_down or not is_down(dict, app, p) then
                    break
                end
                down[p.id] = true
                p = nil
            end
        end
        if p then
            break
        end
    end
    -- Every peer is marked failed: try them anyway, as nginx does.
    if not p then
        p = choose(dict, app, e, e.primary, untried)
            or pick_rr(e.backup, untried)
            or pick_rr(e.primary, function() return true end)
            or pick_rr(e.backup, function() return true end)
    end

    tried[p.id] = true
    st.order[#st.order + 1] = p.id
    if st.counted then
        count_conn(dict, app, p.id)
    end
    local ok, err = balancer.set_current_peer(p.host, p.port)
    if not ok then
        ngx_log(ERR, "berth.dynamic: set_current_peer ", p.id, ": ", err)
        return ngx.exit(502)
    end
    if e.ct or e.rt then -- an app the router routes: its own timeouts, each try (nil keeps the location's)
        ok, err = balancer.set_timeouts(e.ct, e.rt, e.rt)
        if not ok then
            ngx_log(ERR, "berth.dynamic: set_timeouts: ", err)
        end
    end
end

-- balance_routed is the balancer of the router's upstream: the app is the
-- one route chose.
-- A request route sent to an app whose set a push removed since (the app
-- deleted) still goes to the endpoints it was routed with.
function _M.balance_routed()
    return _M.balance(ngx.var.berth_app, nil, ngx.ctx.berth_routed)
end

-- access answers 503 with a JSON body when the app has no server. With
-- closer (a named location that is this one with keepalive_timeout 0), a
-- worker that a reload is about to replace hands the request there while
-- lbagent has asked for it (see keepalive), so that the connection closes
-- after this answer. The closer calls access with the same arguments (one
-- compiled chunk for both); it sets $berth_closing first, so the request
-- stays there. A request that reached its location through an internal
-- redirect (a location shared by header matches or a split jumps to the
-- chosen app's named location) is handed over like any other.
local seeded = false

-- percent is a uniform random number in [0, 100), from a generator each
-- worker seeds once: where a split sends one request.
local function percent()
    if not seeded then
        math.randomseed(ngx.now() * 1000 + ngx.worker.pid())
        seeded = true
    end
    return random() * 100
end

-- split chooses where one request of rule (its index in owner's spec)
-- goes: the named location of one of its shares, by weight, or rest (the
-- rule's own). The arguments after rest are, per share, its named
-- location, its index in the rule's split and the weight the config was
-- rendered with; the weights owner's last push carried win over those,
-- so a weight change needs no reload.
function _M.split(owner, rule, rest, ...)
    local e = lookup(shdict(), owner)
    local pushed = e and e.splits[tostring(rule)]
    local r = percent()
    local acc = 0
    local args = { ... }
    for i = 1, #args, 3 do
        local w = args[i + 2]
        if pushed and pushed[args[i + 1] + 1] then
            w = pushed[args[i + 1] + 1]
        end
        acc = acc + w
        if r < acc then
            return args[i]
        end
    end
    return rest
end

-- fallback, for another app's share of a split, is the named location of
-- the rule's own app: a share whose app has no server goes there instead
-- of answering 503, so a canary given weight before it is healthy costs
-- no request.
function _M.access(app, closer, fallback)
    if closer and generation and ngx.var.berth_closing ~= "1" then
        local below = shdict():get("kc")
        if below and generation < below then
            return ngx.exec(closer)
        end
    end
    local e = lookup(shdict(), app)
    if e and e.n > 0 then
        return
    end
    if fallback then
        return ngx.exec(fallback)
    end
    ngx.status = 503
    ngx.header["Content-Type"] = "application/json"
    ngx.print(sformat(NO_BACKEND, app))
    return ngx.exit(ngx.HTTP_OK)
end

---------------------------------------------------------------------------
-- The router (lbagent --dynamic-routes): host → location → app, from the
-- route table in the dict. Hosts and paths are data here, never code.
---------------------------------------------------------------------------

local NOT_FOUND = '{"error":"not_found","message":"no app is routed here"}\n'
local hcache = {} -- per worker: host -> decoded route table entry

-- decode_host decodes a host's route table entry: exact locations by
-- path, prefixes longest first, and regexes in claim order (the order
-- nginx tries them in), each location with its claims in claim order: a
-- claim is { a = app, r = rule number or 0, h = header match or false }.
local function decode_host(raw, g)
    local list = cjson.decode(raw)
    if type(list) ~= "table" then
        return nil
    end
    local e = { raw = raw, g = g, exact = {}, prefixes = {}, regexes = {} }
    local byloc = {}
    for _, r in ipairs(list) do
        local loc = r[1]
        local h = r[6]
        local c = { a = r[2], r = r[5] or 0, h = type(h) == "table" and h or false }
        local claims = byloc[loc]
        if not claims then
            claims = {}
            byloc[loc] = claims
            local kind = ssub(loc, 1, 2)
            if kind == "= " then
                e.exact[ssub(loc, 3)] = claims
            elseif kind == "~ " then
                e.regexes[#e.regexes + 1] = { re = ssub(loc, 3), claims = claims }
            else
                e.prefixes[#e.prefixes + 1] = { p = loc, n = #loc, claims = claims }
            end
        end
        claims[#claims + 1] = c
    end
    sort(e.prefixes, function(a, b) return a.n > b.n end)
    return e
end

local wcache = {} -- per worker: "w" -> the wildcard hosts with entries

-- decode_wild decodes "w", the wildcard hosts with entries, into a set.
local function decode_wild(raw, g)
    local list = cjson.decode(raw)
    local set = {}
    if type(list) == "table" then
        for _, h in ipairs(list) do
            set[h] = true
        end
    end
    return { raw = raw, g = g, set = set }
end

-- host_table returns the decoded entry of host; nil when the host has
-- none. Only hosts found are cached, so that hostile Host headers cannot
-- grow the cache.
local function host_table(dict, g, host)
    return cached(hcache, host, dict, "h:" .. host, g, decode_host)
end

-- match returns the claims of the location nginx would choose for uri: an
-- exact location; else the first regex that matches, in claim order,
-- tried only after the longest prefix was found; else that prefix.
local function match(e, uri)
    local claims = e.exact[uri]
    if claims then
        return claims
    end
    local best
    for _, p in ipairs(e.prefixes) do
        if ssub(uri, 1, p.n) == p.p then
            best = p.claims
            break
        end
    end
    for _, r in ipairs(e.regexes) do
        if ngx.re.find(uri, r.re, "jo") then
            return r.claims
        end
    end
    return best
end

-- headers_match says the request carries every header of h, as the maps
-- of a rendered shared location test them: the first header of the name
-- ($http_…), an exact value ignoring case, a regex with case (against ""
-- when the header is absent, as the map's source would be).
local function headers_match(h)
    local var = ngx.var
    for _, m in ipairs(h) do
        local v = var[m[1]] or ""
        if m[2] then
            if string.lower(v) ~= m[2] then
                return false
            end
        elseif not ngx.re.find(v, m[3], "jo") then
            return false
        end
    end
    return true
end

-- claim picks among the claims of one location as a rendered shared one
-- does: the first claim, in claim order, whose header match the request
-- carries, else the claim without one; nil (404) when neither.
local function claim(claims)
    local default
    for _, c in ipairs(claims) do
        if not c.h then
            default = default or c
        elseif headers_match(c.h) then
            return c
        end
    end
    return default
end

local function not_found()
    ngx.status = 404
    ngx.header["Content-Type"] = "application/json"
    ngx.print(NOT_FOUND)
    return ngx.exit(ngx.HTTP_OK)
end

-- limited is nginx's limit_req for one rule (rl: rps, burst; nodelay),
-- per client address, in the shared dict berth_limits: a leaky bucket
-- whose excess (in thousandths of a request) drains at rps a second; a
-- request that would take it past burst is refused, and leaves it as it
-- was. nginx locks its zone around the read and the write; here two
-- workers may read the same excess at the same instant, so a burst of
-- simultaneous requests may pass one more per worker.
local function limited(app, rule, rl)
    local dict = ngx.shared[LIMIT_DICT]
    if not dict then
        return false
    end
    local key = "l:" .. app .. ":" .. rule .. ":" .. (ngx.var.binary_remote_addr or "")
    local now = floor(ngx.now() * 1000)
    local rate, burst = rl[1] * 1000, rl[2] * 1000
    local excess = 0
    local raw = dict:get(key)
    if raw then
        local ex, last = smatch(raw, "^(%d+) (%d+)$")
        ex, last = tonumber(ex), tonumber(last)
        if ex and last then
            local ms = now - last
            if ms < 0 then
                ms = 0
            end
            excess = ex - rate * ms / 1000 + 1000
            if excess < 0 then
                excess = 0
            end
            if excess > burst then
                return true
            end
        end
    end
    -- forgotten once drained (and at least a minute kept); the dict
    -- evicts the least recently used when full, as nginx's zone does
    dict:set(key, sformat("%d %d", floor(excess), now), math.max(60, rl[2] / rl[1] + 2))
    return false
end

-- too_large says the request's body is larger than limit bytes, as
-- nginx's client_max_body_size of the app's rendered location would: by
-- its Content-Length, or for a chunked body once read (the router's
-- location already bounded it by the largest routed app's limit).
local function too_large(limit)
    local cl = tonumber(ngx.var.http_content_length)
    if cl then
        return cl > limit
    end
    if not ngx.var.http_transfer_encoding then
        return false
    end
    ngx.req.read_body()
    local data = ngx.req.get_body_data()
    if data then
        return #data > limit
    end
    local file = ngx.req.get_body_file()
    if not file then
        return false
    end
    local f = io.open(file, "rb")
    if not f then
        return false
    end
    local size = f:seek("end")
    f:close()
    return size and size > limit
end

-- hash_key_of evaluates an app's hash_key as its rendered location's
-- "set $berth_hash_key …" would: each variable's value ("" when unset)
-- after its separator; $server_name is the server block's name, which
-- for a host is the host, and "_" for the default server.
local function hash_key_of(parts, host)
    local var = ngx.var
    local out = {}
    for i, p in ipairs(parts) do
        local v
        if p[2] == "server_name" then
            v = host ~= "" and host or "_"
        else
            v = var[p[2]] or ""
        end
        out[i] = p[1] .. v
    end
    return concat(out)
end

-- split picks the app of a share of rule (its index + 1) of app e, by the
-- pushed weights: nil keeps the rule's own app.
local function split_target(e, rule, apps)
    local ws = e.splits[tostring(rule - 1)]
    if not ws then
        return nil
    end
    local r = percent()
    local acc = 0
    for i, app in ipairs(apps) do
        acc = acc + (ws[i] or 0)
        if r < acc then
            return app
        end
    end
end

-- route (access_by_lua of the router's location) finds the app of the
-- request's host and path, as the server blocks and locations of rendered
-- apps would: a host with an entry is matched there alone, any other host
-- in the default server's (""); within it, the location as nginx chooses
-- one, and among the claims of that location the one whose header match
-- the request carries. A rule's split sends its share to another app
-- (back to the rule's app while that one has no server), and the rule's
-- response headers are added to the answer (headers). It sets $berth_app
-- and $berth_tries for the router's balancer; 404 when no app is routed
-- here, 503 when the app has no server. closer is as for access.
function _M.route(closer)
    if closer and generation and ngx.var.berth_closing ~= "1" then
        local below = shdict():get("kc")
        if below and generation < below then
            return ngx.exec(closer)
        end
    end
    local dict = shdict()
    local g = dict:get("g") or 0
    local uri = ngx.var.uri or ""
    local host = ngx.var.host or ""
    local e = host_table(dict, g, host)
    if not e then
        -- the longest wildcard host that covers it, as nginx's server_name
        local w = cached(wcache, "w", dict, "w", g, decode_wild)
        local rest = host
        while w and next(w.set) do
            local dot = sfind(rest, ".", 1, true)
            if not dot then
                break
            end
            rest = ssub(rest, dot + 1)
            if w.set["*." .. rest] then
                host = "*." .. rest
                e = host_table(dict, g, host)
                break
            end
        end
    end
    if not e then
        host = ""
        e = host_table(dict, g, "")
    end
    local claims = e and match(e, uri)
    local c = claims and claim(claims)
    if not c then
        return not_found()
    end
    local app = c.a
    local set = lookup(dict, app)
    local rule = c.r > 0 and set and set.rules[c.r]
    if rule then
        if rule.rh then
            ngx.ctx.berth_rh = rule.rh
        end
        if rule.sp then
            local to = split_target(set, c.r, rule.sp)
            local tset = to and lookup(dict, to)
            if tset and tset.n > 0 then
                -- the target's own body: its paths', without the rule's headers
                app, set, ngx.ctx.berth_rh = to, tset, nil
            end
        end
    end
    ngx.var.berth_app = app
    -- In nginx's order: the body's size when it picks the location, then
    -- limit_req (preaccess), then the access phase's 503.
    if set and set.max_body and set.max_body > 0 and too_large(set.max_body) then
        return ngx.exit(413)
    end
    if rule and rule.rl and app == c.a and limited(c.a, c.r, rule.rl) then
        return ngx.exit(429)
    end
    if not set or set.n == 0 then
        ngx.status = 503
        ngx.header["Content-Type"] = "application/json"
        ngx.print(sformat(NO_BACKEND, app))
        return ngx.exit(ngx.HTTP_OK)
    end
    ngx.var.berth_tries = set.tries or 0
    if set.hash_key then
        ngx.var.berth_hash_key = hash_key_of(set.hash_key, host)
    end
    ngx.ctx.berth_routed = set
end

-- headers (header_filter_by_lua of the router's location) adds the
-- response headers of the rule route chose, to every answer, errors
-- included, beside any the app sent: add_header … always.
function _M.headers()
    local rh = ngx.ctx.berth_rh
    if not rh then
        return
    end
    local h = ngx.header
    for _, nv in ipairs(rh) do
        local cur = h[nv[1]]
        if cur == nil then
            h[nv[1]] = nv[2]
        elseif type(cur) == "table" then
            cur[#cur + 1] = nv[2]
            h[nv[1]] = cur
        else
            h[nv[1]] = { cur, nv[2] }
        end
    end
end

-- log releases the active counts of every tried peer and records a
-- failure of the last one when it ended the request with 502 or 504
-- (connection error or timeout; earlier tries were recorded by balance).
function _M.log(app)
    local st = ngx.ctx.berth
    if not st then
        return
    end
    local dict = shdict()
    if st.counted then
        for _, id in ipairs(st.order) do
            release_conn(dict, app, id)
        end
    end
    local status = ngx.status
    if status == 502 or status == 504 then
        local us = ngx.var.upstream_status
        local last = us and smatch(us, "(%d+)%s*$")
        if last == "502" or last == "504" then
            local e = lookup(dict, app)
            if e then
                record_failure(dict, app, e, st.order[#st.order])
            end
        end
    end
end

-- Exposed for the tests of the validation rules.
_M._parse_address = parse_address

return _M
