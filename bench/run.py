"""`make bench`: one run that starts every process itself on free loopback ports, measures
the rows side by side (interleaved per cell, so drifting contention hits them alike) and
writes bench/results/<date>/report.md, results.json and PNG plots.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson

from bench import loads, longstreams, micro, report, stack, targets
from bench.loads import Meters, Row


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {"python": platform.python_version()}
    for dist in ("granian", "blacksheep", "aiohttp", "uvloop", "orjson", "valkey", "locust"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        from gateway.embedded_valkey import valkey_binary

        out = subprocess.run([valkey_binary(), "--version"], capture_output=True, text=True)
        versions["valkey-server"] = out.stdout.split("v=")[1].split()[0]
    for tool, args in (("wrk", ["-v"]), ("nginx", ["-v"])):
        path = shutil.which(tool) or (stack.nginx_binary() if tool == "nginx" else None)
        if path:
            out = subprocess.run([path, *args], capture_output=True, text=True)
            first = (out.stdout + out.stderr).splitlines()[0]
            versions[tool] = first.split("Copyright")[0].replace(f"{tool} version: ", "")
            versions[tool] = versions[tool].removeprefix(f"{tool} ").strip()
    litellm = stack.LITELLM_VENV / "bin" / "python"
    if litellm.exists():
        out = subprocess.run(
            [str(litellm), "-c", "import importlib.metadata as m;print(m.version('litellm'))"],
            capture_output=True,
            text=True,
        )
        versions["litellm"] = out.stdout.strip()
    mem = Path("/proc/meminfo").read_text().split()[1] if Path("/proc/meminfo").exists() else "0"
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gb": round(int(mem) / 2**20, 1),
        "kernel": platform.release(),
        "versions": versions,
        "loadavg_start": os.getloadavg(),
    }


def canned_bodies(sim_url: str) -> tuple[bytes, bytes]:
    """What the simulator answers, byte for byte, for nginx to serve as a canned upstream."""
    out = []
    for mode in ("json", "sse"):
        req = urllib.request.Request(
            sim_url + "/v1/messages",
            data=loads.BODIES[mode],
            headers={"content-type": "application/json", "x-sim-deterministic": "1"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            out.append(resp.read())
    return out[0], out[1]


def harvest_log(service: stack.Service, sink: Counter[str]) -> None:
    """Counts the warning and error lines a service logged (metadata only, by design), with
    ids and numbers masked so repeats of one message add up."""
    try:
        text = service.log_path.read_text(errors="replace")
    except OSError:
        return
    for line in text.splitlines():
        if any(level in line for level in ("WARNING", "ERROR", "Traceback")):
            message = line.split(" ", 2)[-1]
            message = re.sub(r"\b(?=[0-9a-z_]*\d)[0-9a-z_]{8,}\b", "<id>", message)
            sink[re.sub(r"\d+", "N", message)[:160]] += 1


def run_optional(argv: list[str], timeout: float) -> str | None:
    try:
        proc = subprocess.run(
            argv,
            cwd=stack.ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=stack.clean_env(),
        )
    except subprocess.TimeoutExpired:
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "--targets" in argv:
        # Only the cells the hot-path targets are judged on, then a pass/fail table.
        return targets.main([a for a in argv if a != "--targets"])
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=6.0, help="load time per cell")
    parser.add_argument("--concurrency", default="1,16,64,256")
    parser.add_argument("--streams", default="500,2000,5000", help="long-stream counts")
    parser.add_argument("--stream-plateau", type=float, default=12.0)
    parser.add_argument("--out", type=Path, help="results folder (default results/<date>)")
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.concurrency, args.streams, args.stream_plateau = 2.0, "1,64", "300", 4
    concs = [int(c) for c in args.concurrency.split(",")]
    out = args.out or stack.ROOT / "bench" / "results" / dt.date.today().isoformat()
    out.mkdir(parents=True, exist_ok=True)
    nofile = stack.raise_nofile_limit()
    started = time.monotonic()
    results: dict[str, Any] = {
        "meta": machine_info(),
        "skipped": [],
        "cells": [],
        "long_streams": [],
        "rows": {},
    }
    results["meta"].update(
        nofile=nofile,
        seconds_per_cell=args.seconds,
        started=dt.datetime.now().isoformat(timespec="seconds"),
    )
    if loads.wrk_binary() is None:
        results["skipped"].append(
            "wrk is not installed: the built-in asyncio generator "
            "(bench/pyload.py, one process) drives every cell instead"
        )
    work = Path(tempfile.mkdtemp(prefix="antex-bench-"))
    logs = work / "logs"
    services: list[stack.Service] = []
    valkey = None
    try:
        log(f"work dir {work}")
        valkey, valkey_proc = stack.start_valkey(work)
        # Burst: the throughput rows measure the proxy, not the upstream's pacing; the long-
        # stream rows ask for pacing per request (bench/streamclient.py).
        sim = stack.start_simulator(logs, burst=True)
        services.append(sim)
        litellm = None
        if args.no_litellm:
            results["skipped"].append("LiteLLM row: skipped by --no-litellm")
        elif stack.litellm_binary() is None:
            results["skipped"].append(
                "LiteLLM row: not installed (bench/work/litellm-venv absent); install with "
                "`python3 -m venv bench/work/litellm-venv && bench/work/litellm-venv/bin/pip "
                "install 'litellm[proxy]'`"
            )
        else:
            log("starting LiteLLM (slow to boot)")
            litellm = stack.start_litellm(logs, work, sim.url)
            assert litellm is not None  # litellm_binary() found it just above
            services.append(litellm)
        antex = stack.start_antex(logs, work, valkey.url, sim.url)
        bare = stack.start_bare(logs, sim.url)
        services += [antex, bare]
        canned_json, canned_sse = canned_bodies(sim.url)
        nginx = stack.start_nginx(logs, work, sim.port, canned_json, canned_sse)
        if nginx is None:
            results["skipped"].append("nginx rows: nginx is not installed (apt-get install nginx)")
        else:
            services.append(nginx[0])
            shutil.copy(work / "nginx" / "nginx.conf", out / "nginx.conf")  # no secrets in it
        stack_url = valkey.url
        _, keys = stack.customer(stack_url, "bench@antex.bench", keys=1)
        _, victim = stack.customer(stack_url, "victim@antex.bench", keys=1)
        key = keys[0]
        meters = Meters(sim.processes, lambda: [valkey_proc], valkey.url)

        rows: list[Row] = []
        if nginx is not None:
            rows.append(
                Row(
                    "wrk ceiling (nginx canned)",
                    nginx[1],
                    "nginx -c nginx.conf (its second server: return 200 with the simulator's "
                    "exact answer, no upstream)",
                    lambda: [],
                    paths={"json": "/canned/json", "sse": "/canned/sse"},
                )
            )
        rows.append(Row("direct", sim.url, "python -m gateway.simulator --port $PORT", lambda: []))
        if nginx is not None:
            rows.append(Row("nginx", nginx[0].url, nginx[0].command, nginx[0].processes))
        rows.append(
            Row(
                "bare",
                bare.url,
                "python -m bench.bare_app --port $PORT --upstream $SIMULATOR --workers 2",
                bare.processes,
            )
        )
        rows.append(
            Row(
                "antex",
                antex.url,
                antex.command,
                antex.processes,
                ("x-api-key", key),
                counts_valkey=True,
            )
        )
        if litellm is not None:
            rows.append(
                Row(
                    "litellm",
                    litellm.url,
                    litellm.command,
                    litellm.processes,
                    ("authorization", f"Bearer {stack.LITELLM_MASTER}"),
                )
            )
        for row in rows:
            results["rows"][row.name] = {
                "command": row.command,
                "wrk": {m: loads.wrk_command(row, m, 64, args.seconds) for m in ("json", "sse")},
            }
        log("warm-up")
        for row in rows:
            for mode in ("json", "sse"):
                loads.run_cell(row, meters, mode, 4 if row.name == "litellm" else 16, 1.5)
        for mode in ("json", "sse"):
            for conns in concs:
                for row in rows:
                    if row.name == "litellm" and conns > 64:
                        continue  # ~10 req/s: 256 connections would only queue for seconds
                    cell = loads.run_cell(row, meters, mode, conns, args.seconds)
                    results["cells"].append(cell)
                    log(
                        f"{mode:4} c={conns:<3} {row.name:28} {cell['rps']:9.0f} req/s  "
                        f"p50 {cell['latency_ms']['p50']:7.2f} ms  p99 "
                        f"{cell['latency_ms']['p99']:7.2f} ms  "
                        f"gw {cell['gateway_cpu_us_per_req']:7.0f} "
                        f"µs/req  err {cell['errors']}"
                    )
        if litellm is not None:
            results["litellm_rss_mb"] = litellm.rss_bytes() / 2**20
            litellm.stop()
            services.remove(litellm)
        results["bare_rss_mb"] = bare.rss_bytes() / 2**20

        log("round trips (MONITOR sample)")
        results["round_trips"] = micro.round_trips(valkey.url, antex, key)
        log("profile (py-spy)")
        prof = micro.profile(antex, key, work, seconds=6.0)
        if prof is None:
            results["skipped"].append("profile: py-spy not installed (pip install py-spy)")
        results["profile"] = prof
        log("auth: bcrypt cold vs warm")
        results["auth"] = micro.auth_latency(valkey.url, key, rounds=10)
        _, fresh = stack.customer(stack_url, "fresh@antex.bench", keys=6)
        results["auth_e2e"] = micro.first_request_latency(antex.url, fresh)
        log("flood")
        results["flood"] = micro.flood(antex, key, micro.key_id_of(victim[0]), args.seconds + 2)
        log("wrong-secret flood (legit p99, none vs 200 addresses)")
        results["wrong_secrets"] = targets.flood(antex.url, valkey.url, args.seconds)

        log("long streams")
        gateway_log: Counter[str] = Counter()
        for n in [int(s) for s in args.streams.split(",")]:
            direct = longstreams.measure(
                "direct", sim.url, None, lambda: [], n, plateau_s=args.stream_plateau
            )
            results["long_streams"].append(direct)
            # Fresh servers per size, so the idle RSS is not memory a larger run left behind.
            bare.stop()
            services.remove(bare)
            bare = stack.start_bare(logs, sim.url)
            services.append(bare)
            results["long_streams"].append(
                longstreams.measure(
                    "bare", bare.url, None, bare.processes, n, plateau_s=args.stream_plateau
                )
            )
            harvest_log(antex, gateway_log)
            antex.stop()
            services.remove(antex)
            antex = stack.start_antex(logs, work, valkey.url, sim.url)
            services.append(antex)
            via = longstreams.measure(
                "antex", antex.url, key, antex.processes, n, plateau_s=args.stream_plateau
            )
            results["long_streams"].append(via)
            log(
                f"streams={n}: direct gap p99 {direct['gaps_ms']['p99']:.0f} ms, antex gap p99 "
                f"{via['gaps_ms']['p99']:.0f} ms, antex RSS/stream "
                f"{via.get('rss_per_stream_kb') or float('nan'):.1f} KB"
            )
        harvest_log(antex, gateway_log)
        results["gateway_log"] = dict(gateway_log.most_common(20))
        for service in (antex, bare, sim):
            service.stop()
            services.remove(service)

        log("micro_limits / translate_throughput (other engineers' modules, when present)")
        if (stack.ROOT / "bench" / "micro_limits.py").exists():
            results["micro_limits"] = run_optional(
                [sys.executable, "-m", "bench.micro_limits", "--pairs", "3200"], 300
            )
        if (stack.ROOT / "bench" / "translate_throughput.py").exists():
            results["translate"] = run_optional(
                [
                    sys.executable,
                    "-m",
                    "bench.translate_throughput",
                    "--seconds",
                    "4",
                    "--warmup",
                    "1",
                ],
                400,
            )
    finally:
        for service in reversed(services):
            service.stop()
        if valkey is not None:
            valkey.stop()
    results["targets"] = targets.figures_from_run(results)
    results["meta"]["loadavg_end"] = os.getloadavg()
    results["meta"]["wall_minutes"] = (time.monotonic() - started) / 60
    (out / "results.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    report.write(results, out)
    shutil.rmtree(work, ignore_errors=True)
    log(f"report: {out / 'report.md'}")


if __name__ == "__main__":
    main()
