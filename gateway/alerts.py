"""One worker's alert sender: signed webhooks to the operator, notices mailed to customers.

``Alerts.notify`` only appends to a bounded in-memory queue, so a receiver that is slow or
down never delays a request. Sender tasks claim each named event once per cluster with
``SET NX`` in Valkey, then POST it to every receiver with exponential backoff. When Valkey
itself is unreachable the claim is skipped: a duplicate beats a lost alert.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import smtplib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import aiohttp
import valkey.exceptions as vexc

from gateway import events, keyspace
from gateway.config import Settings
from gateway.dashboard import mail
from gateway.observability import Metrics
from gateway.store import Client

log = logging.getLogger("antex.alerts")

QUEUE_SIZE = 1000
SENDERS = 4
ATTEMPTS = 6  # 1 + 5 retries after 1, 2, 4, 8, 16 s (+ jitter): about half a minute
BACKOFF_S = 1.0
_TIMEOUT = aiohttp.ClientTimeout(total=10, sock_connect=3)
_CLAIM_TIMEOUT_S = 1.0
_CLAIM_PREFIX = f"{keyspace.PREFIX}:alert:"  # + event id -> "1", expires with the dedupe TTL
_LOCAL_MAX = 10_000
_WINDOW_WORDS = {"5h": "5-hour", "7d": "weekly"}


@dataclass(frozen=True, slots=True)
class _Event:
    id: str
    type: str
    data: dict[str, str | int]
    at_s: float
    claim_ttl_s: int | None  # None: not named, nothing to claim


class Alerts:
    """Build one per worker; ``start`` in the lifespan, ``stop`` at shutdown."""

    def __init__(
        self,
        settings: Settings,
        client: Client,
        *,
        metrics: Metrics | None = None,
        backoff_s: float = BACKOFF_S,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._backoff_s = backoff_s
        self._client = client
        self._urls = settings.webhook_urls
        self._secret = settings.webhook_secret or ""
        self._smtp = mail.parse_smtp_url(settings.smtp_url) if settings.smtp_url else None
        self._mail_customers = settings.customer_notices and self._smtp is not None
        self.enabled = bool(self._urls) or self._mail_customers
        self._queue: asyncio.Queue[_Event] = asyncio.Queue(QUEUE_SIZE)
        self._recent: dict[str, float] = {}  # dedupe name -> monotonic expiry (this worker)
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self.dropped = 0
        self._pid = os.getpid()

    def notify(
        self,
        event_type: str,
        payload: Mapping[str, str | int],
        *,
        dedupe: str | None = None,
        ttl_s: int = 3600,
    ) -> None:
        """Queues one event and returns at once; see ``events.Notify``."""
        if not self.enabled:
            return
        if event_type not in events.EVENT_TYPES:
            # A bug in the caller, but an alert must never fail the request that raised it.
            log.error("unknown event type %r not sent", event_type)
            return
        if dedupe is not None and not self._first_here(dedupe, ttl_s):
            return
        if self._queue.full():
            self.dropped += 1
            self._count("dropped")
            # Logged at drops 1, 2, 4, 8 … and every 1000th: a long outage must not flood the log.
            if self.dropped & (self.dropped - 1) == 0 or self.dropped % 1000 == 0:
                log.error("alert queue full (%d events); %d dropped", QUEUE_SIZE, self.dropped)
            return
        data, dropped = events.clean_payload(payload)
        if dropped:
            log.warning("event %s: fields %s are not allowed in payloads; dropped", event_type,
                        ",".join(sorted(dropped)))  # fmt: skip
        event = _Event(
            events.event_id(dedupe), event_type, data, time.time(),
            None if dedupe is None else ttl_s,
        )  # fmt: skip
        self._queue.put_nowait(event)  # not full: checked above, nothing awaited since

    def _first_here(self, dedupe: str, ttl_s: int) -> bool:
        now = time.monotonic()
        expiry = self._recent.get(dedupe)
        if expiry is not None and expiry > now:
            return False
        if len(self._recent) >= _LOCAL_MAX:
            self._recent = {k: v for k, v in self._recent.items() if v > now}
            if len(self._recent) >= _LOCAL_MAX // 2:
                # Still crowded: forget it all rather than scan it on every call; the claim
                # in Valkey keeps the events single anyway, at one more call each.
                self._recent.clear()
        self._recent[dedupe] = now + ttl_s
        return True

    def valkey_error(self, where: str) -> None:
        """At most one ``valkey.error`` per minute and cluster (per worker while it is down)."""
        self.notify(
            events.VALKEY_ERROR,
            {"where": where, "worker_pid": self._pid},
            dedupe=events.per_minute(events.VALKEY_ERROR),
            ttl_s=120,
        )

    def upstream_disabled(self, upstream_id: str, reason: str) -> None:
        """For the upstream pool: one event per credential and reason per hour."""
        self.notify(
            events.UPSTREAM_DISABLED,
            {"upstream_id": upstream_id, "reason": reason},
            dedupe=f"{events.UPSTREAM_DISABLED}:{upstream_id}:{reason}",
        )

    def pool_capacity_low(self, usable: int, total: int) -> None:
        """For the upstream pool: at most one event per hour while capacity stays low."""
        self.notify(
            events.POOL_CAPACITY_LOW,
            {"usable": usable, "total": total},
            dedupe=events.POOL_CAPACITY_LOW,
        )

    async def start(self) -> None:
        if not self.enabled:
            return
        if self._urls:
            self._session = aiohttp.ClientSession(timeout=_TIMEOUT)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._sender()) for _ in range(SENDERS)]

    async def stop(self, grace_s: float = 2.0) -> None:
        """Gives queued events ``grace_s`` to leave, then drops the rest."""
        if self._tasks:
            try:
                await asyncio.wait_for(self._queue.join(), grace_s)
            except TimeoutError:
                log.warning("stopping with %d alerts undelivered", self._queue.qsize())
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _sender(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self._handle(event)
            except Exception:
                # The boundary of a background task: a bug here must not stop later alerts.
                log.exception("alert %s %s failed", event.type, event.id)
            finally:
                self._queue.task_done()

    async def _handle(self, event: _Event) -> None:
        if event.claim_ttl_s is not None and not await self._claim(event):
            return
        body = events.envelope(event.id, event.type, event.data, event.at_s)
        jobs = [self._post(url, event, body) for url in self._urls]
        if self._mail_customers and event.type in (
            events.KEY_QUARANTINED,
            events.WINDOW_THRESHOLD,
        ):
            jobs.append(self._mail(event))
        await asyncio.gather(*jobs)

    async def _claim(self, event: _Event) -> bool:
        """True when this worker is the cluster's one sender of a named event."""
        try:
            claimed = await asyncio.wait_for(
                self._client.set(_CLAIM_PREFIX + event.id, b"1", nx=True, ex=event.claim_ttl_s),
                _CLAIM_TIMEOUT_S,
            )
        except (OSError, TimeoutError, vexc.ValkeyError) as exc:
            log.warning("alert %s not deduplicated (valkey: %s); sending", event.type,
                        type(exc).__name__)  # fmt: skip
            return True
        return bool(claimed)

    async def _post(self, url: str, event: _Event, body: bytes) -> None:
        assert self._session is not None
        for attempt in range(ATTEMPTS):
            if attempt:
                delay = self._backoff_s * 2 ** (attempt - 1)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            headers = {
                "content-type": "application/json",
                "user-agent": "antex-webhooks/1",
                "x-antex-event": event.type,
                "x-antex-delivery": event.id,
                events.SIGNATURE_HEADER: events.sign(self._secret, body, int(time.time())),
            }
            try:
                async with self._session.post(url, data=body, headers=headers) as resp:
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = type(exc).__name__
            else:
                if 200 <= status < 300:
                    self._count("delivered")
                    return
                problem = f"HTTP {status}"
                if 400 <= status < 500 and status not in (408, 429):
                    break  # the receiver refuses this event; retrying changes nothing
            log.warning("webhook %s to %s: attempt %d: %s", event.id, url, attempt + 1, problem)
        log.error("webhook %s (%s) to %s given up", event.id, event.type, url)
        self._count("failed")

    def _count(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.webhook(result)

    async def _mail(self, event: _Event) -> None:
        assert self._smtp is not None
        account_id = str(event.data.get("account_id", ""))
        try:
            email = await self._client.hget(keyspace.AccountKeys(account_id).account, "email")
        except (OSError, vexc.ValkeyError):
            log.error("notice %s not mailed: account unreadable", event.id)
            return
        if not email:
            return
        to = str(email)
        message = notice(self._settings, to, event.type, event.data)
        try:
            await asyncio.to_thread(mail.send, self._smtp, message)
        except (OSError, smtplib.SMTPException) as exc:
            log.error("notice %s not mailed: %s", event.id, type(exc).__name__)


def notice(settings: Settings, to: str, event_type: str, data: Mapping[str, Any]) -> EmailMessage:
    """The customer's mail for a quarantine or a window threshold (metadata only)."""
    message = EmailMessage()
    message["From"] = settings.smtp_sender
    message["To"] = to
    dashboard = f"{settings.base_url}/dashboard"
    if event_type == events.KEY_QUARANTINED:
        message["Subject"] = "Your Antex API key was quarantined"
        text = (
            f"Your API key sk_live_{data.get('key_id', '')}_… was quarantined and is refused "
            f"from now on.\n\nReason: {data.get('reason', 'unknown')}.\n\n"
            "If you did not expect this, the key may have leaked. Ask your operator to review "
            f"it and issue a new key. Your usage: {dashboard}\n"
        )
    else:
        window = _WINDOW_WORDS.get(str(data.get("window")), str(data.get("window")))
        percent = int(data.get("percent", 0))
        message["Subject"] = f"Antex: {percent} % of your {window} usage window used"
        status = (
            "New requests are refused until capacity frees."
            if percent >= 100
            else "Requests are refused once it reaches 100 %."
        )
        text = (
            f"Your account has used {percent} % of its {window} credit window. {status}\n\n"
            f"See when capacity frees: {dashboard}\n"
        )
    message.set_content(text)
    return message
