"""The upstream side: one aiohttp session per worker, header rules, streaming passthrough.

Upstream bytes go to the client as they arrive, untouched; a scanner reads usage from
them on the way. A vanished client closes the upstream response at once.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import aiohttp

from gateway import wire
from gateway.config import Settings
from gateway.errors import UpstreamFailed, UpstreamTimedOut
from gateway.sse import UsageScanner

log = logging.getLogger("antex.upstream")

# Never forwarded upstream: hop-by-hop, the client's credentials, and our own edge's view.
_DROP_REQUEST = frozenset(
    {
        "host", "content-length", "connection", "keep-alive", "proxy-authorization",
        "proxy-authenticate", "proxy-connection", "te", "trailer", "transfer-encoding",
        "upgrade", "x-api-key", "authorization", "cookie", "accept-encoding",
        "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-port",
        "forwarded", "x-real-ip", "expect",
    }
)  # fmt: skip
# Upstream response headers a customer may see: its retry hints. Rate-limit and org headers
# describe the operator's upstream account and stay private; the content type comes from the
# answer's body, and the request id is the gateway's own (the edge sets it).
_KEEP_RESPONSE = frozenset({b"retry-after", b"retry-after-ms", b"x-should-retry"})


# On translated routes the client speaks OpenAI's protocol: its own headers (Codex's turn
# metadata carries local paths and session ids) mean nothing to an Anthropic upstream.
OPENAI_CLIENT_HEADERS = (
    "x-codex-", "x-openai-", "openai-", "originator", "session_id", "chatgpt-account-id",
    "x-stainless-", "user-agent",
)  # fmt: skip


def upstream_headers(
    client_headers: Iterable[tuple[bytes, bytes]],
    upstream_key: str,
    drop_prefixes: tuple[str, ...] = (),
) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw_name, raw_value in client_headers:
        name = raw_name.decode("latin-1").lower()
        if name in _DROP_REQUEST or (drop_prefixes and name.startswith(drop_prefixes)):
            continue
        value = raw_value.decode("latin-1")
        # anthropic-beta may arrive as several header lines: keep every value verbatim.
        out[name] = f"{out[name]},{value}" if name in out else value
    out.setdefault("anthropic-version", "2023-06-01")
    out.setdefault("content-type", "application/json")
    out["x-api-key"] = upstream_key
    out["accept-encoding"] = "identity"
    return out


def response_headers(resp: aiohttp.ClientResponse) -> list[tuple[bytes, bytes]]:
    """The upstream headers that go on to the client: retry hints only, each once."""
    return [(k, v) for k, v in resp.raw_headers if k.lower() in _KEEP_RESPONSE]


def content_type(resp: aiohttp.ClientResponse, default: str = "application/json") -> bytes:
    return resp.headers.get("content-type", default).encode("latin-1")


def upstream_request_id(resp: aiohttp.ClientResponse) -> str | None:
    """The upstream's id for the answer, logged beside the gateway's own."""
    return resp.headers.get("request-id")


class Upstream:
    def __init__(self, settings: Settings) -> None:
        self.base = settings.upstream_url
        self.key = settings.upstream_key or "simulator"
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=settings.upstream_connect_timeout,
            sock_read=settings.upstream_read_timeout,
        )
        # A non-streamed answer arrives whole at the end: the first byte may take minutes.
        self._whole_timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=settings.upstream_connect_timeout,
            sock_read=max(settings.upstream_nonstream_timeout, settings.upstream_read_timeout),
        )
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._stream_timeout,
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def post(
        self, path_qs: str, body: bytes, headers: dict[str, str], *, stream: bool
    ) -> aiohttp.ClientResponse:
        """Sends the request; ``stream`` picks the first-byte timeout (idle timeout for a
        stream, the non-stream timeout otherwise). Raises UpstreamFailed (UpstreamTimedOut)
        when no response arrives."""
        assert self._session is not None, "Upstream.start() was not awaited"
        try:
            return await self._session.post(
                self.base + path_qs,
                data=body,
                headers=headers,
                timeout=self._stream_timeout if stream else self._whole_timeout,
            )
        except TimeoutError as exc:
            raise UpstreamTimedOut("Upstream did not answer in time") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamFailed(f"Upstream unreachable: {type(exc).__name__}") from exc


async def read_body(resp: aiohttp.ClientResponse) -> bytes:
    try:
        return await resp.read()
    except TimeoutError as exc:
        raise UpstreamTimedOut("Upstream stopped sending data") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamFailed(f"Upstream connection lost: {type(exc).__name__}") from exc
    finally:
        resp.release()


class StreamState:
    """What a finished stream tells the billing step."""

    __slots__ = ("bytes_out", "chunks", "client_gone", "failed", "first_chunk_at", "scanner")

    def __init__(self) -> None:
        self.scanner = UsageScanner()
        self.client_gone = False
        self.failed = False
        self.first_chunk_at = 0.0
        self.chunks = 0
        self.bytes_out = 0


async def watch_disconnect(
    receive: Callable[[], Any], resp: aiohttp.ClientResponse, state: StreamState
) -> None:
    """Granian raises nothing when a client vanishes; its ASGI receive() tells us instead."""
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            state.client_gone = True
            resp.close()  # drops the upstream connection, so the upstream stops generating
            return


async def passthrough(
    resp: aiohttp.ClientResponse,
    state: StreamState,
    on_first_chunk: Callable[[], None],
) -> AsyncIterator[bytes]:
    """Yields upstream bytes unchanged; a failure after the 200 ends in one error event."""
    scanner = state.scanner
    try:
        async for chunk in resp.content.iter_any():
            if not state.chunks:
                on_first_chunk()
            state.chunks += 1
            state.bytes_out += len(chunk)
            scanner.feed(chunk)
            yield chunk
    except (aiohttp.ClientError, TimeoutError) as exc:
        if state.client_gone:
            return
        state.failed = True
        log.warning("upstream stream failed: %s", type(exc).__name__)
        if scanner.error is None:
            yield wire.upstream_lost_event(isinstance(exc, TimeoutError))
    finally:
        resp.release()
