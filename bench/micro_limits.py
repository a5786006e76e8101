"""Micro-benchmark: admit+settle pairs per second against an embedded valkey-server.

Run: ``python -m bench.micro_limits [--pairs N] [--tcp]``. Starts its own server in a
temporary folder and prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import valkey.asyncio as avalkey

from gateway.embedded_valkey import EmbeddedValkey
from gateway.keyspace import AccountKeys
from gateway.limits import CreditLimiter
from gateway.store import Scripts

RECORD: dict[str, str | int] = {
    "model": "claude-sonnet-4-6", "input_tokens": 1200, "output_tokens": 900,
    "cache_read_input_tokens": 48_000, "cache_creation_input_tokens": 2000,
    "latency_ms": 14_000, "ttfb_ms": 800, "status": 200, "route": "messages",
}  # fmt: skip


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def new_account(client: avalkey.Valkey) -> str:
    account_id = uuid.uuid4().hex[:16]
    keys = AccountKeys(account_id)
    await client.hset(
        keys.account,
        mapping={
            "plan": "bench", "limit_5h": 10**15, "limit_7d": 10**16, "ip_slots": 1,
            "concurrency": 10_000, "period_end_ms": now_ms() + 86_400_000, "status": "active",
        },
    )  # fmt: skip
    await client.hset(keys.key("k1"), mapping={"status": "active"})
    return account_id


async def pairs(
    limiter: CreditLimiter, account_id: str, count: int, latencies: list[float]
) -> None:
    for _ in range(count):
        start = time.perf_counter()
        request_id = uuid.uuid4().hex
        await limiter.admit(account_id=account_id, key_id="k1", ip_tag="ip",
                            request_id=request_id, estimate_mc=20_000)  # fmt: skip
        await limiter.settle(account_id=account_id, key_id="k1", request_id=request_id,
                             cost_mc=4321, record=RECORD)  # fmt: skip
        latencies.append(time.perf_counter() - start)


Row = tuple[str, int, float, list[float]]


async def run(url: str, total: int) -> tuple[list[Row], float]:
    """The rows, and the server's own CPU time per EVALSHA in microseconds."""
    client = avalkey.Valkey.from_url(url, max_connections=128, decode_responses=True)
    rows = []
    try:
        scripts = Scripts()
        await scripts.load(client)
        limiter = CreditLimiter(client, scripts, now_ms)
        await pairs(limiter, await new_account(client), 200, [])  # warm-up
        await client.config_resetstat()
        cases = [("sequential, 1 account", 1, False), ("64 tasks, 1 account", 64, False),
                 ("64 tasks, 64 accounts", 64, True)]  # fmt: skip
        for label, tasks, spread in cases:
            shared = await new_account(client)
            accounts = [await new_account(client) if spread else shared for _ in range(tasks)]
            latencies: list[float] = []
            start = time.perf_counter()
            await asyncio.gather(*(pairs(limiter, a, total // tasks, latencies) for a in accounts))
            rows.append((label, len(latencies), time.perf_counter() - start, latencies))
        stats = await client.info("commandstats")
        server_us = float(stats["cmdstat_evalsha"]["usec_per_call"])
    finally:
        await client.aclose()
    return rows, server_us


def table(transport: str, rows: list[Row], server_us: float) -> str:
    lines = [
        f"admit+settle pairs ({transport}); one pair = 2 EVALSHA round trips; "
        f"server CPU {server_us:.1f} µs per EVALSHA (the rest is client and transport)",
        "",
        "| mode | pairs | seconds | pairs/s | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, count, seconds, latencies in rows:
        cuts = statistics.quantiles(latencies, n=100)
        lines.append(
            f"| {label} | {count} | {seconds:.2f} | {count / seconds:,.0f} | "
            f"{cuts[49] * 1000:.2f} | {cuts[98] * 1000:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=6400, help="pairs per mode")
    parser.add_argument("--tcp", action="store_true", help="TCP on 127.0.0.1, not a unix socket")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="antex-bench-") as tmp:
        server = EmbeddedValkey(Path(tmp), unix_socket=not opts.tcp)
        url = server.start()
        try:
            rows, server_us = asyncio.run(run(url, opts.pairs))
        finally:
            server.stop()
    print(table("TCP 127.0.0.1" if opts.tcp else "unix socket", rows, server_us))


if __name__ == "__main__":
    main()
