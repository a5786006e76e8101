"""Key security over the real two-worker server: IP binding and its races, IPv6 /64s,
forwarded headers, auto-quarantine and release, plan checks, revocation on every worker."""

from __future__ import annotations

import contextlib
import http.client
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import orjson
import psutil
import pytest
import valkey.asyncio as avalkey

from gateway import accounts, keyspace
from gateway.clock import system_clock
from gateway.embedded_valkey import free_port
from gateway.plans import Plan
from tests.integration.conftest import ROOT, Stack, gateway_env, new_customer, stop, wait_http
from tests.integration.ops_helpers import (
    MESSAGE,
    Admin,
    cli,
    client_from,
    error_type,
    operator_token,
    send,
    server_now,
)

ONE_IP = Plan("sec-ip1", 1_000, 10_000, ip_slots=1, concurrency=8, period_days=30)
TWO_IPS = Plan("sec-ip2", 1_000, 10_000, ip_slots=2, concurrency=8, period_days=30)


async def bound_ips(stack: Stack, account_id: str, key_id: str) -> list[str]:
    client = avalkey.Valkey.from_url(stack.valkey_url, decode_responses=True)
    try:
        found = await accounts.list_ips(client, account_id, key_id)
    finally:
        await client.aclose()
    return [entry["ip"] for entry in found["bound"]]


async def test_two_new_ips_racing_for_the_last_slot_exactly_one_wins(stack: Stack) -> None:
    for round_ in range(5):
        customer = await new_customer(stack.valkey_url, TWO_IPS)
        assert send(stack, customer.key, "127.0.0.20").status_code == 200
        racers = [f"127.0.{round_ + 1}.21", f"127.0.{round_ + 1}.22"]
        barrier = threading.Barrier(len(racers))

        def race(
            ip: str, key: str = customer.key, barrier: threading.Barrier = barrier
        ) -> httpx.Response:
            with client_from(ip) as client:
                barrier.wait()
                return client.post(
                    f"{stack.url}/v1/messages",
                    content=orjson.dumps(MESSAGE),
                    headers={"x-api-key": key},
                )

        with ThreadPoolExecutor(len(racers)) as pool:
            answers = list(pool.map(race, racers))
        assert sorted(r.status_code for r in answers) == [200, 403]
        loser = next(r for r in answers if r.status_code == 403)
        assert error_type(loser) == "ip_limit_reached"
        winner = racers[[r.status_code for r in answers].index(200)]
        bound = await bound_ips(stack, customer.account_id, customer.key_id)
        assert sorted(bound) == sorted(["127.0.0.20", winner])


async def test_ipv6_clients_bind_by_their_64(stack: Stack) -> None:
    customer = await new_customer(stack.valkey_url, ONE_IP)
    # 127.0.0.2 is the stack's trusted proxy, so it may say who the client is.
    first = send(stack, customer.key, "127.0.0.2", **{"x-forwarded-for": "2001:db8:aa:1::1"})
    assert first.status_code == 200
    # A privacy address rotated inside the same /64 is the same client.
    rotated = send(
        stack, customer.key, "127.0.0.2", **{"x-forwarded-for": "2001:db8:aa:1:9c4e:77ff:fe01:2"}
    )
    assert rotated.status_code == 200
    other = send(stack, customer.key, "127.0.0.2", **{"x-forwarded-for": "2001:db8:aa:2::1"})
    assert other.status_code == 403 and error_type(other) == "ip_limit_reached"
    assert await bound_ips(stack, customer.account_id, customer.key_id) == ["2001:db8:aa:1::/64"]


@contextlib.contextmanager
def ipv6_gateway(valkey_url: str, simulator: str, tmp_path: Path) -> Iterator[str]:
    """A one-worker gateway listening on ::1 only; yields its base URL."""
    port = free_port()
    data_dir = tmp_path / "v6"
    data_dir.mkdir()
    env = gateway_env(valkey_url, simulator, data_dir, port, ANTEX_HOST="::1", ANTEX_WORKERS="1")
    with open(tmp_path / "gateway-v6.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve"], cwd=ROOT, env=env, stdout=log, stderr=log
        )
        try:
            url = f"http://[::1]:{port}"
            wait_http(f"{url}/healthz", proc, "IPv6 gateway")
            yield url
        finally:
            stop(proc)


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def post_to(url: str, key: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/messages", content=orjson.dumps(MESSAGE), headers={"x-api-key": key}
    )


async def test_an_ipv6_socket_peer_binds_by_its_64(
    stack: Stack, valkey_url: str, simulator: str, tmp_path: Path
) -> None:
    if not socket.has_ipv6 or not ipv6_loopback():
        pytest.skip("this host has no IPv6 loopback (::1)")
    customer = await new_customer(valkey_url, ONE_IP)
    with ipv6_gateway(valkey_url, simulator, tmp_path) as url:
        answer = post_to(url, customer.key)
    assert answer.status_code == 200, answer.text
    assert await bound_ips(stack, customer.account_id, customer.key_id) == ["::/64"]


async def test_forwarded_headers_from_an_untrusted_peer_are_ignored(stack: Stack) -> None:
    customer = await new_customer(stack.valkey_url, ONE_IP)
    spoofed = send(stack, customer.key, "127.0.0.30", **{"x-forwarded-for": "198.51.100.7"})
    assert spoofed.status_code == 200
    assert await bound_ips(stack, customer.account_id, customer.key_id) == ["127.0.0.30"]
    # Another host cannot borrow the bound address by claiming it in a header.
    for header, value in (("x-forwarded-for", "127.0.0.30"), ("forwarded", "for=127.0.0.30")):
        borrowed = send(stack, customer.key, "127.0.0.31", **{header: value})
        assert borrowed.status_code == 403 and error_type(borrowed) == "ip_limit_reached"


async def test_a_trusted_proxy_is_believed_about_the_client(stack: Stack) -> None:
    customer = await new_customer(stack.valkey_url, ONE_IP)
    # The client may prepend anything; the proxy appends the peer it saw, and that counts.
    chain = {"x-forwarded-for": "203.0.113.50, 198.51.100.8"}
    assert send(stack, customer.key, "127.0.0.2", **chain).status_code == 200
    assert await bound_ips(stack, customer.account_id, customer.key_id) == ["198.51.100.8"]
    same = send(stack, customer.key, "127.0.0.2", forwarded='for="198.51.100.8:4711"')
    assert same.status_code == 200
    other = send(stack, customer.key, "127.0.0.2", **{"x-forwarded-for": "198.51.100.9"})
    assert other.status_code == 403 and error_type(other) == "ip_limit_reached"


async def test_unbound_ips_from_several_addresses_quarantine_the_key_until_cli_release(
    stack: Stack,
) -> None:
    customer = await new_customer(stack.valkey_url, ONE_IP)
    assert send(stack, customer.key, "127.0.0.40").status_code == 200
    refusals = [send(stack, customer.key, f"127.0.0.{n}") for n in (41, 42, 43)]
    assert [error_type(r) for r in refusals] == [
        "ip_limit_reached",
        "ip_limit_reached",
        "key_quarantined",
    ]
    home = send(stack, customer.key, "127.0.0.40")
    assert home.status_code == 403 and error_type(home) == "key_quarantined"

    listed = cli(stack, "quarantine", "list", "--json").json()["quarantined"]
    entry = next(q for q in listed if q["key_id"] == customer.key_id)
    assert entry["email"] == customer.email and "unbound IP" in entry["quarantine_reason"]
    events = cli(stack, "quarantine", "list", "--account", customer.email, "--json").json()
    quarantined = [e for e in events["events"] if e["type"] == "key_quarantined"]
    assert sorted(quarantined[0]["ips"]) == ["127.0.0.41", "127.0.0.42", "127.0.0.43"]

    released = cli(stack, "key", "release", customer.key_id, "--json").json()
    assert released["status"] == "active"
    assert send(stack, customer.key, "127.0.0.40").status_code == 200
    listed = cli(stack, "quarantine", "list", "--json").json()["quarantined"]
    assert customer.key_id not in [q["key_id"] for q in listed]


async def forget_cached_key(valkey_url: str, key_id: str) -> None:
    """Makes every worker verify the key's secret again (as a revocation would)."""
    client = avalkey.Valkey.from_url(valkey_url)
    try:
        await client.publish(keyspace.INVALIDATE_CHANNEL, key_id)
    finally:
        await client.aclose()


def wrong_secret(key: str) -> str:
    return f"{key.rsplit('_', 1)[0]}_{secrets.token_hex(20)}"


async def test_a_burst_of_wrong_secrets_alerts_the_operator_and_never_locks_the_owner_out(
    stack: Stack, valkey_url: str
) -> None:
    customer = await new_customer(stack.valkey_url, TWO_IPS)
    assert send(stack, customer.key, "127.0.0.51").status_code == 200  # binds .51
    await forget_cached_key(stack.valkey_url, customer.key_id)
    with client_from("127.0.0.50") as client:
        for _ in range(25):
            answer = client.post(
                f"{stack.url}/v1/messages",
                content=b"{}",
                headers={"x-api-key": wrong_secret(customer.key)},
            )
            assert answer.status_code == 401
    # The owner's bound address still gets its secret checked, and the key stays active.
    assert send(stack, customer.key, "127.0.0.51").status_code == 200

    admin = Admin(stack, await operator_token(valkey_url))
    try:
        assert customer.key_id not in [q["key_id"] for q in admin.get("/admin/quarantine")["data"]]
        events = admin.get(f"/admin/accounts/{customer.account_id}/events")["data"]
        alerts = [e for e in events if e["type"] == "wrong_secrets"]
        assert len(alerts) == 1 and alerts[0]["ips"] == ["127.0.0.50"]
        assert "wrong secrets" in alerts[0]["reason"]
        admin.post(f"/admin/keys/{customer.key_id}/release", status=400)  # not quarantined
    finally:
        admin.close()


async def test_wrong_secrets_from_200_addresses_leave_the_owners_bound_address_working(
    stack: Stack,
) -> None:
    customer = await new_customer(stack.valkey_url, ONE_IP)
    assert send(stack, customer.key, "127.0.0.52").status_code == 200
    await forget_cached_key(stack.valkey_url, customer.key_id)

    def attack(n: int) -> int:
        with client_from(f"127.0.{2 + n // 200}.{1 + n % 200}") as client:
            return client.post(
                f"{stack.url}/v1/messages",
                content=b"{}",
                headers={"x-api-key": wrong_secret(customer.key)},
            ).status_code

    with ThreadPoolExecutor(16) as pool:
        assert set(pool.map(attack, range(200))) == {401}
    assert send(stack, customer.key, "127.0.0.52").status_code == 200


async def test_a_throttled_shared_address_still_lets_valid_keys_through(stack: Stack) -> None:
    victim = await new_customer(stack.valkey_url)
    neighbour = await new_customer(stack.valkey_url)
    assert send(stack, victim.key, "127.0.0.53").status_code == 200
    await forget_cached_key(stack.valkey_url, victim.key_id)
    with client_from("127.0.0.53") as client:
        # Far past the per-address failure budget of both workers.
        for n in range(80):
            answer = client.post(
                f"{stack.url}/v1/messages",
                content=b"{}",
                headers={"x-api-key": wrong_secret(victim.key) if n % 2 else f"sk-junk-{n}"},
            )
            assert answer.status_code == 401
    assert send(stack, neighbour.key, "127.0.0.53").status_code == 200
    assert send(stack, victim.key, "127.0.0.53").status_code == 200


async def test_no_plan_expired_plan_and_cancelled_plan_are_refused(stack: Stack) -> None:
    client = avalkey.Valkey.from_url(stack.valkey_url, decode_responses=True)
    try:
        no_plan = await accounts.create_account(
            client, f"np-{secrets.token_hex(4)}@t.test", None, now_ms=system_clock()
        )
        expired = await accounts.create_account(
            client,
            f"ex-{secrets.token_hex(4)}@t.test",
            "pro",
            now_ms=server_now(stack) - 31 * accounts.DAY_MS,  # pro runs 30 days
        )
        keys = {
            name: (
                await accounts.create_key(client, account_id, "k", rounds=4, now_ms=system_clock())
            ).key
            for name, account_id in (("none", no_plan), ("expired", expired))
        }
        cancelled = await new_customer(stack.valkey_url)
        assert send(stack, cancelled.key).status_code == 200
        await accounts.cancel_plan(client, cancelled.account_id, now_ms=server_now(stack))
        keys["cancelled"] = cancelled.key

        for why, key in keys.items():
            refused = send(stack, key)
            assert refused.status_code == 403, why
            assert error_type(refused) == "permission_error", why
            assert "No active plan" in refused.json()["error"]["message"], why
        assert "ended" in send(stack, keys["expired"]).json()["error"]["message"]

        # Assigning a plan, or extending the ended one, turns the accounts back on.
        await accounts.assign_plan(client, no_plan, "pro", now_ms=server_now(stack))
        await accounts.extend_plan(client, expired, 30, now_ms=server_now(stack))
        await accounts.extend_plan(client, cancelled.account_id, 1, now_ms=server_now(stack))
        for why, key in keys.items():
            assert send(stack, key).status_code == 200, why
    finally:
        await client.aclose()


# ---------------------------------------------------------------- revocation on every worker


def ask_once(stack: Stack, key: str) -> tuple[int, int | None, float]:
    """One request on a fresh connection: (status, pid of the worker that answered it, when
    the answer arrived)."""
    parts = urlsplit(stack.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.connect()
        assert conn.sock is not None
        local_port = conn.sock.getsockname()[1]
        conn.request("GET", "/v1/models", headers={"x-api-key": key})
        response = conn.getresponse()
        response.read()
        answered = time.perf_counter()
        # The connection is still open (keep-alive): its server end names the worker.
        owner = next(
            (
                c.pid
                for c in psutil.net_connections(kind="tcp")
                if c.raddr and c.raddr.port == local_port and c.laddr.port == parts.port
            ),
            None,
        )
        return response.status, owner, answered
    finally:
        conn.close()


def revoke_with(how: str, stack: Stack, key_id: str, token: str) -> None:
    if how == "admin_api":
        with httpx.Client(headers={"authorization": f"Bearer {token}"}) as client:
            answer = client.post(f"{stack.url}/admin/keys/{key_id}/revoke")
        assert answer.status_code == 200, answer.text
    else:
        result = cli(stack, "key", "revoke", key_id)
        assert result.code == 0, result.err


@pytest.mark.parametrize("how", ["admin_api", "cli"])
async def test_a_revoked_key_is_refused_by_every_worker_from_the_next_request(
    stack: Stack, valkey_url: str, how: str
) -> None:
    customer = await new_customer(stack.valkey_url)
    token = await operator_token(valkey_url)
    # Fresh connections until both workers have answered (and cached the key).
    seen: set[int] = set()
    deadline = time.monotonic() + 20
    while len(seen) < 2 and time.monotonic() < deadline:
        status, pid, _ = ask_once(stack, customer.key)
        assert status == 200
        if pid is not None:
            seen.add(pid)
    assert len(seen) == 2, f"only worker(s) {seen} answered"

    revoke_with(how, stack, customer.key_id, token)
    revoked_at = time.perf_counter()
    refused_by: dict[int, float] = {}
    statuses = []
    while set(refused_by) != seen and time.perf_counter() - revoked_at < 5:
        status, pid, answered = ask_once(stack, customer.key)
        statuses.append(status)
        if pid is not None and status == 401:
            refused_by.setdefault(pid, answered - revoked_at)
    # Every request after the revoke was refused, by both workers: the guarantee. How soon
    # the second worker was reached depends on which worker each new connection lands on.
    assert set(statuses) == {401}, statuses
    assert set(refused_by) == seen
    slowest = max(refused_by.values())
    print(
        f"\nrevoke via {how}: first refusal after {min(refused_by.values()) * 1000:.1f} ms, "
        f"both workers refusing after {slowest * 1000:.1f} ms ({len(statuses)} requests)"
    )


async def test_an_address_bound_through_an_added_slot_never_counts_toward_quarantine(
    stack: Stack,
) -> None:
    customer = await new_customer(stack.valkey_url, ONE_IP)
    assert send(stack, customer.key, "127.0.0.60").status_code == 200
    office = send(stack, customer.key, "127.0.0.61")
    assert error_type(office) == "ip_limit_reached"
    # The operator adds a slot; the office binds.
    assert cli(stack, "ip", "add-slots", "1", "--key", customer.key_id).code == 0
    assert send(stack, customer.key, "127.0.0.61").status_code == 200
    # Two really unknown addresses: refused, still not quarantined ...
    for n in (62, 63):
        assert error_type(send(stack, customer.key, f"127.0.0.{n}")) == "ip_limit_reached"
    assert send(stack, customer.key, "127.0.0.60").status_code == 200
    # ... and a third one quarantines, naming only the three unknown ones.
    assert error_type(send(stack, customer.key, "127.0.0.64")) == "key_quarantined"
    events = cli(stack, "quarantine", "list", "--account", customer.email, "--json").json()
    quarantined = [e for e in events["events"] if e["type"] == "key_quarantined"]
    assert sorted(quarantined[0]["ips"]) == ["127.0.0.62", "127.0.0.63", "127.0.0.64"]


async def test_an_unbind_settles_the_addresses_refused_before_it(stack: Stack) -> None:
    customer = await new_customer(stack.valkey_url, ONE_IP)
    assert send(stack, customer.key, "127.0.0.70").status_code == 200
    for n in (71, 72):
        assert error_type(send(stack, customer.key, f"127.0.0.{n}")) == "ip_limit_reached"
    # The customer moved: the operator frees the old address and the new one binds.
    assert cli(stack, "ip", "unbind", customer.key_id, "127.0.0.70").code == 0
    assert send(stack, customer.key, "127.0.0.73").status_code == 200
    assert error_type(send(stack, customer.key, "127.0.0.74")) == "ip_limit_reached"
    assert error_type(send(stack, customer.key, "127.0.0.75")) == "ip_limit_reached"


SHARED = Plan("sec-share", 1_000, 10_000, ip_slots=1, concurrency=8, period_days=30, max_keys=2)


async def test_keys_churned_across_many_networks_flag_the_account_for_review(
    stack: Stack, valkey_url: str
) -> None:
    customer = await new_customer(stack.valkey_url, SHARED)
    key, key_id = customer.key, customer.key_id
    networks = [f"203.0.113.{n}" for n in range(1, 7)]
    # One key per machine, revoking the last to stay under the key cap: the cap holds, the
    # IP slots hold, and still six networks use the account in a day, where 2 x 1 fit.
    for n, network in enumerate(networks):
        via = send(stack, key, "127.0.0.2", **{"x-forwarded-for": network})
        assert via.status_code == 200  # a flag never refuses a request
        made = cli(stack, "key", "create", customer.email, "--name", f"m{n}", "--json").json()
        assert cli(stack, "key", "revoke", key_id).code == 0
        key, key_id = made["key"], made["key_id"]
    listed = cli(stack, "quarantine", "list", "--json").json()
    flag = next(f for f in listed["flagged"] if f["account_id"] == customer.account_id)
    assert flag["email"] == customer.email
    assert flag["reason"] == (
        "3 distinct networks used this account's keys within 24 h; the plan allows 2 "
        "(2 keys x 1 IP slots); the keys may be shared"
    )
    assert "accounts flagged for key sharing" in cli(stack, "quarantine", "list").out
    admin = Admin(stack, await operator_token(valkey_url))
    try:
        seen = admin.get(f"/admin/quarantine?account={customer.email}")
        assert [f["account_id"] for f in seen["flagged"]] == [customer.account_id]
        assert seen["data"] == []  # flagged, not quarantined
        events = admin.get(f"/admin/accounts/{customer.account_id}/events")["data"]
        flagged = [e for e in events if e["type"] == "account_flagged"]
        assert len(flagged) == 1 and sorted(flagged[0]["ips"]) == networks[:3]
        cleared = admin.post(f"/admin/accounts/{customer.account_id}/clear-flag")
        assert cleared["shared_flag_ms"] is None
        after = admin.get("/admin/quarantine")["flagged"]
        assert customer.account_id not in [f["account_id"] for f in after]
        admin.post(f"/admin/accounts/{customer.account_id}/clear-flag", status=400)
    finally:
        admin.close()
    assert send(stack, key, "127.0.0.2", **{"x-forwarded-for": networks[0]}).status_code == 200
