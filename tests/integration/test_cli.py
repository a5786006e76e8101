"""Every operator command of ``antex``, run as a real subprocess against the test Valkey,
with its effect checked on the real server."""

from __future__ import annotations

import secrets

import httpx
import orjson

from gateway.plans import Plan
from tests.integration.conftest import Stack, new_customer
from tests.integration.ops_helpers import cli, error_type, send

ONE_IP = Plan("cli-ip1", 1_000, 10_000, ip_slots=1, concurrency=8, period_days=30)
DAY_MS = 86_400_000


def email() -> str:
    return f"cli-{secrets.token_hex(4)}@example.test"


def test_account_commands(stack: Stack) -> None:
    address = email()
    created = cli(stack, "account", "create", address, "--plan", "starter", "--json").json()
    assert created["email"] == address and created["plan"] == "starter"
    assert created["subscription"] == "active" and created["keys"] == []
    again = cli(stack, "account", "create", address)
    assert again.code == 1 and "already exists" in again.err

    default = cli(stack, "account", "create", email(), "--json").json()
    assert default["plan"] == "pro"  # ANTEX_DEFAULT_PLAN
    bare = cli(stack, "account", "create", email(), "--no-plan", "--json").json()
    assert bare["plan"] is None and bare["subscription"] == "none"

    text = cli(stack, "account", "show", address)
    assert text.code == 0 and created["id"] in text.out and "starter (active)" in text.out
    assert cli(stack, "account", "show", created["id"], "--json").json()["email"] == address
    listed = cli(stack, "account", "list", "--json").json()
    assert {created["id"], default["id"], bare["id"]} <= {a["id"] for a in listed}
    assert address in cli(stack, "account", "list").out

    moved = cli(stack, "account", "plan", address, "max", "--period-days", "5", "--json").json()
    assert moved["plan"] == "max" and moved["credits_7d"] == 100_000
    longer = cli(stack, "account", "extend", address, "--days", "2", "--json").json()
    assert longer["period_end_ms"] - moved["period_end_ms"] == 2 * DAY_MS
    renewed = cli(stack, "account", "extend", address, "--json").json()
    assert renewed["period_end_ms"] - longer["period_end_ms"] == 30 * DAY_MS
    # Out-of-range numbers are refused before or by the operation, and the views still work.
    for days in ("99999999999999999999", "2147483647", "3000000"):
        refused = cli(stack, "account", "extend", address, "--days", days)
        assert refused.code != 0 and "Traceback" not in refused.err, refused.err
    assert cli(stack, "account", "show", address).code == 0

    key = cli(stack, "key", "create", address).out.strip()
    assert send(stack, key).status_code == 200
    cancelled = cli(stack, "account", "cancel", address, "--json").json()
    assert cancelled["subscription"] == "cancelled"
    refused = send(stack, key)
    assert refused.status_code == 403 and error_type(refused) == "permission_error"
    assert "is on plan pro until" in cli(stack, "account", "plan", address, "pro").out
    assert send(stack, key).status_code == 200


def test_key_and_ip_commands(stack: Stack) -> None:
    address = email()
    assert cli(stack, "account", "create", address, "--plan", "pro").code == 0
    created = cli(stack, "key", "create", address, "--name", "laptop")
    assert created.code == 0 and "cannot be shown again" in created.err
    key = created.out.strip()  # stdout is the key alone
    key_id = key.split("_")[2]
    assert send(stack, key, "127.0.0.70").status_code == 200

    listed = cli(stack, "key", "list", address, "--json").json()
    assert [(k["key_id"], k["name"], k["status"]) for k in listed] == [(key_id, "laptop", "active")]
    assert listed[0]["bound_ips"] == ["127.0.0.70"] and listed[0]["last_used_ms"]
    text = cli(stack, "key", "list", address).out
    assert key_id in text and "1/2 127.0.0.70" in text

    ips = cli(stack, "ip", "list", key_id, "--json").json()
    assert ips["ip_slots"] == 2 and [b["ip"] for b in ips["bound"]] == ["127.0.0.70"]
    assert "1 of 2 IP slots bound" in cli(stack, "ip", "list", key_id).out
    key_slots = cli(stack, "ip", "add-slots", "1", "--key", key_id, "--json").json()
    assert key_slots == {"key_id": key_id, "extra_ip_slots": 1, "ip_slots": 3}
    account_slots = cli(stack, "ip", "add-slots", "2", "--account", address, "--json").json()
    assert account_slots["extra_ip_slots"] == 2
    assert cli(stack, "ip", "list", key_id, "--json").json()["ip_slots"] == 5
    removed = cli(stack, "ip", "add-slots", "-2", "--account", address, "--json").json()
    assert removed["extra_ip_slots"] == 0
    too_many = cli(stack, "ip", "add-slots", "-1", "--account", address)
    assert too_many.code == 1 and "extra slots to remove" in too_many.err

    for n in (71, 72):
        assert send(stack, key, f"127.0.0.{n}").status_code == 200  # 3 slots now
    full = send(stack, key, "127.0.0.73")
    assert full.status_code == 403 and error_type(full) == "ip_limit_reached"
    one = cli(stack, "ip", "unbind", key_id, "127.0.0.70", "--json").json()
    assert one == {"key_id": key_id, "unbound": ["127.0.0.70"]}
    assert send(stack, key, "127.0.0.73").status_code == 200
    rest = cli(stack, "ip", "unbind", key_id, "--all", "--json").json()
    assert rest["unbound"] == ["127.0.0.71", "127.0.0.72", "127.0.0.73"]
    neither = cli(stack, "ip", "unbind", key_id)
    assert neither.code == 1 and "--all" in neither.err

    revoked = cli(stack, "key", "revoke", f"sk_live_{key_id}_…", "--json").json()
    assert revoked["status"] == "revoked"
    gone = send(stack, key, "127.0.0.70")
    assert gone.status_code == 401 and error_type(gone) == "authentication_error"
    assert "revoked" in cli(stack, "key", "list", address).out


async def test_quarantine_commands(stack: Stack) -> None:
    customer = await new_customer(stack.valkey_url, ONE_IP)
    assert send(stack, customer.key, "127.0.0.80").status_code == 200
    for n in (81, 82, 83):
        send(stack, customer.key, f"127.0.0.{n}")
    locked = send(stack, customer.key, "127.0.0.80")
    assert error_type(locked) == "key_quarantined"

    text = cli(stack, "quarantine", "list")
    assert text.code == 0 and customer.key_id in text.out and customer.email in text.out
    detail = cli(stack, "quarantine", "list", "--account", customer.email)
    assert "key_quarantined" in detail.out and "127.0.0.81" in detail.out
    mine = cli(stack, "quarantine", "list", "--account", customer.account_id, "--json").json()
    assert [q["key_id"] for q in mine["quarantined"]] == [customer.key_id]

    released = cli(stack, "quarantine", "release", customer.key_id)
    assert released.code == 0 and "released" in released.out
    assert send(stack, customer.key, "127.0.0.80").status_code == 200
    twice = cli(stack, "quarantine", "release", customer.key_id)
    assert twice.code == 1 and "not quarantined" in twice.err
    events = cli(stack, "quarantine", "list", "--account", customer.email, "--json").json()
    assert [e["type"] for e in events["events"]][:2] == ["key_released", "key_quarantined"]


def test_admin_token_commands(stack: Stack) -> None:
    created = cli(stack, "admin-token", "create", "--name", "ops-laptop")
    token = created.out.strip()
    assert created.code == 0 and token.startswith("antex_op_") and "cannot be shown" in created.err
    auth = {"authorization": f"Bearer {token}"}
    assert httpx.get(f"{stack.url}/admin/plans", headers=auth).status_code == 200

    listed = cli(stack, "admin-token", "list", "--json").json()
    mine = [t for t in listed if t["name"] == "ops-laptop"]
    assert len(mine) == 1 and token not in orjson.dumps(listed).decode()
    assert "ops-laptop" in cli(stack, "admin-token", "list").out
    as_json = cli(stack, "admin-token", "create", "--json").json()
    assert as_json["token"].startswith("antex_op_") and as_json["name"] == "operator"

    revoked = cli(stack, "admin-token", "revoke", mine[0]["token_id"], "--json").json()
    assert revoked == {"token_id": mine[0]["token_id"], "revoked": True}
    assert httpx.get(f"{stack.url}/admin/plans", headers=auth).status_code == 401
    assert cli(stack, "admin-token", "revoke", mine[0]["token_id"]).code == 1


async def test_plan_commands(stack: Stack) -> None:
    name = f"cli-plan-{secrets.token_hex(3)}"
    flags = ["--credits-5h", "100", "--credits-7d", "1000", "--ip-slots", "1"]
    saved = cli(stack, "plan", "set", name, *flags, "--concurrency", "2", "--json").json()
    assert saved["plan"]["name"] == name and saved["accounts_updated"] == 0
    address = email()
    cli(stack, "account", "create", address, "--plan", name)
    flags[-1] = "3"
    resaved = cli(stack, "plan", "set", name, *flags, "--concurrency", "2", "--period-days", "7")
    assert resaved.code == 0 and "copied into 1 accounts" in resaved.out
    account = cli(stack, "account", "show", address, "--json").json()
    assert account["ip_slots"] == 3 and account["credits_5h"] == 100
    plans = cli(stack, "plan", "list", "--json").json()
    assert next(p for p in plans if p["name"] == name)["period_days"] == 7
    assert name in cli(stack, "plan", "list").out
    bad = cli(stack, "plan", "set", name, "--credits-5h", "10", "--credits-7d", "5",
              "--ip-slots", "1", "--concurrency", "1")  # fmt: skip
    assert bad.code == 1 and "credits_7d" in bad.err


async def test_usage_command(stack: Stack) -> None:
    customer = await new_customer(stack.valkey_url)
    for _ in range(2):
        assert send(stack, customer.key).status_code == 200
    report = cli(stack, "usage", customer.email, "--requests", "5", "--json").json()
    assert report["account_id"] == customer.account_id
    assert report["usage"]["plan"]["name"] == "pro"
    assert report["usage"]["five_hour"]["resets_at"] is not None
    assert report["credits"]["five_hour"]["used"] > 0
    recent = report["recent_requests"]
    assert len(recent) == 2 and all(r["key_id"] == customer.key_id for r in recent)
    assert all(r["model"] == "claude-sonnet-4-6" and r["output_tokens"] > 0 for r in recent)
    text = cli(stack, "usage", customer.email).out
    assert "5-hour" in text and "weekly" in text and "resets at" in text
    assert text.count("claude-sonnet-4-6") == 2


def test_operator_mistakes_exit_nonzero_with_a_message(stack: Stack) -> None:
    for args, words in (
        (("account", "show", "nobody@nowhere.test"), "no account"),
        (("key", "revoke", "doesnotexist"), "no key"),
        (("key", "list", "not-an-account"), "no account"),
        (("account", "create", "not-an-email"), "not an email"),
        (("account", "create", email(), "--plan", "no-such-plan"), "no plan"),
        (("ip", "unbind", "doesnotexist", "--all"), "no key"),
    ):
        result = cli(stack, *args)
        assert result.code == 1 and result.err.startswith("antex: ") and words in result.err


async def test_keys_beyond_the_plans_cap_are_refused_by_the_cli(stack: Stack) -> None:
    name = f"cli-cap-{secrets.token_hex(3)}"
    flags = ["--credits-5h", "100", "--credits-7d", "1000", "--ip-slots", "1", "--concurrency"]
    saved = cli(stack, "plan", "set", name, *flags, "2", "--max-keys", "2", "--json").json()
    assert saved["plan"]["max_keys"] == 2
    address = email()
    cli(stack, "account", "create", address, "--plan", name)
    keys = [cli(stack, "key", "create", address, "--name", f"k{n}").out.strip() for n in (1, 2)]
    assert all(k.startswith("sk_live_") for k in keys)
    third = cli(stack, "key", "create", address, "--name", "k3")
    assert third.code == 1 and third.out == ""
    assert third.err == (
        "antex: The plan allows 2 active API keys and the account has 2; revoke a key you no "
        "longer use, or ask your operator for a plan with more keys.\n"
    )
    account = cli(stack, "account", "show", address, "--json").json()
    assert account["max_keys"] == 2 and len(account["keys"]) == 2
    assert "at most 2 active" in cli(stack, "account", "show", address).out
    # Raising the cap reaches the account at once; an edit without --max-keys keeps it.
    cli(stack, "plan", "set", name, *flags, "2", "--max-keys", "3")
    assert cli(stack, "key", "create", address, "--name", "k3").code == 0
    cli(stack, "plan", "set", name, *flags, "3")
    plans = cli(stack, "plan", "list", "--json").json()
    assert next(p for p in plans if p["name"] == name)["max_keys"] == 3
    assert "KEYS" in cli(stack, "plan", "list").out
