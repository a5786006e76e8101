"""The upstream side: one aiohttp session per worker, header rules, the upstream stream.

Upstream bytes go to the client as they arrive; the stream's meter reads usage from them on
the way. A vanished client closes the upstream response at once. The only aiohttp importer
on the request path: its errors become domain errors here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import aiohttp

from gateway.config import Settings
from gateway.errors import AntexError, ServiceUnavailable, UpstreamFailed, UpstreamTimedOut
from gateway.pool_choice import conversation_key, is_new_conversation
from gateway.pool_state import DISABLE_STATUSES, RETRY_STATUSES, Member, PoolPolicy, PoolView
from gateway.sse import EventSplitter, UsageScanner, json_object

if TYPE_CHECKING:
    from gateway.pool_metrics import PoolMetrics

log = logging.getLogger("antex.upstream")
T = TypeVar("T")
UpstreamResponse = aiohttp.ClientResponse  # what callers above this module hold, by name
# What aiohttp raises when the transport fails (its timeouts are TimeoutErrors).
TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError)

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


class Route:
    """What the pool needs to know of one request, and what it tells back: the affinity
    key and model going in; the upstream that answered and the failovers coming out."""

    __slots__ = (
        "_account", "_key", "_payload", "failovers", "member", "model", "new_conversation",
        "upstream",
    )  # fmt: skip

    def __init__(self, account_id: str, payload: dict[str, Any], model: str) -> None:
        self._account = account_id
        self._payload: dict[str, Any] | None = payload  # until the pool made its choice
        self._key: bytes | None = None
        self.model = model
        self.new_conversation = is_new_conversation(payload)
        self.member: Member | None = None
        self.upstream: str | None = None  # the answering upstream's name
        self.failovers = 0

    @property
    def key(self) -> bytes:
        """The conversation key, computed only when the pool has a choice to make."""
        if self._key is None:
            self._key = conversation_key(self._account, self._payload or {})
        return self._key

    def chosen(self) -> None:
        """The upstream order is fixed: the request's payload is no longer needed."""
        self._payload = None

    def done(self) -> None:
        """The answer is over: frees the upstream's concurrency slot (idempotent)."""
        member, self.member = self.member, None
        if member is not None:
            member.in_flight -= 1


class Upstream:
    """The pool's HTTP side: one aiohttp session per worker for every upstream, and the one
    place that fails over. Before a response goes back to the caller (before the client
    got a byte), a connect failure, first-byte timeout, 429, 529, 5xx or an upstream's own
    401/403 moves the request to the next upstream in its rendezvous order."""

    def __init__(self, settings: Settings, view: PoolView | None = None) -> None:
        self.view = view or PoolView(PoolPolicy())
        self.policy = self.view.policy
        # Routes put this placeholder in x-api-key; each attempt sets its upstream's key.
        self.key = "pool"
        self.metrics: PoolMetrics | None = None
        self.on_event: Callable[[dict[str, Any]], None] = lambda event: None
        # (upstream id, reason) of an upstream that refused its own key: the operator alert.
        self.on_disabled: Callable[[str, str], None] = lambda upstream_id, reason: None
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
        self,
        path_qs: str,
        body: bytes,
        headers: dict[str, str],
        *,
        stream: bool,
        route: Route | None = None,
    ) -> aiohttp.ClientResponse:
        """Sends the request to the pool, failing over as the class says.

        ``stream`` picks the first-byte timeout (``first_byte_timeout_s`` for a stream, the
        non-stream timeout otherwise). Without ``route`` (unbilled calls) no model filter
        applies. Returns the answering upstream's response: a refusal that may not be
        retried, or the last retryable one when every attempt failed. Raises
        UpstreamFailed (UpstreamTimedOut) when no attempt got an answer.
        """
        assert self._session is not None, "Upstream.start() was not awaited"
        now = time.time()
        model = route.model if route is not None else ""
        key = route.key if route is not None and len(self.view.members) > 1 else b""
        fresh = route.new_conversation if route is not None else True
        order = self.view.order(key, model, new_conversation=fresh, now=now)
        if route is not None:
            route.chosen()
        if not order:
            raise UpstreamFailed(f"No upstream is enabled for model {model or 'requests'}")
        policy = self.policy
        started = time.monotonic()
        tries = order[: policy.attempts]
        for n, member in enumerate(tries):
            headers["x-api-key"] = member.key
            if member.half_open:
                member.probing = True
            member.in_flight += 1
            try:
                resp = await self._attempt(member, path_qs, body, headers, stream)
            except asyncio.CancelledError:
                member.in_flight -= 1
                member.probing = False
                raise
            except UpstreamFailed as exc:
                member.in_flight -= 1
                self._signal(self.view.failed(member, time.time()))
                if self.metrics is not None:
                    self.metrics.attempt(
                        member.name, "timeout" if isinstance(exc, UpstreamTimedOut) else "connect"
                    )
                if n == len(tries) - 1 or time.monotonic() - started > policy.budget_s:
                    raise
                self._failed_over(member, route)
                continue
            status = resp.status
            self._signal(self.view.answered(member, status, resp.headers, model, time.time()))
            if self.metrics is not None:
                self.metrics.attempt(member.name, str(status))
            more = n < len(tries) - 1 and time.monotonic() - started <= policy.budget_s
            if more and (status in RETRY_STATUSES or status in DISABLE_STATUSES):
                member.in_flight -= 1
                await _discard(resp)
                self._failed_over(member, route)
                continue
            if route is not None:
                route.member, route.upstream = member, member.name
            else:
                member.in_flight -= 1
            return resp
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _attempt(
        self, member: Member, path_qs: str, body: bytes, headers: dict[str, str], stream: bool
    ) -> aiohttp.ClientResponse:
        assert self._session is not None
        try:
            if stream:
                # Headers come before the first event: an upstream that sends none in this
                # time is stalled, and nothing has reached the client yet.
                async with asyncio.timeout(self.policy.first_byte_timeout_s):
                    return await self._session.post(
                        member.base + path_qs, data=body, headers=headers,
                        timeout=self._stream_timeout,
                    )  # fmt: skip
            return await self._session.post(
                member.base + path_qs, data=body, headers=headers, timeout=self._whole_timeout
            )
        except TRANSPORT_ERRORS as exc:
            raise failure(exc, answered=False) from exc

    def _failed_over(self, member: Member, route: Route | None) -> None:
        if route is not None:
            route.failovers += 1
        if self.metrics is not None:
            self.metrics.failover(member.name)

    def _signal(self, event: dict[str, Any] | None) -> None:
        if event is None:
            return
        if event["t"] == "disable":
            member = self.view.by_id(event["id"])
            name = member.name if member else event["id"]
            # The metric is the pool's antex_pool_upstreams_disabled gauge; this worker saw
            # the refusal, so it raises the log line and the operator webhook once.
            log.error("upstream %s disabled: %s; fix its key, then `antex upstream enable %s`",
                      name, event["why"], name)  # fmt: skip
            self.on_disabled(event["id"], event["why"])
        self.on_event(event)


async def _discard(resp: aiohttp.ClientResponse) -> None:
    """Reads a refused attempt's short error body so its connection can be reused; one
    that does not arrive at once costs the connection, not the request's time."""
    try:
        async with asyncio.timeout(1.0):
            await resp.read()
    except TRANSPORT_ERRORS:
        resp.close()
    finally:
        resp.release()


def failure(exc: BaseException, *, answered: bool, named: bool = True) -> UpstreamFailed:
    """The one mapping of a transport error to the domain: before the upstream answered (a
    connect failure or first-byte timeout) or after (reading its body). ``named`` adds
    the exception's class, for messages that never reach a stream already open."""
    if isinstance(exc, TimeoutError):
        timed = "Upstream stopped sending data" if answered else "Upstream did not answer in time"
        return UpstreamTimedOut(timed)
    what = "Upstream connection lost" if answered else "Upstream unreachable"
    return UpstreamFailed(f"{what}: {type(exc).__name__}" if named else what)


async def read_upstream_body(resp: aiohttp.ClientResponse) -> bytes:
    try:
        return await resp.read()
    except TRANSPORT_ERRORS as exc:
        raise failure(exc, answered=True) from exc
    finally:
        resp.release()


class ClientGone(Exception):
    """The client disconnected before its answer was ready (internal: never on the wire)."""


class Departure:
    """Watches one client from admission to the end of its answer. Granian raises nothing
    when a client vanishes; its ASGI receive() says so. ``guard`` runs an upstream step
    and cancels it (closing its connection) the moment the client leaves; once a stream is
    open, ``follow`` closes its upstream response instead.

    The watch is a done-callback on the server's pending receive() future, not a task: a
    request pays one future and one callback, and nothing runs until the client leaves."""

    __slots__ = ("_receive", "_resp", "_state", "_step", "_waiter", "gone", "on_stop")

    def __init__(self, receive: Callable[[], Awaitable[Any]]) -> None:
        self.gone = False
        self._receive = receive
        self._resp: aiohttp.ClientResponse | None = None
        self._state: UpstreamStream | None = None
        self._step: asyncio.Future[Any] | None = None  # the guarded upstream step
        self._waiter: asyncio.Future[Any] | None = None
        self.on_stop: Callable[[Departure], None] = lambda departure: None
        self._listen()

    def _listen(self) -> None:
        waiter = self._receive()
        # Granian's receive() is already a future; any other server's awaitable gets a task.
        future = waiter if hasattr(waiter, "add_done_callback") else asyncio.ensure_future(waiter)
        self._waiter = cast("asyncio.Future[Any]", future)
        self._waiter.add_done_callback(self._heard)

    def _heard(self, waiter: asyncio.Future[Any]) -> None:
        if waiter is not self._waiter or waiter.cancelled():
            return  # stopped
        if waiter.exception() is None and waiter.result().get("type") != "http.disconnect":
            self._listen()
            return
        # A disconnect, or a receive channel that broke: either way nobody reads the answer.
        self._waiter = None
        self.gone = True
        if self._step is not None:
            self._step.cancel()
        if self._state is not None:
            self._state.client_gone = True
        if self._resp is not None:
            self._resp.close()  # the upstream stops generating

    async def guard(self, step: Awaitable[T]) -> T:
        """``step``'s result; raises ClientGone (having cancelled it) if the client left."""
        task = asyncio.ensure_future(step)
        if self.gone:
            task.cancel()
        self._step = task
        try:
            return await task
        except asyncio.CancelledError:
            if self.gone and task.cancelled():
                raise ClientGone from None
            raise
        finally:
            self._step = None

    @property
    def following(self) -> bool:
        """A stream took the watch over; its end stops it."""
        return self._resp is not None

    def follow(self, resp: aiohttp.ClientResponse, state: UpstreamStream) -> None:
        self._resp, self._state = resp, state
        if self.gone:
            state.client_gone = True
            resp.close()

    def cut(self) -> None:
        """The gateway is stopping: ends the stream (with an error event) now."""
        if self._state is not None and self._resp is not None:
            self._state.stopping = True
            self._resp.close()

    def stop(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.remove_done_callback(self._heard)
            waiter.cancel()
        self.on_stop(self)


Event = tuple[str, dict[str, Any]]  # an SSE event's name and its JSON data


class Shaper(Protocol):
    """How a route writes an upstream stream to its client. ``events`` asks for each
    chunk's parsed events (translated routes); the passthrough route reads the bytes."""

    events: bool

    def opening(self) -> bytes:
        """What goes out once the upstream answered 200, before its first chunk."""
        ...

    def piece(self, chunk: bytes, events: list[Event]) -> bytes:
        """One upstream chunk (and its complete events) as the client's next write."""
        ...

    def closing(self, lost: AntexError) -> bytes:
        """The last write of a stream that broke off (a 200 is out: an error event)."""
        ...


class UpstreamStream:
    """One upstream SSE answer on its way to one client: the one stream loop.

    It owns what every stream shares: the client's watch (``Departure``), the first-byte
    time, the usage rule (``meter``), the mapping of aiohttp errors to the domain error
    ``lost`` (written by the route's ``closing``: a 200 is already out) and the settle
    callback ``on_end``, called once however the stream ends. Routes only shape the bytes.
    """

    __slots__ = (
        "_departure", "_ended", "_on_end", "_on_first_byte", "_resp", "_shaper", "client_gone",
        "lost", "meter", "stopping",
    )  # fmt: skip

    def __init__(
        self,
        resp: aiohttp.ClientResponse,
        departure: Departure,
        shaper: Shaper,
        *,
        on_first_byte: Callable[[], None],
        on_end: Callable[[UpstreamStream], None],
    ) -> None:
        self._resp = resp
        self._departure = departure
        self._shaper = shaper
        self._on_first_byte = on_first_byte
        self._on_end = on_end
        self._ended = False
        self.meter = UsageScanner()
        self.client_gone = False
        self.stopping = False  # the gateway is stopping and cut the stream
        self.lost: AntexError | None = None
        departure.follow(resp, self)

    @property
    def failed(self) -> bool:
        """The upstream connection broke before the answer was complete."""
        return self.lost is not None and not self.stopping

    async def body(self) -> AsyncIterator[bytes]:
        """The client's writes: one per upstream chunk, as it arrives, never empty (an
        empty write would end the client's chunked body: a translated event may shape to
        nothing). The one generator between the upstream socket and the server."""
        shaper, meter = self._shaper, self.meter
        splitter = EventSplitter() if shaper.events else None
        no_events: list[Event] = []
        first = True
        try:
            if opening := shaper.opening():
                yield opening
            try:
                # readany() itself, not iter_any(): one async layer less per chunk; both end
                # on the empty read at EOF.
                read = self._resp.content.readany
                while chunk := await read():
                    if first:
                        first = False
                        self._on_first_byte()
                    if splitter is None:
                        meter.feed(chunk)
                        if piece := shaper.piece(chunk, no_events):
                            yield piece
                        continue
                    parsed: list[Event] = []
                    for name, raw in splitter.feed(chunk):
                        data = json_object(raw)
                        if data is not None:
                            meter.observe(name, data)
                            parsed.append((name, data))
                    if piece := shaper.piece(chunk, parsed):
                        yield piece
                if splitter is not None and not meter.ended and not self.client_gone:
                    # The parsed events show an answer that ended without its end event.
                    self.lost = UpstreamFailed("Upstream connection lost")
            except TRANSPORT_ERRORS as exc:
                self.lost = self._mapped(exc)
            if self.lost is not None and (closing := shaper.closing(self.lost)):
                yield closing
        finally:
            self.end()

    def _mapped(self, exc: Exception) -> AntexError | None:
        """What a broken upstream read means for the client; None when nothing is lost."""
        if self.client_gone or (self.meter.ended and not self.stopping):
            return None
        if self.stopping:
            return ServiceUnavailable("The gateway is restarting; retry the request.")
        log.warning("upstream stream failed: %s", type(exc).__name__)
        return failure(exc, answered=True, named=False)

    def end(self) -> None:
        """The client's answer is over, however it ended: releases the upstream response,
        stops the watch and settles, once."""
        if self._ended:
            return
        self._ended = True
        self._resp.release()
        self._departure.stop()
        self._on_end(self)
