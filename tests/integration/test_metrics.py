"""GET /metrics on the real 2-worker server: every count is the sum over both workers,
whichever worker answers the scrape; the JSON access log carries metadata only."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from gateway.catalog import load_catalog
from gateway.embedded_valkey import EmbeddedValkey, free_port
from gateway.plans import Plan
from gateway.usage import Usage, cost_mc, estimate_mc
from tests.integration.conftest import (
    ROOT,
    Customer,
    Stack,
    gateway_env,
    new_customer,
    run_gateway,
    stop,
    wait_http,
)
from tests.unit.test_ops_files import referenced_metric_names

TOKEN = "metrics-" + uuid.uuid4().hex
AUTH = {"authorization": f"Bearer {TOKEN}"}
CATALOG = load_catalog(None)
HAIKU = CATALOG.lookup("claude-haiku-5-5")
SONNET = CATALOG.lookup("claude-sonnet-4-6")
assert HAIKU is not None and SONNET is not None
# Every token kind moves: the simulator reports these counts back.
SIM = {
    "x-sim-output-tokens": "7",
    "x-sim-cache-read": "11",
    "x-sim-cache-write-5m": "5",
    "x-sim-cache-write-1h": "3",
}
SLOW = {"x-sim-output-tokens": "1000", "x-sim-chunks": "20", "x-sim-chunk-delay-ms": "100"}
DEADLINE_S = 20
MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS


@dataclass
class Metered:
    url: str
    data_dir: Path
    log_path: Path


@pytest.fixture(scope="module")
def metered(
    valkey_url: str, simulator: str, tmp_path_factory: pytest.TempPathFactory, logs_dir: Path
) -> Iterator[Metered]:
    """A 2-worker ``antex serve`` of this module's own, so every count starts at zero."""
    data_dir = tmp_path_factory.mktemp("metered")
    (data_dir / "clock").write_text("0")
    port = free_port()
    log_path = logs_dir / "metered.log"
    env = gateway_env(
        valkey_url, simulator, data_dir, port, ANTEX_LOG_FORMAT="json", ANTEX_METRICS_TOKEN=TOKEN
    )
    with run_gateway(env, port, log_path) as url:
        yield Metered(url, data_dir, log_path)


def move_clock(server: Metered, ms: int) -> None:
    """Moves the server's clock: its workers re-read the offset file when it changes."""
    clock = server.data_dir / "clock"
    clock.write_text(str(int(clock.read_text() or 0) + ms))
    time.sleep(0.01)  # a distinct mtime even on coarse filesystems


class Samples:
    def __init__(self, text: str) -> None:
        self.values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.values[(s.name, frozenset(s.labels.items()))] = s.value

    def __call__(self, name: str, **labels: str) -> float:
        return self.values.get((name, frozenset(labels.items())), 0.0)

    def names(self) -> set[str]:
        return {name for name, _ in self.values}


async def scrape(url: str, headers: dict[str, str] | None = None) -> Samples:
    """One scrape over a fresh connection, so either worker may answer it."""
    async with httpx.AsyncClient(timeout=10) as client:
        resp = await client.get(f"{url}/metrics", headers=AUTH if headers is None else headers)
    assert resp.status_code == 200, resp.text
    return Samples(resp.text)


async def poll(url: str, done: Any, what: str) -> Samples:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        samples = await scrape(url)
        if done(samples):
            return samples
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def fresh_client(timeout: float = 30) -> httpx.AsyncClient:
    limits = httpx.Limits(max_keepalive_connections=0)  # a new connection per request
    return httpx.AsyncClient(limits=limits, timeout=timeout)


def body(model: str, *, stream: bool, max_tokens: int = 64, text: str = "count to ten") -> bytes:
    return orjson.dumps(
        {
            "model": model,
            "max_tokens": max_tokens,
            "stream": stream,
            "messages": [{"role": "user", "content": text}],
        }
    )


def simulated_usage(payload: bytes, output_tokens: int, headers: dict[str, str]) -> Usage:
    """The usage the simulator reports for this request, read as the gateway reads it."""
    w5, w1 = (
        int(headers.get("x-sim-cache-write-5m", 0)),
        int(headers.get("x-sim-cache-write-1h", 0)),
    )
    return Usage.from_anthropic(
        {
            "input_tokens": max(1, len(payload) // 4),
            "cache_creation_input_tokens": w5 + w1,
            "cache_creation": {"ephemeral_5m_input_tokens": w5, "ephemeral_1h_input_tokens": w1},
            "cache_read_input_tokens": int(headers.get("x-sim-cache-read", 0)),
            "output_tokens": output_tokens,
        }
    )


def requests_by_worker(data_dir: Path, model: str) -> dict[str, float]:
    """antex_requests_total for ``model`` in each worker's own file (named by its pid)."""
    counts: dict[str, float] = {}
    for path in data_dir.glob("metrics/*/counter_*.db"):
        pid = path.stem.rsplit("_", 1)[-1]
        for family in MultiProcessCollector.merge([str(path)]):
            for s in family.samples:
                if s.name == "antex_requests_total" and s.labels.get("model") == model:
                    counts[pid] = counts.get(pid, 0.0) + s.value
    return counts


def plan(credits_5h: int, credits_7d: int, concurrency: int = 1000) -> Plan:
    return Plan(
        name=f"metrics-{uuid.uuid4().hex[:6]}",
        credits_5h=credits_5h,
        credits_7d=credits_7d,
        ip_slots=5,
        concurrency=concurrency,
        period_days=30,
    )


# Neither a window nor the concurrency cap gets in the way of the counting tests.
ROOMY = plan(1_000_000, 1_000_000)


async def test_counters_sum_over_both_workers_whichever_answers_the_scrape(
    metered: Metered, valkey_url: str
) -> None:
    customer = await new_customer(valkey_url, ROOMY)
    model = HAIKU.id
    before = await scrape(metered.url)
    assert sum(requests_by_worker(metered.data_dir, model).values()) == 0
    headers = {"x-api-key": customer.key, **SIM}
    payloads = [body(model, stream=i % 2 == 0) for i in range(16)]
    sent: list[bytes] = []
    deadline = time.monotonic() + DEADLINE_S
    async with fresh_client() as client:

        async def one(payload: bytes) -> int:
            resp = await client.post(f"{metered.url}/v1/messages", content=payload, headers=headers)
            await resp.aread()
            return resp.status_code

        # Fresh connections land on either worker; go on until both have answered some.
        while True:
            assert await asyncio.gather(*map(one, payloads)) == [200] * len(payloads)
            sent += payloads
            by_worker = requests_by_worker(metered.data_dir, model)
            if len([v for v in by_worker.values() if v > 0]) >= 2:
                break
            assert time.monotonic() < deadline, f"one worker answered everything: {by_worker}"

    n = len(sent)
    # A stream is billed just after its last byte: wait for the last ones to land.
    after = await poll(
        metered.url,
        lambda s: s("antex_requests_total", route="messages", status="200", model=model) >= n,
        f"{n} requests in the counters",
    )
    by_worker = requests_by_worker(metered.data_dir, model)
    assert sum(by_worker.values()) == n
    assert all(0 < v < n for v in by_worker.values() if v), by_worker  # each saw only part

    def moved(name: str, **labels: str) -> float:
        return after(name, **labels) - before(name, **labels)

    # The scrape was answered by one worker, and shows all n: the sum over both workers.
    assert moved("antex_requests_total", route="messages", status="200", model=model) == n
    for hist in ("antex_request_duration_seconds", "antex_time_to_first_byte_seconds"):
        assert moved(f"{hist}_count", route="messages") == n
        assert moved(f"{hist}_bucket", route="messages", le="+Inf") == n
        assert moved(f"{hist}_sum", route="messages") >= 0
    usages = [simulated_usage(p, 7, SIM) for p in sent]
    expected = {
        "input": sum(u.input_tokens for u in usages),
        "cache_write": sum(u.cache_creation_input_tokens for u in usages),
        "cache_read": sum(u.cache_read_input_tokens for u in usages),
        "output": sum(u.output_tokens for u in usages),
    }
    assert expected["cache_write"] == 8 * n and expected["output"] == 7 * n
    for kind, tokens in expected.items():
        assert moved("antex_tokens_total", model=model, kind=kind) == tokens, kind
    credits = sum(cost_mc(u, HAIKU.rates) for u in usages)
    assert moved("antex_millicredits_total", model=model) == credits > 0
    hits = moved("antex_auth_cache_lookups_total", result="hit")
    misses = moved("antex_auth_cache_lookups_total", result="miss")
    assert hits + misses == n
    assert misses >= 2  # each worker verified the new key itself once
    assert after("antex_streams_in_flight") == 0

    # Any scrape, on any worker, reports the same totals.
    for _ in range(8):
        again = await scrape(metered.url)
        assert again("antex_requests_total", route="messages", status="200", model=model) == (
            after("antex_requests_total", route="messages", status="200", model=model)
        )
        assert again("antex_millicredits_total", model=model) == after(
            "antex_millicredits_total", model=model
        )


async def test_in_flight_streams_gauge_sums_the_live_workers(
    metered: Metered, valkey_url: str
) -> None:
    customer = await new_customer(valkey_url, ROOMY)
    headers = {"x-api-key": customer.key, **SLOW}
    payload = body(HAIKU.id, stream=True, max_tokens=1000)
    opened = 6

    async with fresh_client() as client:

        async def slow_stream() -> int:
            url = f"{metered.url}/v1/messages"
            async with client.stream("POST", url, content=payload, headers=headers) as resp:
                await resp.aread()
                return resp.status_code

        tasks = [asyncio.ensure_future(slow_stream()) for _ in range(opened)]
        try:
            await poll(
                metered.url,
                lambda s: s("antex_streams_in_flight") == opened,
                f"{opened} streams in flight",
            )
        finally:
            statuses = await asyncio.gather(*tasks)
    assert statuses == [200] * opened
    await poll(metered.url, lambda s: s("antex_streams_in_flight") == 0, "streams closed")


async def test_window_refusals_are_counted_by_window(metered: Metered, valkey_url: str) -> None:
    payload = body(SONNET.id, stream=True, max_tokens=1000)
    one = cost_mc(simulated_usage(payload, 1000, {}), SONNET.rates)
    assert estimate_mc(len(payload), 1000, SONNET.rates, 8192) == one > 1000
    filled_by_one = one // 1000  # credits: one request fills the window
    week = math.ceil(1.5 * one / 1000)  # one request leaves room, two fill it
    big = 1_000_000
    url = f"{metered.url}/v1/messages"
    before = await scrape(metered.url)

    async with fresh_client() as client:

        async def send(c: Customer, extra: dict[str, str] | None = None) -> httpx.Response:
            headers = {"x-api-key": c.key, "x-sim-output-tokens": "1000", **(extra or {})}
            resp = await client.post(url, content=payload, headers=headers)
            await resp.aread()
            return resp

        async def refused_while_one_streams(c: Customer) -> httpx.Response:
            headers = {"x-api-key": c.key, **SLOW}
            async with client.stream("POST", url, content=payload, headers=headers) as first:
                assert first.status_code == 200  # admitted: its reservation is held
                return await send(c)

        c = await new_customer(valkey_url, plan(filled_by_one, week))
        assert (await send(c)).status_code == 200
        assert (await send(c)).status_code == 429  # the 5-hour window is full
        move_clock(metered, 5 * HOUR_MS + 2 * MINUTE_MS)
        try:
            assert (await send(c)).status_code == 200  # 5 hours on: this one fills the week
            assert (await send(c)).status_code == 429
        finally:
            move_clock(metered, -(5 * HOUR_MS + 2 * MINUTE_MS))
        # The stream's reservation holds all of its window.
        in_flight = await refused_while_one_streams(
            await new_customer(valkey_url, plan(filled_by_one, big))
        )
        concurrency = await refused_while_one_streams(
            await new_customer(valkey_url, plan(big, big, concurrency=1))
        )
        assert in_flight.status_code == concurrency.status_code == 429

    after = await scrape(metered.url)
    for window in ("5h", "7d", "in_flight", "concurrency"):
        moved = after("antex_window_refusals_total", window=window) - before(
            "antex_window_refusals_total", window=window
        )
        assert moved == 1, window
    errors = ("antex_error_responses_total", {"status": "429", "type": "rate_limit_error"})
    assert after(errors[0], **errors[1]) - before(errors[0], **errors[1]) == 4


async def test_upstream_errors_are_counted_by_kind(metered: Metered, valkey_url: str) -> None:
    customer = await new_customer(valkey_url)
    url = f"{metered.url}/v1/messages"
    before = await scrape(metered.url)
    cases = [
        (False, "529", 529),  # upstream status, forwarded unmodified
        (False, "500", 500),
        (True, "error-mid-stream", 200),  # an error event inside the stream
        (True, "drop", 200),  # the upstream connection dies mid-stream
    ]
    async with fresh_client() as client:
        for stream, fault, status in cases:
            headers = {"x-api-key": customer.key, "x-sim-fault": fault}
            resp = await client.post(url, content=body(HAIKU.id, stream=stream), headers=headers)
            await resp.aread()
            assert resp.status_code == status, fault

    kinds = {"529": 1, "500": 1, "event": 1, "stream": 1}
    after = await poll(
        metered.url,
        lambda s: all(
            s("antex_upstream_errors_total", kind=k) - before("antex_upstream_errors_total", kind=k)
            >= v
            for k, v in kinds.items()
        ),
        "the upstream errors",
    )
    for kind, count in kinds.items():
        moved = after("antex_upstream_errors_total", kind=kind) - before(
            "antex_upstream_errors_total", kind=kind
        )
        assert moved == count, kind
    for status in ("529", "500"):
        labels = {"route": "messages", "status": status, "model": HAIKU.id}
        assert (
            after("antex_requests_total", **labels) - before("antex_requests_total", **labels) == 1
        )


async def test_json_access_log_has_one_metadata_line_per_request(
    metered: Metered, valkey_url: str
) -> None:
    customer = await new_customer(valkey_url)
    canary = f"CANARY{uuid.uuid4().hex}"
    url = f"{metered.url}/v1/messages"
    billed = 3
    async with fresh_client() as client:
        for i in range(billed):
            payload = body(HAIKU.id, stream=i == 0, text=f"secret {canary}")
            resp = await client.post(url, content=payload, headers={"x-api-key": customer.key})
            await resp.aread()
            assert resp.status_code == 200
        wrong = await client.post(url, content=b"{}", headers={"x-api-key": f"sk_live_{canary}"})
        unknown = await client.post(
            url,
            content=body(f"model-{canary}", stream=False),
            headers={"x-api-key": customer.key},
        )
        assert (wrong.status_code, unknown.status_code) == (401, 404)

    def ours() -> list[dict[str, Any]]:
        lines = [orjson.loads(line) for line in metered.log_path.read_bytes().splitlines()
                 if line.startswith(b"{")]  # fmt: skip
        return [d for d in lines if d.get("logger") == "antex.access"]

    deadline = time.monotonic() + DEADLINE_S
    while len([d for d in ours() if d.get("key_id") == customer.key_id]) < billed:
        assert time.monotonic() < deadline, "access lines missing"
        await asyncio.sleep(0.05)

    mine = [d for d in ours() if d.get("key_id") == customer.key_id]
    assert len(mine) == billed
    for line in mine:
        assert line["account"] == customer.account_id
        assert line["route"] == "messages" and line["model"] == HAIKU.id
        assert line["status"] == 200 and line["request_id"].startswith("req_")
        assert line["input_tokens"] > 0 and line["output_tokens"] > 0 and line["credits_mc"] > 0
        assert line["latency_ms"] >= line["ttfb_ms"] >= 0
        assert line["level"] == "info" and line["ts"]
    refusals = [d for d in ours() if d.get("request_id") == wrong.headers["request-id"]]
    assert len(refusals) == 1
    assert refusals[0]["status"] == 401 and refusals[0]["error_type"] == "authentication_error"
    assert refusals[0]["path"] == "/v1/messages"
    missing = [d for d in ours() if d.get("request_id") == unknown.headers["request-id"]]
    assert missing[0]["status"] == 404 and missing[0]["error_type"] == "not_found_error"

    text = metered.log_path.read_bytes()
    assert canary.encode() not in text  # not the prompt, the wrong key nor the model name
    assert customer.key.encode() not in text
    # Every line of ours is JSON; the rest is granian's own "[INFO] ..." start-up banner.
    for line in text.splitlines():
        assert line.startswith((b"{", b"[")), line[:80]


async def test_metrics_token_is_required_when_set(metered: Metered, stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        bare = await client.get(f"{metered.url}/metrics")
        wrong = await client.get(f"{metered.url}/metrics", headers={"authorization": "Bearer no"})
        right = await client.get(f"{metered.url}/metrics", headers=AUTH)
        # The shared stack sets no token: /metrics answers without a key.
        open_ = await client.get(f"{stack.url}/metrics")
    assert bare.status_code == wrong.status_code == 401
    assert bare.json()["error"]["type"] == "authentication_error"
    assert TOKEN not in bare.text
    for ok in (right, open_):
        assert ok.status_code == 200
        assert ok.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert "# TYPE antex_streams_in_flight gauge" in ok.text


async def test_every_metric_the_ops_files_use_is_served(metered: Metered, valkey_url: str) -> None:
    customer = await new_customer(valkey_url)
    async with fresh_client() as client:
        ok = await client.post(
            f"{metered.url}/v1/messages",
            content=body(HAIKU.id, stream=False),
            headers={"x-api-key": customer.key, **SIM},
        )
        bad = await client.post(f"{metered.url}/v1/messages", content=b"{}")
        assert (ok.status_code, bad.status_code) == (200, 401)
    served = (await scrape(metered.url)).names()
    assert referenced_metric_names() - served == set()


@dataclass
class Outage:
    url: str
    valkey: EmbeddedValkey


@pytest.fixture
def outage(simulator: str, tmp_path: Path, logs_dir: Path) -> Iterator[Outage]:
    """A 1-worker server on a Valkey of its own, which the test may stop."""
    own_valkey = EmbeddedValkey(tmp_path / "valkey", unix_socket=False)
    own_valkey.start()
    data_dir = tmp_path / "gateway"
    data_dir.mkdir()
    (data_dir / "clock").write_text("0")
    port = free_port()
    env = gateway_env(own_valkey.url, simulator, data_dir, port, ANTEX_WORKERS="1")
    try:
        with open(logs_dir / "valkey-outage.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            url = f"http://127.0.0.1:{port}"
            try:
                wait_http(f"{url}/healthz", proc, "gateway")
                yield Outage(url, own_valkey)
            finally:
                stop(proc)
    finally:
        own_valkey.stop()


async def test_valkey_outage_is_counted_and_fails_closed(outage: Outage) -> None:
    customer = await new_customer(outage.valkey.url)
    url, payload = f"{outage.url}/v1/messages", body(HAIKU.id, stream=False)
    headers = {"x-api-key": customer.key}
    async with fresh_client() as client:
        first = await client.post(url, content=payload, headers=headers)
        assert first.status_code == 200  # the key is now in the worker's cache
        outage.valkey.stop()
        down = await client.post(url, content=payload, headers=headers)
        assert down.status_code == 503
    # The refused admission, then the first failed flush of its queued release (a failing
    # streak of retries counts once).
    metrics = await poll(
        outage.url, lambda m: m("antex_valkey_errors_total") >= 2, "the release's failure"
    )
    assert metrics("antex_valkey_errors_total") == 2
    assert metrics("antex_error_responses_total", status="503", type="api_error") == 1
