"""Long streams: N concurrent slow SSE streams held through a row, sampled for the row's RSS
and CPU on the plateau while (nearly) all N are open.
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
    # Twice the ramp: on a saturated machine opening N streams takes longer than planned.
    chunks = int((2 * ramp + plateau_s + 2.0) * 1000 / delay_ms)
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
    t0, b = res["t0"], res["bucket_s"]
    open_now: list[int] = res["open_per_bucket"]
    peak = max(open_now, default=0)

    def open_at(t: float) -> int:
        i = int((t - t0) / b)
        return open_now[i] if 0 <= i < len(open_now) else 0

    # The plateau: the samples taken while at least 95 % of the peak count were open (on a
    # saturated machine the ramp stretches, so a fixed time window would miss it).
    window = [s for s in samples if peak and open_at(s[0]) >= 0.95 * peak]
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
        "peak_open": peak,
    }
    if len(window) < 2:
        result["note"] = "no plateau: too few samples with 95 % of the peak open"
        return result
    span = window[-1][0] - window[0][0]
    first, last = int((window[0][0] - t0) / b), int((window[-1][0] - t0) / b)
    chunks_in = sum(res["chunks_per_bucket"][first:last])
    # Per stream: each sample's growth over idle divided by the streams open at that moment.
    per_stream = sorted((s[2] - idle_rss) / max(1, open_at(s[0])) for s in window)
    rss = sorted(s[2] for s in window)[len(window) // 2]
    cpu = window[-1][1] - window[0][1]
    result.update(
        plateau_s=span,
        rss_mb=rss / 2**20,
        rss_per_stream_kb=per_stream[len(per_stream) // 2] / 1024 if processes() else None,
        chunks_per_s=chunks_in / ((last - first) * b) if last > first else None,
        cpu_cores=cpu / span if span else None,
        cpu_us_per_chunk=cpu / chunks_in * 1e6 if chunks_in and processes() else None,
    )
    return result
