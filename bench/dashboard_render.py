"""Dashboard render time for an account with a week of heavy usage.

Run: ``python -m bench.dashboard_render [--per-hour N] [--requests N]``. Starts its own
valkey-server and ``antex serve`` (1 worker), fills one account's windows, log stream and
7-day aggregates through ``CreditLimiter.settle`` with a clock walking through the past
week, signs in through a one-time link, then reads each page's ``Server-Timing`` (handler
start to response built: Valkey reads + template) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import valkey.asyncio as avalkey

from gateway import accounts
from gateway.clock import system_clock
from gateway.dashboard import signin
from gateway.embedded_valkey import EmbeddedValkey, free_port
from gateway.limits import CreditLimiter
from gateway.plans import list_plans
from gateway.store import Scripts

ROOT = Path(__file__).resolve().parents[1]
HOUR_MS = 3_600_000
WEEK_MS = 7 * 24 * HOUR_MS
TARGET_MS = 50.0
PAGES = ("/dashboard/usage", "/dashboard/keys", "/dashboard/plans")
MODELS = (
    "claude-sonnet-4-6", "claude-opus-4-7", "claude-haiku-4-5", "claude-sonnet-4-5",
    "claude-opus-4-6", "claude-sonnet-5",
)  # fmt: skip
KEYS = 12


async def fill(valkey_url: str, per_hour: int) -> tuple[str, str]:
    """An account on the max plan with KEYS keys (two bound IPs each) and ``per_hour``
    admitted and settled requests in every hour of the last 7 days (about 40 % of the
    weekly allowance); returns (account id, email)."""
    client = avalkey.Valkey.from_url(valkey_url, decode_responses=True)
    try:
        await list_plans(client)
        email = f"heavy-{os.getpid()}@bench.test"
        account_id = await accounts.create_account(client, email, "max", now_ms=system_clock())
        scripts = Scripts()
        await scripts.load(client)
        now = [system_clock() - WEEK_MS]
        limiter = CreditLimiter(client, scripts, lambda: now[0])
        key_ids = []
        for i in range(KEYS):
            created = await accounts.create_key(
                client, account_id, f"machine-{i}", rounds=4, now_ms=system_clock()
            )
            key_ids.append(created.key_id)
            for ip in (f"10.0.{i}.1", f"10.0.{i}.2"):
                await limiter.admit(
                    account_id=account_id, key_id=created.key_id, ip_tag=ip,
                    request_id=f"bind-{i}-{ip}", estimate_mc=0, check_only=True,
                )  # fmt: skip
        rng = random.Random(7)
        total = 7 * 24 * per_hour
        step = WEEK_MS // total
        for n in range(total):
            now[0] += step
            out = rng.randint(50, 4000)
            record: dict[str, str | int] = {
                "model": rng.choice(MODELS), "route": "messages", "status": 200,
                "input_tokens": rng.randint(10, 3000), "output_tokens": out,
                "cache_read_input_tokens": rng.randint(0, 120_000),
                "cache_creation_input_tokens": rng.randint(0, 8000),
                "latency_ms": rng.randint(300, 60_000), "ttfb_ms": rng.randint(200, 2000),
                "stream": 1,
            }  # fmt: skip
            k = rng.randrange(KEYS)
            # admit before settle, as the gateway does: admit is what prunes old buckets.
            await limiter.admit(
                account_id=account_id, key_id=key_ids[k], ip_tag=f"10.0.{k}.1",
                request_id=f"req_{n}", estimate_mc=out,
            )  # fmt: skip
            await limiter.settle(
                account_id=account_id, key_id=key_ids[k], request_id=f"req_{n}",
                cost_mc=out, record=record,
            )  # fmt: skip
        return account_id, email
    finally:
        await client.aclose()


def start_gateway(valkey_url: str, data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTEX_")}
    env.update(
        ANTEX_PORT=str(port), ANTEX_WORKERS="1", ANTEX_DATA_DIR=str(data_dir),
        ANTEX_VALKEY_URL=valkey_url, ANTEX_UPSTREAM_URL="http://127.0.0.1:9",
        ANTEX_UPSTREAM_KEY="unused-by-the-dashboard", ANTEX_LOG_LEVEL="warning",
        PYTHONPATH=str(ROOT),
    )  # fmt: skip
    with open(data_dir / "gateway.log", "wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve"], cwd=ROOT, env=env, stdout=log, stderr=log
        )


async def wait_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"antex serve exited with {proc.returncode}")
            try:
                if (await client.get(f"{url}/healthz", timeout=0.5)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError("antex serve did not start within 30 s")


async def sign_in(client: httpx.AsyncClient, valkey_url: str, account_id: str, url: str) -> None:
    vk = avalkey.Valkey.from_url(valkey_url, decode_responses=True)
    try:
        link = await signin.issue_link(vk, account_id, url, system_clock())
    finally:
        await vk.aclose()
    page = await client.get(link)
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
    token = re.search(r'name="token" value="([^"]+)"', page.text)
    assert csrf and token, "the link page offers the confirmation form"
    done = await client.post(
        "/dashboard/signin/link", data={"csrf": csrf.group(1), "token": token.group(1)}
    )
    assert done.status_code == 303, done.text


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(url: str, valkey_url: str, account_id: str, requests: int) -> list[str]:
    rows = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        await sign_in(client, valkey_url, account_id, url)
        for path in PAGES:
            server, wall, size = [], [], 0
            for i in range(requests + 20):
                started = time.perf_counter()
                resp = await client.get(path)
                elapsed = (time.perf_counter() - started) * 1000
                assert resp.status_code == 200, (path, resp.status_code)
                if i < 20:
                    continue  # warm-up: template compilation, connection pools
                server.append(float(resp.headers["server-timing"].split("dur=")[1]))
                wall.append(elapsed)
                size = len(resp.content)
            p95 = pct(server, 0.95)
            verdict = "yes" if p95 < TARGET_MS else "**NO**"
            rows.append(
                f"| `{path}` | {statistics.median(server):.2f} | {p95:.2f} | "
                f"{pct(server, 0.99):.2f} | {max(server):.2f} | {statistics.median(wall):.2f} | "
                f"{size / 1024:.1f} | {verdict} |"
            )
    return rows


async def run(per_hour: int, requests: int) -> None:
    with tempfile.TemporaryDirectory(prefix="antex-dash-bench-") as tmp:
        data = Path(tmp)
        valkey = EmbeddedValkey(data / "valkey", port=free_port(), unix_socket=False)
        valkey_url = await asyncio.to_thread(valkey.start)
        proc = None
        try:
            started = time.perf_counter()
            account_id, _ = await fill(valkey_url, per_hour)
            filled_s = time.perf_counter() - started
            port = free_port()
            proc = start_gateway(valkey_url, data, port)
            url = f"http://127.0.0.1:{port}"
            await wait_up(url, proc)
            rows = await measure(url, valkey_url, account_id, requests)
        finally:
            if proc is not None:
                proc.terminate()
                await asyncio.to_thread(proc.wait, 15)
            await asyncio.to_thread(valkey.stop)
    print(
        f"Dashboard render time: one account, {7 * 24 * per_hour:,} requests over 7 days "
        f"({per_hour}/hour, {len(MODELS)} models, {KEYS} keys with 2 bound IPs each; "
        f"filled in {filled_s:.1f} s). {requests} sequential requests per page after 20 "
        "warm-up requests, 1 granian worker.\n"
    )
    print(
        "| page | server p50 ms | server p95 ms | server p99 ms | server max ms "
        f"| client p50 ms | size KiB | p95 < {TARGET_MS:.0f} ms |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--per-hour", type=int, default=120, help="settled requests per hour")
    parser.add_argument("--requests", type=int, default=200, help="measured requests per page")
    args = parser.parse_args()
    asyncio.run(run(args.per_hour, args.requests))


if __name__ == "__main__":
    main()
