"""Delivers sign-in links over SMTP (``ANTEX_SMTP_URL``) with stdlib smtplib in a thread.

Deliveries run in the background, so a sign-in request answers in the same time whether or
not its email has an account. Failures are logged without the link or the address.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass
from email.message import EmailMessage
from urllib.parse import parse_qs, unquote, urlsplit

from gateway.errors import ConfigError

log = logging.getLogger("antex.dashboard.mail")

_DEFER_S = 0.25
_TIMEOUT_S = 20.0


@dataclass(frozen=True, slots=True)
class SmtpTarget:
    host: str
    port: int
    implicit_tls: bool = False  # smtps://
    starttls: bool = False  # smtp://...?starttls=1
    username: str | None = None
    password: str | None = None


def parse_smtp_url(url: str) -> SmtpTarget:
    """``smtp://[user:pass@]host[:port][?starttls=1]`` or ``smtps://…`` (port 25 / 465)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"ANTEX_SMTP_URL: {exc}") from None
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ConfigError("ANTEX_SMTP_URL must look like smtp://host:port or smtps://host:port")
    query = parse_qs(parts.query)
    return SmtpTarget(
        host=parts.hostname,
        port=port or (465 if parts.scheme == "smtps" else 25),
        implicit_tls=parts.scheme == "smtps",
        starttls=query.get("starttls", ["0"])[0].lower() in ("1", "true", "yes"),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def compose(sender: str, to: str, link: str, base_url: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = "Your Antex sign-in link"
    message.set_content(
        "Someone (hopefully you) asked to sign in to the Antex dashboard at "
        f"{base_url}.\n\n"
        f"Open this link within 15 minutes to sign in:\n\n{link}\n\n"
        "The link works once. If you did not ask for it, ignore this mail.\n"
    )
    return message


def send(target: SmtpTarget, message: EmailMessage) -> None:
    """Blocking: run it in a thread."""
    context = ssl.create_default_context()
    smtp: smtplib.SMTP
    if target.implicit_tls:
        smtp = smtplib.SMTP_SSL(target.host, target.port, timeout=_TIMEOUT_S, context=context)
    else:
        smtp = smtplib.SMTP(target.host, target.port, timeout=_TIMEOUT_S)
    with smtp:
        if target.starttls:
            smtp.starttls(context=context)
        if target.username is not None:
            smtp.login(target.username, target.password or "")
        smtp.send_message(message)


class Mailer:
    """Background deliveries of one worker; ``drain`` waits for them at shutdown."""

    def __init__(self, target: SmtpTarget, sender: str, base_url: str) -> None:
        self.target = target
        self.sender = sender
        self.base_url = base_url
        self._pending: set[asyncio.Task[None]] = set()

    def spawn(self, job: Awaitable[None]) -> None:
        """Runs ``job`` off the request path, and only once the answer is long written: its
        Valkey lookups and SMTP work (done only for existing accounts) must not show in the
        sign-in's timing."""

        async def run() -> None:
            await asyncio.sleep(_DEFER_S)
            await job

        task = asyncio.get_running_loop().create_task(run())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def deliver(self, to: str, link: str) -> None:
        message = compose(self.sender, to, link, self.base_url)
        try:
            await asyncio.to_thread(send, self.target, message)
        except (OSError, smtplib.SMTPException) as exc:
            log.error("sign-in mail not delivered: %s", type(exc).__name__)

    async def drain(self) -> None:
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=_TIMEOUT_S)
