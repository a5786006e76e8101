"""Anthropic-format routes: messages (JSON and SSE), count_tokens, models, usage, probes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
import valkey.asyncio as avalkey
from blacksheep import Content, Request, Response

from gateway import errors, wire
from gateway.accounts import get_account
from gateway.catalog import ModelInfo
from gateway.edge import request_id
from gateway.exchange import Call, Exchange, Headers
from gateway.pipeline import Pipeline
from gateway.schemas import CountTokensBody, MessagesBody
from gateway.upstream import (
    Event,
    Upstream,
    content_type,
    read_upstream_body,
    response_headers,
    upstream_headers,
)
from gateway.wire import usage_body

JSON = b"application/json"


def json_response(
    status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> Response:
    return Response(status, headers or [], Content(JSON, orjson.dumps(payload)))


def path_with_query(path: str, request: Request) -> str:
    query = request.scope.get("query_string") or b""
    return f"{path}?{query.decode('latin-1')}" if query else path


def _epoch(rfc3339: str) -> int:
    try:
        return int(datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def model_object(info: ModelInfo) -> dict[str, Any]:
    """Both SDKs parse this: Anthropic's fields plus OpenAI's object/created/owned_by."""
    return {
        "type": "model",
        "id": info.id,
        "display_name": info.display_name,
        "created_at": info.created_at,
        "object": "model",
        "created": _epoch(info.created_at),
        "owned_by": "anthropic",
    }


class Passthrough:
    """/v1/messages answers as the upstream sent them: bytes untouched (never re-serialized,
    thinking signatures stay valid), upstream error wording verbatim."""

    __slots__ = ("request_id",)
    events = False

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id

    def opening(self) -> bytes:
        return b""

    def piece(self, chunk: bytes, events: list[Event]) -> bytes:
        return chunk

    def closing(self, lost: errors.AntexError) -> bytes:
        return wire.sse_error_event(lost)

    def whole(
        self, status: int, raw: bytes, message: dict[str, Any] | None, headers: Headers,
        ctype: bytes,
    ) -> Response:  # fmt: skip
        if status != 200:
            # Clients match on the upstream's wording; the id in it becomes ours, the one
            # the access log and the request-id header carry.
            raw = wire.with_request_id(raw, self.request_id)
        return Response(status, headers, Content(ctype, raw))

    def refused(self, exc: errors.RateLimited) -> Response | None:
        return None


class AnthropicRoutes:
    def __init__(self, pipeline: Pipeline, upstream: Upstream, client: avalkey.Valkey) -> None:
        self.p = pipeline
        self.upstream = upstream
        self.valkey = client
        self.exchange = Exchange(pipeline, upstream)

    async def messages(self, request: Request) -> Response:
        def prepare(payload: dict[str, Any], body: bytes) -> Call:
            path = path_with_query("/v1/messages", request)
            return Call(payload, body, Passthrough(request_id(request)), path)

        return await self.exchange.serve(request, "messages", MessagesBody, prepare)

    async def count_tokens(self, request: Request) -> Response:
        p = self.p
        authed, ip_tag = await p.authenticate(request)
        body = await p.read_request_body(request)
        payload = p.parse(body, CountTokensBody)
        model_id = payload.get("model")
        if not isinstance(model_id, str) or not model_id:
            raise errors.InvalidRequest("model: field required", param="model")
        p.model_info(model_id)
        await p.check_only(authed, ip_tag, request_id(request))
        headers = upstream_headers(request.scope["headers"], self.upstream.key)
        path = path_with_query("/v1/messages/count_tokens", request)
        resp = await self.upstream.post(path, body, headers, stream=False)
        data = await read_upstream_body(resp)
        if resp.status != 200:
            data = wire.with_request_id(data, request_id(request))
        return Response(resp.status, response_headers(resp), Content(content_type(resp), data))

    async def list_models(self, request: Request) -> Response:
        authed, ip_tag = await self.p.authenticate(request)
        await self.p.check_only(authed, ip_tag, request_id(request))
        models = self.p.catalog.models
        ids = [m.id for m in models]
        after, before = request.query.get("after_id"), request.query.get("before_id")
        start, end = 0, len(models)
        if after and after[0] in ids:
            start = ids.index(after[0]) + 1
        if before and before[0] in ids:
            end = ids.index(before[0])
        try:
            limit = min(1000, max(1, int((request.query.get("limit") or ["20"])[0])))
        except ValueError:
            raise errors.InvalidRequest("limit: must be an integer", param="limit") from None
        page = models[start:end][:limit]
        data = [model_object(m) for m in page]
        return json_response(
            200,
            {
                "data": data,
                "has_more": start + len(page) < end,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "object": "list",
            },
        )

    async def get_model(self, request: Request, model_id: str) -> Response:
        authed, ip_tag = await self.p.authenticate(request)
        await self.p.check_only(authed, ip_tag, request_id(request))
        return json_response(200, model_object(self.p.model_info(model_id)))

    async def usage(self, request: Request) -> Response:
        authed, ip_tag = await self.p.authenticate(request)
        await self.p.check_only(authed, ip_tag, request_id(request))
        view = await self.p.limiter.usage(authed.account_id)
        account = await get_account(self.valkey, authed.account_id)
        body = usage_body(view, account.get("plan"), int(account.get("period_end_ms") or 0) or None)
        return json_response(200, body)
