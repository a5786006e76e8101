"""The exchange, written once: auth → read body → validate → admit → send → whole | stream → bill.

Routes supply only what differs between wire formats: the schema of their body, the
Anthropic request it becomes (``Call``) and how the answer is written (``Answer``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from blacksheep import Request, Response

from gateway import errors
from gateway.edge import request_id, stream_response
from gateway.pipeline import Pipeline, Ticket
from gateway.sse import json_object
from gateway.upstream import (
    ClientGone,
    Departure,
    Shaper,
    Upstream,
    UpstreamResponse,
    UpstreamStream,
    content_type,
    read_upstream_body,
    response_headers,
    upstream_headers,
)
from gateway.usage import Usage, estimate_tokens

Headers = list[tuple[bytes, bytes]]


class Answer(Shaper, Protocol):
    """A route's answer to its client: a stream through ``Shaper``'s steps, or whole."""

    def whole(
        self, status: int, raw: bytes, message: dict[str, Any] | None, headers: Headers,
        ctype: bytes,
    ) -> Response:  # fmt: skip
        """An answer that came whole: a 200 Messages response (``message`` its JSON object,
        None when unreadable: raise UpstreamFailed if the route needs it), or the upstream's
        refusal (``raw`` its error body). ``headers`` are the upstream's to pass on."""
        ...

    def refused(self, exc: errors.RateLimited) -> Response | None:
        """The route's own answer to a window refusal; None raises it as usual."""
        ...


@dataclass(frozen=True, slots=True)
class Call:
    """The Anthropic Messages request a route makes of its client's request."""

    payload: dict[str, Any]
    body: bytes  # the payload's bytes as sent (the client's own on /v1/messages)
    answer: Answer
    path: str = "/v1/messages"  # with the query string, when it is passed on
    drop_headers: tuple[str, ...] = ()  # client header prefixes the upstream must not see


Prepare = Callable[[dict[str, Any], bytes], Call]


class Exchange:
    """Serves billed requests for the routes of one wire format."""

    def __init__(self, pipeline: Pipeline, upstream: Upstream) -> None:
        self.p = pipeline
        self.upstream = upstream

    async def serve(
        self, request: Request, route: str, schema: type[Any], prepare: Prepare
    ) -> Response:
        """``prepare`` turns the client's parsed body (and its bytes) into the Call."""
        p = self.p
        authed, ip_tag = await p.authenticate(request)
        raw = await p.read_request_body(request)
        call = prepare(p.parse(raw, schema), raw)
        model, max_tokens = p.check_messages(call.payload)
        try:
            ticket = await p.admit(
                request_id=request_id(request), route=route, authed=authed, ip_tag=ip_tag,
                model=model, payload=call.payload, body=call.body, max_tokens=max_tokens,
            )  # fmt: skip
        except errors.RateLimited as exc:
            refusal = call.answer.refused(exc)
            if refusal is None:
                raise
            return refusal
        headers = upstream_headers(request.scope["headers"], self.upstream.key, call.drop_headers)
        # Watched from now on: a client that leaves cancels the upstream call at once.
        departure = p.watch(request)
        resp = None
        try:
            resp = await departure.guard(p.send(ticket, self.upstream, call.path, headers))
            ctype = resp.headers.get("content-type", "")
            if resp.status == 200 and ctype.startswith("text/event-stream"):
                return self._stream(ticket, resp, departure, call.answer)
            return await self._whole(ticket, resp, departure, call.answer)
        except ClientGone:
            return self._client_left(ticket, resp)
        finally:
            if not departure.following:
                departure.stop()

    async def _whole(
        self, ticket: Ticket, resp: UpstreamResponse, departure: Departure, answer: Answer
    ) -> Response:
        p = self.p
        try:
            raw = await departure.guard(read_upstream_body(resp))
        except errors.UpstreamFailed as exc:
            p.metrics.upstream_error("read")
            timed_out = isinstance(exc, errors.UpstreamTimedOut)
            p.finish(ticket, Usage(), 504 if timed_out else 502, "upstream_lost")
            raise
        ticket.first_byte()
        status = resp.status
        if status >= 500 or status == 429:
            p.metrics.upstream_error(str(status))
        message = json_object(raw) if status == 200 else None
        try:
            response = answer.whole(
                status, raw, message, response_headers(resp), content_type(resp)
            )
        except errors.UpstreamFailed:
            p.metrics.upstream_error("read")
            p.finish(ticket, Usage(), 502, "upstream_unreadable")
            raise
        if status != 200:
            # The record keeps the upstream's status (a 529 stays visible as an overload).
            p.finish(ticket, Usage(), status, "upstream_error")
        elif message is None:
            p.finish(ticket, Usage(), 200, "ok")
        else:
            usage = message.get("usage")
            stop = message.get("stop_reason")
            p.finish(
                ticket, Usage.from_anthropic(usage if isinstance(usage, dict) else {}), 200,
                "ok", stop if isinstance(stop, str) else None,
            )  # fmt: skip
        return response

    def _stream(
        self, ticket: Ticket, resp: UpstreamResponse, departure: Departure, answer: Answer
    ) -> Response:
        self.p.metrics.stream_opened()
        stream = UpstreamStream(
            resp, departure, answer,
            on_first_byte=ticket.first_byte, on_end=lambda s: self._settle(ticket, s),
        )  # fmt: skip
        meter, max_tokens = stream.meter, ticket.max_tokens
        ticket.progress = lambda: Usage.from_anthropic(meter.usage_now(max_tokens))
        ctype = b"text/event-stream" if answer.events else content_type(resp)
        return stream_response(response_headers(resp), stream.body, ctype)

    def _settle(self, ticket: Ticket, stream: UpstreamStream) -> None:
        """Bills a stream once it ended, however it ended. An upstream failure names the
        outcome even when the client left afterwards (it reads the error, then closes)."""
        p, meter = self.p, stream.meter
        p.metrics.stream_closed()
        if stream.stopping:
            outcome = "gateway_stopped"
        elif stream.failed:
            outcome = "upstream_lost"
            p.metrics.upstream_error("stream")
        elif meter.error is not None:
            outcome = "upstream_error_event"
            p.metrics.upstream_error("event")
        elif stream.client_gone and not meter.final:
            # A client that leaves once it has the final usage (Codex closes right after
            # response.completed) got the whole answer: that is a normal end.
            outcome = "client_disconnected"
        else:
            outcome = "ok"
        usage = Usage.from_anthropic(meter.usage_now(ticket.max_tokens))
        if outcome in ("client_disconnected", "gateway_stopped"):
            # Gone before message_start: the upstream took the prompt all the same, so the
            # input is estimated as when the client leaves before the headers or the
            # gateway is killed (an upstream failure is billed only what it reported).
            usage = ticket.input_or_estimate(usage)
        p.finish(ticket, usage, 200, outcome, meter.stop_reason)

    def _client_left(self, ticket: Ticket, resp: UpstreamResponse | None) -> Response:
        """The client left before its answer was ready: the upstream call is cancelled and
        the request billed for its input (the body's estimate: the upstream reported
        nothing yet)."""
        if resp is not None:
            resp.close()
        usage = Usage(input_tokens=estimate_tokens(ticket.body_len))
        self.p.finish(ticket, usage, 499, "client_disconnected")
        return Response(499, [], None)
