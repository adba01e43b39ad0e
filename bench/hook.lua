-- wrk script: realistic Bitrix24 ONCRMDEALUPDATE webhooks, each with its own deal ID so that
-- every request is a new inbox row (byte-identical bodies would be merged as redeliveries).
--   wrk ... -s bench/hook.lua URL -- PATH THREADS [MAX_ID]
-- With MAX_ID, IDs cycle through 1..MAX_ID (evenly over the threads).
local member = "a223c6b3710f85df22e9377d6c4f7553"
local token = "51856fefc120afa4b628cc82d3935cce"
local next_tid = 0

function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
end

local path, nthreads, max_id
local counter = 0
local headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }

function init(args)
  path = args[1] or "/hooks/shop"
  nthreads = tonumber(args[2] or "1")
  max_id = tonumber(args[3] or "0")
end

function request()
  local n = counter * nthreads + tid
  counter = counter + 1
  local id = max_id > 0 and (n % max_id) + 1 or n + 1
  local body = "event=ONCRMDEALUPDATE&event_handler_id=201&data%5BFIELDS%5D%5BID%5D=" .. id ..
    "&ts=1736405807&auth%5Bdomain%5D=shop.bitrix24.ru" ..
    "&auth%5Bclient_endpoint%5D=https%3A%2F%2Fshop.bitrix24.ru%2Frest%2F" ..
    "&auth%5Bserver_endpoint%5D=https%3A%2F%2Foauth.bitrix.info%2Frest%2F" ..
    "&auth%5Bmember_id%5D=" .. member .. "&auth%5Bapplication_token%5D=" .. token
  return wrk.format("POST", path, headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d bad_status=%d socket_errors=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
