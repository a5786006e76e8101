"""The audit trail: every mutating admin API route (enumerated from the OpenAPI document) and
every mutating CLI command leaves an entry naming the actor and the changed fields, and no
entry ever holds a secret."""

from __future__ import annotations

import inspect
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
import valkey

from gateway import admin_tokens, audit, cli, keyspace, openapi
from tests.integration.conftest import UPSTREAM_KEY, Customer, Stack, new_customer
from tests.integration.ops_helpers import Admin, operator_token
from tests.integration.ops_helpers import cli as run_cli

MUTATING = ("post", "put", "delete")


def mutating_admin_operations() -> dict[str, tuple[str, str]]:
    """operationId -> (method, path template) of every documented state-changing route."""
    found = {}
    for path, item in openapi.document()["paths"].items():
        if path.startswith("/admin/"):
            for method in MUTATING:
                if method in item:
                    found[item[method]["operationId"]] = (method.upper(), path)
    return found


def quarantine(sync: valkey.Valkey, c: Customer) -> None:
    # What admit.lua writes when it quarantines a key; reaching it over HTTP is tested
    # elsewhere and would only slow this test down.
    sync.hset(
        keyspace.AccountKeys(c.account_id).key(c.key_id),
        mapping={"status": "quarantined", "quarantine_reason": "test"},
    )


def flag(sync: valkey.Valkey, c: Customer) -> None:
    sync.hset(
        keyspace.AccountKeys(c.account_id).account,
        mapping={"shared_flag_ms": "1", "shared_flag_reason": "test"},
    )


def hold(sync: valkey.Valkey, c: Customer) -> None:
    """A reservation a lost node left: far-off expiry, nobody to settle it."""
    k = keyspace.AccountKeys(c.account_id)
    sync.zadd(k.inflight, {"req_lost": 2**50})
    sync.hset(k.reserved, mapping={"req_lost": "500", "total": "500"})


def bind(sync: valkey.Valkey, c: Customer) -> None:
    sync.hset(keyspace.AccountKeys(c.account_id).key_ips(c.key_id), "127.0.0.9", "1")


@dataclass
class Case:
    action: str  # the audit action the call must record
    call: Callable[[Customer], tuple[dict[str, str], Any]]  # -> (path parameters, body)
    status: int = 200
    before: Callable[[Customer], Any] | None = None  # may return an awaitable


UPSTREAM_PREFIX = "audit-up-"


def cases(sync: valkey.Valkey, stack: Stack, api: Admin) -> dict[str, Case]:
    email = lambda: f"audit-{secrets.token_hex(4)}@example.test"  # noqa: E731
    # Upstreams the audited calls change: the stack's own simulator and key, so whatever is
    # left enabled still answers like the pool's other member.
    upstream = {"url": stack.sim_url, "key": UPSTREAM_KEY}
    made: dict[str, str] = {}

    def up_name(c: Customer) -> str:
        return made.setdefault(c.account_id, UPSTREAM_PREFIX + secrets.token_hex(3))

    def add_up(c: Customer) -> None:
        api.call("POST", "/admin/upstreams", {"name": up_name(c), **upstream}, 201)

    def add_disabled_up(c: Customer) -> None:
        add_up(c)
        api.call("POST", f"/admin/upstreams/{up_name(c)}/disable", None, 200)

    def up(c: Customer) -> dict[str, str]:
        return {"upstream": up_name(c)}

    return {
        "adminAddUpstream": Case(
            "upstream.add", lambda c: ({}, {"name": up_name(c), **upstream}), 201
        ),
        "adminDisableUpstream": Case("upstream.disable", lambda c: (up(c), None), before=add_up),
        "adminEnableUpstream": Case(
            "upstream.enable", lambda c: (up(c), None), before=add_disabled_up
        ),
        "adminUpstreamWeight": Case(
            "upstream.weight", lambda c: (up(c), {"weight": 3}), before=add_up
        ),
        "adminRemoveUpstream": Case("upstream.remove", lambda c: (up(c), None), before=add_up),
        "adminCreateAccount": Case(
            "account.create", lambda c: ({}, {"email": email(), "plan": "starter"}), 201
        ),
        "adminDeleteAccount": Case("account.delete", lambda c: ({"account": c.account_id}, None)),
        "adminAssignPlan": Case(
            "account.plan", lambda c: ({"account": c.account_id}, {"plan": "max"})
        ),
        "adminExtendPlan": Case(
            "account.extend", lambda c: ({"account": c.account_id}, {"days": 3})
        ),
        "adminCancelPlan": Case("account.cancel", lambda c: ({"account": c.account_id}, None)),
        "adminAccountSlots": Case(
            "account.ip_slots", lambda c: ({"account": c.account_id}, {"add": 2})
        ),
        "adminClearFlag": Case(
            "account.clear_flag",
            lambda c: ({"account": c.account_id}, None),
            before=lambda c: flag(sync, c),
        ),
        "adminClearReservations": Case(
            "account.clear_reservations",
            lambda c: ({"account": c.account_id}, None),
            before=lambda c: hold(sync, c),
        ),
        "adminCreateKey": Case(
            "key.create", lambda c: ({"account": c.account_id}, {"name": "ci"}), 201
        ),
        "adminRevokeKey": Case("key.revoke", lambda c: ({"key_id": c.key_id}, None)),
        "adminReleaseKey": Case(
            "key.release",
            lambda c: ({"key_id": c.key_id}, None),
            before=lambda c: quarantine(sync, c),
        ),
        "adminUnbindIps": Case(
            "key.unbind",
            lambda c: ({"key_id": c.key_id}, {"all": True}),
            before=lambda c: bind(sync, c),
        ),
        "adminKeySlots": Case("key.ip_slots", lambda c: ({"key_id": c.key_id}, {"add": 1})),
        "adminSetPlan": Case(
            "plan.set",
            lambda c: (
                {"name": f"audit-{secrets.token_hex(3)}"},
                {"credits_5h": 10, "credits_7d": 100, "ip_slots": 1, "concurrency": 2},
            ),
        ),
    }


@pytest.fixture
async def admin(stack: Stack, valkey_url: str) -> AsyncIterator[tuple[Admin, str]]:
    name = f"auditor-{secrets.token_hex(3)}"
    api = Admin(stack, await operator_token(valkey_url, name))
    yield api, name
    api.close()


def trail(sync: valkey.Valkey) -> list[dict[str, Any]]:
    return [orjson.loads(m) for m in sync.zrange(audit.AUDIT, 0, -1)]


def assert_no_secret(sync: valkey.Valkey, secrets_seen: list[str]) -> None:
    raw = "".join(sync.zrange(audit.AUDIT, 0, -1))
    assert "$2b$" not in raw  # no bcrypt hash
    for secret in secrets_seen:
        assert secret not in raw
        assert admin_tokens.digest(secret) not in raw


async def test_every_mutating_admin_route_records_who_what_and_the_change(
    stack: Stack, admin: tuple[Admin, str], sync_valkey: valkey.Valkey
) -> None:
    api, operator = admin
    routes = mutating_admin_operations()
    table = cases(sync_valkey, stack, api)
    assert set(routes) == set(table), "a mutating route without an audit case"
    assert len(routes) == 19
    shown: list[str] = []
    for op_id, (method, template) in sorted(routes.items()):
        case = table[op_id]
        customer = await new_customer(stack.valkey_url)
        shown.append(customer.key)
        if case.before is not None and inspect.isawaitable(made := case.before(customer)):
            await made
        params, body = case.call(customer)
        path = template
        for name, value in params.items():
            path = path.replace("{" + name + "}", value)
        answer = api.call(method, path, body, case.status)
        if isinstance(answer, dict) and "key" in answer:
            shown.append(answer["key"])
        page = api.get(f"/admin/audit?actor={operator}&limit=1")
        assert page["data"], f"{op_id} recorded nothing"
        entry = page["data"][0]
        assert entry["action"] == case.action, op_id
        assert entry["actor"] == operator
        if case.action not in ("account.create", "key.create", "account.delete"):
            assert entry["changes"], f"{op_id}: no changed fields recorded"
        if case.action != "account.delete" and "account" in params:
            assert entry["target"]["account"] == customer.account_id
    assert_no_secret(sync_valkey, [*shown, UPSTREAM_KEY])
    for view in api.get("/admin/upstreams")["data"]:
        if view["name"].startswith(UPSTREAM_PREFIX):
            api.call("DELETE", f"/admin/upstreams/{view['id']}", None, 200)

    filtered = api.get(f"/admin/audit?actor={operator}&action=key&limit=500")["data"]
    assert {e["action"] for e in filtered} == {
        "key.create", "key.revoke", "key.release", "key.unbind", "key.ip_slots",
    }  # fmt: skip
    first = api.get(f"/admin/audit?actor={operator}&limit=5")
    second = api.get(f"/admin/audit?actor={operator}&limit=5&cursor={first['next_cursor']}")
    ids = [e["id"] for e in first["data"] + second["data"]]
    assert len(ids) == len(set(ids)) == 10


async def test_plan_change_records_before_and_after(
    stack: Stack, admin: tuple[Admin, str], sync_valkey: valkey.Valkey
) -> None:
    api, operator = admin
    customer = await new_customer(stack.valkey_url)
    api.post(f"/admin/accounts/{customer.account_id}/plan", {"plan": "max"})
    entry = api.get(f"/admin/audit?actor={operator}&account={customer.email}")["data"][0]
    assert entry["changes"]["plan"] == ["pro", "max"]
    assert entry["changes"]["credits_5h"] == [2_000, 10_000]
    assert entry["target"] == {"account": customer.account_id, "email": customer.email}


async def test_read_only_token_reads_but_cannot_change(
    stack: Stack, valkey_url: str, sync_valkey: valkey.Valkey
) -> None:
    done = run_cli(stack, "admin-token", "create", "--name", "viewer", "--scope", "read")
    assert done.code == 0
    token = done.out.strip()
    customer = await new_customer(valkey_url)
    headers = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=stack.url, headers=headers) as c:
        assert (await c.get("/admin/accounts")).status_code == 200
        refused = await c.post(f"/admin/accounts/{customer.account_id}/cancel")
        assert refused.status_code == 403
        assert refused.json()["error"]["type"] == "permission_error"
    status = sync_valkey.hget(keyspace.AccountKeys(customer.account_id).account, "status")
    assert status == "active"


# Commands that change nothing; every other command must leave an audit entry.
READ_ONLY = {
    ("account", "show"), ("account", "list"), ("key", "list"), ("ip", "list"),
    ("quarantine", "list"), ("admin-token", "list"), ("plan", "list"), ("usage", "show"),
    ("deletion", "list"), ("audit", "list"), ("export", "run"), ("upstream", "list"),
    ("upstream", "show"),
    # Restores a snapshot, audit trail included, into an empty store (tested on its own).
    ("import", "run"),
}  # fmt: skip


async def test_every_mutating_cli_command_records_an_entry(
    stack: Stack, sync_valkey: valkey.Valkey
) -> None:
    customer = await new_customer(stack.valkey_url)
    other = await new_customer(stack.valkey_url)
    bind(sync_valkey, customer)
    token_name = f"t-{secrets.token_hex(3)}"
    up = UPSTREAM_PREFIX + secrets.token_hex(3)
    runs: dict[tuple[str, str], list[str]] = {
        ("account", "create"): ["account", "create", f"c-{secrets.token_hex(3)}@example.test"],
        ("account", "plan"): ["account", "plan", customer.email, "max"],
        ("account", "extend"): ["account", "extend", customer.email, "--days", "2"],
        ("account", "cancel"): ["account", "cancel", customer.email],
        ("account", "delete"): ["account", "delete", other.email, "--yes"],
        ("account", "clear-reservations"): ["account", "clear-reservations", customer.email],
        ("key", "create"): ["key", "create", customer.email],
        ("ip", "unbind"): ["ip", "unbind", customer.key_id, "127.0.0.9"],
        ("ip", "add-slots"): ["ip", "add-slots", "1", "--key", customer.key_id],
        ("key", "release"): ["key", "release", customer.key_id],
        ("quarantine", "release"): ["quarantine", "release", customer.key_id],
        ("quarantine", "clear-flag"): ["quarantine", "clear-flag", customer.email],
        ("key", "revoke"): ["key", "revoke", customer.key_id],
        ("admin-token", "create"): ["admin-token", "create", "--name", token_name],
        ("plan", "set"): ["plan", "set", f"p-{secrets.token_hex(3)}", "--credits-5h", "5",
                          "--credits-7d", "50", "--ip-slots", "1", "--concurrency", "1"],
        ("login-link", "issue"): ["login-link", customer.email],
        ("upstream", "add"): ["upstream", "add", up, "--url", stack.sim_url, "--key-stdin"],
        ("upstream", "disable"): ["upstream", "disable", up],
        ("upstream", "enable"): ["upstream", "enable", up],
        ("upstream", "set-weight"): ["upstream", "set-weight", up, "2"],
        ("upstream", "remove"): ["upstream", "remove", up],
    }  # fmt: skip
    mutating = set(cli._COMMANDS) - READ_ONLY
    assert mutating == set(runs) | {("admin-token", "revoke")}
    shown: list[str] = []
    for command, argv in runs.items():
        if command in (("key", "release"), ("quarantine", "release")):
            quarantine(sync_valkey, customer)
        if command == ("quarantine", "clear-flag"):
            flag(sync_valkey, customer)
        if command == ("account", "clear-reservations"):
            hold(sync_valkey, customer)
        before = sync_valkey.zcard(audit.AUDIT)
        done = run_cli(stack, *argv, stdin=UPSTREAM_KEY + "\n")
        assert done.code == 0, (command, done.err)
        shown.append(done.out.strip())
        entries = sorted(trail(sync_valkey), key=lambda e: e["at_ms"])
        assert sync_valkey.zcard(audit.AUDIT) > before, f"{command} recorded nothing"
        assert entries[-1]["actor"].startswith("cli@"), command
    assert sync_valkey.zcard(keyspace.AccountKeys(customer.account_id).inflight) == 0
    tokens = orjson.loads(run_cli(stack, "admin-token", "list", "--json").out)
    token_id = next(t["token_id"] for t in tokens if t["name"] == token_name)
    assert run_cli(stack, "admin-token", "revoke", token_id).code == 0
    listed = orjson.loads(run_cli(stack, "audit", "--action", "token", "--json").out)
    assert [e["action"] for e in listed][:2] == ["token.revoke", "token.create"]
    assert listed[0]["changes"]["name"] == [token_name, None]
    assert_no_secret(
        sync_valkey, [*(s for s in shown if s.startswith(("sk_", "antex_op_"))), UPSTREAM_KEY]
    )
    text = run_cli(stack, "audit", "--account", customer.email, "--since", "1h")
    assert text.code == 0 and "account.plan" in text.out and "pro -> max" in text.out


async def test_entries_older_than_the_retention_period_are_dropped(
    async_valkey: Any, sync_valkey: valkey.Valkey
) -> None:
    actor = f"retention-{secrets.token_hex(3)}"
    writer = audit.Trail(async_valkey, actor, retention_days=10)
    now = time.time_ns() // 1_000_000  # the shared trail's other entries are near now
    await writer.record("plan.set", now - 11 * audit.DAY_MS, target={"plan": "old"})
    await writer.record("plan.set", now - 9 * audit.DAY_MS, target={"plan": "kept"})
    await writer.record("plan.set", now, target={"plan": "new"})
    mine = [e["target"]["plan"] for e in trail(sync_valkey) if e["actor"] == actor]
    assert sorted(mine) == ["kept", "new"]
