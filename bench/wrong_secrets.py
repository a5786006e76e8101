"""Legit latency while strangers send wrong secrets for a known key id: p50/p99 of cache-hit
requests alone, then during bursts (one address, then 200 addresses, then the same traffic
for an unknown key id as a control for the attack's plain load). Usage:
`python -m bench.wrong_secrets [--seconds 8]`; prints one JSON line."""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import orjson

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


async def phase(
    url: str, keys: list[str], victim: str, seconds: float, addresses: list[str]
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
    await asyncio.gather(*tasks)
    return {
        "requests": len(lat),
        "p50_ms": round(p(lat, 50), 2),
        "p99_ms": round(p(lat, 99), 2),
        "wrong_secrets": sent[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        valkey, _ = stack.start_valkey(work)
        sim = stack.start_simulator(work, burst=True)
        antex = stack.start_antex(work, work, valkey.url, f"http://127.0.0.1:{sim.port}")
        try:
            _, keys = stack.customer(valkey.url, "legit@bench.local", keys=4)
            _, (victim,) = stack.customer(valkey.url, "victim@bench.local")
            url = f"http://127.0.0.1:{antex.port}"
            many = [f"127.0.9.{i}" for i in range(1, 201)]
            asyncio.run(phase(url, keys, victim, 2, []))  # warm the key cache
            result = {
                "baseline": asyncio.run(phase(url, keys, victim, args.seconds, [])),
                "one_address": asyncio.run(phase(url, keys, victim, args.seconds, ["127.0.0.70"])),
                "200_addresses": asyncio.run(phase(url, keys, victim, args.seconds, many)),
                # Control: the same traffic for a key id that does not exist (no bcrypt, one
                # Valkey read): what the attack costs as plain load.
                "200_addresses_unknown_id": asyncio.run(
                    phase(url, keys, "sk_live_000000000000_x", args.seconds, many)
                ),
            }
            print(orjson.dumps(result).decode())
        finally:
            antex.stop()
            sim.stop()
            valkey.stop()


if __name__ == "__main__":
    main()
