"""``antex export`` / ``antex import``: a snapshot restores byte for byte into an empty store,
is refused by a non-empty one, and the restored store serves the same keys."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import valkey

from gateway import keyspace, upstream_store
from gateway.embedded_valkey import EmbeddedValkey, free_port
from tests.integration.conftest import (
    ROOT,
    UPSTREAM_KEY,
    Stack,
    gateway_env,
    new_customer,
    run_gateway,
)
from tests.integration.ops_helpers import cli, send


def antex(valkey_url: str, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTEX_")}
    env.update(ANTEX_VALKEY_URL=valkey_url, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT, env=env, input=stdin, capture_output=True, timeout=120, check=False,
    )  # fmt: skip


def export(valkey_url: str) -> bytes:
    done = antex(valkey_url, "export")
    assert done.returncode == 0, done.stderr
    return done.stdout


def settled_export(valkey_url: str) -> bytes:
    """An export taken once the server has finished writing (two in a row agree)."""
    deadline = time.monotonic() + 10
    previous = export(valkey_url)
    while time.monotonic() < deadline:
        current = export(valkey_url)
        if current == previous:
            return current
        previous = current
    raise AssertionError("the store kept changing")


@pytest.fixture
def own_valkey(tmp_path: Path) -> Iterator[str]:
    server = EmbeddedValkey(tmp_path / "restore", unix_socket=False)
    server.start()
    yield server.url
    server.stop()


async def test_export_wipe_import_export_is_byte_identical(
    stack: Stack, own_valkey: str, simulator: str, tmp_path: Path
) -> None:
    customer = await new_customer(stack.valkey_url)
    for ip in ("127.0.0.101", "127.0.0.102"):
        assert send(stack, customer.key, ip).status_code == 200
    assert cli(stack, "account", "plan", customer.email, "max").code == 0
    assert cli(stack, "admin-token", "create", "--name", "snap").code == 0
    # An upstream of the pool, its key sealed (it serves only a model no test uses, so the
    # shared stack's routing is unchanged).
    upstream = f"snap-up-{customer.key_id}"
    added = cli(stack, "upstream", "add", upstream, "--url", stack.sim_url, "--key-stdin",
                "--models", "claude-mythos-preview", stdin=UPSTREAM_KEY + "\n")  # fmt: skip
    assert added.code == 0, added.err

    original = settled_export(stack.valkey_url)
    records = [orjson.loads(raw) for raw in original.splitlines()]
    kinds = {r["type"] for r in records}
    assert {"snapshot", "plan", "admin_token", "account", "key", "bindings", "window",
            "hourly", "request_log", "audit", "upstream"} <= kinds  # fmt: skip
    assert customer.key.encode() not in original  # key hashes only, never a key
    assert UPSTREAM_KEY.encode() not in original  # upstream keys stay sealed
    assert cli(stack, "upstream", "remove", upstream).code == 0
    mine = [r for r in records if r.get("account_id") == customer.account_id]
    bindings = [r for r in mine if r["type"] == "bindings"]
    assert sorted(bindings[0]["ips"]) == ["127.0.0.101", "127.0.0.102"]

    restored = antex(own_valkey, "import", stdin=original)
    assert restored.returncode == 0, restored.stderr
    first = export(own_valkey)
    assert first == original

    client = valkey.Valkey.from_url(own_valkey)
    try:
        client.flushall()
        assert client.dbsize() == 0
    finally:
        client.close()
    assert antex(own_valkey, "import", stdin=first).returncode == 0
    second = export(own_valkey)
    assert second == first
    print(f"round trip: {len(second)} bytes, {len(records)} records, byte-equal")

    refused = antex(own_valkey, "import", stdin=first)
    assert refused.returncode == 1 and b"not empty" in refused.stderr

    # The restored store is a working gateway: the customer's key, limits and bindings.
    port = free_port()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "clock").write_text("0")
    # The operator carries the master key with the snapshot, so sealed keys open.
    (tmp_path / "data" / "secret.key").write_bytes((stack.data_dir / "secret.key").read_bytes())
    (tmp_path / "data" / "secret.key").chmod(0o600)
    env = gateway_env(own_valkey, simulator, tmp_path / "data", port)
    with run_gateway(env, port, tmp_path / "restored.log") as url:
        restored_stack = Stack(url, simulator, own_valkey, tmp_path, tmp_path / "r.log",
                               tmp_path / "clock")  # fmt: skip
        assert send(restored_stack, customer.key, "127.0.0.101").status_code == 200
        third_ip = send(restored_stack, customer.key, "127.0.0.103")
        assert third_ip.status_code == 200  # max: three IP slots, two already bound
    client = valkey.Valkey.from_url(own_valkey)
    try:
        bound = client.hkeys(keyspace.AccountKeys(customer.account_id).key_ips(customer.key_id))
        assert len(bound) == 3
        ids = [i.decode() for i in client.smembers(upstream_store.IDS)]
        names = [client.hget(upstream_store.record_key(i), "name") for i in ids]
    finally:
        client.close()
    assert names == [upstream.encode()]


async def test_import_refuses_a_line_that_is_not_a_record(own_valkey: str) -> None:
    bad = antex(own_valkey, "import", stdin=b'{"type":"snapshot","format":"antex-snapshot",'
                b'"version":1}\n{"type":"mystery"}\n')  # fmt: skip
    assert bad.returncode == 1 and b"line 2" in bad.stderr
