"""OpenAI-format routes: /v1/chat/completions and /v1/responses, served by Claude.

The same pipeline as /v1/messages (auth, IP binding, windows, credits from the upstream's
usage); the pure translators in ``gateway.translate`` map the bodies, this module does the I/O.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

import aiohttp
import orjson
from blacksheep import Content, Request, Response

from gateway import errors, wire
from gateway.auth import AuthedKey
from gateway.edge import request_id, stream_response
from gateway.pipeline import Pipeline, Ticket
from gateway.schemas import ChatBody, ResponsesBody
from gateway.sse import EventSplitter, usage_from_message
from gateway.translate.common import anthropic_error_to_openai, fit_output_limit
from gateway.translate.openai_chat import (
    ChatStreamTranslator,
    anthropic_to_chat_response,
    chat_request_to_anthropic,
)
from gateway.translate.openai_responses import (
    ResponsesContext,
    ResponsesStreamTranslator,
    anthropic_to_responses,
    responses_request_to_anthropic,
)
from gateway.upstream import (
    OPENAI_CLIENT_HEADERS,
    ClientGone,
    Departure,
    StreamState,
    Upstream,
    read_upstream_body,
    response_headers,
    upstream_headers,
)

JSON = b"application/json"
SSE = b"text/event-stream"
_VERSION_PARTS = re.compile(r"(?<![0-9])[0-9]{1,2}(?![0-9])")
_LOST = {"type": "api_error", "message": "Upstream connection lost"}
_TIMED_OUT = {"type": "timeout_error", "message": "Upstream stopped sending data"}
_STOPPING = {"type": "api_error", "message": "The gateway is restarting; retry the request."}
_Caller = tuple[AuthedKey, str]  # the authenticated key and the client's IP tag


def adaptive_thinking(model_id: str) -> bool:
    """Whether a model takes ``thinking: {type: adaptive}`` rather than a token budget.

    The catalog has no flag for it, so this follows Claude Code's rule (protocol B): models
    before 4.6 (claude-opus-4-5-…, claude-3-7-sonnet-…) take budgets; 4.6 and later, and
    names without a version (claude-mythos-preview), are adaptive. Sonnet 5 refuses budgets.
    """
    parts = [int(p) for p in _VERSION_PARTS.findall(model_id)[:2]]
    if not parts:
        return True
    major, minor = parts[0], parts[1] if len(parts) > 1 else 0
    return (major, minor) >= (4, 6)


class _Translator(Protocol):
    def feed(self, event: str, data: dict[str, Any]) -> bytes: ...

    def error(self, error: dict[str, Any]) -> bytes: ...


def _event_data(raw: bytes) -> dict[str, Any] | None:
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return payload if isinstance(payload, dict) else None


def _track_usage(billed: dict[str, Any], event: str, data: dict[str, Any]) -> None:
    """The billing rule of ``UsageScanner``: message_start's usage, then message_delta's
    cumulative fields on top (the cache_creation split included, so 1-hour writes bill right).
    """
    if event == "message_start":
        usage = (data.get("message") or {}).get("usage")
    elif event == "message_delta":
        usage = data.get("usage")
    else:
        return
    if isinstance(usage, dict):
        billed.update(usage)


def _delta_bytes(data: dict[str, Any]) -> int:
    """The content bytes of one content_block_delta: text, thinking or tool-input JSON."""
    delta = data.get("delta")
    if not isinstance(delta, dict):
        return 0
    for name in ("text", "thinking", "partial_json"):
        value = delta.get(name)
        if isinstance(value, str):
            return len(value.encode())
    return 0


def _json(status: int, payload: Any, headers: list[tuple[bytes, bytes]]) -> Response:
    return Response(status, headers, Content(JSON, orjson.dumps(payload)))


class OpenAIRoutes:
    def __init__(self, pipeline: Pipeline, upstream: Upstream) -> None:
        self.p = pipeline
        self.upstream = upstream

    # -- POST /v1/chat/completions -------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        payload, caller, adaptive = await self._read(request, ChatBody)
        translated = chat_request_to_anthropic(payload, adaptive_thinking=adaptive)
        explicit = any(payload.get(f) is not None for f in ("max_completion_tokens", "max_tokens"))
        ticket = await self._admit(
            request, "chat_completions", caller, translated, explicit_max=explicit
        )
        departure = self.p.watch(request)
        resp = None
        try:
            resp = await departure.guard(self._post(request, ticket))
            if not self._is_stream(resp):
                data = await departure.guard(self._whole(ticket, resp))
                if data is None:
                    return await self._upstream_error(ticket, resp)
                answer = anthropic_to_chat_response(data, created=int(time.time()))
                return _json(200, answer, response_headers(resp))
            options = payload.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            translator = ChatStreamTranslator(
                model=str(payload["model"]), include_usage=include_usage, created=int(time.time())
            )
            return self._stream(ticket, departure, resp, translator, b"")
        except ClientGone:
            return self.p.client_left(ticket, resp)
        finally:
            if not departure.following:
                departure.stop()

    # -- POST /v1/responses --------------------------------------------------------------------

    async def responses(self, request: Request) -> Response:
        payload, caller, adaptive = await self._read(request, ResponsesBody)
        translated, ctx = responses_request_to_anthropic(payload, adaptive_thinking=adaptive)
        try:
            # The answer echoes these request fields: refuse now what could not be written.
            orjson.dumps([ctx.text, ctx.tools, ctx.metadata, ctx.tool_choice, ctx.reasoning])
        except orjson.JSONEncodeError:
            raise errors.InvalidRequest("Request body is nested too deeply.") from None
        try:
            ticket = await self._admit(
                request, "responses", caller, translated,
                explicit_max=payload.get("max_output_tokens") is not None,
            )  # fmt: skip
        except errors.RateLimited as exc:
            if payload.get("stream") is not True:
                raise
            return self._refused_stream(request, ctx, exc)
        response_id = "resp_" + ticket.request_id.removeprefix("req_")
        departure = self.p.watch(request)
        resp = None
        try:
            resp = await departure.guard(self._post(request, ticket))
            if not self._is_stream(resp):
                data = await departure.guard(self._whole(ticket, resp))
                if data is None:
                    return await self._upstream_error(ticket, resp)
                answer = anthropic_to_responses(
                    data, ctx, response_id=response_id, created_at=int(time.time())
                )
                return _json(200, answer, response_headers(resp))
            translator = ResponsesStreamTranslator(
                ctx, response_id=response_id, created_at=int(time.time())
            )
            # created/in_progress go out only now, after the upstream's 200 (F.4.3).
            return self._stream(ticket, departure, resp, translator, translator.start())
        except ClientGone:
            return self.p.client_left(ticket, resp)
        finally:
            if not departure.following:
                departure.stop()

    def _refused_stream(
        self, request: Request, ctx: ResponsesContext, exc: errors.RateLimited
    ) -> Response:
        """A window refusal as Codex can act on it (F.5): ``response.failed`` with
        ``rate_limit_exceeded`` and "try again in Ns" makes Codex wait N s and retry, right
        for a short wait. For a full window (hours) Codex would sleep that long, up to
        stream_max_retries times, showing nothing; ``invalid_prompt`` is the code Codex 0.171
        ends the turn on at once while printing our message (window and when it frees).
        """
        rid = request_id(request)
        translator = ResponsesStreamTranslator(
            ctx, response_id="resp_" + rid.removeprefix("req_"), created_at=int(time.time())
        )
        short = exc.retry_after_s <= wire.RETRY_HINT_LIMIT_S
        body = translator.start() + translator.error(
            {"type": "rate_limit_error", "message": exc.message},
            code="rate_limit_exceeded" if short else "invalid_prompt",
            retry_after_s=exc.retry_after_s if short else None,
        )
        return Response(
            200, [(b"retry-after", str(exc.retry_after_s).encode())], Content(SSE, body)
        )

    async def get_response(self, request: Request, response_id: str) -> Response:
        """Responses are never stored (requests are served statelessly): always 404."""
        authed, ip_tag = await self.p.authenticate(request)
        await self.p.check_only(authed, ip_tag, request_id(request))
        raise errors.NotFound(f"Response with id '{response_id}' not found.")

    # -- shared steps --------------------------------------------------------------------------

    async def _read(
        self, request: Request, schema: type[Any]
    ) -> tuple[dict[str, Any], _Caller, bool]:
        p = self.p
        caller = await p.authenticate(request)
        payload = p.parse(await p.read_request_body(request), schema)
        model_id = payload.get("model")
        adaptive = False
        if isinstance(model_id, str) and model_id:
            info = p.catalog.lookup(model_id)
            adaptive = adaptive_thinking(info.id if info is not None else model_id)
        return payload, caller, adaptive

    async def _admit(
        self, request: Request, route: str, caller: _Caller, translated: dict[str, Any],
        *, explicit_max: bool,
    ) -> Ticket:  # fmt: skip
        p = self.p
        model_id = translated.get("model")
        limit = p.output_limit(model_id) if isinstance(model_id, str) else None
        if limit is not None and not explicit_max:
            fit_output_limit(translated, limit)
        model, max_tokens = p.check_messages(translated)
        try:
            body = orjson.dumps(translated)  # the estimate prices the bytes Claude will read
        except orjson.JSONEncodeError:
            # orjson writes at most 254 levels; a deeper tool schema is no real request.
            raise errors.InvalidRequest("Request body is nested too deeply.") from None
        authed, ip_tag = caller
        return await p.admit(
            request_id=request_id(request), route=route, authed=authed, ip_tag=ip_tag, model=model,
            payload=translated, body=body, max_tokens=max_tokens,
        )  # fmt: skip

    async def _post(self, request: Request, ticket: Ticket) -> aiohttp.ClientResponse:
        headers = upstream_headers(
            request.scope["headers"], self.upstream.key, OPENAI_CLIENT_HEADERS
        )
        return await self.p.send(ticket, self.upstream, "/v1/messages", headers)

    @staticmethod
    def _is_stream(resp: aiohttp.ClientResponse) -> bool:
        ctype = resp.headers.get("content-type", "")
        return resp.status == 200 and ctype.startswith("text/event-stream")

    async def _whole(self, ticket: Ticket, resp: aiohttp.ClientResponse) -> dict[str, Any] | None:
        """Reads a non-stream answer and bills it; None when the upstream refused."""
        if resp.status != 200:
            return None
        raw = await self.p.read_whole(ticket, resp)
        message = _event_data(raw)
        if message is None:
            self.p.metrics.upstream_error("read")
            self.p.finish(ticket, {}, 502, "upstream_unreadable")
            raise errors.UpstreamFailed("Upstream sent an unreadable response")
        self.p.finish(ticket, usage_from_message(raw)[0], 200, "ok")
        return message

    async def _upstream_error(self, ticket: Ticket, resp: aiohttp.ClientResponse) -> Response:
        """An upstream refusal, translated to OpenAI's shape; the message stays verbatim."""
        try:
            raw = await read_upstream_body(resp)
        except errors.UpstreamFailed:
            raw = b""
        ticket.first_byte()
        if resp.status >= 500 or resp.status == 429:
            self.p.metrics.upstream_error(str(resp.status))
        # The record keeps the upstream's status (a 529 stays visible as an overload); the
        # client gets OpenAI's mapping of it.
        self.p.finish(ticket, {}, resp.status, "upstream_error")
        status, body = anthropic_error_to_openai(resp.status, raw)
        return _json(status, body, response_headers(resp))

    def _stream(
        self,
        ticket: Ticket,
        departure: Departure,
        resp: aiohttp.ClientResponse,
        translator: _Translator,
        head: bytes,
    ) -> Response:
        """Translates upstream events as they arrive: one upstream chunk, one client write."""
        state = StreamState()
        departure.follow(resp, state)
        metrics = self.p.metrics
        metrics.stream_opened()
        billed: dict[str, Any] = {}

        async def provider() -> AsyncIterator[bytes]:
            splitter = EventSplitter()
            ended = errored = final = False
            forwarded = 0  # content bytes of the deltas translated so far
            try:
                if head:
                    yield head
                try:
                    async for chunk in resp.content.iter_any():
                        if not state.chunks:
                            ticket.first_byte()
                        state.chunks += 1
                        out: list[bytes] = []
                        for event, raw in splitter.feed(chunk):
                            data = _event_data(raw)
                            if data is None:
                                continue
                            _track_usage(billed, event, data)
                            if event == "content_block_delta":
                                forwarded += _delta_bytes(data)
                            elif event == "message_delta" and "output_tokens" in (
                                data.get("usage") or {}
                            ):
                                final = True
                            out.append(translator.feed(event, data))
                            errored = errored or event == "error"
                            ended = ended or event in ("message_stop", "error")
                        if out:
                            yield b"".join(out)
                    lost: dict[str, Any] | None = None if ended else _LOST
                except (aiohttp.ClientError, TimeoutError) as exc:
                    lost = _TIMED_OUT if isinstance(exc, TimeoutError) else _LOST
                    if state.stopping:
                        lost = _STOPPING
                if lost is not None and not ended and not state.client_gone:
                    # A 200 is already out: the failure ends the stream in the client's format.
                    state.failed = True
                    yield translator.error(lost)
            finally:
                resp.release()
                departure.stop()
                metrics.stream_closed()
                self.p.finish_stream(
                    ticket, state, billed, errored, final=final, content_bytes=forwarded
                )

        return stream_response(response_headers(resp), provider)
