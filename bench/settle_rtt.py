"""Valkey commands per billed request at a fixed concurrency, through the real server.

Valkey's own counters (INFO commandstats) are read before and after N requests sent with
C in flight; the commands per request bound the round trips per request from above (a
pipelined flush is one round trip whatever number of accounts' calls it carries).

    python -m bench.settle_rtt [--requests 3000] [--concurrency 64] [--stream-ms 1000]
                               [--root DIR]

``--root`` runs another checkout's gateway (e.g. the previous release) for a before/after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

from bench.stack import (
    ROOT,
    UPSTREAM_KEY,
    calls_delta,
    command_calls,
    customer,
    http_ok,
    start_simulator,
    start_valkey,
)
from gateway.embedded_valkey import free_port

BODY = orjson.dumps(
    {"model": "claude-haiku-4-5", "max_tokens": 32, "stream": True,
     "messages": [{"role": "user", "content": "hi"}]}
)  # fmt: skip


async def drive(url: str, key: str, requests: int, concurrency: int, stream_ms: int) -> float:
    queue = iter(range(requests))
    # Streams that last (as real answers do), so C requests are really in flight at once
    # rather than queued in front of a busy CPU.
    headers = {"x-api-key": key, "x-sim-output-tokens": "16", "x-sim-chunks": "4",
               "x-sim-chunk-delay-ms": str(stream_ms // 4), "x-sim-burst": "0"}  # fmt: skip
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def worker() -> None:
            for _ in queue:
                r = await client.post(f"{url}/v1/messages", content=BODY, headers=headers)
                assert r.status_code == 200, r.text

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--stream-ms", type=int, default=1000, help="each answer's duration")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to serve from")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        valkey, _ = start_valkey(work)
        sim = start_simulator(work / "logs", burst=True)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANTEX_")}
        env.update(
            PYTHONPATH=str(args.root), ANTEX_PORT=str(port), ANTEX_WORKERS="2",
            ANTEX_DATA_DIR=str(work / "data"), ANTEX_VALKEY_URL=valkey.url,
            ANTEX_UPSTREAM_URL=sim.url, ANTEX_UPSTREAM_KEY=UPSTREAM_KEY,
            ANTEX_LOG_LEVEL="warning",
        )  # fmt: skip
        with open(work / "antex.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve"], cwd=args.root, env=env,
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while not http_ok(f"{url}/readyz"):
                assert time.monotonic() < deadline and proc.poll() is None, "antex did not start"
                time.sleep(0.1)
            _, keys = customer(valkey.url, "rtt@bench.test", rounds=4)
            # Warm-up: auth cache, connections.
            asyncio.run(drive(url, keys[0], 200, 8, args.stream_ms))
            time.sleep(0.5)
            before = command_calls(valkey.url)
            took = asyncio.run(
                drive(url, keys[0], args.requests, args.concurrency, args.stream_ms)
            )
            time.sleep(1.0)  # the last settlements land
            delta = calls_delta(before, command_calls(valkey.url))
        finally:
            proc.terminate()
            proc.wait(30)
            sim.stop()
            valkey.stop()
    # commandstats also counts the commands scripts run: leave out those only Lua sends.
    inside = set()
    for script in (ROOT / "ratelimit_lua").glob("*.lua"):
        inside |= {m.lower() for m in re.findall(r"redis\.call\('([A-Z]+)'", script.read_text())}
    sent = {k: v for k, v in delta.items() if k not in inside or k in ("ping", "get")}
    total = sum(sent.values())
    n = args.requests
    print(f"root={args.root} requests={n} concurrency={args.concurrency} "
          f"rate={n / took:.0f}/s; commands sent by the gateway:")  # fmt: skip
    for name, calls in sorted(sent.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<16} {calls:>7}  {calls / n:.3f}/request")
    print(f"  {'total':<16} {total:>7}  {total / n:.3f}/request")


if __name__ == "__main__":
    main()
