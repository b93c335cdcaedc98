"""GET load with wrk (Debian's ``wrk``): a fixed number of requests over a list of paths."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from bench.procs import LOOPBACK

# Each thread walks its own share of the paths and stops after its share of the count, then says
# so on stdout (wrk itself sleeps for its whole -d duration; the harness interrupts it once every
# thread is done). Threads time themselves with clock_gettime through LuaJIT's ffi; done() prints
# one JSON line that the harness parses.
SCRIPT = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local function now()
  local ts = ffi.new("bench_timespec")
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) / 1e9
end
local threads = {}
function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end
function init(args)
  paths = {}
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
  local total, nthreads = tonumber(args[2]), tonumber(args[3])
  stride = nthreads
  limit = math.floor(total / nthreads)
  if id == 0 then limit = limit + total % nthreads end
  sent, received, bad, started, finished = 0, 0, 0, 0, 0
  extra = {}
  for i = 4, #args, 2 do extra[args[i]] = args[i + 1] end
end
function request()
  if sent == 0 then started = now() end
  local path = paths[(sent * stride + id) % #paths + 1]
  sent = sent + 1
  return wrk.format("GET", path, extra)
end
function response(status, headers, body)
  received = received + 1
  if status ~= 200 then bad = bad + 1 end
  if received == limit then
    finished = now()
    io.write("BENCH-DONE\n")
    io.flush()
    wrk.thread:stop()
  end
end
function done(summary, latency, requests)
  local bad_total, counted, first, last = 0, 0, nil, 0
  for _, thread in ipairs(threads) do
    bad_total = bad_total + thread:get("bad")
    counted = counted + thread:get("received")
    local s, f = thread:get("started"), thread:get("finished")
    if first == nil or s < first then first = s end
    if f == 0 then f = now() end
    if f > last then last = f end
  end
  io.write(string.format(
    '\n{"requests": %d, "seconds": %.6f, "p50_us": %d, "p99_us": %d, "bad": %d, ' ..
    '"connect": %d, "read": %d, "write": %d, "timeout": %d}\n',
    counted, last - first, latency:percentile(50), latency:percentile(99),
    bad_total, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout))
end
"""


@dataclass
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    bad: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def run_until_done(command: list[str], threads: int, max_seconds: float) -> str:
    """Run wrk; interrupt it (it then reports) as soon as every thread has done its share."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    assert process.stdout is not None
    lines, done = [], 0
    timer = threading.Timer(max_seconds + 30, process.kill)
    timer.start()
    try:
        for line in process.stdout:
            lines.append(line)
            done += line.startswith("BENCH-DONE")
            if done == threads:
                process.send_signal(signal.SIGINT)
                lines.extend(process.stdout)
                break
        process.wait()
    finally:
        timer.cancel()
    if process.returncode != 0:
        assert process.stderr is not None
        raise RuntimeError(f"wrk exited {process.returncode}: {process.stderr.read()[-500:]}")
    return "".join(lines)


def available() -> bool:
    return shutil.which("wrk") is not None


def wrk_get(
    port: int,
    paths: list[str],
    count: int,
    connections: int,
    workdir: Path,
    *,
    threads: int = 2,
    max_seconds: float = 60,
    headers: dict[str, str] | None = None,
) -> WrkResult:
    """GET ``count`` requests cycling over ``paths``; rate and latency percentiles."""
    script = workdir / "wrk-get.lua"
    script.write_text(SCRIPT)
    paths_file = workdir / "wrk-paths.txt"
    paths_file.write_text("\n".join(paths) + "\n")
    extra = [item for pair in (headers or {}).items() for item in pair]
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{int(max_seconds)}s",  # an upper bound: stopped when done
        "--timeout",
        "30s",
        "-s",
        str(script),
        f"http://{LOOPBACK}:{port}/",
        "--",
        str(paths_file),
        str(count),
        str(threads),
        *extra,
    ]
    summary = json.loads(run_until_done(command, threads, max_seconds).strip().splitlines()[-1])
    result = WrkResult(
        summary["requests"],
        summary["seconds"],
        summary["p50_us"] / 1000,
        summary["p99_us"] / 1000,
        summary["bad"] + summary["connect"] + summary["read"] + summary["write"],
    )
    if result.bad:
        raise RuntimeError(f"wrk: {result.bad} of {result.requests} GETs failed: {summary}")
    return result
