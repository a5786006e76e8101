"""The steps every billed request goes through, whatever its wire format; ``exchange``
puts them in order.

authenticate (cache) → read the body (2 MB cap) → validate → admit (one Valkey call) →
send → settle (queued to the worker's Settler: spooled, batched, retried). Only metadata
leaves this module.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from blacksheep import Request
from blacksheep.contents import ASGIContent

from gateway import errors, events, netaddr, schemas
from gateway.auth import AuthedKey, Authenticator
from gateway.billing import Charge, Meta, Outcome, UsageRecord, settlement
from gateway.catalog import Catalog, ModelInfo
from gateway.config import Settings
from gateway.limits import CreditLimiter
from gateway.observability import Metrics, access_log
from gateway.settlement import Settler
from gateway.upstream import (
    Departure,
    Route,
    Upstream,
    UpstreamResponse,
    upstream_request_id,
)
from gateway.usage import Usage, estimate_mc, estimate_tokens

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
    """One admitted request, from admission to settlement. It keeps the request's metadata,
    not its payload; the body it sends goes once the upstream has it."""

    meta: Meta
    max_tokens: int
    choice: Route  # the pool's choice: it holds the payload only until the upstream is chosen
    body: bytes | None
    body_len: int
    started: float = field(default_factory=time.perf_counter)
    ttfb: float | None = None
    upstream_request_id: str | None = None
    # The usage so far of a stream under way (set by the exchange); None before.
    progress: Callable[[], Usage] | None = None

    @property
    def request_id(self) -> str:
        return self.meta.request_id

    @property
    def stream(self) -> bool:
        return self.meta.stream

    def first_byte(self) -> None:
        if self.ttfb is None:
            self.ttfb = time.perf_counter() - self.started

    def settlement(
        self, usage: Usage, status: int, outcome: str, stop_reason: str | None = None
    ) -> tuple[UsageRecord, Charge]:
        """The record and charge of this request as it stands now (a provisional charge
        mid-stream, or the final one)."""
        latency_s = time.perf_counter() - self.started
        ttfb_s = self.ttfb if self.ttfb is not None else latency_s
        end = Outcome(
            status, outcome, int(latency_s * 1000), int(ttfb_s * 1000),
            self.upstream_request_id, stop_reason,
        )  # fmt: skip
        return settlement(self.meta, usage, end)

    def provisional(self) -> Charge:
        """What this request is billed should the process die now: the usage so far of its
        stream, else its input estimate; recorded as ``gateway_killed``. Cheap enough to
        call at every checkpoint."""
        usage = self.progress() if self.progress is not None else Usage()
        return self.settlement(self.input_or_estimate(usage), 200, "gateway_killed")[1]

    def input_or_estimate(self, usage: Usage) -> Usage:
        """``usage``, with the body's input estimate while the upstream has reported no
        input yet (before message_start's usage arrives)."""
        if usage.total_input_tokens:
            return usage
        return replace(usage, input_tokens=estimate_tokens(self.body_len))


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
        stream = bool(payload.get("stream"))
        meta = Meta(
            authed.account_id, authed.key_id, request_id, route, model.id, model.rates, ip_tag,
            stream, estimate,
        )  # fmt: skip
        ticket = Ticket(
            meta, max_tokens, Route(authed.account_id, payload, model.id), body, len(body)
        )
        # Should this process die mid-request, a restart bills the input estimate, and once
        # the stream runs, what it forwarded by the last checkpoint.
        self.settler.hold(ticket.provisional())
        self.settler.track(request_id, ticket.provisional)
        return ticket

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
    ) -> UpstreamResponse:
        """The upstream call of an admitted request; a failure to connect is billed as such.
        The request body is released once sent."""
        assert ticket.body is not None, "a ticket is sent once"
        try:
            resp = await upstream.post(
                path_qs, ticket.body, headers, stream=ticket.stream, route=ticket.choice
            )
        except errors.UpstreamFailed as exc:
            self.metrics.upstream_error("connect")
            timed_out = isinstance(exc, errors.UpstreamTimedOut)
            self.finish(
                ticket, Usage(), 504 if timed_out else 502,
                "upstream_timeout" if timed_out else "upstream_unreachable",
            )  # fmt: skip
            raise
        finally:
            ticket.body = None
        ticket.upstream_request_id = upstream_request_id(resp)
        return resp

    def finish(
        self,
        ticket: Ticket,
        usage: Usage,
        status: int,
        outcome: str,
        stop_reason: str | None = None,
    ) -> None:
        """Bills ``usage`` (what the upstream reported) and records metadata; never blocks
        the response. ``outcome`` "ok" or the record's error_type."""
        record, charge = ticket.settlement(usage, status, outcome, stop_reason)
        latency_s = time.perf_counter() - ticket.started
        ttfb_s = ticket.ttfb if ticket.ttfb is not None else latency_s
        self.metrics.request_done(
            record.route, status, record.model, latency_s, ttfb_s, usage, record.credits_mc
        )
        logged = record.fields()
        choice = ticket.choice
        choice.done()
        if choice.upstream is not None:
            self.metrics.pool.usage(choice.upstream, usage)
            # The operator's log names the upstream; the customer's usage log does not.
            logged |= {"upstream": choice.upstream, "failovers": choice.failovers}
        access_log(ticket.request_id, ticket.meta.account_id, logged)
        self.settler.submit(charge)

    async def drain(self, timeout_s: float = 10.0) -> None:
        await self.settler.close(timeout_s)
