"""The admin API over the real server: operator tokens only, every operation, and tenants
that cannot cross into each other's accounts."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from gateway import openapi
from gateway.plans import Plan
from tests.integration.conftest import Customer, Stack, new_customer
from tests.integration.ops_helpers import (
    Admin,
    check_documented,
    error_type,
    operator_token,
    send,
)

METHODS = ("get", "post", "put", "delete")


@pytest.fixture
async def admin(stack: Stack, valkey_url: str) -> AsyncIterator[Admin]:
    api = Admin(stack, await operator_token(valkey_url))
    yield api
    api.close()


def admin_operations() -> list[tuple[str, str]]:
    """Every documented /admin operation, path parameters filled with placeholders."""
    ops = []
    for path, item in openapi.document()["paths"].items():
        if path.startswith("/admin/"):
            concrete = re.sub(r"\{[^}]+\}", "x0", path)
            ops += [(m.upper(), concrete) for m in METHODS if m in item]
    return ops


def test_every_admin_route_refuses_missing_wrong_and_customer_credentials(
    stack: Stack, customer: Customer
) -> None:
    ops = admin_operations()
    assert len(ops) == 32
    attempts = {
        "missing": {},
        "wrong": {"authorization": "Bearer antex_op_" + secrets.token_urlsafe(32)},
        "not bearer": {"authorization": "Basic YWRtaW46YWRtaW4="},
        "customer bearer": {"authorization": f"Bearer {customer.key}"},
        "customer x-api-key": {"x-api-key": customer.key},
    }
    with httpx.Client(base_url=stack.url) as client:
        for method, path in ops:
            for why, headers in attempts.items():
                answer = client.request(method, path, headers=headers, content=b"{}")
                assert answer.status_code == 401, (method, path, why)
                body = answer.json()
                assert body["type"] == "error", (method, path, why)
                assert body["error"]["type"] == "authentication_error", (method, path, why)
                check_documented(method, path, 401, body)


async def test_account_lifecycle_through_the_admin_api(stack: Stack, admin: Admin) -> None:
    email = f"api-{secrets.token_hex(4)}@example.test"
    created = admin.post("/admin/accounts", {"email": email, "plan": "starter"}, status=201)
    account_id = created["id"]
    assert created["subscription"] == "active" and created["keys"] == []
    admin.post("/admin/accounts", {"email": email}, status=400)  # one account per email
    assert account_id in [a["id"] for a in admin.get("/admin/accounts")["data"]]
    assert admin.get(f"/admin/accounts/{email}")["id"] == account_id  # by email or id

    key = admin.post(f"/admin/accounts/{account_id}/keys", {"name": "ci"}, status=201)
    assert key["key"].startswith(f"sk_live_{key['key_id']}_")
    assert send(stack, key["key"]).status_code == 200

    moved = admin.post(f"/admin/accounts/{account_id}/plan", {"plan": "max", "period_days": 7})
    assert moved["plan"] == "max" and moved["credits_5h"] == 10_000
    cancelled = admin.post(f"/admin/accounts/{account_id}/cancel")
    assert cancelled["subscription"] == "cancelled"
    refused = send(stack, key["key"])
    assert refused.status_code == 403 and error_type(refused) == "permission_error"
    extended = admin.post(f"/admin/accounts/{account_id}/extend", {"days": 10})
    assert extended["subscription"] == "active"
    assert extended["period_end_ms"] - moved["period_end_ms"] == 10 * 86_400_000
    renewed = admin.post(f"/admin/accounts/{account_id}/extend")  # the plan's own period
    assert renewed["period_end_ms"] - extended["period_end_ms"] == 30 * 86_400_000
    assert send(stack, key["key"]).status_code == 200

    slots = admin.post(f"/admin/accounts/{account_id}/ip-slots", {"add": 2})
    assert slots == {"account_id": account_id, "extra_ip_slots": 2}
    admin.post(f"/admin/accounts/{account_id}/ip-slots", {"add": -5}, status=400)

    usage = admin.get(f"/admin/accounts/{account_id}/usage?requests=5")
    assert usage["usage"]["plan"]["name"] == "max"
    assert usage["credits"]["five_hour"]["used"] > 0  # a few hundredths of a credit
    recent = usage["recent_requests"]
    assert len(recent) == 2 and {r["model"] for r in recent} == {"claude-sonnet-4-6"}
    assert all(r["key_id"] == key["key_id"] and r["status"] == 200 for r in recent)

    events = admin.get(f"/admin/accounts/{account_id}/events?count=10")["data"]
    assert events == []  # nothing security-related happened yet
    no_plan = admin.post(
        "/admin/accounts", {"email": f"np-{secrets.token_hex(4)}@t.test", "plan": None}, 201
    )
    assert no_plan["plan"] is None and no_plan["subscription"] == "none"
    admin.post(f"/admin/accounts/{no_plan['id']}/extend", {"days": 3}, status=400)


async def test_key_lifecycle_through_the_admin_api(stack: Stack, admin: Admin) -> None:
    customer = await new_customer(stack.valkey_url)
    key_id = customer.key_id
    assert send(stack, customer.key, "127.0.0.60").status_code == 200
    assert send(stack, customer.key, "127.0.0.61").status_code == 200  # pro: 2 slots

    listed = admin.get(f"/admin/accounts/{customer.account_id}/keys")["data"]
    assert [k["key_id"] for k in listed] == [key_id]
    assert listed[0]["last_used_ms"] and listed[0]["bound_ips"] == ["127.0.0.60", "127.0.0.61"]
    shown = admin.get(f"/admin/keys/{key_id}")
    assert shown["account_id"] == customer.account_id and shown["ip_slots"] == 2
    assert admin.get(f"/admin/keys/{listed[0]['prefix']}")["key_id"] == key_id

    ips = admin.get(f"/admin/keys/{key_id}/ips")
    assert [b["ip"] for b in ips["bound"]] == ["127.0.0.60", "127.0.0.61"]
    full = send(stack, customer.key, "127.0.0.62")
    assert full.status_code == 403 and error_type(full) == "ip_limit_reached"
    assert admin.post(f"/admin/keys/{key_id}/ips/unbind", {"ip": "127.0.0.60"}) == {
        "key_id": key_id,
        "unbound": ["127.0.0.60"],
    }
    assert send(stack, customer.key, "127.0.0.62").status_code == 200  # the freed slot
    admin.post(f"/admin/keys/{key_id}/ips/unbind", {"ip": "127.0.0.60"}, status=404)
    admin.post(f"/admin/keys/{key_id}/ips/unbind", {}, status=400)
    added = admin.post(f"/admin/keys/{key_id}/ip-slots", {"add": 1})
    assert added == {"key_id": key_id, "extra_ip_slots": 1, "ip_slots": 3}
    assert send(stack, customer.key, "127.0.0.63").status_code == 200
    everything = admin.post(f"/admin/keys/{key_id}/ips/unbind", {"all": True})
    assert everything["unbound"] == ["127.0.0.61", "127.0.0.62", "127.0.0.63"]
    events = admin.get(f"/admin/accounts/{customer.account_id}/events")["data"]
    assert [e["type"] for e in events] == ["ip_unbound", "ip_unbound"]

    revoked = admin.post(f"/admin/keys/{key_id}/revoke")
    assert revoked["status"] == "revoked"
    gone = send(stack, customer.key)
    assert gone.status_code == 401 and error_type(gone) == "authentication_error"
    admin.post(f"/admin/keys/{key_id}/release", status=400)  # revoked stays revoked
    assert send(stack, customer.key).status_code == 401
    admin.get("/admin/keys/doesnotexist", status=404)


async def test_plans_through_the_admin_api(stack: Stack, admin: Admin) -> None:
    name = f"api-plan-{secrets.token_hex(3)}"
    customer = await new_customer(
        stack.valkey_url, Plan(name, 100, 1_000, ip_slots=1, concurrency=2, period_days=30)
    )
    saved = admin.put(
        f"/admin/plans/{name}",
        {"credits_5h": 300, "credits_7d": 3_000, "ip_slots": 4, "concurrency": 2},
    )
    assert saved["accounts_updated"] == 1 and saved["plan"]["ip_slots"] == 4
    assert name in [p["name"] for p in admin.get("/admin/plans")["data"]]
    account = admin.get(f"/admin/accounts/{customer.account_id}")
    assert account["credits_5h"] == 300 and account["keys"][0]["ip_slots"] == 4
    admin.put(f"/admin/plans/{name}", {"credits_5h": 0, "credits_7d": 1}, status=400)
    bad = admin.put(
        f"/admin/plans/{name}",
        {"credits_5h": 10, "credits_7d": 5, "ip_slots": 1, "concurrency": 1},
        status=400,
    )
    assert "credits_7d" in bad["error"]["message"]


async def test_keys_beyond_the_plans_cap_are_refused_by_the_admin_api(
    stack: Stack, admin: Admin
) -> None:
    name = f"api-cap-{secrets.token_hex(3)}"
    body = {"credits_5h": 100, "credits_7d": 1_000, "ip_slots": 1, "concurrency": 2}
    assert admin.put(f"/admin/plans/{name}", {**body, "max_keys": 1})["plan"]["max_keys"] == 1
    customer = await new_customer(stack.valkey_url, Plan(name, 100, 1_000, 1, 2, 30, max_keys=1))
    assert admin.get(f"/admin/accounts/{customer.account_id}")["max_keys"] == 1
    refused = admin.post(
        f"/admin/accounts/{customer.account_id}/keys", {"name": "second"}, status=403
    )
    assert refused["error"]["type"] == "key_limit_reached"
    assert refused["error"]["message"].startswith("The plan allows 1 active API key and")
    admin.post(f"/admin/keys/{customer.key_id}/revoke")
    admin.post(f"/admin/accounts/{customer.account_id}/keys", {"name": "second"}, status=201)
    # A plan edit without max_keys keeps the cap it had.
    assert admin.put(f"/admin/plans/{name}", body)["plan"]["max_keys"] == 1


async def test_admin_api_rejects_bad_bodies_and_unknown_accounts(admin: Admin) -> None:
    response = admin.http.post("/admin/accounts", content=b"{not json")
    assert response.status_code == 400 and error_type(response) == "invalid_request_error"
    admin.post("/admin/accounts", {"email": "not-an-email"}, status=400)
    admin.post("/admin/accounts", {"email": "x@y.test", "plan": "no-such-plan"}, status=404)
    admin.get("/admin/accounts/nobody@nowhere.test", status=404)
    admin.post("/admin/accounts/nobody@nowhere.test/cancel", status=404)
    big = admin.http.post("/admin/accounts", content=b"{" + b" " * 70_000 + b"}")
    assert big.status_code == 400 and error_type(big) == "payload_too_large"


def try_to_cross_over(stack: Stack, tenant_a: Customer, tenant_b: Customer) -> None:
    """A's key, pointed at B every way we can think of, still sees only A."""
    attempts = [
        "/v1/usage",
        f"/v1/usage?account_id={tenant_b.account_id}",
        f"/v1/usage?account={tenant_b.email}",
        f"/api/oauth/usage?account_id={tenant_b.account_id}",
    ]
    with httpx.Client(base_url=stack.url) as client:
        for path in attempts:
            for extra in (
                {},
                {"x-account-id": tenant_b.account_id, "anthropic-account": tenant_b.email},
            ):
                answer = client.get(path, headers={"x-api-key": tenant_a.key, **extra})
                assert answer.status_code == 200, path
                body = answer.json()
                assert body["plan"]["name"] == "pro", path
                assert body["five_hour"]["utilization"] == 0, path
        # A's key id with B's secret is no key at all.
        forged = f"{tenant_a.key.rsplit('_', 1)[0]}_{tenant_b.key.rsplit('_', 1)[1]}"
        assert client.get("/v1/usage", headers={"x-api-key": forged}).status_code == 401
        # The admin API never takes a customer key, whoever's account it names.
        for path in (
            f"/admin/accounts/{tenant_b.account_id}",
            f"/admin/accounts/{tenant_a.account_id}",
            f"/admin/accounts/{tenant_b.account_id}/usage",
            f"/admin/keys/{tenant_b.key_id}/revoke",
        ):
            for headers in (
                {"authorization": f"Bearer {tenant_a.key}"},
                {"x-api-key": tenant_a.key},
            ):
                method = "POST" if path.endswith("revoke") else "GET"
                assert client.request(method, path, headers=headers).status_code == 401


async def test_a_customer_key_only_ever_reads_its_own_account(stack: Stack, admin: Admin) -> None:
    tenant_a = await new_customer(stack.valkey_url)
    other_plan = Plan(
        f"iso-{secrets.token_hex(3)}", 50, 500, ip_slots=2, concurrency=2, period_days=30
    )
    tenant_b = await new_customer(stack.valkey_url, other_plan)
    assert send(stack, tenant_b.key).status_code == 200  # B has usage, A has none

    try_to_cross_over(stack, tenant_a, tenant_b)
    # B is untouched, and only an operator token can read it.
    assert send(stack, tenant_b.key).status_code == 200
    seen = admin.get(f"/admin/accounts/{tenant_b.account_id}/usage")
    assert seen["usage"]["plan"]["name"] == other_plan.name
    assert seen["credits"]["five_hour"]["used"] > 0


def test_openapi_json_is_served_and_matches_the_module(stack: Stack) -> None:
    answer = httpx.get(f"{stack.url}/openapi.json")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.json() == orjson.loads(orjson.dumps(openapi.document()))


async def test_a_body_of_the_wrong_shape_is_a_400_naming_the_field(admin: Admin) -> None:
    email = f"typed-{secrets.token_hex(4)}@example.test"
    account = admin.post("/admin/accounts", {"email": email, "plan": "starter"}, status=201)
    plan = {"credits_5h": 100, "credits_7d": 1_000, "ip_slots": 1, "concurrency": 2}
    upstream = {"name": "typed", "url": "http://127.0.0.1:9", "key": "k"}
    wrong = [
        ("POST", "/admin/accounts", {"email": 5}, "email"),
        ("POST", "/admin/accounts", {"plan": "starter"}, "email"),
        ("POST", f"/admin/accounts/{account['id']}/extend", {"days": "3"}, "days"),
        ("POST", f"/admin/accounts/{account['id']}/ip-slots", {"add": True}, "add"),
        ("POST", f"/admin/accounts/{account['id']}/keys", {"name": ["a"]}, "name"),
        ("PUT", "/admin/plans/typed", {**plan, "concurrency": 0}, "concurrency"),
        ("PUT", "/admin/plans/typed", {**plan, "max_keys": 1.5}, "max_keys"),
        ("POST", "/admin/upstreams", {**upstream, "models": [""]}, "models.0"),
        ("POST", "/admin/upstreams/x0/weight", {"weight": 1001}, "weight"),
    ]
    for method, path, body, name in wrong:
        error = admin.call(method, path, body, 400)
        assert error["error"]["type"] == "invalid_request_error", (path, body)
        assert error["error"]["message"].startswith(f"{name}: "), (path, body, error)
    missing = admin.post("/admin/accounts", {}, status=400)
    assert missing["error"]["message"] == "email: field required"
    for raw in (b"[1]", b'"text"'):
        answer = admin.http.post("/admin/accounts", content=raw)
        assert answer.status_code == 400
        assert answer.json()["error"]["message"].startswith("Request body: Expected `object`")
    deep = b'{"email": "a@b.test", "x": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    answer = admin.http.post("/admin/accounts", content=deep)
    assert answer.status_code == 400 and error_type(answer) == "invalid_request_error"


def test_the_api_reference_page_renders_the_served_document(stack: Stack) -> None:
    page = httpx.get(f"{stack.url}/admin/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'fetch("/openapi.json")' in page.text
    assert "<script src" not in page.text and "http" not in page.text.split("<body>")[1]


async def test_out_of_range_periods_and_counts_are_refused_and_listings_keep_working(
    stack: Stack, admin: Admin
) -> None:
    email = f"range-{secrets.token_hex(4)}@example.test"
    account_id = admin.post("/admin/accounts", {"email": email, "plan": "starter"}, status=201)[
        "id"
    ]
    before = admin.get(f"/admin/accounts/{account_id}")["period_end_ms"]
    refused = [
        ("extend", {"days": 3_000_000}),
        ("extend", {"days": 2**63 - 1}),
        ("plan", {"plan": "starter", "period_days": 3_000_000}),
        ("ip-slots", {"add": 2**62}),
        ("ip-slots", {"add": 5_000_000}),
    ]
    for action, body in refused:
        error = admin.post(f"/admin/accounts/{account_id}/{action}", body, status=400)
        assert error["error"]["type"] == "invalid_request_error", (action, body)
    # The largest extension that still fits is taken, and every view still renders.
    for _ in range(2):  # ~2,740 years each: 2026 + 2 x 2,740 still fits, a third does not
        admin.post(f"/admin/accounts/{account_id}/extend", {"days": 1_000_000})
    admin.post(f"/admin/accounts/{account_id}/extend", {"days": 1_000_000}, status=400)
    assert admin.get(f"/admin/accounts/{account_id}")["period_end_ms"] > before
    assert [a["id"] for a in admin.get(f"/admin/accounts?q={email}")["data"]] == [account_id]
    admin.get(f"/admin/accounts/{account_id}/usage")
    admin.put("/admin/plans/huge", {"credits_5h": 1, "credits_7d": 2, "ip_slots": 2**40,
                                    "concurrency": 1}, status=400)  # fmt: skip
