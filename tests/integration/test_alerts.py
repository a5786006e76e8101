"""Operator webhooks and customer notices: a real server with 2 workers quarantining a key,
and the sender itself against a real Valkey, receiver and SMTP server."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import httpx
import orjson
import pytest
import valkey.asyncio as avalkey

from gateway import accounts, errors, events
from gateway.alerts import QUEUE_SIZE, Alerts
from gateway.clock import system_clock
from gateway.config import Settings
from gateway.embedded_valkey import EmbeddedValkey, free_port
from gateway.limits import CreditLimiter, LimiterSettings
from gateway.plans import Plan
from gateway.store import Scripts
from tests.integration.conftest import gateway_env, new_customer, run_gateway
from tests.integration.ops_helpers import MESSAGE, client_from, error_type
from tests.integration.test_dashboard import smtp_server
from tests.integration.webhook_receiver import webhook_receiver
from tests.lua.conftest import FakeClock, make_account

SECRET = "whsec_test_0123456789"
ONE_IP = Plan("alert-ip1", 1_000, 10_000, ip_slots=1, concurrency=8, period_days=30)


def post_from(url: str, key: str, ip: str) -> httpx.Response:
    with client_from(ip) as client:
        return client.post(
            f"{url}/v1/messages",
            content=orjson.dumps(MESSAGE),
            headers={"x-api-key": key, "content-type": "application/json"},
        )


async def test_a_quarantine_reaches_the_webhook_once_signed_within_seconds(
    valkey_url: str, simulator: str, tmp_path: Path
) -> None:
    customer = await new_customer(valkey_url, ONE_IP)
    with webhook_receiver() as receiver:
        port = free_port()
        env = gateway_env(
            valkey_url, simulator, tmp_path / "data", port,
            ANTEX_WEBHOOK_URL=receiver.url, ANTEX_WEBHOOK_SECRET=SECRET,
        )  # fmt: skip
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "clock").write_text("0")
        with run_gateway(env, port, tmp_path / "gateway.log") as url:
            assert post_from(url, customer.key, "127.0.0.70").status_code == 200
            answers = [post_from(url, customer.key, f"127.0.0.{n}") for n in (71, 72, 73)]
            quarantined_at = time.monotonic()
            assert error_type(answers[-1]) == "key_quarantined"
            delivery = receiver.wait_for(events.KEY_QUARANTINED, {"key_id": customer.key_id})
            latency = delivery.received - quarantined_at
            print(f"\nquarantine -> webhook: {latency * 1000:.0f} ms")

            # A later refusal of the quarantined key is not a new quarantine.
            assert error_type(post_from(url, customer.key, "127.0.0.70")) == "key_quarantined"
    assert events.verify(SECRET, delivery.headers[events.SIGNATURE_HEADER], delivery.body)
    doc = delivery.json()
    assert doc["type"] == "key.quarantined" and doc["id"] == delivery.headers["x-antex-delivery"]
    assert doc["data"]["account_id"] == customer.account_id
    assert "unbound IP" in doc["data"]["reason"]
    assert customer.key.rsplit("_", 1)[1] not in delivery.body.decode()
    assert customer.email not in delivery.body.decode()
    assert len(receiver.of_type(events.KEY_QUARANTINED)) == 1


ONE_KEY = Plan("alert-key1", 1_000, 10_000, ip_slots=1, concurrency=8, period_days=30,
               max_keys=1)


async def test_a_key_sharing_flag_reaches_the_webhook_once(
    valkey_url: str, simulator: str, tmp_path: Path
) -> None:
    """A plan of 1 key x 1 IP slot: keys replaced one after another, each used from its own
    machine, put a second network on the account; the flag is reported, nothing is locked."""
    customer = await new_customer(valkey_url, ONE_KEY)
    client = avalkey.Valkey.from_url(valkey_url, decode_responses=True)
    with webhook_receiver() as receiver:
        port = free_port()
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "clock").write_text("0")
        env = gateway_env(
            valkey_url, simulator, tmp_path / "data", port,
            ANTEX_WEBHOOK_URL=receiver.url, ANTEX_WEBHOOK_SECRET=SECRET,
        )  # fmt: skip
        with run_gateway(env, port, tmp_path / "gateway.log") as url:
            key, key_id = customer.key, customer.key_id
            for n in (80, 81, 82):
                assert post_from(url, key, f"127.0.0.{n}").status_code == 200
                await accounts.revoke_key(
                    client, customer.account_id, key_id, now_ms=system_clock()
                )
                made = await accounts.create_key(
                    client, customer.account_id, "next", rounds=4, now_ms=system_clock()
                )
                key, key_id = made.key, made.key_id
            delivery = receiver.wait_for(events.KEY_FLAGGED, {"account_id": customer.account_id})
            assert post_from(url, key, "127.0.0.83").status_code == 200  # a flag, not a lock
    await client.aclose()
    assert events.verify(SECRET, delivery.headers[events.SIGNATURE_HEADER], delivery.body)
    assert delivery.json()["data"]["signal"] == "key_sharing"
    assert len(receiver.of_type(events.KEY_FLAGGED)) == 1


def _alerts(valkey_url: str, receiver_url: str) -> tuple[Alerts, avalkey.Valkey]:
    client = avalkey.Valkey.from_url(valkey_url, decode_responses=True)
    config = Settings(webhook_urls=(receiver_url,), webhook_secret=SECRET)
    return Alerts(config, client, backoff_s=0.05), client


async def test_two_workers_naming_the_same_event_deliver_it_once(valkey_url: str) -> None:
    with webhook_receiver() as receiver:
        pair = [_alerts(valkey_url, receiver.url) for _ in range(2)]
        for alerts, _ in pair:
            await alerts.start()
        name = f"settle.failed:{uuid.uuid4().hex}"
        for alerts, _ in pair:
            alerts.notify(events.SETTLE_FAILED, {"request_id": "req_1"}, dedupe=name)
            alerts.notify(events.SETTLE_FAILED, {"request_id": "req_2"}, dedupe=name)
        pair[0][0].notify(events.SETTLE_FAILED, {"request_id": "req_3"})  # unnamed: its own
        for alerts, client in pair:
            await alerts.stop()
            await client.aclose()
        sent = receiver.of_type(events.SETTLE_FAILED)
    assert sorted(d.json()["data"]["request_id"] for d in sent) == ["req_1", "req_3"]
    for d in sent:
        assert events.verify(SECRET, d.headers[events.SIGNATURE_HEADER], d.body)


async def test_a_failing_receiver_gets_the_event_on_a_later_attempt(valkey_url: str) -> None:
    with webhook_receiver(fail_first=2) as receiver:
        alerts, client = _alerts(valkey_url, receiver.url)
        await alerts.start()
        alerts.valkey_error("request")
        try:
            delivery = await asyncio.to_thread(receiver.wait_for, events.VALKEY_ERROR, {})
        finally:
            await alerts.stop()
            await client.aclose()
    assert receiver.attempts == 3
    assert delivery.json()["data"]["where"] == "request"


async def test_a_receiver_that_is_down_costs_notify_nothing_and_the_queue_stays_bounded(
    valkey_url: str,
) -> None:
    down = f"http://127.0.0.1:{free_port()}/nobody"
    alerts, client = _alerts(valkey_url, down)
    await alerts.start()
    try:
        for n in range(QUEUE_SIZE + 500):
            alerts.notify(events.KEY_FLAGGED, {"key_id": f"k{n}"})
        assert alerts.dropped >= 500 - 4  # the senders took a few off the queue
    finally:
        await alerts.stop(grace_s=0.1)
        await client.aclose()


async def test_customers_are_mailed_once_per_window_threshold_and_on_quarantine(
    valkey_url: str,
) -> None:
    client = avalkey.Valkey.from_url(valkey_url, decode_responses=True)
    account_id, email = uuid.uuid4().hex[:16], f"{uuid.uuid4().hex[:8]}@example.test"
    account = await make_account(client, account_id, limit_5h_mc=10_000, limit_7d_mc=1_000_000)
    await client.hset(account.keys.account, "email", email)
    with smtp_server() as (box, smtp_port):
        config = Settings(
            smtp_url=f"smtp://127.0.0.1:{smtp_port}",
            smtp_sender="alerts@antex.test",
            customer_notices=True,
        )
        alerts = Alerts(config, client)
        limiter = CreditLimiter(client, Scripts(), FakeClock(), LimiterSettings())
        limiter.notify = alerts.notify
        await Scripts().load(client)
        await alerts.start()
        try:
            for n in range(10):  # 1 000 mc each: 80 % after 8, the window full after 10
                rid = f"r{n}"
                await limiter.admit(account_id=account_id, key_id="k1", ip_tag="10.0.0.1",
                                    request_id=rid, estimate_mc=1_000)  # fmt: skip
                await limiter.settle(account_id=account_id, key_id="k1", request_id=rid,
                                     cost_mc=1_000, record={})  # fmt: skip
            for _ in range(3):
                with pytest.raises(errors.RateLimited, match="5-hour"):
                    await limiter.admit(account_id=account_id, key_id="k1", ip_tag="10.0.0.1",
                                        request_id="over", estimate_mc=1_000)  # fmt: skip
            limiter.notify(
                events.KEY_QUARANTINED,
                {"account_id": account_id, "key_id": "k1", "reason": "test"},
            )
        finally:
            await alerts.stop(grace_s=15)  # waits until every queued notice was mailed
            await client.aclose()
        mails = box.to(email)
    assert len(mails) == 3
    assert sum("80 % of its 5-hour" in m for m in mails) == 1
    assert sum("100 % of its 5-hour" in m for m in mails) == 1
    assert sum("sk_live_k1_" in m and "quarantined" in m for m in mails) == 1


async def test_a_valkey_outage_is_reported_even_though_valkey_cannot_deduplicate_it(
    simulator: str, tmp_path: Path
) -> None:
    store = EmbeddedValkey(tmp_path / "valkey", unix_socket=False)
    store.start()
    try:
        customer = await new_customer(store.url)
        with webhook_receiver() as receiver:
            port = free_port()
            (tmp_path / "data").mkdir()
            env = gateway_env(
                store.url, simulator, tmp_path / "data", port,
                ANTEX_WEBHOOK_URL=receiver.url, ANTEX_WEBHOOK_SECRET=SECRET,
            )  # fmt: skip
            with run_gateway(env, port, tmp_path / "gateway.log") as url:
                assert post_from(url, customer.key, "127.0.0.80").status_code == 200
                store.stop()
                assert post_from(url, customer.key, "127.0.0.80").status_code == 503
                delivery = receiver.wait_for(events.VALKEY_ERROR, {"where": "request"})
    finally:
        store.stop()
    assert events.verify(SECRET, delivery.headers[events.SIGNATURE_HEADER], delivery.body)
    assert isinstance(delivery.json()["data"]["worker_pid"], int)
