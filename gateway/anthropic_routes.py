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
from gateway.edge import request_id, stream_response
from gateway.limits import usage_body
from gateway.pipeline import Pipeline, Ticket
from gateway.schemas import CountTokensBody, MessagesBody
from gateway.sse import usage_from_message
from gateway.upstream import (
    ClientGone,
    Departure,
    StreamState,
    Upstream,
    content_type,
    passthrough,
    read_upstream_body,
    response_headers,
    upstream_headers,
)

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


class AnthropicRoutes:
    def __init__(self, pipeline: Pipeline, upstream: Upstream, client: avalkey.Valkey) -> None:
        self.p = pipeline
        self.upstream = upstream
        self.valkey = client

    async def messages(self, request: Request) -> Response:
        p = self.p
        authed, ip_tag = await p.authenticate(request)
        body = await p.read_request_body(request)
        payload = p.parse(body, MessagesBody)
        model, max_tokens = p.check_messages(payload)
        ticket = await p.admit(
            request_id=request_id(request), route="messages", authed=authed, ip_tag=ip_tag,
            model=model, payload=payload, body=body, max_tokens=max_tokens,
        )  # fmt: skip
        headers = upstream_headers(request.scope["headers"], self.upstream.key)
        # Watched from now on: a client that leaves cancels the upstream call at once.
        departure = p.watch(request)
        resp = None
        try:
            resp = await departure.guard(
                p.send(ticket, self.upstream, path_with_query("/v1/messages", request), headers)
            )
            ctype = resp.headers.get("content-type", "")
            if resp.status != 200 or not ctype.startswith("text/event-stream"):
                return await self._whole(ticket, resp, departure)
            return self._stream(ticket, resp, departure)
        except ClientGone:
            return p.client_left(ticket, resp)
        finally:
            if resp is None or not departure.following:
                departure.stop()

    async def _whole(self, ticket: Ticket, resp: Any, departure: Departure) -> Response:
        data = await departure.guard(self.p.read_whole(ticket, resp))
        usage = usage_from_message(data)[0] if resp.status == 200 else {}
        self.p.finish(ticket, usage, resp.status, "ok" if resp.status == 200 else "upstream_error")
        if resp.status != 200:
            # Upstream error wording goes back unmodified (clients match on it); the id in it
            # becomes ours, the one the access log and the request-id header carry.
            data = wire.with_request_id(data, ticket.request_id)
        return Response(resp.status, response_headers(resp), Content(content_type(resp), data))

    def _stream(self, ticket: Ticket, resp: Any, departure: Departure) -> Response:
        state = StreamState()
        departure.follow(resp, state)
        metrics = self.p.metrics
        metrics.stream_opened()

        async def provider() -> Any:
            try:
                async for chunk in passthrough(resp, state, ticket.first_byte):
                    yield chunk
            finally:
                departure.stop()
                metrics.stream_closed()
                scanner = state.scanner
                self.p.finish_stream(
                    ticket, state, scanner.billed_usage(), scanner.error is not None,
                    final="output_tokens" in scanner.usage,
                    content_bytes=scanner.content_bytes(),
                )  # fmt: skip

        return stream_response(response_headers(resp), provider, content_type(resp))

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
