-- wrk script for bench/serve/run.sh: POST /v1/simulate in direct mode, a random catalog user
-- (ml-latest-small ids 1..610) facing one of four 5-item slates, one sample, a random seed.
-- Counts 5xx answers per thread and prints one RESULT line with the figures run.sh records.

local slates = {
  '["1","2","260","2571","356"]',
  '["318","593","2959","296","480"]',
  '["589","1196","110","47","50"]',
  '["527","1270","780","1210","588"]',
}
local threads = {}

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(1000 + id)
  server_errors = 0
  client_errors = 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  local user = math.random(1, 610)
  local slate = slates[math.random(1, #slates)]
  local body = string.format('{"user_id":"%d","item_ids":%s,"n":1,"seed":%d}',
    user, slate, math.random(0, 1000000))
  return wrk.format(nil, "/v1/simulate", nil, body)
end

function response(status, headers, body)
  if status >= 500 then
    server_errors = server_errors + 1
  elseif status >= 400 then
    client_errors = client_errors + 1
  end
end

function done(summary, latency, requests)
  local e5xx, e4xx = 0, 0
  for _, thread in ipairs(threads) do
    e5xx = e5xx + thread:get("server_errors")
    e4xx = e4xx + thread:get("client_errors")
  end
  local seconds = summary.duration / 1e6
  local errors = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_s=%.1f rps=%.3f p50_ms=%.1f p90_ms=%.1f p99_ms=%.1f " ..
    "max_ms=%.1f e5xx=%d e4xx=%d connect_errors=%d read_errors=%d timeouts=%d\n",
    summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, e5xx, e4xx,
    errors.connect, errors.read, errors.timeout))
end
