"""The operator console in a real browser: Playwright driving Debian's headless Chromium
against a real ``antex serve``. An operator signs in with a token, finds an account,
releases a quarantined key and edits a plan, and sees each action in the audit trail; the
console refuses visitors without a session, with an expired one, with a customer's cookie,
and forms without their CSRF token.

Screenshots land in ``tests/artifacts/console-*.png`` (git-ignored).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import valkey
import valkey.asyncio as avalkey
from playwright.async_api import Browser, Page, async_playwright, expect

from gateway import admin_tokens, keyspace
from gateway.clock import system_clock
from gateway.dashboard.sessions import Sessions
from gateway.embedded_valkey import free_port
from gateway.plans import Plan
from tests.e2e.test_dashboard_browser import ARTIFACTS, CHROMIUM_ARGS, chromium  # noqa: F401
from tests.integration.conftest import gateway_env, new_customer, run_gateway, run_simulator
from tests.integration.ops_helpers import MESSAGE, client_from, operator_token
from tests.integration.test_dashboard import Server, csrf_of

pytestmark = pytest.mark.browser

HOURS_13 = 13 * 3_600_000


@pytest.fixture(scope="module")
def console_server(valkey_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    logs = tmp_path_factory.mktemp("console-logs")
    data_dir = tmp_path_factory.mktemp("console-gateway")
    (data_dir / "clock").write_text("0")
    sim_port, port = free_port(), free_port()
    with run_simulator(sim_port, logs / "simulator.log") as sim_url:
        env = gateway_env(valkey_url, sim_url, data_dir, port)
        with run_gateway(env, port, logs / "gateway.log", "console gateway") as url:
            yield Server(url, data_dir, data_dir / "clock")


@pytest.fixture(scope="module")
async def browser(chromium: str) -> AsyncIterator[Browser]:  # noqa: F811
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"console-{name}.png"), full_page=True)


async def sign_in(page: Page, token: str) -> None:
    await page.goto("/admin/console")
    await expect(page).to_have_url(re.compile(r"/admin/console/signin$"))
    await page.get_by_label("Operator token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(re.compile(r"/admin/console/accounts$"))


def call(url: str, key: str, ip: str) -> int:
    with client_from(ip) as client:
        headers = {"x-api-key": key, "content-type": "application/json"}
        answer = client.post(f"{url}/v1/messages", content=orjson.dumps(MESSAGE), headers=headers)
        return answer.status_code


def quarantine(valkey_url: str, account_id: str, key_id: str) -> None:
    # What admit.lua writes when it quarantines a key (reaching it over HTTP is tested in
    # the key-security tests).
    client = valkey.Valkey.from_url(valkey_url, decode_responses=True)
    try:
        client.hset(keyspace.AccountKeys(account_id).key(key_id),
                    mapping={"status": "quarantined", "quarantine_reason": "3 unknown IPs",
                             "quarantined_ms": str(system_clock())})  # fmt: skip
        client.zadd(keyspace.QUARANTINE_INDEX, {f"{account_id}:{key_id}": system_clock()})
    finally:
        client.close()


def flag(valkey_url: str, account_id: str) -> None:
    # What admit.lua writes when an account's keys are seen from too many networks.
    client = valkey.Valkey.from_url(valkey_url, decode_responses=True)
    try:
        client.hset(keyspace.AccountKeys(account_id).account,
                    mapping={"shared_flag_ms": str(system_clock()),
                             "shared_flag_reason": "5 distinct networks"})  # fmt: skip
    finally:
        client.close()


async def test_operator_finds_an_account_releases_a_key_edits_a_plan_and_sees_the_trail(
    browser: Browser, console_server: Server, valkey_url: str, tmp_path: Path
) -> None:
    name = f"ops-{uuid.uuid4().hex[:6]}"
    token = await operator_token(valkey_url, name)
    plan = Plan(f"console-{uuid.uuid4().hex[:6]}", 100, 1000, 2, 4, 30, "console test plan")
    customer = await new_customer(valkey_url, plan, key_name="laptop")
    assert call(console_server.url, customer.key, "127.0.0.120") == 200
    quarantine(valkey_url, customer.account_id, customer.key_id)

    context = await browser.new_context(base_url=console_server.url,
                                        viewport={"width": 1280, "height": 900})  # fmt: skip
    page = await context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        await page.goto("/admin/console/signin")
        await shot(page, "1-signin")
        await sign_in(page, token)
        cookie = next(c for c in await context.cookies() if c["name"] == "antex_console")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert cookie["path"] == "/admin/console" and cookie["value"] != token

        # Find the account and open it: windows as bars, the key with status and IPs.
        await page.get_by_label("Email or id").fill(customer.email)
        await page.get_by_role("button", name="Search").click()
        await shot(page, "2-accounts")
        await page.get_by_role("link", name=customer.email).click()
        await expect(page.get_by_role("heading", name=customer.email)).to_be_visible()
        await expect(page.locator("svg.meter")).to_have_count(2)
        row = page.get_by_role("row", name=f"{customer.key_id} laptop")
        await expect(row).to_contain_text("quarantined")
        await expect(row).to_contain_text("127.0.0.120")
        await shot(page, "3-account")

        # The quarantine queue: one click releases the key.
        await page.get_by_role("link", name="Quarantine").click()
        await shot(page, "4-quarantine")
        await page.get_by_role("button", name=f"Release {customer.key_id}").click()
        await expect(page.get_by_role("status")).to_have_text(
            "The key is released from quarantine."
        )
        await expect(page.get_by_text(customer.key_id)).to_have_count(0)
        assert call(console_server.url, customer.key, "127.0.0.120") == 200

        # Edit the plan: more IP slots, copied into the account.
        await page.get_by_role("link", name="Plans").click()
        form = page.get_by_role("form", name=f"Plan {plan.name}")
        await form.get_by_label("IP slots").fill("5")
        await form.get_by_label("Credits 5 h").fill("150")
        await form.get_by_role("button", name="Save").click()
        await expect(page.get_by_role("status")).to_have_text("The plan is saved.")
        await expect(
            page.get_by_role("form", name=f"Plan {plan.name}").get_by_label("IP slots")
        ).to_have_value("5")
        await shot(page, "5-plans")

        # The key's page: bound IPs, unbind one, add slots.
        await page.goto(f"/admin/console/keys/{customer.key_id}")
        await page.get_by_label("Extra IP slots for this key (+/-)").fill("2")
        await page.get_by_role("button", name="Change slots").click()
        await expect(page.get_by_text("2 extra for this key")).to_be_visible()
        await page.get_by_role("row").filter(has_text="127.0.0.120").get_by_role(
            "button", name="Unbind"
        ).click()
        await expect(page.get_by_text("No address bound yet.")).to_be_visible()
        await shot(page, "6-key")

        # Traffic and deletion requests render.
        await page.get_by_role("link", name="Traffic").click()
        await expect(page.get_by_role("heading", name="Top accounts, 5 hours")).to_be_visible()
        await expect(page.get_by_role("link", name=customer.email).first).to_be_visible()
        await shot(page, "7-traffic")
        await page.get_by_role("link", name="Deletions").click()
        await expect(page.get_by_role("heading", name="Deletion requests")).to_be_visible()

        # A key-sharing flag is listed with the quarantine and cleared in one click.
        flag(valkey_url, customer.account_id)
        await page.get_by_role("link", name="Quarantine").click()
        await page.get_by_role("button", name=f"Clear the flag of {customer.email}").click()
        await expect(page.get_by_role("status")).to_have_text("The key-sharing flag is cleared.")
        await expect(page.get_by_text("No account is flagged.")).to_be_visible()

        # Upstreams: health and the fingerprint, never the key; one click disables one. (It
        # serves only a model no test uses, so the shared store's other gateways never pick it.)
        upstream = f"console-up-{uuid.uuid4().hex[:6]}"
        admin = httpx.AsyncClient(base_url=console_server.url,
                                  headers={"authorization": f"Bearer {token}"})  # fmt: skip
        added = await admin.post("/admin/upstreams", json={
            "name": upstream, "url": "http://127.0.0.1:9", "key": "sk-console-canary-key",
            "models": ["claude-mythos-preview"]})  # fmt: skip
        assert added.status_code == 201, added.text
        try:
            await page.get_by_role("link", name="Upstreams").click()
            row = page.get_by_role("row").filter(has_text=upstream)
            await expect(row).to_contain_text(added.json()["key_fingerprint"])
            await page.get_by_role("button", name=f"Disable {upstream}").click()
            await expect(page.get_by_role("status")).to_have_text("The upstream is disabled.")
            await expect(page.get_by_role("row").filter(has_text=upstream)).to_contain_text(
                "disabled"
            )
            await shot(page, "7b-upstreams")
            assert "sk-console-canary-key" not in await page.content()
        finally:
            await admin.delete(f"/admin/upstreams/{upstream}")
            await admin.aclose()

        # Every action, by this operator, in the audit trail.
        await page.get_by_role("link", name="Audit trail").click()
        await page.get_by_label("Actor").fill(f"console:{name}")
        await page.get_by_role("button", name="Filter").click()
        await shot(page, "8-audit")
        body = page.locator("tbody")
        for action in ("key.release", "plan.set", "key.ip_slots", "key.unbind",
                       "account.clear_flag", "upstream.disable"):
            await expect(body).to_contain_text(action)
        await expect(body).to_contain_text("ip_slots: 2 → 5")
        await expect(body).to_contain_text("status: quarantined → active")
        assert errors == []

        # Sign out: the session is gone.
        await page.get_by_role("button", name="Sign out").click()
        await expect(page.get_by_role("status")).to_have_text("You are signed out.")
        await page.goto("/admin/console/accounts")
        await expect(page).to_have_url(re.compile(r"/admin/console/signin$"))
    finally:
        await context.close()


async def test_the_console_refuses_without_a_valid_session_or_csrf(
    console_server: Server, valkey_url: str
) -> None:
    base = console_server.url
    customer = await new_customer(valkey_url)
    async with httpx.AsyncClient(base_url=base) as anon:
        # No session: pages and forms send the visitor to sign in, and change nothing.
        assert (await anon.get("/admin/console/accounts")).headers["location"].endswith(
            "/admin/console/signin"
        )
        posted = await anon.post(f"/admin/console/accounts/{customer.account_id}/cancel",
                                 data={"csrf": "x"})  # fmt: skip
        assert posted.status_code == 303 and posted.headers["location"].endswith("/signin")
        wrong = await anon.get("/admin/console/signin")
        cookie = wrong.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert "Secure" not in cookie  # plain HTTP here; over TLS it is Secure
        form = {"csrf": csrf_of(wrong.text), "token": "antex_op_nope"}
        bad = await anon.post("/admin/console/signin", data=form)
        assert bad.status_code == 401 and "not a valid operator token" in bad.text

    # A customer's dashboard session is no console session.
    client = avalkey.Valkey.from_url(valkey_url, decode_responses=True)
    try:
        dash = await Sessions(client, system_clock, ()).create(customer.account_id)
    finally:
        await client.aclose()
    jar = {"antex_console": dash.token, "antex_session": dash.token}
    async with httpx.AsyncClient(base_url=base, cookies=jar) as c:
        answer = await c.get("/admin/console/accounts")
        assert answer.status_code == 303 and answer.headers["location"].endswith("/signin")

    # A read-only token's session can look but not change anything.
    client = avalkey.Valkey.from_url(valkey_url, decode_responses=True)
    try:
        _, viewer = await admin_tokens.create_token(client, "viewer", now_ms=0, scope="read")
    finally:
        await client.aclose()
    async with httpx.AsyncClient(base_url=base) as ro:
        page = await ro.get("/admin/console/signin")
        form = {"csrf": csrf_of(page.text), "token": viewer}
        assert (await ro.post("/admin/console/signin", data=form)).status_code == 303
        account_page = await ro.get(f"/admin/console/accounts/{customer.account_id}")
        assert account_page.status_code == 200 and "(read-only)" in account_page.text
        refused = await ro.post(f"/admin/console/accounts/{customer.account_id}/cancel",
                                data={"csrf": csrf_of(account_page.text)})  # fmt: skip
        assert refused.status_code == 403

    token = await operator_token(valkey_url, "refusals")
    async with httpx.AsyncClient(base_url=base) as op:
        page = await op.get("/admin/console/signin")
        signed = await op.post("/admin/console/signin",
                               data={"csrf": csrf_of(page.text), "token": token})  # fmt: skip
        assert signed.status_code == 303
        account_page = await op.get(f"/admin/console/accounts/{customer.account_id}")
        assert account_page.status_code == 200
        # CSRF: a missing or foreign token is refused and nothing changes.
        for csrf in ("", "0" * 64):
            refused = await op.post(f"/admin/console/accounts/{customer.account_id}/cancel",
                                    data={"csrf": csrf})  # fmt: skip
            assert refused.status_code == 403
        cross = await op.post(
            f"/admin/console/accounts/{customer.account_id}/cancel",
            data={"csrf": csrf_of(account_page.text)}, headers={"sec-fetch-site": "cross-site"},
        )  # fmt: skip
        assert cross.status_code == 403
        status = valkey.Valkey.from_url(valkey_url)
        try:
            acct = keyspace.AccountKeys(customer.account_id).account
            assert status.hget(acct, "status") == b"active"
        finally:
            status.close()

        # Expired: 13 hours later (the gateway's clock) the session no longer works.
        console_server.move_clock(HOURS_13)
        try:
            late = await op.get("/admin/console/accounts")
            assert late.status_code == 303 and late.headers["location"].endswith("/signin")
        finally:
            console_server.move_clock(-HOURS_13)


async def test_the_api_reference_lists_every_operation_of_the_served_document(
    console_server: Server, browser: Browser
) -> None:
    async with httpx.AsyncClient() as client:
        document = (await client.get(f"{console_server.url}/openapi.json")).json()
    methods = ("get", "head", "put", "post", "delete")
    ops = [op for item in document["paths"].values() for m, op in item.items() if m in methods]
    page = await browser.new_page()
    try:
        await page.goto(f"{console_server.url}/admin/docs")
        await expect(page.locator("#title")).to_have_text(re.compile(r"^Antex gateway "))
        expected = len(ops) + len(document["components"]["schemas"])
        await expect(page.locator("details")).to_have_count(expected)
        create_key = page.locator("details", has_text="operationId: adminCreateKey")
        await create_key.locator("summary").click()
        await expect(create_key).to_contain_text('"CreateKey"')
        await expect(create_key).to_contain_text("401 Unauthorized")
        await page.screenshot(path=str(ARTIFACTS / "console-api-docs.png"), full_page=False)
    finally:
        await page.close()
