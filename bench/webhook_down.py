"""Does a webhook receiver that is down slow requests? p50/p99 of streamed /v1/messages with
no webhook configured, with a receiver that refuses connections, and with one that accepts
and never answers, while other keys are being quarantined (each quarantine is an event).

    python -m bench.webhook_down [--requests 200] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import orjson
import valkey.asyncio as avalkey

from gateway import accounts
from gateway.clock import system_clock
from gateway.embedded_valkey import EmbeddedValkey, free_port
from gateway.plans import Plan, list_plans, set_plan

ROOT = Path(__file__).resolve().parents[1]
BODY = orjson.dumps(
    {
        "model": "claude-sonnet-4-6",
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": "hello"}],
    }
)
ONE_IP = Plan("bench-ip1", 100_000, 1_000_000, ip_slots=1, concurrency=64, period_days=30)
ROOMY = Plan("bench-roomy", 100_000, 1_000_000, ip_slots=64, concurrency=64, period_days=30)


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


@contextmanager
def process(args: list[str], env: dict[str, str], log: Path) -> Iterator[None]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield
        finally:
            proc.terminate()
            proc.wait(20)


@contextmanager
def black_hole() -> Iterator[str]:
    """Accepts connections and never answers: every delivery waits for its timeout."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1024)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                held.append(conn)
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/hook"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


async def make_keys(url: str, plan: Plan, count: int) -> list[str]:
    client = avalkey.Valkey.from_url(url, decode_responses=True)
    try:
        await list_plans(client)
        await set_plan(client, plan)
        keys = []
        for _ in range(count):
            email = f"{os.urandom(5).hex()}@bench.test"
            account_id = await accounts.create_account(
                client, email, plan.name, now_ms=system_clock()
            )
            keys.append(
                (
                    await accounts.create_key(
                        client, account_id, "b", rounds=4, now_ms=system_clock()
                    )
                ).key
            )
        return keys
    finally:
        await client.aclose()


def one_request(client: httpx.Client, url: str, key: str) -> float:
    started = time.perf_counter()
    with client.stream(
        "POST", f"{url}/v1/messages", content=BODY,
        headers={"x-api-key": key, "content-type": "application/json"},
    ) as answer:  # fmt: skip
        text = b"".join(answer.iter_bytes())
    assert answer.status_code == 200 and b"message_stop" in text, answer.status_code
    return time.perf_counter() - started


def quarantine_keys(url: str, keys: list[str], done: threading.Event, lane: int) -> int:
    """Quarantines keys one after the other (bind, then 3 unbound IPs) until ``done``."""
    count = 0
    for n, key in enumerate(keys):
        if done.is_set():
            break
        for ip in range(4):
            address = f"127.{lane + 1}.{n % 250 + 1}.{ip + 1}"
            transport = httpx.HTTPTransport(local_address=address)
            with httpx.Client(transport=transport, timeout=30) as client:
                client.post(f"{url}/v1/messages", content=BODY, headers={"x-api-key": key})
        count += 1
    return count


def run_side_by_side(
    configs: list[tuple[str, dict[str, str]]], args: argparse.Namespace, work: Path,
    keys: list[str], victims: list[list[str]], round_: int,
) -> list[dict[str, float | str | int]]:  # fmt: skip
    """All configurations serve at once and the measured requests alternate between them,
    so the rest of the machine's load hits each alike."""
    urls = []
    with ExitStack() as stack:
        for label, env in configs:
            port = free_port()
            log = work / f"{label.replace(' ', '-')}-{round_}.log"
            serve = [sys.executable, "-m", "gateway", "serve"]
            stack.enter_context(process(serve, {**env, "ANTEX_PORT": str(port)}, log))
            urls.append(f"http://127.0.0.1:{port}")
        for url in urls:
            wait_http(f"{url}/readyz")
            with httpx.Client(timeout=60) as warm:
                for key in keys[:20]:
                    one_request(warm, url, key)
        done = threading.Event()
        lanes = args.event_lanes
        with ThreadPoolExecutor(args.concurrency + lanes * len(urls)) as pool:
            events = {
                n: [
                    pool.submit(quarantine_keys, url, victims[n][i::lanes], done, n * lanes + i)
                    for i in range(lanes)
                ]
                for n, url in enumerate(urls)
            }
            time.sleep(0.5)  # the receivers are already backed up when measuring starts
            clients = [httpx.Client(timeout=60) for _ in range(args.concurrency)]
            jobs = [
                (i % len(urls), pool.submit(one_request, clients[i % args.concurrency],
                                            urls[i % len(urls)], keys[i % len(keys)]))
                for i in range(args.requests * len(urls))
            ]  # fmt: skip
            times: dict[int, list[float]] = {n: [] for n in range(len(urls))}
            for n, job in jobs:
                times[n].append(job.result())
            done.set()
            for c in clients:
                c.close()
            quarantined = {n: sum(e.result() for e in lane) for n, lane in events.items()}
    results: list[dict[str, float | str | int]] = []
    for n, (label, _) in enumerate(configs):
        ordered = sorted(times[n])
        results.append({
            "label": label,
            "p50_ms": statistics.median(ordered) * 1000,
            "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
            "max_ms": ordered[-1] * 1000,
            "quarantines": quarantined[n],
        })  # fmt: skip
    return results


async def notify_cost(url: str, calls: int = 100_000) -> float:
    """Nanoseconds per ``notify`` on a worker whose receiver is down and queue full."""
    from gateway.alerts import Alerts
    from gateway.config import Settings
    from gateway.events import KEY_FLAGGED

    client = avalkey.Valkey.from_url(url, decode_responses=True)
    settings = Settings(webhook_urls=(f"http://127.0.0.1:{free_port()}/x",),
                        webhook_secret="bench-secret-0123456789")  # fmt: skip
    alerts = Alerts(settings, client)
    await alerts.start()
    started = time.perf_counter_ns()
    for n in range(calls):
        alerts.notify(KEY_FLAGGED, {"key_id": "k", "account_id": str(n)})
    elapsed = time.perf_counter_ns() - started
    await alerts.stop(grace_s=0.1)
    await client.aclose()
    return elapsed / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--event-lanes", type=int, default=2,
                        help="threads quarantining keys, per configuration")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        store = EmbeddedValkey(work / "valkey", unix_socket=False)
        store.start()
        sim_port = free_port()
        sim_args = [sys.executable, "-m", "gateway.simulator", "--port", str(sim_port)]
        base = {k: v for k, v in os.environ.items() if not k.startswith("ANTEX_")}
        base.update(
            ANTEX_WORKERS="2", ANTEX_VALKEY_URL=store.url, ANTEX_DATA_DIR=str(work / "data"),
            ANTEX_UPSTREAM_URL=f"http://127.0.0.1:{sim_port}", ANTEX_UPSTREAM_KEY="bench",
            ANTEX_BCRYPT_ROUNDS="4", ANTEX_LOG_LEVEL="warning", PYTHONPATH=str(ROOT),
        )  # fmt: skip
        secret = {"ANTEX_WEBHOOK_SECRET": "bench-secret-0123456789"}
        try:
            with process(sim_args, base, work / "sim.log"), black_hole() as hole:
                wait_http(f"http://127.0.0.1:{sim_port}/_sim/stats")
                configs = [
                    ("no webhook", base),
                    ("receiver refuses", {**base, **secret,
                     "ANTEX_WEBHOOK_URL": f"http://127.0.0.1:{free_port()}/hook"}),
                    ("receiver never answers", {**base, **secret, "ANTEX_WEBHOOK_URL": hole}),
                ]  # fmt: skip
                results = []
                for round_ in range(args.rounds):
                    keys = asyncio.run(make_keys(store.url, ROOMY, 20))
                    victims = [asyncio.run(make_keys(store.url, ONE_IP, 300)) for _ in configs]
                    results += run_side_by_side(configs, args, work, keys, victims, round_)
            cost_ns = asyncio.run(notify_cost(store.url))
        finally:
            store.stop()
    print(f"notify() with the receiver down and the queue full: {cost_ns / 1000:.1f} µs/call")
    print(f"{args.requests} streamed requests per configuration, the 3 served side by side "
          f"(2 workers each), concurrency {args.concurrency}, {args.event_lanes} threads per "
          "configuration quarantining other keys meanwhile")  # fmt: skip
    print(f"{'webhook':<24} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'quarantines':>12}")
    for r in results:
        print(f"{r['label']:<24} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} {r['max_ms']:8.1f} "
              f"{r['quarantines']:12d}")  # fmt: skip
    for label, _ in configs:
        p99s = sorted(float(r["p99_ms"]) for r in results if r["label"] == label)
        print(f"median p99 over {args.rounds} rounds, {label}: {statistics.median(p99s):.1f} ms")


if __name__ == "__main__":
    main()
