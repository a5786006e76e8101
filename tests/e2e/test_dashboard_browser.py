"""The dashboard in a real browser: Playwright driving Debian's headless Chromium against a
real ``antex serve``, signing in through a link delivered to a real local SMTP server.

Screenshots of every page land in ``tests/artifacts/`` (git-ignored); the one freshly
created key on screen is masked, so no key is ever written to disk.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from gateway.embedded_valkey import free_port
from gateway.plans import Plan
from tests.integration.conftest import ROOT, new_customer, run_simulator
from tests.integration.test_dashboard import Mailbox, Server, dashboard_server, smtp_server

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
ARTIFACTS = ROOT / "tests" / "artifacts"


def _install_chromium() -> str | None:
    """Installs Debian's chromium package; returns why it failed, or None."""
    if shutil.which("apt-get") is None:
        return "apt-get is not available to install chromium"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{' '.join(cmd)} failed: {exc}"
        if done.returncode != 0:
            return f"{' '.join(cmd)} failed: {done.stderr.strip()[-300:]}"
    return None if os.path.exists(CHROMIUM) else f"chromium installed but {CHROMIUM} is missing"


@pytest.fixture(scope="module")
def chromium() -> str:
    if not os.path.exists(CHROMIUM):
        why = _install_chromium()
        if why is not None:
            pytest.skip(why)
    return CHROMIUM


@pytest.fixture(scope="module")
def sim_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("browser-logs") / "simulator.log"
    with run_simulator(port, log_path) as url:
        yield url


@pytest.fixture(scope="module")
def mail() -> Iterator[tuple[Mailbox, int]]:
    with smtp_server() as found:
        yield found


@pytest.fixture(scope="module")
def server(
    valkey_url: str,
    sim_url: str,
    mail: tuple[Mailbox, int],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("browser-gateway")
    with dashboard_server(
        valkey_url, sim_url, data_dir, data_dir.parent / "browser-gateway.log", mail[1]
    ) as found:
        yield found


@pytest.fixture(scope="module")
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


class Console:
    """Collects browser errors: a CSP violation or a script error fails the test."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))


async def shot(page: Page, name: str, **kwargs: Any) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True, **kwargs)


async def send_traffic(url: str, key: str, n: int) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(n):
            resp = await client.post(
                f"{url}/v1/messages",
                headers={"x-api-key": key, "x-sim-output-tokens": "2000"},
                json={
                    "model": "claude-sonnet-4-6",
                    "max_tokens": 2000,
                    "messages": [{"role": "user", "content": "write a long story"}],
                },
            )
            assert resp.status_code == 200, resp.text


async def sign_in(page: Page, mailbox: Mailbox, address: str, *, screenshots: bool) -> None:
    await page.goto("/dashboard/signin")
    if screenshots:
        await shot(page, "1-signin")
    sent = len(mailbox.to(address))
    await page.get_by_label("Email address").fill(address)
    await page.get_by_role("button", name="Email me a sign-in link").click()
    await expect(page.get_by_role("heading", name="Check your mail")).to_be_visible()
    if screenshots:
        await shot(page, "2-check-mail")
    link = await asyncio.to_thread(mailbox.wait_link, address, count=sent + 1)
    await page.goto(link)
    await expect(page.get_by_text(f"as {address}")).to_be_visible()
    if screenshots:
        await shot(page, "3-confirm-link")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(re.compile(r"/dashboard/usage$"))


async def ask_model(url: str, key: str) -> str:
    client = anthropic.AsyncAnthropic(base_url=url, api_key=key, max_retries=0)
    try:
        message = await client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=64,
            messages=[{"role": "user", "content": "Say hello"}],
        )
        return message.stop_reason or ""
    finally:
        await client.close()


async def new_context(browser: Browser, server: Server, **kwargs: Any) -> BrowserContext:
    return await browser.new_context(
        base_url=server.url,
        timezone_id="Europe/Berlin",
        locale="en-GB",
        viewport={"width": 1200, "height": 900},
        **kwargs,
    )


async def test_customer_signs_in_sees_usage_manages_a_key_and_signs_out(
    browser: Browser, server: Server, mail: tuple[Mailbox, int], valkey_url: str
) -> None:
    mailbox = mail[0]
    plan = Plan(f"browser-{uuid.uuid4().hex[:6]}", 40, 200, 2, 8, 30)
    customer = await new_customer(valkey_url, plan, key_name="workstation")
    await send_traffic(server.url, customer.key, 3)

    context = await new_context(browser, server)
    await context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = await context.new_page()
    console = Console(page)
    try:
        await sign_in(page, mailbox, customer.email, screenshots=True)

        # Usage: both bars, with the exact UTC instant and a live local countdown.
        for window in ("five_hour", "seven_day"):
            card = page.locator(f'article[data-window="{window}"]')
            await expect(card).to_be_visible()
            assert float(await card.get_attribute("data-utilization") or 0) > 0
            assert await card.get_by_role("progressbar").get_attribute("aria-valuenow")
            when = card.locator("time[data-relative]")
            assert re.fullmatch(
                r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", await when.get_attribute("datetime") or ""
            )
            assert "UTC" not in await when.inner_text()  # shown in the browser's zone
            await expect(card.locator(".relative")).to_have_text(
                re.compile(r"^ \(in \d+ (s|min|h|d)( \d+ (min|h))?\)$")
            )
        await expect(page.locator("#recent tbody tr")).to_have_count(3)
        await expect(page.locator("#recent")).to_contain_text("workstation")
        await shot(page, "4-usage")

        # API keys: create one, copy it, use it with the anthropic SDK.
        await page.get_by_role("link", name="API keys").click()
        await page.get_by_label("Name").fill("browser-test")
        await page.get_by_role("button", name="Create key").click()
        new_key = page.locator("#new-key")
        key = (await new_key.inner_text()).strip()
        assert key.startswith("sk_live_")
        await expect(page.get_by_text("you won't see this key again")).to_be_visible()
        copy = page.locator('button[data-copy="new-key"]')
        await copy.click()
        await expect(copy).to_have_text("Copied")
        assert await page.evaluate("navigator.clipboard.readText()") == key
        await shot(page, "5-key-created", mask=[new_key])
        assert await ask_model(server.url, key) == "end_turn"

        await page.goto("/dashboard/keys")
        key_id = key.split("_")[2]
        row = page.locator(f'tr[data-key-id="{key_id}"]')
        await expect(row).to_have_attribute("data-status", "active")
        await expect(row).not_to_contain_text("never")  # last used is set
        await expect(row).to_contain_text("1 of 2 slots")
        assert key not in await page.content()
        await shot(page, "6-keys")

        # Revoke, with a confirmation step; the SDK is refused afterwards.
        await row.get_by_role("link", name="Revoke browser-test").click()
        await expect(page.get_by_role("heading", name="Revoke “browser-test”?")).to_be_visible()
        await shot(page, "7-revoke-confirm")
        await page.get_by_role("button", name="Revoke key").click()
        await expect(page.get_by_role("status")).to_contain_text("is revoked")
        await expect(page.locator(f'tr[data-key-id="{key_id}"]')).to_have_attribute(
            "data-status", "revoked"
        )
        with pytest.raises(anthropic.AuthenticationError) as refused:
            await ask_model(server.url, key)
        assert refused.value.status_code == 401

        # Plans.
        await page.get_by_role("link", name="Plans").click()
        await expect(page.locator("#current-plan")).to_have_text(plan.name)
        await expect(page.locator("#catalog")).to_contain_text("starter")
        await shot(page, "8-plans")

        # Sign out: the session is gone, the pages send the browser back to sign-in.
        await page.get_by_role("button", name="Sign out").click()
        await expect(page).to_have_url(re.compile(r"/dashboard/signin\?signed_out=1$"))
        await expect(page.get_by_role("status")).to_have_text("You are signed out.")
        await page.goto("/dashboard/keys")
        await expect(page).to_have_url(re.compile(r"/dashboard/signin$"))
        await shot(page, "9-signed-out")
        assert console.errors == []
    finally:
        await context.close()


async def test_pages_work_without_javascript_and_by_keyboard(
    browser: Browser, server: Server, mail: tuple[Mailbox, int], valkey_url: str
) -> None:
    customer = await new_customer(valkey_url)
    await send_traffic(server.url, customer.key, 1)
    context = await new_context(browser, server, java_script_enabled=False)
    page = await context.new_page()
    try:
        await sign_in(page, mail[0], customer.email, screenshots=False)
        when = page.locator('article[data-window="five_hour"] time')
        await expect(when).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d UTC$"))
        await expect(page.locator(".relative")).to_have_count(0)
        await page.goto("/dashboard/keys")
        await expect(page.locator('button[data-copy="qs-curl"]')).to_be_hidden()
        await page.keyboard.press("Tab")
        skip = page.get_by_role("link", name="Skip to content")
        await expect(skip).to_be_focused()
        outline = await skip.evaluate("e => getComputedStyle(e).outlineStyle")
        assert outline == "solid"  # a visible focus ring
        await shot(page, "10-keys-without-javascript")
    finally:
        await context.close()
