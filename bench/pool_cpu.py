"""CPU cost of the upstream pool: the same Claude Code–like replay through a gateway whose
pool holds one upstream (ANTEX_UPSTREAM_KEY) and one whose pool holds three (that one plus
two from `antex upstream add`: rendezvous choice, conversation key, per-upstream metrics),
measured as the gateway workers' process CPU time per request (psutil). Rounds alternate
the two so machine noise hits both.

    python -m bench.pool_cpu [--conversations 48] [--turns 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson
import valkey.asyncio as avalkey

from bench.pool_replay import MODEL, SYSTEM, new_conversations, replay
from bench.stack import (
    UPSTREAM_KEY,
    clean_env,
    customer,
    start_antex,
    start_service,
    start_valkey,
)
from gateway import upstream_store
from gateway.embedded_valkey import free_port
from gateway.pool_state import Member, PoolPolicy, PoolView
from gateway.secretbox import SecretBox, new_master_key
from gateway.upstream import Route

POOL_KEYS = ("sk-bench-pool-2", "sk-bench-pool-3")


async def add_pool(valkey_url: str, sim_url: str, master: str) -> None:
    box = SecretBox(base64.urlsafe_b64decode(master + "=="))
    client = avalkey.Valkey.from_url(valkey_url, decode_responses=True)
    try:
        for i, key in enumerate(POOL_KEYS):
            await upstream_store.add_upstream(
                client, box, name=f"bench-{i}", url=sim_url, key=key, now_ms=0
            )
    finally:
        await client.aclose()


def choice_cost_us(members: int, iterations: int = 50_000) -> float:
    """Process CPU µs per request of the pool's own work for one request: the route (its
    conversation key), the attempt order and the answer's bookkeeping (rate-limit headers)."""
    view = PoolView(PoolPolicy())
    view.set_members([Member(f"up_{i}", f"u{i}", "http://u", "k", 1) for i in range(members)])
    convs = new_conversations(64, "micro")
    payloads = [{"model": MODEL, "metadata": {"user_id": c.user_id}, "system": SYSTEM,
                 "messages": [{"role": "user", "content": "hi"}] * 3} for c in convs]  # fmt: skip
    headers = {"anthropic-ratelimit-requests-remaining": "900",
               "anthropic-ratelimit-requests-limit": "1000",
               "anthropic-ratelimit-input-tokens-remaining": "90000",
               "anthropic-ratelimit-input-tokens-limit": "100000"}  # fmt: skip
    start = time.process_time()
    for i in range(iterations):
        route = Route("acct", payloads[i % 64], MODEL)
        key = route.key if members > 1 else b""
        member = view.order(key, MODEL, new_conversation=False, now=1000.0)[0]
        view.answered(member, 200, headers, MODEL, 1000.0)
    return (time.process_time() - start) * 1e6 / iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--conversations", type=int, default=48)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--micro-only", action="store_true", help="skip the gateway runs")
    args = parser.parse_args()
    if args.micro_only:
        print(orjson.dumps({str(n): round(choice_cost_us(n), 2) for n in (1, 3)}).decode())
        return
    work = Path(tempfile.mkdtemp(prefix="antex-pool-cpu-"))
    logs = work / "logs"
    keys_file = work / "keys.json"
    keys_file.write_bytes(orjson.dumps({k: {} for k in (UPSTREAM_KEY, *POOL_KEYS)}))
    port = free_port()
    sim = start_service(
        "simulator",
        [sys.executable, "-m", "gateway.simulator", "--port", str(port), "--ttft-ms", "5",
         "--event-delay-ms", "1", "--keys", str(keys_file), "--prompt-cache"],
        logs, port, env=clean_env(), ready_path="/_sim/stats",
    )  # fmt: skip
    master = new_master_key()
    stores = {}
    try:
        for mode in ("single", "pool3"):
            stores[mode] = start_valkey(work / mode)[0]
        asyncio.run(add_pool(stores["pool3"].url, sim.url, master))
        keys = {m: customer(s.url, f"{m}@bench.test")[1][0] for m, s in stores.items()}
        per_request: dict[str, list[float]] = {"single": [], "pool3": []}
        for r in range(args.rounds):
            for mode in ("single", "pool3"):
                gateway = start_antex(
                    logs, work / mode, stores[mode].url, sim.url, ANTEX_SECRET_KEY=master
                )
                try:
                    warm = new_conversations(8, f"warm{r}{mode}")
                    asyncio.run(replay(gateway.url, keys[mode], warm, turns=1))
                    convs = new_conversations(args.conversations, f"run{r}{mode}")
                    before = gateway.cpu_seconds()
                    result = asyncio.run(replay(gateway.url, keys[mode], convs, turns=args.turns))
                    spent = gateway.cpu_seconds() - before
                finally:
                    gateway.stop()
                assert result.failures == 0, result
                ms = spent * 1000 / result.requests
                per_request[mode].append(ms)
                print(f"round {r} {mode}: {result.requests} requests, "
                      f"{ms:.3f} ms CPU/request", flush=True)  # fmt: skip
        single = statistics.median(per_request["single"])
        pooled = statistics.median(per_request["pool3"])
        micro = {n: choice_cost_us(n) for n in (1, 3)}
        print(orjson.dumps({
            "single_ms_per_request": round(single, 3), "pool3_ms_per_request": round(pooled, 3),
            "overhead_percent": round((pooled / single - 1) * 100, 2), "rounds": per_request,
            "choice_us_per_request": {"1": round(micro[1], 2), "3": round(micro[3], 2)},
            "choice_percent_of_single_request": round(
                (micro[3] - micro[1]) / (single * 1000) * 100, 3),
        }).decode())  # fmt: skip
    finally:
        sim.stop()
        for store in stores.values():
            store.stop()


if __name__ == "__main__":
    main()
