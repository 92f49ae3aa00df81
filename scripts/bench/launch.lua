-- wrk script: POST /v1/instances, one on-demand GPU each, with a unique Idempotency-Key
-- (thread number + counter, so the threads never collide).
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local tid, counter = 0, 0
local key = os.getenv("NEOCLOUD_API_KEY")
local tenant = os.getenv("BENCH_TENANT") or "bench"
local run = os.time()
function init(args)
  tid = wrk.thread:get("tid")
end

function request()
  counter = counter + 1
  local body = '{"tenant_id":"' .. tenant .. '","gpu_model":"H100-SXM-80GB","gpus":1}'
  local headers = {}
  headers["Authorization"] = "Bearer " .. key
  headers["Content-Type"] = "application/json"
  headers["Idempotency-Key"] = string.format("bench-%d-%d-%d", run, tid, counter)
  return wrk.format("POST", "/v1/instances", headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("non-2xx or socket errors: %d\n", e.status + e.connect + e.read + e.write + e.timeout))
end
