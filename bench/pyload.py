"""Built-in HTTP/1.1 load generator (asyncio + uvloop over raw keep-alive sockets), run as its
own process: the fallback when wrk is absent, the time-to-first-byte probe beside wrk, and the
random-key flood. Prints one JSON summary line; never prints a key.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import string
import sys
import time
from collections import Counter
from collections.abc import Callable
from urllib.parse import urlsplit

import orjson

_ALNUM = string.ascii_letters + string.digits


def percentiles(values: list[float], points: tuple[int, ...] = (50, 90, 99)) -> dict[str, float]:
    if not values:
        return {f"p{p}": float("nan") for p in points}
    ordered = sorted(values)
    last = len(ordered) - 1
    return {f"p{p}": ordered[min(last, round(p / 100 * last))] for p in points}


def _random_key(key_id: str | None) -> str:
    """A well-formed key: a random unknown id, or a real id with a random (wrong) secret."""
    kid = key_id or "".join(random.choices(string.ascii_lowercase + string.digits, k=12))
    return f"sk_live_{kid}_{''.join(random.choices(_ALNUM, k=40))}"


class Recorder:
    def __init__(self) -> None:
        self.latency_ms: list[float] = []
        self.ttfb_ms: list[float] = []
        self.status: Counter[int] = Counter()
        self.errors = 0


async def _read_response(reader: asyncio.StreamReader, t0: float) -> tuple[int, float, bool]:
    """Reads one response; returns (status, ttfb seconds, keep-alive). TTFB is the end of the
    first body chunk for chunked bodies (the first SSE event), the head otherwise."""
    head = await reader.readuntil(b"\r\n\r\n")
    ttfb = time.perf_counter() - t0
    status = int(head[9:12])
    lower = head.lower()
    keep = b"connection: close" not in lower
    if b"transfer-encoding: chunked" in lower:
        first = True
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            await reader.readexactly(size + 2)
            if first:
                ttfb, first = time.perf_counter() - t0, False
    else:
        start = lower.find(b"content-length:")
        if start >= 0:
            end = lower.index(b"\r\n", start)
            await reader.readexactly(int(lower[start + 15 : end]))
    return status, ttfb, keep


def _request_bytes(host: str, path: str, body: bytes, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"host: {host}", "content-type: application/json",
             f"content-length: {len(body)}"]  # fmt: skip
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _connection(
    host: str, port: int, make_request: Callable[[], bytes], deadline: float, rec: Recorder,
    source_ip: str | None, pause: float,
) -> None:  # fmt: skip
    local = (source_ip, 0) if source_ip else None
    writer: asyncio.StreamWriter | None = None
    while time.perf_counter() < deadline:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(
                    host, port, local_addr=local, limit=1 << 20
                )
            t0 = time.perf_counter()
            writer.write(make_request())
            status, ttfb, keep = await _read_response(reader, t0)
            rec.latency_ms.append((time.perf_counter() - t0) * 1000)
            rec.ttfb_ms.append(ttfb * 1000)
            rec.status[status] += 1
            if not keep:
                writer.close()
                writer = None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            rec.errors += 1
            if writer is not None:
                writer.close()
                writer = None
            await asyncio.sleep(0.01)
        if pause:
            await asyncio.sleep(pause)
    if writer is not None:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def run(args: argparse.Namespace) -> dict[str, object]:
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    body = args.body.encode()
    headers = [tuple(h.split(":", 1)) for h in args.header]
    headers = [(k.strip(), v.strip()) for k, v in headers]
    key = os.environ.get("BENCH_KEY", "")
    if key:
        headers.append(("x-api-key", key))
    fixed = _request_bytes(f"{host}:{port}", url.path or "/", body, headers)
    make_request: Callable[[], bytes] = lambda: fixed  # noqa: E731
    if args.flood is not None:
        key_id = None if args.flood == "unknown" else args.flood

        def make_request() -> bytes:
            flood = [*headers, ("x-api-key", _random_key(key_id))]
            return _request_bytes(f"{host}:{port}", url.path or "/", body, flood)

    net = args.source_net
    sources = [f"127.0.{net + i // 250}.{1 + i % 250}" for i in range(args.source_ips)]
    rec = Recorder()
    started = time.perf_counter()
    deadline = started + args.seconds
    await asyncio.gather(*(
        _connection(host, port, make_request, deadline, rec,
                    sources[i % len(sources)] if sources else None, args.pause)
        for i in range(args.connections)
    ))  # fmt: skip
    elapsed = time.perf_counter() - started
    done = len(rec.latency_ms)
    ok = sum(n for s, n in rec.status.items() if 200 <= s < 300)
    return {
        "generator": "pyload",
        "requests": done,
        "seconds": elapsed,
        "rps": done / elapsed if elapsed else 0.0,
        "latency_ms": percentiles(rec.latency_ms),
        "ttfb_ms": percentiles(rec.ttfb_ms),
        "status": {str(k): v for k, v in sorted(rec.status.items())},
        "errors": rec.errors + (done - ok if args.flood is None else 0),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--body", default="{}")
    parser.add_argument("--header", action="append", default=[], help="name: value")
    parser.add_argument("--flood", help="'unknown' (random key ids) or a real key id")
    parser.add_argument("--source-ips", type=int, default=0, help="bind to 127.0.x.y addresses")
    parser.add_argument("--source-net", type=int, default=1, help="third octet of the first")
    parser.add_argument("--pause", type=float, default=0.0, help="seconds between requests")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run(args))
    else:
        result = uvloop.run(run(args))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
