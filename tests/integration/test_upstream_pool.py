"""The upstream pool end to end: three simulated upstream keys behind the real 2-worker
gateway, a Claude Code–like replay, and faults switched on one key at a time.

The module runs its own Valkey: the pool's configuration is global to a Valkey, and the
session's shared gateway must keep its own one-upstream setup.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest
import valkey
from prometheus_client.parser import text_string_to_metric_families

from bench.pool_replay import Conversation, ReplayResult, new_conversations, replay
from gateway.embedded_valkey import EmbeddedValkey, free_port
from gateway.plans import Plan
from tests.integration.conftest import (
    ROOT,
    SIM_PACING,
    Customer,
    gateway_env,
    new_customer,
    running,
)
from tests.integration.ops_helpers import Admin, operator_token

NAMES = ("up-a", "up-b", "up-c")
OPUS = "claude-opus-4-6"


@dataclass
class Pool:
    url: str
    sim: str
    valkey_url: str
    data_dir: Path
    log_path: Path
    keys: dict[str, str]  # upstream name -> its (canary) API key

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANTEX_")}
        env.update(ANTEX_VALKEY_URL=self.valkey_url, ANTEX_DATA_DIR=str(self.data_dir),
                   PYTHONPATH=str(ROOT))  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "gateway", *args], cwd=ROOT, env=env, input=stdin,
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done

    def add(self, name: str) -> None:
        self.cli("upstream", "add", name, "--url", self.sim, "--key-stdin",
                 stdin=self.keys[name] + "\n")  # fmt: skip

    def sim_keys(self) -> dict[str, dict[str, Any]]:
        by_key = httpx.get(f"{self.sim}/_sim/keys").json()
        return {name: by_key[key] for name, key in self.keys.items()}

    def sim_key(self, name: str, **change: Any) -> None:
        httpx.post(f"{self.sim}/_sim/keys", json={"key": self.keys[name], **change})

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = httpx.get(f"{self.url}/metrics").text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


def metric_sum(snapshot: dict[Any, float], name: str, **labels: str) -> float:
    return sum(
        v for (n, lbl), v in snapshot.items()
        if n == name and all(dict(lbl).get(k) == want for k, want in labels.items())
    )  # fmt: skip


def delta(before: dict[Any, float], after: dict[Any, float], name: str, **labels: str) -> float:
    return metric_sum(after, name, **labels) - metric_sum(before, name, **labels)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    base = tmp_path_factory.mktemp("pool")
    store = EmbeddedValkey(base / "valkey", unix_socket=False)
    store.start()
    keys = {name: f"sk-ant-canary-{name}-{uuid.uuid4().hex}" for name in NAMES}
    keys_file = base / "sim-keys.json"
    keys_file.write_bytes(orjson.dumps({key: {} for key in keys.values()}))
    sim_port, port = free_port(), free_port()
    sim_args = [sys.executable, "-m", "gateway.simulator", "--port", str(sim_port), *SIM_PACING,
                "--keys", str(keys_file), "--prompt-cache"]  # fmt: skip
    data_dir = base / "data"
    try:
        with running(sim_args, sim_port, "/_sim/stats", "simulator", base / "sim.log") as sim:
            pool = Pool("", sim, store.url, data_dir, base / "gateway.log", keys)
            for name in NAMES:
                pool.add(name)
            env = gateway_env(store.url, sim, data_dir, port, ANTEX_UPSTREAM_FIRST_BYTE_TIMEOUT="1",
                              ANTEX_UPSTREAM_RETRY_BUDGET="10")  # fmt: skip
            del env["ANTEX_UPSTREAM_KEY"]
            env["ANTEX_UPSTREAM_URL"] = "http://127.0.0.1:9"  # no simulator, no env upstream
            args = [sys.executable, "-m", "gateway", "serve"]
            with running(args, port, "/healthz", "gateway", pool.log_path, env) as url:
                pool.url = url
                yield pool
    finally:
        store.stop()


@pytest.fixture(scope="module")
def customer(pool: Pool) -> Customer:
    fleet = Plan("fleet", 10_000_000, 10_000_000, ip_slots=4, concurrency=200, period_days=30)
    return asyncio.run(new_customer(pool.valkey_url, fleet))


def run_replay(
    pool: Pool, customer: Customer, convs: list[Conversation], **kw: Any
) -> ReplayResult:
    return asyncio.run(replay(pool.url, customer.key, convs, **kw))


def usage_totals(keys: dict[str, dict[str, Any]]) -> dict[str, int]:
    kinds = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens",
             "output_tokens")  # fmt: skip
    return {k: sum(v[k] for v in keys.values()) for k in kinds}


def test_cache_affinity_of_the_pool_matches_a_single_upstream(
    pool: Pool, customer: Customer
) -> None:
    pool.cli("upstream", "disable", "up-b")
    pool.cli("upstream", "disable", "up-c")
    httpx.post(f"{pool.sim}/_sim/reset")
    single = run_replay(pool, customer, new_conversations(24, "single", OPUS), turns=4)
    assert single.failures == 0, single
    assert pool.sim_keys()["up-b"]["requests"] == 0
    pool.cli("upstream", "enable", "up-b")
    pool.cli("upstream", "enable", "up-c")
    httpx.post(f"{pool.sim}/_sim/reset")
    convs = new_conversations(24, "pool", OPUS)
    pooled = run_replay(pool, customer, convs, turns=4)
    assert pooled.failures == 0, pooled
    keys = pool.sim_keys()
    served = {name: set(k["conversations"]) for name, k in keys.items()}
    assert all(served.values()), "every upstream serves a share"
    assert sum(len(s) for s in served.values()) == 24, "no conversation changed upstream"
    print(f"\ncache-read share: single {single.cache_read_share:.4f}, "
          f"pool of 3 {pooled.cache_read_share:.4f}")
    assert abs(single.cache_read_share - pooled.cache_read_share) <= 0.02

    # Removing one upstream moves only the conversations that were on it.
    pool.cli("upstream", "remove", "up-b")
    httpx.post(f"{pool.sim}/_sim/reset")
    again = run_replay(pool, customer, convs, turns=1)
    assert again.failures == 0, again
    after = {name: set(k["conversations"]) for name, k in pool.sim_keys().items()}
    assert after["up-a"] >= served["up-a"] and after["up-c"] >= served["up-c"]
    assert after["up-b"] == set()
    assert after["up-a"] | after["up-c"] == served["up-a"] | served["up-b"] | served["up-c"]
    print(f"removal moved {len(served['up-b'])} of 24 conversations (those on up-b)")
    pool.add("up-b")


def test_a_rate_limited_upstream_costs_no_customer_a_request(
    pool: Pool, customer: Customer
) -> None:
    httpx.post(f"{pool.sim}/_sim/reset")
    before = pool.metrics()

    async def limit_up_a() -> None:
        pool.sim_key("up-a", rpm=1)  # the minute's window is already past 1 request

    result = run_replay(pool, customer, new_conversations(24, "ratelimit"), turns=4,
                        midway=limit_up_a)  # fmt: skip
    pool.sim_key("up-a", rpm=10_000_000)
    after = pool.metrics()
    keys = pool.sim_keys()
    failovers = delta(before, after, "antex_upstream_failovers_total")
    print(f"\nreplay: {result.requests} requests, statuses {dict(result.statuses)}, "
          f"upstream 429s {keys['up-a']['refused']}, failovers {failovers:.0f}")
    assert result.failures == 0, result
    assert keys["up-a"]["refused"] > 0 and failovers >= 1
    # Billing used the attempt that answered: per upstream, what it reported is what was billed.
    for name, k in keys.items():
        for kind, sim_kind in (("input", "input_tokens"), ("output", "output_tokens"),
                               ("cache_read", "cache_read_input_tokens"),
                               ("cache_write", "cache_creation_input_tokens")):  # fmt: skip
            billed = delta(before, after, "antex_upstream_tokens_total", upstream=name, kind=kind)
            assert billed == k[sim_kind], (name, kind)
    reported = usage_totals(keys)
    for kind, billed_kind in (("input_tokens", "input"), ("output_tokens", "output"),
                              ("cache_read_input_tokens", "cache_read"),
                              ("cache_creation_input_tokens", "cache_write")):  # fmt: skip
        assert delta(before, after, "antex_tokens_total", kind=billed_kind) == reported[kind]
        assert result.usage[kind] == reported[kind]


def test_a_stalled_upstream_is_left_after_the_first_byte_timeout(
    pool: Pool, customer: Customer
) -> None:
    pool.sim_key("up-c", fault="stall")
    try:
        before = pool.metrics()
        result = run_replay(pool, customer, new_conversations(9, "stall"), turns=1)
        after = pool.metrics()
    finally:
        pool.sim_key("up-c", fault=None)
    assert result.failures == 0, result
    assert delta(before, after, "antex_upstream_attempts_total", upstream="up-c",
                 status="timeout") >= 1  # fmt: skip
    assert delta(before, after, "antex_upstream_failovers_total", upstream="up-c") >= 1


def test_a_revoked_key_is_disabled_on_every_worker_within_a_second(
    pool: Pool, customer: Customer
) -> None:
    pool.cli("upstream", "enable", "up-c")  # the stall test may have opened its circuit
    stop = threading.Event()
    seen: list[tuple[float, int]] = []  # (time, up-c attempts)

    def watch() -> None:
        while not stop.is_set():
            seen.append((time.monotonic(), pool.sim_keys()["up-c"]["attempts"]))
            time.sleep(0.02)

    start = pool.sim_keys()["up-c"]["attempts"]
    pool.sim_key("up-c", fault="revoked")
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = run_replay(pool, customer, new_conversations(90, "revoke"), turns=2,
                            concurrency=12)  # fmt: skip
    finally:
        stop.set()
        watcher.join()
        pool.sim_key("up-c", fault=None)
    assert result.failures == 0, result
    first_401 = next(t for t, n in seen if n > start)
    last_attempt = min(t for t, n in seen if n == seen[-1][1])
    ended = seen[-1][0]
    print(f"\nup-c refused at +0 s; its last attempt at +{last_attempt - first_401:.3f} s; "
          f"{seen[-1][1] - start} attempts reached it; traffic went on "
          f"{ended - first_401:.1f} s")
    # After the first 401, every worker stops sending to it within a second.
    assert ended - first_401 > 2.0, "the run must outlast the window it checks"
    assert last_attempt - first_401 < 1.0
    metrics = pool.metrics()
    assert metric_sum(metrics, "antex_pool_upstreams_disabled") >= 1
    assert metric_sum(metrics, "antex_upstream_state", upstream="up-c") == 4
    listed = orjson.loads(pool.cli("upstream", "show", "up-c", "--json").stdout)
    assert listed["enabled"] is False and listed["disabled_reason"] == "upstream answered 401"
    assert "up-c disabled: upstream answered 401" in pool.log_path.read_text()
    pool.cli("upstream", "enable", "up-c")


def test_no_upstream_key_leaks_anywhere(pool: Pool) -> None:
    token = asyncio.run(operator_token(pool.valkey_url))
    auth = {"authorization": f"Bearer {token}"}
    answers = [
        httpx.get(f"{pool.url}/admin/upstreams", headers=auth).text,
        httpx.get(f"{pool.url}/admin/upstreams/up-a", headers=auth).text,
        httpx.post(f"{pool.url}/admin/upstreams", headers=auth, json={
            "name": "up-a", "url": pool.sim, "key": pool.keys["up-a"]}).text,  # a refusal
        httpx.post(f"{pool.url}/admin/upstreams", headers=auth, json={
            "name": "bad url", "url": "ftp://x", "key": pool.keys["up-b"]}).text,
        httpx.get(f"{pool.url}/metrics").text,
        pool.cli("upstream", "list").stdout,
        pool.cli("upstream", "list", "--json").stdout,
    ]
    assert '"key_fingerprint":"sha256:' in answers[0]
    client = valkey.Valkey.from_url(pool.valkey_url)
    try:
        dump = []
        for name in client.scan_iter(count=1000):
            kind = client.type(name).decode()
            value: Any = {
                "string": client.get, "hash": client.hgetall, "set": client.smembers,
                "zset": lambda n: client.zrange(n, 0, -1),
                "list": lambda n: client.lrange(n, 0, -1),
                "stream": lambda n: client.xrange(n),
            }.get(kind, lambda n: b"")(name)  # fmt: skip
            if kind == "hash" and name.startswith(b"antex:upstream:"):
                value.pop(b"key_ct", None)  # the sealed key: ciphertext is allowed
            dump.append(repr((name, value)))
    finally:
        client.close()
    texts = [*answers, pool.log_path.read_text(), "\n".join(dump)]
    for key in pool.keys.values():
        secret = key.removeprefix("sk-ant-canary-")
        for text in texts:
            assert secret not in text
    mode = stat.S_IMODE((pool.data_dir / "secret.key").stat().st_mode)
    assert mode == 0o600


def test_the_cli_lists_health_and_headroom(pool: Pool) -> None:
    deadline = time.monotonic() + 15
    while True:  # workers report health every few seconds
        views = orjson.loads(pool.cli("upstream", "list", "--json").stdout)
        if all(v["headroom"] is not None for v in views):
            break
        assert time.monotonic() < deadline, views
        time.sleep(0.2)
    assert {v["name"] for v in views} == set(NAMES)
    text = pool.cli("upstream", "list").stdout
    assert "HEADROOM" in text and "ready" in text


def test_openai_routes_fail_over_alike(pool: Pool, customer: Customer) -> None:
    pool.cli("upstream", "enable", "up-a")  # clears the rate-limit test's cooldown
    pool.sim_key("up-a", fault="overloaded")
    try:
        before = pool.metrics()
        answers = [
            httpx.post(f"{pool.url}/v1/chat/completions", timeout=30,
                       headers={"authorization": f"Bearer {customer.key}"},
                       json={"model": "claude-sonnet-4-6", "max_tokens": 32,
                             "messages": [{"role": "user", "content": f"question {i}"}]})
            for i in range(12)
        ]  # fmt: skip
        after = pool.metrics()
    finally:
        pool.sim_key("up-a", fault=None)
    assert [a.status_code for a in answers] == [200] * 12
    assert delta(before, after, "antex_upstream_attempts_total", upstream="up-a",
                 status="529") >= 1  # fmt: skip
    assert delta(before, after, "antex_upstream_failovers_total", upstream="up-a") >= 1


def test_the_admin_api_manages_upstreams_without_ever_showing_a_key(pool: Pool) -> None:
    token = asyncio.run(operator_token(pool.valkey_url))
    api = Admin(SimpleNamespace(url=pool.url), token)  # type: ignore[arg-type]
    secret = f"sk-ant-admin-{uuid.uuid4().hex}"
    try:
        view = api.call("POST", "/admin/upstreams", {
            "name": "spare", "url": pool.sim + "/", "key": secret, "weight": 2,
            "models": [OPUS], "max_concurrent": 5}, status=201)  # fmt: skip
        assert secret not in orjson.dumps(view).decode()
        assert view["key_fingerprint"].startswith("sha256:")
        assert (view["url"], view["weight"], view["models"]) == (pool.sim, 2, [OPUS])
        api.call("POST", "/admin/upstreams/spare/weight", {"weight": 0}, status=400)
        assert api.call("POST", "/admin/upstreams/spare/weight", {"weight": 5})["weight"] == 5
        assert api.call("POST", "/admin/upstreams/spare/disable")["state"] == "disabled"
        assert api.call("POST", "/admin/upstreams/spare/enable")["enabled"] is True
        listed = api.call("GET", "/admin/upstreams")["data"]
        assert "spare" in [u["name"] for u in listed]
        gone = api.call("DELETE", f"/admin/upstreams/{view['id']}")
        assert gone == {"id": view["id"], "removed": True}
        api.call("GET", "/admin/upstreams/spare", status=404)
    finally:
        api.close()
    refused = subprocess.run(
        [sys.executable, "-m", "gateway", "upstream", "add", "x", "--url", pool.sim],
        cwd=ROOT, capture_output=True, text=True, check=False,
        env={**os.environ, "ANTEX_VALKEY_URL": pool.valkey_url, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert refused.returncode == 1 and "--key-stdin" in refused.stderr
