"""Request-rate cells: one row (a URL and the processes behind it) at one concurrency for a
fixed time, driven by wrk (or the built-in generator), with a one-connection probe beside it
for time to first byte, and the CPU each process tree spent meanwhile.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil

from bench.stack import ROOT, calls_delta, command_calls, machine_busy_seconds, tree_cpu

LUA = Path(__file__).with_name("wrk_post.lua")
_PROMPT = [{"role": "user", "content": "Write a haiku about proxies."}]
BODIES = {
    "json": orjson.dumps({"model": "claude-sonnet-4-6", "max_tokens": 256, "messages": _PROMPT}),
    "sse": orjson.dumps(
        {"model": "claude-sonnet-4-6", "max_tokens": 256, "stream": True, "messages": _PROMPT}
    ),
}
BASE_HEADERS = [("anthropic-version", "2023-06-01")]


@dataclass
class Row:
    """Something to measure: its URL, the secret header it needs (kept in memory only) and
    the process trees whose CPU counts as its own."""

    name: str
    url: str
    command: str
    processes: Callable[[], list[psutil.Process]]
    secret_header: tuple[str, str] | None = None
    paths: dict[str, str] = field(
        default_factory=lambda: {"json": "/v1/messages", "sse": "/v1/messages"}
    )
    counts_valkey: bool = False


@dataclass
class Meters:
    """The shared processes every cell also reads: the simulator and Valkey."""

    upstream: Callable[[], list[psutil.Process]]
    valkey: Callable[[], list[psutil.Process]]
    valkey_url: str


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def _headers(row: Row) -> list[tuple[str, str]]:
    return [*BASE_HEADERS, *([row.secret_header] if row.secret_header else [])]


def _pyload_argv(
    url: str, body: bytes, headers: list[tuple[str, str]], conns: int, seconds: float
) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "bench.pyload",
        "--url",
        url,
        "--connections",
        str(conns),
        "--seconds",
        str(seconds),
        "--body",
        body.decode(),
    ]
    for k, v in headers:
        if k != "x-api-key":  # the key travels in the environment, never on a command line
            argv += ["--header", f"{k}: {v}"]
    return argv


def _pyload_env(headers: list[tuple[str, str]]) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for k, v in headers:
        if k == "x-api-key":
            env["BENCH_KEY"] = v
    return env


def start_pyload(
    url: str, body: bytes, headers: list[tuple[str, str]], conns: int, seconds: float
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        _pyload_argv(url, body, headers, conns, seconds),
        cwd=ROOT,
        env=_pyload_env(headers),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish_pyload(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"pyload failed: {err.decode(errors='replace')[-1000:]}")
    return dict(orjson.loads(out.splitlines()[-1]))


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_wrk(
    url: str, body: bytes, headers: list[tuple[str, str]], conns: int, seconds: float
) -> dict[str, Any]:
    threads = 1 if conns < 2 else 2
    env = dict(
        os.environ,
        BENCH_BODY=body.decode(),
        BENCH_HEADERS="\n".join(f"{k}: {v}" for k, v in headers),
    )
    argv = [
        wrk_binary() or "wrk",
        f"-t{threads}",
        f"-c{conns}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        url,
    ]
    before = _children_cpu()
    proc = subprocess.run(argv, env=env, capture_output=True, timeout=seconds + 120, check=False)
    cpu = _children_cpu() - before
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(b"BENCHJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary: {proc.stderr.decode(errors='replace')}")
    raw = orjson.loads(line[len(b"BENCHJSON ") :])
    seconds_run = raw["duration_us"] / 1e6
    errors = raw["connect"] + raw["read"] + raw["write"] + raw["status"] + raw["timeout"]
    return {
        "generator": "wrk",
        "requests": raw["requests"],
        "seconds": seconds_run,
        "rps": raw["requests"] / seconds_run if seconds_run else 0.0,
        "latency_ms": {p: raw[f"{p}_us"] / 1000 for p in ("p50", "p90", "p99")},
        "errors": errors,
        "error_detail": {k: raw[k] for k in ("connect", "read", "write", "status", "timeout")},
        "generator_cpu_s": cpu,
    }


def wrk_command(row: Row, mode: str, conns: int, seconds: float) -> str:
    """The command line for one cell, with the port as $PORT and the secret as a variable
    (never the key itself)."""
    threads = 1 if conns < 2 else 2
    lines = [f"{k}: {v}" for k, v in BASE_HEADERS]
    args = ""
    if row.secret_header:
        name, value = row.secret_header
        bearer = value.startswith("Bearer ")
        lines.append(f"{name}: {'Bearer ' if bearer else ''}%s")
        args = ' "$MASTER_KEY"' if bearer else ' "$KEY"'
    headers = "\\n".join(lines)
    return (
        f"BENCH_BODY='{BODIES[mode].decode()}' "
        f"BENCH_HEADERS=\"$(printf '{headers}'{args})\" "
        f"wrk -t{threads} -c{conns} -d{max(1, round(seconds))}s --timeout 10s "
        f"-s bench/wrk_post.lua http://127.0.0.1:$PORT{row.paths[mode]}"
    )


def run_cell(row: Row, meters: Meters, mode: str, conns: int, seconds: float) -> dict[str, Any]:
    """One cell. At concurrency 1 the TTFB probe runs after the load (a second connection
    would double the concurrency); above it, beside the load as one extra connection."""
    url = row.url + row.paths[mode]
    body, headers = BODIES[mode], _headers(row)
    use_wrk = wrk_binary() is not None
    gw0, up0, vk0 = (
        tree_cpu(row.processes()),
        tree_cpu(meters.upstream()),
        tree_cpu(meters.valkey()),
    )
    busy0 = machine_busy_seconds()
    calls0 = command_calls(meters.valkey_url) if row.counts_valkey else {}
    probe = start_pyload(url, body, headers, 1, seconds) if conns > 1 and use_wrk else None
    t0 = time.monotonic()
    if use_wrk:
        load = run_wrk(url, body, headers, conns, seconds)
    else:
        before = _children_cpu()
        load = finish_pyload(start_pyload(url, body, headers, conns, seconds))
        load["generator_cpu_s"] = _children_cpu() - before
    c0 = _children_cpu()
    probe_result = finish_pyload(probe) if probe is not None else None
    probe_cpu = _children_cpu() - c0
    wall = time.monotonic() - t0
    gw = tree_cpu(row.processes()) - gw0
    up = tree_cpu(meters.upstream()) - up0
    vk = tree_cpu(meters.valkey()) - vk0
    busy = machine_busy_seconds() - busy0
    calls = calls_delta(calls0, command_calls(meters.valkey_url)) if row.counts_valkey else {}
    requests = load["requests"] + (probe_result["requests"] if probe_result else 0)
    if probe_result is None and use_wrk:
        probe_result = finish_pyload(start_pyload(url, body, headers, 1, max(2.0, seconds / 2)))
    if not use_wrk:
        probe_result = load
    ours = gw + up + vk + load["generator_cpu_s"] + probe_cpu
    per = (lambda s: s / requests * 1e6) if requests else (lambda s: float("nan"))
    return {
        "row": row.name,
        "mode": mode,
        "concurrency": conns,
        **{k: load[k] for k in ("generator", "requests", "seconds", "rps", "latency_ms", "errors")},
        "error_detail": load.get("error_detail", {}),
        "ttfb_ms": probe_result["ttfb_ms"] if probe_result else {},
        "probe_latency_ms": probe_result["latency_ms"] if probe_result else {},
        "gateway_cpu_us_per_req": per(gw),
        "upstream_cpu_us_per_req": per(up),
        "valkey_cpu_us_per_req": per(vk),
        "generator_cpu_s": load["generator_cpu_s"],
        "other_cpu_s": max(0.0, busy - ours),
        "wall_s": wall,
        "valkey_calls": calls,
        "valkey_calls_per_req": sum(calls.values()) / requests if calls and requests else None,
    }
