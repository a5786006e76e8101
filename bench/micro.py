"""Micro measurements around the hot path: bcrypt cold vs cache-warm auth, a random-key
flood's effect on valid latency, Valkey round trips per request (MONITOR), and a py-spy
profile of the gateway workers under load.
"""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import valkey.asyncio as avalkey

from bench.loads import BASE_HEADERS, BODIES, finish_pyload, run_wrk, start_pyload, wrk_binary
from bench.pyload import percentiles
from bench.stack import ROOT, Service
from gateway.auth import Authenticator
from gateway.keys import parse_key

# -- auth ---------------------------------------------------------------------------------


async def _auth_latency(
    valkey_url: str, key: str, cold_runs: int, warm_runs: int
) -> dict[str, Any]:
    client = avalkey.Valkey.from_url(valkey_url, decode_responses=True)
    cold: list[float] = []
    warm: list[float] = []
    try:
        for _ in range(cold_runs):
            auth = Authenticator(client, ttl=300, size=1000)
            t0 = time.perf_counter()
            await auth.authenticate(key, "bench")
            cold.append((time.perf_counter() - t0) * 1000)
            auth.close()
        auth = Authenticator(client, ttl=300, size=1000)
        await auth.authenticate(key, "bench")
        for _ in range(warm_runs):
            t0 = time.perf_counter()
            await auth.authenticate(key, "bench")
            warm.append((time.perf_counter() - t0) * 1000)
        auth.close()
    finally:
        await client.aclose()
    return {
        "cold_ms": percentiles(cold),
        "warm_us": {k: v * 1000 for k, v in percentiles(warm).items()},
        "cold_runs": cold_runs,
        "warm_runs": warm_runs,
    }


def auth_latency(valkey_url: str, key: str, rounds: int) -> dict[str, Any]:
    """In-process Authenticator against the bench Valkey: a fresh cache per cold call (the
    key-index GET, the record HMGET and bcrypt), then one warm cache."""
    result = asyncio.run(_auth_latency(valkey_url, key, 15, 20000))
    result["bcrypt_rounds"] = rounds
    return result


def first_request_latency(url: str, keys: list[str]) -> dict[str, Any]:
    """Through the server: each fresh key's first request pays bcrypt on one worker; the
    same key's later requests are cache hits."""
    body = BODIES["json"]
    cold: list[float] = []
    warm: list[float] = []
    for key in keys:
        for i in range(12):
            with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as s:
                req = (
                    f"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                    f"anthropic-version: 2023-06-01\r\nx-api-key: {key}\r\n"
                    f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
                ).encode() + body
                t0 = time.perf_counter()
                s.sendall(req)
                while s.recv(65536):
                    pass
                elapsed = (time.perf_counter() - t0) * 1000
            if i == 0:
                cold.append(elapsed)
            elif i >= 4:  # by now both workers have most likely cached the key
                warm.append(elapsed)
    return {"first_ms": percentiles(cold), "warm_ms": percentiles(warm), "keys": len(keys)}


# -- flood --------------------------------------------------------------------------------


FLOOD_RATE = 500  # offered flood requests/s (32 connections, paced)


def flood(
    antex: Service, key: str, victim_key_id: str, seconds: float, conns: int = 16
) -> list[dict[str, Any]]:
    """Valid SSE traffic (wrk) alone, then beside a flood of well-formed random keys from
    200 loopback source addresses each (a distributed flood, which the per-address failure
    throttle does not cap): unknown key ids, then a real key id with wrong secrets."""
    url = antex.url + "/v1/messages"
    headers = [*BASE_HEADERS, ("x-api-key", key)]
    out = []
    # Each flood uses its own addresses: per-address failure counts must not carry over.
    for label, mode, net in (
        ("no flood", None, 0),
        ("unknown key ids", "unknown", 1),
        ("real key id, wrong secrets", victim_key_id, 3),
    ):
        cpu0 = antex.cpu_seconds()
        flooder = None
        if mode is not None:
            argv = [
                sys.executable,
                "-m",
                "bench.pyload",
                "--url",
                url,
                "--connections",
                "32",
                "--seconds",
                str(seconds),
                "--body",
                BODIES["json"].decode(),
                "--header",
                "anthropic-version: 2023-06-01",
                "--flood",
                mode,
                "--source-ips",
                "200",
                "--source-net",
                str(net),
                "--pause",
                f"{32 / FLOOD_RATE:.4f}",
            ]
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            env.pop("BENCH_KEY", None)
            flooder = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            time.sleep(0.5)
        valid = (
            run_wrk(url, BODIES["sse"], headers, conns, seconds)
            if wrk_binary() is not None
            else finish_pyload(start_pyload(url, BODIES["sse"], headers, conns, seconds))
        )
        flood_result = finish_pyload(flooder) if flooder is not None else None
        out.append(
            {
                "label": label,
                "valid_rps": valid["rps"],
                "valid_latency_ms": valid["latency_ms"],
                "valid_errors": valid["errors"],
                "flood_rps": flood_result["rps"] if flood_result else 0.0,
                "flood_status": flood_result["status"] if flood_result else {},
                "gateway_cpu_cores": (antex.cpu_seconds() - cpu0) / seconds,
            }
        )
    return out


# -- Valkey round trips -------------------------------------------------------------------


class Monitor:
    """A raw MONITOR connection: every command Valkey runs, with its source ("lua" for the
    calls a script makes), so client round trips can be told from script internals."""

    def __init__(self, valkey_url: str) -> None:
        parts = urlsplit(valkey_url)
        if parts.scheme == "unix":
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.connect(parts.path)
        else:
            self.sock = socket.create_connection(
                (parts.hostname or "127.0.0.1", parts.port or 6379)
            )
        self.sock.sendall(b"MONITOR\r\n")
        self.chunks: list[bytes] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except OSError:
                return
            if not data:
                return
            self.chunks.append(data)

    def stop(self) -> tuple[collections.Counter[str], collections.Counter[str]]:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(5)
        client: collections.Counter[str] = collections.Counter()
        script: collections.Counter[str] = collections.Counter()
        for line in b"".join(self.chunks).split(b"\r\n"):
            # +1712345678.123456 [0 unix:/path/valkey.sock] "evalsha" "…" …
            if not line.startswith(b"+") or b"[" not in line:
                continue
            source = line[line.index(b"[") + 1 : line.index(b"]")].split(b" ", 1)[-1]
            rest = line[line.index(b"]") + 2 :]
            name = rest.split(b'"')[1].decode(errors="replace").lower() if b'"' in rest else "?"
            (script if source == b"lua" else client)[name] += 1
        return client, script


# Sent once per new pooled connection or subscriber, not per request.
_HANDSHAKE = frozenset({"client", "hello", "select", "auth", "subscribe", "ping"})


def round_trips(valkey_url: str, antex: Service, key: str, seconds: float = 3.0) -> dict[str, Any]:
    """Client commands per request over a short cache-warm sample, per mode."""
    out: dict[str, Any] = {}
    headers = [*BASE_HEADERS, ("x-api-key", key)]
    for mode in ("json", "sse"):
        mon = Monitor(valkey_url)
        time.sleep(0.2)
        res = finish_pyload(
            start_pyload(antex.url + "/v1/messages", BODIES[mode], headers, 4, seconds)
        )
        time.sleep(1.0)  # settles run after the response: let them land
        client, script = mon.stop()
        n = res["requests"]
        per_request = sum(v for k, v in client.items() if k not in _HANDSHAKE)
        out[mode] = {
            "requests": n,
            "client_commands": dict(client.most_common()),
            "script_commands": dict(script.most_common()),
            "round_trips_per_req": per_request / n if n else None,
            "with_handshakes_per_req": sum(client.values()) / n if n else None,
            "script_internal_per_req": sum(script.values()) / n if n else None,
        }
    return out


# -- profile ------------------------------------------------------------------------------

_PACKAGES = (
    "gateway",
    "blacksheep",
    "aiohttp",
    "valkey",
    "granian",
    "asyncio",
    "cachetools",
    "orjson",
    "logging",
    "prometheus_client",
    "multidict",
    "yarl",
)


def _package(frame: str) -> str:
    # "func (path/to/pkg/module.py:123)"
    path = frame[frame.rfind("(") + 1 :]
    for pkg in _PACKAGES:
        if f"/{pkg}/" in path or path.startswith(f"{pkg}/"):
            return pkg
    return "other python" if path else "native / no Python frame"


def _short(frame: str) -> str:
    """ "func (…/site-packages/pkg/mod.py:12)" -> "func (pkg/mod.py)" """
    name, _, path = frame.partition(" (")
    path = path.rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    return f"{name} ({'/'.join(parts[-2:])})" if path else name


def _bootstrap(frame: str) -> bool:
    # The process entry frames (module, cli main, serve) sit under every sample.
    return any(f"gateway/{m}" in frame for m in ("__main__.py", "cli.py", "serve.py"))


def py_spy() -> str | None:
    venv = Path(sys.executable).with_name("py-spy")
    return str(venv) if venv.exists() else shutil.which("py-spy")


def profile(
    antex: Service, key: str, out_dir: Path, seconds: float = 8.0, conns: int = 64
) -> dict[str, Any] | None:
    """py-spy samples every gateway worker while wrk drives SSE at ``conns``; returns the
    share of samples by package (leaf frame) and the hottest gateway functions."""
    spy = py_spy()
    if spy is None:
        return None
    workers = antex.processes()[1:]
    headers = [*BASE_HEADERS, ("x-api-key", key)]
    result: dict[str, Any] = {}

    def load() -> None:
        url, body = antex.url + "/v1/messages", BODIES["sse"]
        if wrk_binary() is None:  # the built-in generator, as the cells use without wrk
            result["load"] = finish_pyload(start_pyload(url, body, headers, conns, seconds + 3))
        else:
            result["load"] = run_wrk(url, body, headers, conns, seconds + 3)

    loader = threading.Thread(target=load)
    loader.start()
    time.sleep(1.5)
    raws = []
    spies = []
    for w in workers:
        raw = out_dir / f"pyspy-{w.pid}.txt"
        raws.append(raw)
        spies.append(
            subprocess.Popen(
                [
                    spy,
                    "record",
                    "-r",
                    "100",
                    "-d",
                    str(int(seconds)),
                    "-p",
                    str(w.pid),
                    "--format",
                    "raw",
                    "-o",
                    str(raw),
                    "--nonblocking",
                    "--gil",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    for s in spies:
        s.wait()
    loader.join()
    by_pkg: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    gateway_incl: collections.Counter[str] = collections.Counter()
    total = 0
    for raw in raws:
        if not raw.exists():
            continue
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            n = int(count)
            frames = [f for f in stack.split(";") if f]
            if not frames:
                continue
            total += n
            by_pkg[_package(frames[-1])] += n
            leaves[_short(frames[-1])] += n
            # A set: a function on the stack twice (recursion, two lines) counts once.
            for name in {
                _short(f) for f in frames if _package(f) == "gateway" and not _bootstrap(f)
            }:
                gateway_incl[name] += n
        raw.unlink()
    if not total:
        return None
    return {
        "samples": total,
        "seconds": seconds,
        "concurrency": conns,
        "by_package": {k: v / total for k, v in by_pkg.most_common()},
        "gateway_inclusive": {k: v / total for k, v in gateway_incl.most_common(15)},
        "leaf_functions": {k: v / total for k, v in leaves.most_common(15)},
        "load_rps": result.get("load", {}).get("rps"),
    }


def key_id_of(key: str) -> str:
    parsed = parse_key(key)
    assert parsed is not None
    return parsed.key_id
