"""Legit latency while strangers send wrong secrets for a known key id: p50/p99 of cache-hit
requests alone, then during bursts (one address, then 200 addresses, then the same traffic
for an unknown key id as a control for the attack's plain load). Each phase also reports
the bcrypt runs and unhashed refusals (antex_auth_bcrypt*) and ``other_cpu_s``: CPU seconds
the rest of the machine used meanwhile, so a noisy run is visible. Usage:
`python -m bench.wrong_secrets [--seconds 8]`; prints one JSON line."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import orjson
import psutil

from bench import stack

BODY = orjson.dumps(
    {
        "model": "claude-sonnet-4-5",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}],
    }
)


async def legit(url: str, key: str, until: float, out: list[float]) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        while time.perf_counter() < until:
            t0 = time.perf_counter()
            r = await client.post(
                f"{url}/v1/messages",
                content=BODY,
                headers={"x-api-key": key, "content-type": "application/json"},
            )
            out.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.status_code


async def attacker(
    url: str, victim: str, until: float, addresses: list[str], sent: list[int]
) -> None:
    """One wrong secret per connection, from each address in turn (raw sockets: an HTTP
    client per address would cost more CPU than the attack)."""
    prefix = victim.rsplit("_", 1)[0]
    host, port = url.removeprefix("http://").split(":")
    while time.perf_counter() < until:
        for address in addresses:
            if time.perf_counter() >= until:
                break
            reader, writer = await asyncio.open_connection(host, int(port), local_addr=(address, 0))
            writer.write(
                b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
                b"content-length: 2\r\nx-api-key: "
                + f"{prefix}_{secrets.token_hex(20)}".encode()
                + b"\r\n\r\n{}"
            )
            answer = await reader.read()
            writer.close()
            assert answer.startswith(b"HTTP/1.1 401"), answer[:40]
            sent[0] += 1


def p(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) > 2 else 0.0


def bcrypt_counts(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics").text
    pattern = r'^antex_auth_bcrypt(_refused)?_total\{\w+="(\w+)"\} (\S+)$'
    return {
        ("refused_" if refused else "bcrypt_") + label: float(value)
        for refused, label, value in re.findall(pattern, text, re.M)
    }


async def phase(
    url: str,
    keys: list[str],
    victim: str,
    seconds: float,
    addresses: list[str],
    ours: list[psutil.Process] | None = None,
) -> dict[str, float]:
    until = time.perf_counter() + seconds
    lat: list[float] = []
    sent = [0]
    tasks = [legit(url, k, until, lat) for k in keys]
    tasks += (
        [attacker(url, victim, until, addresses[i::4], sent) for i in range(min(4, len(addresses)))]
        if addresses
        else []
    )
    counts = bcrypt_counts(url)
    procs = ours or []  # the servers measured (their CPU is not "other")
    busy, own = stack.machine_busy_seconds(), stack.tree_cpu(procs)
    await asyncio.gather(*tasks)
    other = (stack.machine_busy_seconds() - busy) - (stack.tree_cpu(procs) - own)
    after = bcrypt_counts(url)
    return {
        "requests": len(lat),
        "p50_ms": round(p(lat, 50), 2),
        "p99_ms": round(p(lat, 99), 2),
        "wrong_secrets": sent[0],
        **{name: round(after[name] - counts.get(name, 0.0)) for name in after},
        "other_cpu_s": round(max(0.0, other), 2),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        valkey, valkey_proc = stack.start_valkey(work)
        sim = stack.start_simulator(work, burst=True)
        antex = stack.start_antex(work, work, valkey.url, f"http://127.0.0.1:{sim.port}")
        try:
            _, keys = stack.customer(valkey.url, "legit@bench.local", keys=4)
            _, (victim,) = stack.customer(valkey.url, "victim@bench.local")
            url = f"http://127.0.0.1:{antex.port}"
            me = psutil.Process(os.getpid())

            def ours() -> list[psutil.Process]:
                return [me, valkey_proc, *antex.processes(), *sim.processes()]

            many = [f"127.0.9.{i}" for i in range(1, 201)]
            asyncio.run(phase(url, keys, victim, 2, [], ours()))  # warm the key cache
            result = {
                "baseline": asyncio.run(phase(url, keys, victim, args.seconds, [], ours())),
                "one_address": asyncio.run(
                    phase(url, keys, victim, args.seconds, ["127.0.0.70"], ours())
                ),
                "200_addresses": asyncio.run(phase(url, keys, victim, args.seconds, many, ours())),
                # Control: the same traffic for a key id that does not exist (no bcrypt, one
                # Valkey read): what the attack costs as plain load.
                "200_addresses_unknown_id": asyncio.run(
                    phase(url, keys, "sk_live_000000000000_x", args.seconds, many, ours())
                ),
            }
            print(orjson.dumps(result).decode())
        finally:
            antex.stop()
            sim.stop()
            valkey.stop()


if __name__ == "__main__":
    main()
