"""Translated OpenAI routes against the /v1/messages passthrough, through a real `antex serve`
with the simulator upstream: requests/s and gateway CPU per request, JSON and SSE.

`python -m bench.translate_throughput [--seconds 10] [--connections 32]`; prints a markdown
table. It measures, it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import psutil
import valkey.asyncio as avalkey

from gateway import accounts
from gateway.clock import system_clock
from gateway.embedded_valkey import EmbeddedValkey, free_port
from gateway.plans import Plan, set_plan

ROOT = Path(__file__).resolve().parents[1]
MODEL = "claude-sonnet-4-6"
PROMPT = "Write a haiku about proxies."
# Never refuses: the windows, IP slots and concurrency cap stay out of the measurement.
PLAN = Plan("bench-translate", 10**9, 10**9, 64, 1_000_000, 30, "benchmark")
# The body and headers reach wrk through its environment: the key is never written to disk.
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = os.getenv("TT_BODY")
wrk.headers["content-type"] = "application/json"
wrk.headers["authorization"] = "Bearer " .. os.getenv("TT_KEY")
wrk.headers["x-sim-output-tokens"] = os.getenv("TT_TOKENS")
function done(summary, latency, requests)
  io.write(string.format("TTJSON %d %d %d\\n", summary.requests,
    summary.errors.status, summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout))
end
"""


@dataclass(frozen=True)
class Cell:
    route: str
    path: str
    stream: bool

    def body(self, tokens: int) -> bytes:
        if self.route == "messages":
            payload: dict[str, object] = {"model": MODEL, "max_tokens": tokens,
                                          "messages": [{"role": "user", "content": PROMPT}]}
        elif self.route == "chat/completions":
            payload = {"model": MODEL, "max_tokens": tokens,
                       "messages": [{"role": "user", "content": PROMPT}]}
            if self.stream:
                payload["stream_options"] = {"include_usage": True}
        else:
            payload = {"model": MODEL, "max_output_tokens": tokens, "input": PROMPT}
        if self.stream:
            payload["stream"] = True
        return orjson.dumps(payload)


CELLS = [Cell(route, f"/v1/{route}", stream)
         for stream in (False, True)
         for route in ("messages", "chat/completions", "responses")]


@dataclass
class Result:
    cell: Cell
    requests: int
    failed: int
    seconds: float
    cpu_seconds: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.cpu_seconds / self.requests if self.requests else 0.0


def tree_cpu(pid: int) -> float:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


@contextmanager
def process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def make_key(valkey_url: str) -> str:
    client = avalkey.Valkey.from_url(valkey_url, decode_responses=True)
    try:
        await set_plan(client, PLAN)
        account = await accounts.create_account(
            client, "bench@example.test", PLAN.name, now_ms=system_clock()
        )
        return (
            await accounts.create_key(client, account, "bench", rounds=4, now_ms=system_clock())
        ).key
    finally:
        await client.aclose()


def run_wrk(url: str, cell: Cell, key: str, args: argparse.Namespace, script: Path,
            seconds: float) -> tuple[int, int]:
    env = {**os.environ, "TT_BODY": cell.body(args.tokens).decode(), "TT_KEY": key,
           "TT_TOKENS": str(args.tokens)}
    out = subprocess.run(
        ["wrk", "-t", str(args.threads), "-c", str(args.connections),
         "-d", f"{max(1, round(seconds))}s", "--timeout", "30s", "-s", str(script),
         url + cell.path],
        env=env, capture_output=True, text=True, check=True,
    ).stdout
    match = re.search(r"TTJSON (\d+) (\d+) (\d+)", out)
    if match is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    requests, bad_status, socket_errors = (int(g) for g in match.groups())
    return requests, bad_status + socket_errors


async def run_aiohttp(url: str, cell: Cell, key: str, args: argparse.Namespace,
                      seconds: float) -> tuple[int, int]:
    """The fallback generator when wrk is missing; its own CPU is not the gateway's."""
    body = cell.body(args.tokens)
    headers = {"content-type": "application/json", "authorization": f"Bearer {key}",
               "x-sim-output-tokens": str(args.tokens)}
    done = failed = 0
    stop_at = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=args.connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal done, failed
            while time.monotonic() < stop_at:
                async with session.post(url + cell.path, data=body, headers=headers) as resp:
                    await resp.read()
                    done += 1
                    failed += resp.status != 200

        await asyncio.gather(*(worker() for _ in range(args.connections)))
    return done, failed


def measure(url: str, pid: int, cell: Cell, key: str, args: argparse.Namespace,
            script: Path | None) -> Result:
    def load(seconds: float) -> tuple[int, int]:
        if script is not None:
            return run_wrk(url, cell, key, args, script, seconds)
        return asyncio.run(run_aiohttp(url, cell, key, args, seconds))

    load(args.warmup)
    cpu_before, started = tree_cpu(pid), time.monotonic()
    requests, failed = load(args.seconds)
    elapsed = time.monotonic() - started
    return Result(cell, requests, failed, elapsed, tree_cpu(pid) - cpu_before)


def table(results: list[Result]) -> str:
    base = {r.cell.stream: r for r in results if r.cell.route == "messages"}
    lines = [
        "| mode | route | requests/s | vs passthrough | gateway CPU ms/request | vs passthrough "
        "| failed |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ref = base[r.cell.stream]
        lines.append(
            f"| {'SSE' if r.cell.stream else 'JSON'} | {r.cell.path} | {r.rps:,.0f} "
            f"| {r.rps / ref.rps:.2f}x | {r.cpu_ms:.3f} | {r.cpu_ms / ref.cpu_ms:.2f}x "
            f"| {r.failed} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="gateway workers")
    parser.add_argument("--sim-workers", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=256,
                        help="output tokens per answer (the simulator streams 8 per delta)")
    args = parser.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory(prefix="antex-bench-") as tmp_name:
        tmp = Path(tmp_name)
        script = None
        if shutil.which("wrk"):
            script = tmp / "post.lua"
            script.write_text(WRK_SCRIPT)
        store = EmbeddedValkey(tmp / "valkey", unix_socket=False)
        valkey_url = store.start()
        try:
            key = asyncio.run(make_key(valkey_url))
            sim_port, gw_port = free_port(), free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("ANTEX_")}
            sim_args = [sys.executable, "-m", "gateway.simulator", "--port", str(sim_port),
                        "--workers", str(args.sim_workers), "--burst"]
            with process(sim_args, env, tmp / "simulator.log") as sim:
                wait_http(f"http://127.0.0.1:{sim_port}/_sim/stats", sim)
                env |= {
                    "ANTEX_PORT": str(gw_port), "ANTEX_WORKERS": str(args.workers),
                    "ANTEX_DATA_DIR": str(tmp / "data"), "ANTEX_VALKEY_URL": valkey_url,
                    "ANTEX_UPSTREAM_URL": f"http://127.0.0.1:{sim_port}",
                    "ANTEX_UPSTREAM_KEY": "sk-bench-upstream",
                }
                gw_args = [sys.executable, "-m", "gateway", "serve"]
                with process(gw_args, env, tmp / "gateway.log") as gateway:
                    url = f"http://127.0.0.1:{gw_port}"
                    wait_http(f"{url}/healthz", gateway)
                    results = [measure(url, gateway.pid, cell, key, args, script)
                               for cell in CELLS]
        finally:
            store.stop()
    generator = "wrk" if script else "aiohttp (wrk not found)"
    print(f"{args.workers} gateway workers, {args.connections} connections, {args.seconds:g} s "
          f"per cell, {args.tokens} output tokens per answer, load from {generator}\n")
    print(table(results))


if __name__ == "__main__":
    main()
