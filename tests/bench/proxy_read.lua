-- boomerang: wrk script for the sidecar's point-read benchmark (tests/bench/proxy.sh).
--
--   BENCH_ROWS=10000 wrk -t2 -c16 -d8s --latency -s tests/bench/proxy_read.lua http://127.0.0.1:PORT
--
-- Each request is a POST /v2/pipeline of one Hrana execute of
-- `SELECT v FROM kv WHERE id = ?` with a random id in 1..BENCH_ROWS, then a
-- close. BENCH_WRK_GET=1 instead sends wrk's plain `GET /` (for nginx's static
-- file, as measured in machine-floor.md), still through this script so both
-- runs pay the same Lua cost per response.
--
-- response() counts answers whose status is not 200 (wrk itself only counts
-- statuses > 399), and 200 answers holding a per-request Hrana error. done()
-- prints one line that proxy.sh parses:
--   RESULT requests=N seconds=S rps=R p50_us=A p90_us=B p99_us=C max_us=D non200=E
--          hrana_errors=F errors_connect=.. errors_read=.. errors_write=.. errors_timeout=..

local rows = tonumber(os.getenv("BENCH_ROWS") or "10000")
local get_only = os.getenv("BENCH_WRK_GET") == "1"
local threads = {}
local counter = 0

-- Runs once per thread in the main Lua state, before the threads start.
function setup(thread)
   counter = counter + 1
   thread:set("thread_index", counter)
   table.insert(threads, thread)
end

-- Runs in each thread's own Lua state.
function init(args)
   non200 = 0
   hrana_errors = 0
   math.randomseed(os.time() * 1000 + (thread_index or 0) * 7919)
   -- warm the generator: its first values after seeding are poorly spread
   for _ = 1, 10 do math.random() end
end

local head = '{"requests":[{"type":"execute","stmt":{"sql":"SELECT v FROM kv WHERE id = ?",'
   .. '"args":[{"type":"integer","value":"'
local tail = '"}]}},{"type":"close"}]}'
local headers = { ["Content-Type"] = "application/json" }

if not get_only then
   function request()
      return wrk.format("POST", "/v2/pipeline", headers,
                        head .. math.random(1, rows) .. tail)
   end
end

function response(status, hdrs, body)
   if status ~= 200 then
      non200 = non200 + 1
   elseif string.find(body, '"type":"error"', 1, true) then
      hrana_errors = hrana_errors + 1
   end
end

function done(summary, latency, requests)
   local bad, herr = 0, 0
   for _, t in ipairs(threads) do
      bad = bad + (t:get("non200") or 0)
      herr = herr + (t:get("hrana_errors") or 0)
   end
   local secs = summary.duration / 1e6
   local e = summary.errors
   io.write(string.format(
      "RESULT requests=%d seconds=%.3f rps=%.0f p50_us=%d p90_us=%d p99_us=%d max_us=%d "
         .. "non200=%d hrana_errors=%d errors_connect=%d errors_read=%d errors_write=%d errors_timeout=%d\n",
      summary.requests, secs, summary.requests / secs,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
      bad, herr, e.connect, e.read, e.write, e.timeout))
end
