"""Deletion as the Privacy Policy promises it: requests listed with their age, and an
erasure after which no key name or value anywhere in Valkey belongs to the account."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import valkey
import valkey.asyncio as avalkey

from gateway import audit, keyspace
from gateway.clock import system_clock
from gateway.dashboard import signin, views
from gateway.dashboard.sessions import Sessions
from gateway.limits import CreditLimiter
from gateway.store import Scripts
from tests.integration.conftest import Stack, new_customer
from tests.integration.ops_helpers import cli, send, server_now

DAY_MS = 86_400_000


def readable(client: valkey.Valkey, name: bytes) -> bytes:
    """Every value of a key, whatever its type, as plain bytes (DUMP may compress)."""
    kind = client.type(name)
    parts: list[Any]
    if kind == b"string":
        parts = [client.get(name)]
    elif kind == b"hash":
        parts = [x for kv in client.hgetall(name).items() for x in kv]
    elif kind == b"set":
        parts = list(client.smembers(name))
    elif kind == b"zset":
        parts = [m for m, _ in client.zrange(name, 0, -1, withscores=True)]
    elif kind == b"list":
        parts = client.lrange(name, 0, -1)
    elif kind == b"stream":
        parts = [orjson.dumps({k.decode(): v.decode() for k, v in f.items()})
                 for _, f in client.xrange(name)]  # fmt: skip
    else:
        raise AssertionError(f"unexpected type {kind!r} of {name!r}")
    return b"\n".join(p for p in parts if p is not None)


def traces(client: valkey.Valkey, needles: list[str]) -> list[str]:
    """Every place in the whole keyspace where one of ``needles`` still appears."""
    found = []
    wanted = [n.encode() for n in needles]
    for name in client.scan_iter(count=1000):
        dump = client.dump(name) or b""
        values = readable(client, name)
        for needle in wanted:
            if needle in name or needle in dump or needle in values:
                found.append(f"{needle.decode()} in {name.decode()}")
    return found


async def test_delete_erases_every_trace_of_the_account(stack: Stack, valkey_url: str) -> None:
    customer = await new_customer(valkey_url)
    bystander = await new_customer(valkey_url)
    # Usage records, windows, an IP binding and the request log, over the real server.
    assert send(stack, customer.key, "127.0.0.91").status_code == 200
    assert send(stack, customer.key, "127.0.0.91").status_code == 200
    assert send(stack, bystander.key, "127.0.0.92").status_code == 200
    # Operator actions (audit entries naming the account), a second key, a sign-in link.
    assert cli(stack, "account", "plan", customer.email, "max").code == 0
    second = cli(stack, "key", "create", customer.email, "--name", "ci", "--json").json()
    assert cli(stack, "ip", "add-slots", "1", "--key", customer.key_id).code == 0
    assert cli(stack, "login-link", customer.email).code == 0
    assert cli(stack, "account", "plan", bystander.email, "max").code == 0

    client = avalkey.Valkey.from_url(valkey_url, decode_responses=True)
    try:
        now = server_now(stack)
        session = await Sessions(client, system_clock, ()).create(customer.account_id)
        await signin.issue_link(client, customer.account_id, stack.url, now)
        await signin.over_limit(client, customer.email, "127.0.0.91", signin.SigninLimits())
        limiter = CreditLimiter(client, Scripts(), system_clock)
        # Asked eight days ago: one day past the promise.
        await views.request_deletion(client, limiter, customer.account_id, now - 8 * DAY_MS)
        await views.request_deletion(client, limiter, bystander.account_id, now - DAY_MS)
    finally:
        await client.aclose()

    requests = {r["account_id"]: r for r in cli(stack, "deletion", "list", "--json").json()}
    assert requests[customer.account_id]["overdue"] is True
    assert requests[customer.account_id]["email"] == customer.email
    assert 7.9 < requests[customer.account_id]["age_days"] < 8.1
    assert requests[bystander.account_id]["overdue"] is False
    assert "OVERDUE" in cli(stack, "deletion", "list").out

    needles = [customer.account_id, customer.email, customer.key_id, second["key_id"]]
    sync = valkey.Valkey.from_url(valkey_url)
    try:
        before = traces(sync, needles)
        assert len(before) > 10  # the check sees what is there
        unconfirmed = cli(stack, "account", "delete", customer.email)  # stdin is not a tty
        assert unconfirmed.code == 1 and "--yes" in unconfirmed.err
        assert sync.exists(keyspace.AccountKeys(customer.account_id).account)

        done = cli(stack, "account", "delete", customer.email, "--yes", "--json").json()
        assert done["keys_deleted"] == 2
        assert done["email_sha256"] == audit.email_digest(customer.email)
        assert traces(sync, needles) == []
        print(f"erasure: {len(before)} traces before, 0 after, {sync.dbsize()} keys scanned")

        # What remains: the email's digest, in the audit trail and the request's record.
        entries = [orjson.loads(m) for m in sync.zrange(audit.AUDIT, 0, -1)]
        deletion = [e for e in entries if e["action"] == "account.delete"
                    and e["target"] == {"email_sha256": done["email_sha256"]}]  # fmt: skip
        assert len(deletion) == 1
        assert sync.hexists(keyspace.DELETIONS_DONE, done["email_sha256"])
        assert sync.exists(f"{keyspace.PREFIX}:dash:session:{session.token}") == 0
        # The bystander is untouched.
        assert traces(sync, [bystander.account_id, bystander.email])
        assert sync.exists(keyspace.AccountKeys(bystander.account_id).account)
    finally:
        sync.close()

    listed = {r["account_id"] for r in cli(stack, "deletion", "list", "--json").json()}
    assert bystander.account_id in listed and customer.account_id not in listed
    refused = send(stack, customer.key, "127.0.0.91")
    assert refused.status_code == 401
    assert send(stack, bystander.key, "127.0.0.92").status_code == 200
    again = cli(stack, "account", "delete", customer.email, "--yes")
    assert again.code == 1 and "no account" in again.err


async def test_a_request_in_flight_during_the_erasure_writes_nothing_back(
    stack: Stack, valkey_url: str
) -> None:
    """The request settles after the account is gone: nothing of it may reappear."""
    customer = await new_customer(valkey_url)
    body = {"model": "claude-sonnet-4-6", "max_tokens": 64,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    async with httpx.AsyncClient(timeout=30) as client:
        slow = asyncio.ensure_future(client.post(
            f"{stack.url}/v1/messages", json=body,
            headers={"x-api-key": customer.key, "x-sim-ttft-ms": "2000"},
        ))  # fmt: skip
        await asyncio.sleep(0.8)  # admitted, waiting for the upstream
        done = await asyncio.to_thread(cli, stack, "account", "delete", customer.email, "--yes")
        assert done.code == 0, done.err
        answered = await slow
    assert answered.status_code == 200
    sync = valkey.Valkey.from_url(valkey_url)
    try:
        # What must not happen has no event to wait for: give the settle flush (~0.3 s) time.
        await asyncio.sleep(2)
        needles = [customer.account_id, customer.email, customer.key_id]
        assert await asyncio.to_thread(traces, sync, needles) == []
    finally:
        sync.close()


async def test_the_erasure_reaches_valkeys_files_on_disk(tmp_path: Any) -> None:
    """The append-only file and the snapshot are rewritten after an erasure, so the deleted
    account's email and ids are gone from the disk too, not only from memory."""
    from gateway.embedded_valkey import EmbeddedValkey
    from gateway.erasure import erase_account

    server = EmbeddedValkey(tmp_path / "valkey", unix_socket=False)
    url = await asyncio.to_thread(server.start)
    try:
        customer = await new_customer(url)
        client = avalkey.Valkey.from_url(url, decode_responses=True)
        try:
            await erase_account(client, customer.account_id, system_clock())
            for _ in range(200):  # poll until both background rewrites have finished
                info = await client.info("persistence")
                if not (info["aof_rewrite_in_progress"] or info["aof_rewrite_scheduled"]
                        or info["rdb_bgsave_in_progress"]):  # fmt: skip
                    break
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()
        on_disk = b"".join(
            p.read_bytes() for p in (tmp_path / "valkey").rglob("*")
            if p.is_file() and p.suffix in (".aof", ".rdb")
        )  # fmt: skip
        assert on_disk, "no AOF or RDB file was written"
        for needle in (customer.email, customer.account_id, customer.key_id):
            assert needle.encode() not in on_disk, needle
    finally:
        await asyncio.to_thread(server.stop)
