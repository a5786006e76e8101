"""Long-stream client: opens N slow SSE streams through one URL at a steady ramp, holds them
and records the gap between consecutive chunk arrivals. Runs as its own process (uvloop,
raw asyncio protocols, so thousands of streams cost little) and prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter
from typing import cast
from urllib.parse import urlsplit

import orjson

from bench.pyload import percentiles

_DELTA = b"event: content_block_delta"
_BUCKET_S = 0.5


class Tally:
    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.gaps_ms: list[float] = []
        self.chunks: Counter[int] = Counter()  # 0.5 s bucket -> delta events received
        self.status: Counter[int] = Counter()
        self.open = 0
        self.opened = 0
        self.completed = 0
        self.failed = 0
        self.heads: list[float] = []  # when each stream's 200 arrived, seconds from t0
        self.closes: list[float] = []  # when each stream that had its 200 ended


class StreamProtocol(asyncio.Protocol):
    def __init__(self, request: bytes, tally: Tally, done: asyncio.Future[None]) -> None:
        self.request, self.tally, self.done = request, tally, done
        self.head = b""
        self.in_body = False
        self.last = 0.0
        self.finished = False
        self.ok = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        t = self.tally
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            status = int(self.head[9:12])
            t.status[status] += 1
            if status == 200:
                self.ok = True
                t.heads.append(now - t.t0)
            data, self.head, self.in_body = self.head[end + 4 :], b"", True
        deltas = data.count(_DELTA)
        if deltas:
            if self.last:
                t.gaps_ms.append((now - self.last) * 1000)
            self.last = now
            t.chunks[int((now - t.t0) / _BUCKET_S)] += deltas
        if b"event: message_stop" in data:
            self.finished = True
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        t = self.tally
        t.open -= 1
        if self.ok:
            t.closes.append(time.monotonic() - t.t0)
        if self.finished:
            t.completed += 1
        else:
            t.failed += 1
        if not self.done.done():
            self.done.set_result(None)


def _open_per_bucket(tally: Tally, buckets: int) -> list[int]:
    delta = [0] * (buckets + 1)
    for t in tally.heads:
        delta[min(buckets, int(t / _BUCKET_S))] += 1
    for t in tally.closes:
        delta[min(buckets, int(t / _BUCKET_S))] -= 1
    out, running = [], 0
    for d in delta[:buckets]:
        running += d
        out.append(running)
    return out


async def _one(host: str, port: int, request: bytes, tally: Tally) -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    try:
        await loop.create_connection(lambda: StreamProtocol(request, tally, done), host, port)
    except OSError:
        tally.failed += 1
        return
    tally.open += 1
    tally.opened += 1
    await done


async def run(args: argparse.Namespace) -> dict[str, object]:
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    body = orjson.dumps({
        "model": "claude-sonnet-4-6", "max_tokens": args.chunks, "stream": True,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
    })  # fmt: skip
    lines = [
        f"POST {url.path} HTTP/1.1", f"host: {host}:{port}", "content-type: application/json",
        "anthropic-version: 2023-06-01", f"content-length: {len(body)}",
        f"x-sim-chunks: {args.chunks}", f"x-sim-output-tokens: {args.chunks}",
        f"x-sim-event-delay-ms: {args.delay_ms}", "x-sim-ttft-ms: 0", "x-sim-burst: 0",
        "connection: close",
    ]  # fmt: skip
    key = os.environ.get("BENCH_KEY")
    if key:
        lines.append(f"x-api-key: {key}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    tally = Tally(time.monotonic())
    tasks = []
    step = args.ramp / args.streams
    for i in range(args.streams):
        # A steady ramp: open stream i at i * step seconds after the start.
        wait = tally.t0 + i * step - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.ensure_future(_one(host, port, request, tally)))
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - tally.t0
    buckets = int(elapsed / _BUCKET_S) + 1
    return {
        "t0": tally.t0,
        "streams": args.streams,
        "opened": tally.opened,
        "completed": tally.completed,
        "failed": tally.failed,
        "status": {str(k): v for k, v in tally.status.items()},
        # Streams open (200 received, not yet ended) at the end of each bucket.
        "open_per_bucket": _open_per_bucket(tally, buckets),
        "elapsed": elapsed,
        "gaps_ms": {**percentiles(tally.gaps_ms), "max": max(tally.gaps_ms, default=0.0)},
        "gap_samples": len(tally.gaps_ms),
        "bucket_s": _BUCKET_S,
        "chunks_per_bucket": [tally.chunks.get(i, 0) for i in range(buckets)],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--streams", type=int, required=True)
    parser.add_argument("--ramp", type=float, default=5.0, help="seconds to open them all")
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--delay-ms", type=int, default=100)
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
