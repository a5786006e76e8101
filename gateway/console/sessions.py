"""Console sessions: an operator token pasted once, exchanged for a random cookie.

The cookie (``antex_console``, HttpOnly, SameSite=Strict, Secure over TLS, path
``/admin/console``) holds a random token; Valkey holds its SHA-256 with the operator token's
digest, name and scope. A session lives 12 hours by the injectable clock and ends at once
when its operator token is revoked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from blacksheep import Request, Response

from gateway import admin_tokens, keyspace
from gateway.config import IPNetwork
from gateway.dashboard.sessions import digest, new_token, over_tls

COOKIE = "antex_console"
COOKIE_PATH = "/admin/console"
SESSION_PREFIX = f"{keyspace.PREFIX}:console:session:"  # + sha256(token) -> hash
SESSION_TTL_MS = 12 * 3_600_000


@dataclass(frozen=True, slots=True)
class OperatorSession:
    token: str
    name: str
    scope: str
    expires_ms: int



class ConsoleSessions:
    def __init__(self, client: Any, clock: Callable[[], int], trusted: Sequence[IPNetwork]):
        self._client = client
        self._clock = clock
        self._trusted = tuple(trusted)

    @staticmethod
    def presented(request: Request) -> str | None:
        token = request.cookies.get(COOKIE)
        if token and 20 <= len(token) <= 100 and token.replace("-", "").replace("_", "").isalnum():
            return token
        return None

    async def load(self, token: str | None) -> OperatorSession | None:
        if token is None:
            return None
        raw = await self._client.hmget(
            SESSION_PREFIX + digest(token), "op", "name", "scope", "expires"
        )
        op, name, scope, expires = raw
        if op is None or expires is None or int(str(expires)) <= self._clock():
            return None
        # A revoked operator token ends every session it opened.
        if not await self._client.hexists(keyspace.ADMIN_TOKENS, str(op)):
            return None
        return OperatorSession(token, str(name), str(scope), int(str(expires)))

    async def create(self, operator_token: str) -> OperatorSession | None:
        """A session for a valid operator token, else None."""
        meta = await admin_tokens.check_token(self._client, operator_token)
        if meta is None:
            return None
        token = new_token()
        expires = self._clock() + SESSION_TTL_MS
        name, scope = str(meta.get("name", "operator")), str(meta.get("scope", "full"))
        key = SESSION_PREFIX + digest(token)
        pipe = self._client.pipeline(transaction=True)
        pipe.hset(
            key,
            mapping={"op": admin_tokens.digest(operator_token), "name": name,
                     "scope": scope, "expires": str(expires)},
        )  # fmt: skip
        pipe.pexpire(key, SESSION_TTL_MS)
        await pipe.execute()
        return OperatorSession(token, name, scope, expires)

    async def destroy(self, token: str | None) -> None:
        if token is not None:
            await self._client.delete(SESSION_PREFIX + digest(token))

    def set_cookie(self, request: Request, response: Response, token: str, max_age: int) -> None:
        """``max_age`` in seconds; -1 for a browser-session cookie, 0 to delete it.

        Written by hand: blacksheep adds ``Secure`` to every SameSite=Strict cookie, which
        a browser drops on plain-HTTP origins other than localhost."""
        parts = [f"{COOKIE}={token}", f"Path={COOKIE_PATH}", "HttpOnly", "SameSite=Strict"]
        if over_tls(request, self._trusted):
            parts.append("Secure")
        if max_age >= 0:
            parts.append(f"Max-Age={max_age}")
        response.add_header(b"set-cookie", "; ".join(parts).encode())
