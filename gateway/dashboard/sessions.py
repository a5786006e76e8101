"""Dashboard sessions in Valkey behind an HttpOnly, SameSite=Lax cookie.

The cookie holds a random token; Valkey holds only its SHA-256, so a copy of the database
cannot be replayed as a session. Visitors who are not signed in get a token too (it backs
the CSRF check on the sign-in forms) that never exists in Valkey; sign-in always issues a
fresh token, so an id planted before sign-in never becomes a session.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from blacksheep import Request, Response
from blacksheep.cookies import Cookie, CookieSameSiteMode

from gateway import keyspace
from gateway.config import IPNetwork

COOKIE = "antex_session"
COOKIE_PATH = "/dashboard"
SESSION_PREFIX = f"{keyspace.PREFIX}:dash:session:"  # + sha256(token) -> hash
SESSION_TTL_MS = 7 * 24 * 3_600_000


@dataclass(frozen=True, slots=True)
class Session:
    token: str
    account_id: str
    expires_ms: int


def new_token() -> str:
    return secrets.token_urlsafe(32)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()



def over_tls(request: Request, trusted: Sequence[IPNetwork]) -> bool:
    """True when the browser reached us over TLS: directly, or through a trusted proxy
    that says so. ``X-Forwarded-Proto`` from anyone else is ignored."""
    if request.scope.get("scheme") == "https":
        return True
    proto = request.get_first_header(b"x-forwarded-proto")
    if not proto or not trusted:
        return False
    peer = request.scope.get("client")
    try:
        addr = ipaddress.ip_address(peer[0]) if peer else None
    except ValueError:
        return False
    if addr is None or not any(addr.version == n.version and addr in n for n in trusted):
        return False
    # The first value is what the client-facing proxy saw.
    return proto.split(b",")[0].strip().lower() == b"https"


class Sessions:
    def __init__(self, client: Any, clock: Callable[[], int], trusted: Sequence[IPNetwork]):
        self._client = client
        self._clock = clock
        self._trusted = tuple(trusted)

    @staticmethod
    def presented(request: Request) -> str | None:
        token = request.cookies.get(COOKIE)
        # Our tokens are 43 url-safe characters; anything else is not worth a lookup.
        if token and 20 <= len(token) <= 100 and token.replace("-", "").replace("_", "").isalnum():
            return token
        return None

    async def load(self, token: str | None) -> Session | None:
        if token is None:
            return None
        raw = await self._client.hmget(SESSION_PREFIX + digest(token), "account", "expires")
        account, expires = raw
        if account is None or expires is None:
            return None
        expires_ms = int(str(expires))
        if expires_ms <= self._clock():
            return None
        return Session(token, str(account), expires_ms)

    async def create(self, account_id: str) -> Session:
        token = new_token()
        now = self._clock()
        expires = now + SESSION_TTL_MS
        key = SESSION_PREFIX + digest(token)
        pipe = self._client.pipeline(transaction=True)
        pipe.hset(
            key, mapping={"account": account_id, "created": str(now), "expires": str(expires)}
        )
        # Valkey's own expiry only collects garbage; ``expires`` against the injectable
        # clock decides validity.
        pipe.pexpire(key, SESSION_TTL_MS)
        await pipe.execute()
        return Session(token, account_id, expires)

    async def destroy(self, token: str | None) -> None:
        if token is None:
            return
        await self._client.delete(SESSION_PREFIX + digest(token))

    def set_cookie(
        self, request: Request, response: Response, token: str, *, persist: bool
    ) -> None:
        response.set_cookie(
            Cookie(
                COOKIE,
                token,
                path=COOKIE_PATH,
                http_only=True,
                secure=over_tls(request, self._trusted),
                max_age=SESSION_TTL_MS // 1000 if persist else -1,
                same_site=CookieSameSiteMode.LAX,
            )
        )

    def clear_cookie(self, request: Request, response: Response) -> None:
        response.set_cookie(
            Cookie(
                COOKIE,
                "",
                path=COOKIE_PATH,
                http_only=True,
                secure=over_tls(request, self._trusted),
                max_age=0,
                same_site=CookieSameSiteMode.LAX,
            )
        )
