"""The steps every billed request goes through, whatever its wire format.

authenticate (cache) → read the body (2 MB cap) → validate → admit (one Valkey call) →
upstream → settle (queued to the worker's Settler: spooled, batched, retried). Only
metadata leaves this module.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from blacksheep import Request, Response
from blacksheep.contents import ASGIContent

from gateway import errors, events, netaddr, schemas
from gateway.auth import AuthedKey, Authenticator
from gateway.catalog import Catalog, ModelInfo
from gateway.config import Settings
from gateway.limits import Charge, CreditLimiter
from gateway.observability import Metrics, access_log
from gateway.settlement import Settler
from gateway.sse import with_forwarded_output
from gateway.upstream import (
    Departure,
    Route,
    StreamState,
    Upstream,
    read_upstream_body,
    upstream_request_id,
)
from gateway.usage import Usage, cost_mc, estimate_mc, estimate_tokens

log = logging.getLogger("antex.pipeline")


def asgi_content(request: Request) -> ASGIContent:
    content = request.content
    assert isinstance(content, ASGIContent), "requests are served over ASGI"
    return content


def presented_key(request: Request) -> str | None:
    key = request.get_first_header(b"x-api-key")
    if key:
        return key.decode("latin-1").strip()
    auth = request.get_first_header(b"authorization")
    if auth and auth[:7].lower() == b"bearer ":
        return auth[7:].decode("latin-1").strip()
    return None


@dataclass(slots=True)
class Ticket:
    """One admitted request, from admission to settlement."""

    request_id: str
    route: str
    authed: AuthedKey
    ip_tag: str
    model: ModelInfo
    payload: dict[str, Any]
    body: bytes
    stream: bool
    estimate_mc: int
    started: float = field(default_factory=time.perf_counter)
    ttfb: float | None = None
    upstream_request_id: str | None = None
    choice: Route | None = None  # the pool's choice, once sent

    def first_byte(self) -> None:
        if self.ttfb is None:
            self.ttfb = time.perf_counter() - self.started


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        authenticator: Authenticator,
        limiter: CreditLimiter,
        catalog: Catalog,
        metrics: Metrics,
        settler: Settler,
    ) -> None:
        self.settings = settings
        self.settler = settler
        self.auth = authenticator
        self.limiter = limiter
        self.catalog = catalog
        self.metrics = metrics
        self.notify: events.Notify = events.ignore  # the worker's alerts, set by the app
        self.streams: set[Departure] = set()  # open streams, cut when the worker stops

    def watch(self, request: Request) -> Departure:
        """Watches a client from admission to the end of its answer (see Departure)."""
        departure = Departure(asgi_content(request).receive)
        departure.on_stop = self.streams.discard
        self.streams.add(departure)
        return departure

    def cut_streams(self) -> None:
        """The worker is about to be killed: open streams end with an error event and are
        billed for what they forwarded, rather than cut silently."""
        if self.streams:
            log.warning("stopping: ending %d open streams", len(self.streams))
        for departure in list(self.streams):
            departure.cut()

    def client_tag(self, request: Request) -> str:
        scope = request.scope
        peer = scope.get("client")
        trusted = self.settings.trusted_proxies
        if not trusted:
            return netaddr.ip_tag(netaddr.client_ip(peer[0] if peer else None, ()))
        xff = request.get_first_header(b"x-forwarded-for")
        fwd = request.get_first_header(b"forwarded")
        addr = netaddr.client_ip(
            peer[0] if peer else None,
            trusted,
            xff.decode("latin-1") if xff else None,
            fwd.decode("latin-1") if fwd else None,
        )
        return netaddr.ip_tag(addr)

    async def authenticate(self, request: Request) -> tuple[AuthedKey, str]:
        ip_tag = self.client_tag(request)
        return await self.auth.authenticate(presented_key(request), ip_tag), ip_tag

    async def read_request_body(self, request: Request) -> bytes:
        limit = self.settings.max_body_bytes
        too_large = errors.PayloadTooLarge(
            f"Request body exceeds the {limit // (1024 * 1024)} MB limit."
        )
        declared = request.get_first_header(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        async for chunk in asgi_content(request).stream():
            size += len(chunk)
            if size > limit:
                raise too_large  # chunked bodies have no length: stop reading at the cap
            chunks.append(chunk)
        return b"".join(chunks)

    def parse(self, body: bytes, schema: type[Any] | None = None) -> dict[str, Any]:
        """The body as a JSON object, first checked against the route's ``schema`` (from
        gateway.schemas) so the code behind it reads only well-typed fields."""
        if schema is not None:
            schemas.check(body, schema)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise errors.InvalidRequest("Request body is not valid JSON.") from None
        if not isinstance(payload, dict):
            raise errors.InvalidRequest("Request body must be a JSON object.")
        return payload

    def output_limit(self, model_id: str) -> int | None:
        """The largest max_tokens a request for ``model_id`` may name: the model's output
        limit, or the operator's lower ANTEX_MAX_TOKENS; None when neither is known."""
        info = self.catalog.lookup(model_id)
        limits = [n for n in (info and info.max_output_tokens, self.settings.max_tokens_limit) if n]
        return min(limits) if limits else None

    def check_messages(self, payload: dict[str, Any]) -> tuple[ModelInfo, int]:
        """Validates an Anthropic Messages payload; returns its model and max_tokens.

        max_tokens may go up to the model's own output limit (the catalog's
        ``max_output_tokens``), or to the operator's lower ``ANTEX_MAX_TOKENS`` when set.
        """
        model_id = payload.get("model")
        if not isinstance(model_id, str) or not model_id:
            raise errors.InvalidRequest("model: field required", param="model")
        max_tokens = payload.get("max_tokens", 4096)
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise errors.InvalidRequest(
                "max_tokens: must be a positive integer", param="max_tokens"
            )
        model = self.model_info(model_id)
        limits = [n for n in (model.max_output_tokens, self.settings.max_tokens_limit) if n]
        if limits and max_tokens > min(limits):
            limit = min(limits)
            whose = (
                f"{model.id}'s output limit"
                if limit == model.max_output_tokens
                else "this gateway's limit"
            )
            raise errors.MaxTokensTooLarge(
                f"max_tokens: {max_tokens} exceeds {whose} of {limit:,}.", param="max_tokens"
            )
        return model, max_tokens

    def model_info(self, model_id: str) -> ModelInfo:
        info = self.catalog.lookup(model_id)
        if info is None:
            raise errors.NotFound(f"model: {model_id}", param="model")
        return info

    async def admit(
        self,
        *,
        request_id: str,
        route: str,
        authed: AuthedKey,
        ip_tag: str,
        model: ModelInfo,
        payload: dict[str, Any],
        body: bytes,
        max_tokens: int,
    ) -> Ticket:
        estimate = estimate_mc(len(body), max_tokens, model.rates, self.settings.reserve_output_cap)
        try:
            await self.limiter.admit(
                account_id=authed.account_id,
                key_id=authed.key_id,
                ip_tag=ip_tag,
                request_id=request_id,
                estimate_mc=estimate,
            )
        except errors.RateLimited as exc:
            self.metrics.window_refused(exc.scope)
            raise
        except errors.ServiceUnavailable:
            # Valkey may have run the admission without our hearing back, or may run it
            # later (a hang): a queued release frees it, and marks the id settled so a late
            # admission reserves nothing.
            self.settler.submit(Charge(authed.account_id, authed.key_id, request_id, 0, None))
            raise
        # Should this process die mid-request, a restart bills the input estimate.
        input_mc = estimate_mc(len(body), 0, model.rates, 0)
        self.settler.hold(
            self.limiter.charge(
                account_id=authed.account_id, key_id=authed.key_id, request_id=request_id,
                cost_mc=input_mc,
                record={"model": model.id, "route": route, "key_id": authed.key_id,
                        "ip_tag": ip_tag, "status": 200, "credits_mc": input_mc,
                        "estimate_mc": estimate, "stream": int(bool(payload.get("stream"))),
                        "error_type": "gateway_stopped"},
            )
        )  # fmt: skip
        return Ticket(
            request_id=request_id,
            route=route,
            authed=authed,
            ip_tag=ip_tag,
            model=model,
            payload=payload,
            body=body,
            stream=bool(payload.get("stream")),
            estimate_mc=estimate,
        )

    async def check_only(self, authed: AuthedKey, ip_tag: str, request_id: str) -> None:
        """Key, plan and IP checks without a reservation (unbilled routes)."""
        await self.limiter.admit(
            account_id=authed.account_id,
            key_id=authed.key_id,
            ip_tag=ip_tag,
            request_id=request_id,
            estimate_mc=0,
            check_only=True,
        )

    async def send(
        self, ticket: Ticket, upstream: Upstream, path_qs: str, headers: dict[str, str]
    ) -> aiohttp.ClientResponse:
        """The upstream call of an admitted request; a failure to connect is billed as such."""
        ticket.choice = Route(ticket.authed.account_id, ticket.payload, ticket.model.id)
        try:
            resp = await upstream.post(
                path_qs, ticket.body, headers, stream=ticket.stream, route=ticket.choice
            )
        except errors.UpstreamFailed as exc:
            self.metrics.upstream_error("connect")
            timed_out = isinstance(exc, errors.UpstreamTimedOut)
            self.finish(
                ticket, {}, 504 if timed_out else 502,
                "upstream_timeout" if timed_out else "upstream_unreachable",
            )  # fmt: skip
            raise
        ticket.upstream_request_id = upstream_request_id(resp)
        return resp

    async def read_whole(self, ticket: Ticket, resp: aiohttp.ClientResponse) -> bytes:
        """A whole (non-stream or error) upstream body; a lost connection is billed as such."""
        try:
            data = await read_upstream_body(resp)
        except errors.UpstreamFailed as exc:
            self.metrics.upstream_error("read")
            timed_out = isinstance(exc, errors.UpstreamTimedOut)
            self.finish(ticket, {}, 504 if timed_out else 502, "upstream_lost")
            raise
        ticket.first_byte()
        if resp.status >= 500 or resp.status == 429:
            self.metrics.upstream_error(str(resp.status))
        return data

    def client_left(self, ticket: Ticket, resp: aiohttp.ClientResponse | None = None) -> Response:
        """The client left before its answer was ready: the upstream call is cancelled and
        the request billed for its input (the body's estimate: the upstream reported
        nothing yet)."""
        if resp is not None:
            resp.close()
        usage = {"input_tokens": estimate_tokens(len(ticket.body))}
        self.finish(ticket, usage, 499, "client_disconnected")
        return Response(499, [], None)

    def finish_stream(
        self,
        ticket: Ticket,
        state: StreamState,
        usage: dict[str, Any],
        errored: bool,
        *,
        final: bool = True,
        content_bytes: int | None = None,
    ) -> None:
        """Bills a stream once it ended, however it ended. An upstream failure names the
        outcome even when the client left afterwards (it reads the error, then closes).
        Without the upstream's ``final`` output count, the output is counted from the
        ``content_bytes`` forwarded (see ``sse.forwarded_tokens``)."""
        if state.stopping:
            outcome = "gateway_stopped"
        elif state.failed:
            outcome = "upstream_lost"
            self.metrics.upstream_error("stream")
        elif errored:
            outcome = "upstream_error_event"
            self.metrics.upstream_error("event")
        elif state.client_gone and not final:
            # A client that leaves once it has the final usage (Codex closes right after
            # response.completed) got the whole answer: that is a normal end.
            outcome = "client_disconnected"
        else:
            outcome = "ok"
        if content_bytes is not None:
            max_tokens = ticket.payload.get("max_tokens")
            usage = with_forwarded_output(
                usage, final, content_bytes, max_tokens if isinstance(max_tokens, int) else None
            )
        self.finish(ticket, usage, 200, outcome)

    def finish(self, ticket: Ticket, usage: dict[str, Any], status: int, outcome: str) -> None:
        """Bills what the upstream reported and records metadata; never blocks the response."""
        billed = Usage.from_anthropic(usage)
        cost = cost_mc(billed, ticket.model.rates)
        latency_s = time.perf_counter() - ticket.started
        ttfb_s = ticket.ttfb if ticket.ttfb is not None else latency_s
        latency_ms, ttfb_ms = int(latency_s * 1000), int(ttfb_s * 1000)
        record: dict[str, Any] = {
            "model": ticket.model.id,
            "route": ticket.route,
            "key_id": ticket.authed.key_id,
            "ip_tag": ticket.ip_tag,
            "status": status,
            "input_tokens": billed.input_tokens,
            "cache_creation_input_tokens": billed.cache_write_5m + billed.cache_write_1h,
            "cache_write_5m": billed.cache_write_5m,
            "cache_write_1h": billed.cache_write_1h,
            "cache_read_input_tokens": billed.cache_read_input_tokens,
            "output_tokens": billed.output_tokens,
            "credits_mc": cost,
            "estimate_mc": ticket.estimate_mc,
            "latency_ms": latency_ms,
            "ttfb_ms": ttfb_ms,
            "stream": int(ticket.stream),
            "disconnected": int(outcome == "client_disconnected"),
        }
        if ticket.upstream_request_id:
            record["upstream_request_id"] = ticket.upstream_request_id
        if outcome != "ok":
            record["error_type"] = outcome
        self.metrics.request_done(
            ticket.route, status, ticket.model.id, latency_s, ttfb_s, billed, cost
        )
        logged = record
        choice = ticket.choice
        if choice is not None:
            choice.done()
            if choice.upstream is not None:
                self.metrics.pool.usage(choice.upstream, billed)
                # The operator's log names the upstream; the customer's usage log does not.
                logged = {**record, "upstream": choice.upstream, "failovers": choice.failovers}
        access_log(ticket.request_id, ticket.authed.account_id, logged)
        self.settler.submit(
            self.limiter.charge(
                account_id=ticket.authed.account_id, key_id=ticket.authed.key_id,
                request_id=ticket.request_id, cost_mc=cost, record=record,
            )
        )  # fmt: skip

    async def drain(self, timeout_s: float = 10.0) -> None:
        await self.settler.close(timeout_s)
