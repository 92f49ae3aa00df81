-- wrk script: POST /v1/instances with a mix of shapes, classes and tenants, each with a
-- unique Idempotency-Key, until LIVE_TARGET launches have been accepted (split between the
-- threads). Of every 100 requests:
--   50 one GPU, 8 two GPUs, 6 four GPUs, 20 eight GPUs (on-demand, four tenants);
--    2 a quarter-GPU share, 2 a MIG 1g.10gb (on-demand);
--    2 spot one GPU, 2 spot eight GPUs;
--    4 internal eight GPUs (home-lab);
--    3 reserved eight GPUs in frontier-lab's contract;
--    1 gang: a 4-node on-demand gang in one leaf group, or a 16-node reserved gang in one pod.
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local tid, counter, accepted, refused, target = 0, 0, 0, 0, 0
local key = os.getenv("NEOCLOUD_API_KEY")
local contract = os.getenv("BENCH_CONTRACT")
local model = os.getenv("BENCH_MODEL") or "H100-SXM-80GB"
local run = os.time()
local tenants = { "acme-ai", "beta-labs", "gamma-ml", "delta-research" }

function init(args)
  tid = wrk.thread:get("tid")
  local total = tonumber(os.getenv("LIVE_TARGET") or "100000")
  local n = tonumber(os.getenv("WRK_THREADS") or "2")
  target = math.ceil(total / n)
end

local function body_for(c)
  local k = c % 100
  local t = tenants[math.floor(c / 100) % #tenants + 1]
  local class, tenant, shape, extra = "on-demand", t, nil, ""
  if k < 50 then shape = '"gpus":1'
  elseif k < 58 then shape = '"gpus":2'
  elseif k < 64 then shape = '"gpus":4'
  elseif k < 84 then shape = '"gpus":8'
  elseif k < 86 then shape = '"shape":{"kind":"share","milli":250}'
  elseif k < 88 then shape = '"shape":{"kind":"mig","profile":"1g.10gb"}'
  elseif k < 90 then class, shape = "spot", '"gpus":1'
  elseif k < 92 then class, shape = "spot", '"gpus":8'
  elseif k < 96 then class, tenant, shape = "internal", "home-lab", '"gpus":8'
  elseif k < 99 then
    class, tenant, shape = "reserved", "frontier-lab", '"gpus":8'
    extra = ',"contract_id":"' .. contract .. '"'
  elseif math.floor(c / 100) % 2 == 0 then shape = '"nodes":4,"gang_level":"leaf_group"'
  else
    class, tenant, shape = "reserved", "frontier-lab", '"nodes":16,"gang_level":"pod"'
    extra = ',"contract_id":"' .. contract .. '"'
  end
  return string.format('{"tenant_id":"%s","class":"%s","gpu_model":"%s",%s%s}',
    tenant, class, model, shape, extra)
end

function request()
  counter = counter + 1
  local headers = {}
  headers["Authorization"] = "Bearer " .. key
  headers["Content-Type"] = "application/json"
  headers["Idempotency-Key"] = string.format("live-%d-%d-%d", run, tid, counter)
  return wrk.format("POST", "/v1/instances", headers, body_for(counter))
end

function response(status, headers, body)
  if status == 201 then
    accepted = accepted + 1
  else
    refused = refused + 1
  end
  if accepted >= target then
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("non-2xx or socket errors: %d\n", e.status + e.connect + e.read + e.write + e.timeout))
end
