-- wrk script for bench/admin_bench.py: sends the bearer key from WRK_AUTH, optionally walks
-- pages (WRK_PAGES = "queue1,queue2,...:total:limit"), and prints one JSON line of results.
local auth = os.getenv("WRK_AUTH")
local pages = os.getenv("WRK_PAGES")
local queues, total, limit = {}, 0, 50
if pages and pages ~= "" then
  local qs, t, l = pages:match("^([^:]+):(%d+):(%d+)$")
  for q in qs:gmatch("[^,]+") do table.insert(queues, q) end
  total, limit = tonumber(t), tonumber(l)
end
local counter = 0
-- WRK_DELAY_MS > 0: each connection waits this long after a response before its next
-- request (wrk calls delay() only when the script defines it), pacing the run to a rate.
local pause = tonumber(os.getenv("WRK_DELAY_MS") or "0") or 0
if pause > 0 then
  function delay()
    return pause
  end
end

function setup(thread)
  thread:set("seed", math.random(1, 1000000))
end

function init(args)
  math.randomseed(seed or os.time())
  wrk.headers["Authorization"] = "Bearer " .. auth
end

function request()
  if #queues == 0 then
    return wrk.format("GET", wrk.path)
  end
  counter = counter + 1
  local q = queues[(counter % #queues) + 1]
  local offset = math.random(0, math.max(0, total - limit))
  local path = "/api/admin/queue?action=failed-jobs&queue=" .. q .. "&limit=" .. limit ..
    "&offset=" .. offset
  return wrk.format("GET", path)
end

function done(summary, latency, requests)
  local non2xx = summary.errors.status
  io.write(string.format(
    '{"requests":%d,"duration_s":%.3f,"rps":%.1f,"p50_ms":%.2f,"p90_ms":%.2f,"p99_ms":%.2f,' ..
    '"max_ms":%.2f,"mean_ms":%.2f,"non_2xx":%d,"socket_errors":%d}\n',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, latency.mean / 1000, non2xx,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
