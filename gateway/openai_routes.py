"""OpenAI-format routes: /v1/chat/completions and /v1/responses, served by Claude.

The same pipeline as /v1/messages (auth, IP binding, windows, credits from the upstream's
usage); the pure translators in ``gateway.translate`` map the bodies, this module does the I/O.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import orjson
from blacksheep import Content, Request, Response

from gateway import errors, wire
from gateway.edge import request_id
from gateway.exchange import Call, Exchange, Headers
from gateway.pipeline import Pipeline
from gateway.schemas import ChatBody, ResponsesBody
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
from gateway.upstream import OPENAI_CLIENT_HEADERS, Event, Upstream

JSON = b"application/json"
SSE = b"text/event-stream"


class _Translator(Protocol):
    def feed(self, event: str, data: dict[str, Any]) -> bytes: ...

    def error(self, error: dict[str, Any]) -> bytes: ...


def _json(status: int, payload: Any, headers: list[tuple[bytes, bytes]]) -> Response:
    return Response(status, headers, Content(JSON, orjson.dumps(payload)))


class _Translated:
    """An OpenAI-format answer to a Claude exchange: the events are parsed once (the
    exchange's meter reads the same ones) and each upstream chunk is one client write."""

    events = True

    def __init__(self) -> None:
        self.translator: _Translator | None = None

    def start(self) -> _Translator:
        raise NotImplementedError

    def opening(self) -> bytes:
        self.translator = self.start()
        return b""

    def piece(self, chunk: bytes, events: list[Event]) -> bytes:
        assert self.translator is not None
        feed = self.translator.feed
        return b"".join([feed(event, data) for event, data in events])

    def closing(self, lost: errors.AntexError) -> bytes:
        assert self.translator is not None
        return self.translator.error({"type": lost.code, "message": lost.message})

    def whole(
        self, status: int, raw: bytes, message: dict[str, Any] | None, headers: Headers,
        ctype: bytes,
    ) -> Response:  # fmt: skip
        if status != 200:
            # OpenAI's mapping of the refusal; the upstream's message stays verbatim.
            out_status, body = anthropic_error_to_openai(status, raw)
            return _json(out_status, body, headers)
        if message is None:
            raise errors.UpstreamFailed("Upstream sent an unreadable response")
        return _json(200, self.answer(message), headers)

    def answer(self, message: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def refused(self, exc: errors.RateLimited) -> Response | None:
        return None


class _ChatAnswer(_Translated):
    def __init__(self, payload: dict[str, Any]) -> None:
        super().__init__()
        self.model = str(payload["model"])
        options = payload.get("stream_options")
        self.include_usage = isinstance(options, dict) and options.get("include_usage") is True

    def start(self) -> _Translator:
        return ChatStreamTranslator(
            model=self.model, include_usage=self.include_usage, created=int(time.time())
        )

    def answer(self, message: dict[str, Any]) -> dict[str, Any]:
        return anthropic_to_chat_response(message, created=int(time.time()))


class _ResponsesAnswer(_Translated):
    def __init__(self, ctx: ResponsesContext, request_id: str, stream: bool) -> None:
        super().__init__()
        self.ctx = ctx
        self.response_id = "resp_" + request_id.removeprefix("req_")
        self.stream = stream

    def start(self) -> ResponsesStreamTranslator:
        return ResponsesStreamTranslator(
            self.ctx, response_id=self.response_id, created_at=int(time.time())
        )

    def opening(self) -> bytes:
        # created/in_progress go out only now, after the upstream's 200 (F.4.3).
        translator = self.translator = self.start()
        return translator.start()

    def answer(self, message: dict[str, Any]) -> dict[str, Any]:
        return anthropic_to_responses(
            message, self.ctx, response_id=self.response_id, created_at=int(time.time())
        )

    def refused(self, exc: errors.RateLimited) -> Response | None:
        """A window refusal as Codex can act on it (F.5): ``response.failed`` with
        ``rate_limit_exceeded`` and "try again in Ns" makes Codex wait N s and retry, right
        for a short wait. For a full window (hours) Codex would sleep that long, up to
        stream_max_retries times, showing nothing; ``invalid_prompt`` is the code Codex 0.171
        ends the turn on at once while printing our message (window and when it frees).
        """
        if not self.stream:
            return None
        translator = self.start()
        short = exc.retry_after_s <= wire.RETRY_HINT_LIMIT_S
        body = translator.start() + translator.error(
            {"type": "rate_limit_error", "message": exc.message},
            code="rate_limit_exceeded" if short else "invalid_prompt",
            retry_after_s=exc.retry_after_s if short else None,
        )
        return Response(
            200, [(b"retry-after", str(exc.retry_after_s).encode())], Content(SSE, body)
        )


class OpenAIRoutes:
    def __init__(self, pipeline: Pipeline, upstream: Upstream) -> None:
        self.p = pipeline
        self.upstream = upstream
        self.exchange = Exchange(pipeline, upstream)

    async def chat_completions(self, request: Request) -> Response:
        def prepare(payload: dict[str, Any], body: bytes) -> Call:
            translated = chat_request_to_anthropic(
                payload, adaptive_thinking=self._adaptive(payload)
            )
            explicit = any(
                payload.get(f) is not None for f in ("max_completion_tokens", "max_tokens")
            )
            return self._call(translated, _ChatAnswer(payload), explicit_max=explicit)

        return await self.exchange.serve(request, "chat_completions", ChatBody, prepare)

    async def responses(self, request: Request) -> Response:
        def prepare(payload: dict[str, Any], body: bytes) -> Call:
            translated, ctx = responses_request_to_anthropic(
                payload, adaptive_thinking=self._adaptive(payload)
            )
            try:
                # The answer echoes these request fields: refuse now what could not be written.
                orjson.dumps([ctx.text, ctx.tools, ctx.metadata, ctx.tool_choice, ctx.reasoning])
            except orjson.JSONEncodeError:
                raise errors.InvalidRequest("Request body is nested too deeply.") from None
            answer = _ResponsesAnswer(ctx, request_id(request), payload.get("stream") is True)
            explicit = payload.get("max_output_tokens") is not None
            return self._call(translated, answer, explicit_max=explicit)

        return await self.exchange.serve(request, "responses", ResponsesBody, prepare)

    async def get_response(self, request: Request, response_id: str) -> Response:
        """Responses are never stored (requests are served statelessly): always 404."""
        authed, ip_tag = await self.p.authenticate(request)
        await self.p.check_only(authed, ip_tag, request_id(request))
        raise errors.NotFound(f"Response with id '{response_id}' not found.")

    def _adaptive(self, payload: dict[str, Any]) -> bool:
        model_id = payload.get("model")
        if not isinstance(model_id, str) or not model_id:
            return False
        return self.p.catalog.adaptive_thinking(model_id)

    def _call(self, translated: dict[str, Any], answer: _Translated, *, explicit_max: bool) -> Call:
        """The Anthropic request of a translated one, its max_tokens fitted to the model's
        output limit unless the client named one."""
        model_id = translated.get("model")
        limit = self.p.output_limit(model_id) if isinstance(model_id, str) else None
        if limit is not None and not explicit_max:
            fit_output_limit(translated, limit)
        try:
            body = orjson.dumps(translated)  # the estimate prices the bytes Claude will read
        except orjson.JSONEncodeError:
            # orjson writes at most 254 levels; a deeper tool schema is no real request.
            raise errors.InvalidRequest("Request body is nested too deeply.") from None
        return Call(translated, body, answer, drop_headers=OPENAI_CLIENT_HEADERS)
