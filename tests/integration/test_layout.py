"""Data layout versions: an old store is migrated when ``antex serve`` starts and then serves;
a newer one is refused with both versions named; concurrent starters migrate once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import valkey.asyncio as avalkey

from gateway import accounts, keyspace, layout
from gateway.clock import system_clock
from gateway.embedded_valkey import EmbeddedValkey, free_port
from tests.integration.conftest import ROOT, gateway_env, new_customer, run_gateway
from tests.integration.ops_helpers import MESSAGE


@pytest.fixture
def own_valkey(tmp_path: Path) -> Iterator[str]:
    """A Valkey of the test's own: the layout key is global to a store."""
    server = EmbeddedValkey(tmp_path / "valkey", unix_socket=False)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def stream_once(url: str, key: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/messages",
        content=orjson.dumps({**MESSAGE, "stream": True}),
        headers={"x-api-key": key, "content-type": "application/json"},
        timeout=30,
    )


def antex(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


async def write_version_1_store(url: str) -> tuple[str, str, str]:
    """What Antex before layout versions left behind: no ``antex:layout``, and a key that
    was quarantined while the operator's index write failed. Returns (key, account, key id)."""
    customer = await new_customer(url)
    client = avalkey.Valkey.from_url(url, decode_responses=True)
    try:
        lost = await accounts.create_key(
            client, customer.account_id, "leaked", rounds=4, now_ms=system_clock()
        )
        await client.hset(
            keyspace.AccountKeys(customer.account_id).key(lost.key_id),
            mapping={"status": "quarantined", "quarantine_reason": "test",
                     "quarantined_ms": 1_790_000_000_000},
        )  # fmt: skip
        assert await client.get(layout.LAYOUT_KEY) is None
        assert await client.zscore(keyspace.QUARANTINE_INDEX, "x") is None
    finally:
        await client.aclose()
    return customer.key, customer.account_id, lost.key_id


async def test_a_version_1_store_is_migrated_on_start_and_serves(
    own_valkey: str, simulator: str, tmp_path: Path
) -> None:
    key, account_id, lost_key_id = await write_version_1_store(own_valkey)
    port = free_port()
    data = tmp_path / "data"
    data.mkdir()
    (data / "clock").write_text("0")
    env = gateway_env(own_valkey, simulator, data, port)
    with run_gateway(env, port, tmp_path / "gateway.log") as url:
        answer = stream_once(url, key)
        assert answer.status_code == 200 and "event: message_stop" in answer.text
    log = (tmp_path / "gateway.log").read_text()
    assert "migrating the data layout to version 2" in log
    assert "data layout version 2 reached (1 records" in log
    client = avalkey.Valkey.from_url(own_valkey, decode_responses=True)
    try:
        assert await client.get(layout.LAYOUT_KEY) == str(layout.CURRENT)
        member = f"{account_id}:{lost_key_id}"
        assert await client.zscore(keyspace.QUARANTINE_INDEX, member) == 1_790_000_000_000
    finally:
        await client.aclose()

    # A second start finds the current version and migrates nothing.
    with run_gateway(env, port, tmp_path / "again.log"):
        pass
    assert "migrating" not in (tmp_path / "again.log").read_text()


async def test_a_newer_layout_is_refused_with_both_versions_named(
    own_valkey: str, simulator: str, tmp_path: Path
) -> None:
    await write_version_1_store(own_valkey)
    client = avalkey.Valkey.from_url(own_valkey, decode_responses=True)
    newer = layout.CURRENT + 1
    await client.set(layout.LAYOUT_KEY, newer)
    env = gateway_env(own_valkey, simulator, tmp_path / "data", free_port())
    done = antex(env, "serve")
    assert done.returncode == 1
    assert f"layout version {newer}, but this Antex understands layout versions up to " \
        f"{layout.CURRENT}" in done.stderr
    # Operator commands refuse it too, and nothing was rewritten.
    cli_env = {k: v for k, v in os.environ.items() if not k.startswith("ANTEX_")}
    cli_env.update(ANTEX_VALKEY_URL=own_valkey, PYTHONPATH=str(ROOT))
    listed = antex(cli_env, "account", "list")
    assert listed.returncode == 1 and f"layout version {newer}" in listed.stderr
    assert await client.get(layout.LAYOUT_KEY) == str(newer)
    await client.aclose()


async def test_nodes_starting_together_migrate_once(own_valkey: str) -> None:
    await write_version_1_store(own_valkey)
    runs: list[int] = []

    async def slow_step(client: layout.Client) -> int:
        runs.append(1)
        await asyncio.sleep(0.3)  # long enough for every other starter to queue on the lock
        return 0

    steps = (*layout.STEPS, layout.Step(layout.CURRENT + 1, "test step", slow_step))
    clients = [avalkey.Valkey.from_url(own_valkey, decode_responses=True) for _ in range(5)]
    try:
        versions = await asyncio.gather(*(layout.ensure_layout(c, steps) for c in clients))
        assert versions == [layout.CURRENT + 1] * 5
        assert runs == [1]
    finally:
        for c in clients:
            await c.aclose()


async def test_an_empty_store_is_stamped_without_migrating(own_valkey: str) -> None:
    client = avalkey.Valkey.from_url(own_valkey, decode_responses=True)
    try:
        assert await layout.stored_version(client) is None
        assert await layout.ensure_layout(client) == layout.CURRENT
        assert await client.get(layout.LAYOUT_KEY) == str(layout.CURRENT)
    finally:
        await client.aclose()


def test_pending_steps_start_after_the_stored_version() -> None:
    async def noop(client: layout.Client) -> int:
        return 0

    steps = [layout.Step(v, f"to {v}", noop) for v in (2, 3, 4)]
    assert [s.version for s in layout.pending(1, steps)] == [2, 3, 4]
    assert [s.version for s in layout.pending(3, steps)] == [4]
    assert layout.pending(4, steps) == []
