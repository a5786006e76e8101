"""Long streams: N concurrent slow SSE streams held through a row, sampled for the row's RSS
and CPU while all N are open (the plateau between the end of the ramp and the first close).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import orjson
import psutil

from bench.stack import ROOT, tree_cpu


def _rss(processes: list[psutil.Process]) -> int:
    total = 0
    for p in processes:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def measure(
    name: str,
    url: str,
    key: str | None,
    processes: Callable[[], list[psutil.Process]],
    streams: int,
    *,
    delay_ms: int = 100,
    plateau_s: float = 15.0,
    ramp_per_s: float = 400.0,
) -> dict[str, Any]:
    ramp = max(2.0, streams / ramp_per_s)
    chunks = int((ramp + plateau_s + 2.0) * 1000 / delay_ms)
    argv = [
        sys.executable,
        "-m",
        "bench.streamclient",
        "--url",
        url + "/v1/messages",
        "--streams",
        str(streams),
        "--ramp",
        f"{ramp:.2f}",
        "--chunks",
        str(chunks),
        "--delay-ms",
        str(delay_ms),
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("BENCH_KEY", None)
    if key:
        env["BENCH_KEY"] = key
    idle_rss = _rss(processes())
    samples: list[tuple[float, float, int]] = []
    with tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out_f, stderr=err_f)
        while proc.poll() is None:
            procs = processes()
            samples.append((time.monotonic(), tree_cpu(procs), _rss(procs)))
            time.sleep(0.5)
        out_f.seek(0)
        err_f.seek(0)
        out, err = out_f.read(), err_f.read()
    if proc.returncode != 0 or not out.strip():
        raise RuntimeError(f"streamclient failed: {err.decode(errors='replace')[-1500:]}")
    res = orjson.loads(out.splitlines()[-1])
    t0 = res["t0"]
    lo = t0 + (res["all_open_at"] or ramp) + 1.0
    hi = t0 + (res["first_close_at"] or res["elapsed"]) - 0.5
    window = [s for s in samples if lo <= s[0] <= hi]
    result: dict[str, Any] = {
        "row": name,
        "streams": streams,
        "delay_ms": delay_ms,
        "chunks_per_stream": chunks,
        "ramp_s": ramp,
        "opened": res["opened"],
        "completed": res["completed"],
        "failed": res["failed"],
        "status": res["status"],
        "gaps_ms": res["gaps_ms"],
        "idle_rss_mb": idle_rss / 2**20,
    }
    if len(window) < 2:
        result["note"] = "no plateau: 1 % of the streams had finished before 99 % were open"
        return result
    span = window[-1][0] - window[0][0]
    b = res["bucket_s"]
    first, last = int((window[0][0] - t0) / b), int((window[-1][0] - t0) / b)
    chunks_in = sum(res["chunks_per_bucket"][first:last])
    rss = sorted(s[2] for s in window)[len(window) // 2]
    held = int(res["status"].get("200", 0)) or streams
    cpu = window[-1][1] - window[0][1]
    result.update(
        plateau_s=span,
        rss_mb=rss / 2**20,
        rss_per_stream_kb=(rss - idle_rss) / held / 1024 if processes() else None,
        chunks_per_s=chunks_in / ((last - first) * b) if last > first else None,
        cpu_cores=cpu / span if span else None,
        cpu_us_per_chunk=cpu / chunks_in * 1e6 if chunks_in and processes() else None,
    )
    return result
