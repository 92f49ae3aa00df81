-- wrk script: POST /v1/instances, one on-demand GPU each, with a unique Idempotency-Key.
local counter = 0
local key = os.getenv("NEOCLOUD_API_KEY")
local tenant = os.getenv("BENCH_TENANT") or "bench"
function request()
  counter = counter + 1
  local body = '{"tenant_id":"' .. tenant .. '","gpu_model":"H100-SXM-80GB","gpus":1}'
  local headers = {}
  headers["Authorization"] = "Bearer " .. key
  headers["Content-Type"] = "application/json"
  headers["Idempotency-Key"] = string.format("bench-%d-%d-%d", os.time(), math.random(1, 1e9), counter)
  return wrk.format("POST", "/v1/instances", headers, body)
end
function done(summary, latency, requests)
  io.write(string.format("non-2xx or socket errors: %d\n", summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
