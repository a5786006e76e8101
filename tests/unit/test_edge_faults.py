"""The edge's last word on faults no route mapped, over a small blacksheep app run in
process: a Valkey outage raised from a handler with no guard is a 503 in the route's shape,
and anything else unexpected is a 500 in that shape, logged by type and code location
without the exception's message (it can quote request values)."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest
import valkey.asyncio as avalkey
from blacksheep import Application, Request, Response
from blacksheep.server.routing import Router
from valkey.asyncio.retry import Retry
from valkey.backoff import NoBackoff

from gateway.edge import edge_middleware, error_response
from gateway.embedded_valkey import free_port
from gateway.errors import AntexError

SECRET = "sk-ant-canary-do-not-log"


def make_app() -> Application:
    # Its own router: blacksheep's default one may serve a single application per process.
    app = Application(show_error_details=False, router=Router())

    async def handle(_: Application, request: Request, exc: AntexError) -> Response:
        return error_response(request, exc)

    app.exceptions_handlers[AntexError] = handle
    app.middlewares.append(edge_middleware(app, None))

    async def valkey_call(request: Request) -> Response:
        # No guard: a connection refused by a closed port, as a stopped Valkey gives.
        client = avalkey.Valkey(port=free_port(), retry=Retry(NoBackoff(), 0))
        try:
            await client.get("anything")
        finally:
            await client.aclose()
        return Response(200)

    async def bug(request: Request) -> Response:
        raise ValueError(f"bad input {SECRET}")

    for path in ("/v1/messages", "/v1/chat/completions", "/dashboard/usage"):
        app.router.add_get(path, valkey_call)
    app.router.add_get("/v1/models", bug)
    app.router.add_get("/v1/responses", bug)
    return app


async def call(app: Application, path: str) -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"test")], "client": ("127.0.0.1", 1), "server": ("test", 80),
    }  # fmt: skip
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


@pytest.fixture
async def app() -> Application:
    application = make_app()
    await application.start()
    return application


async def test_an_unguarded_valkey_outage_is_a_503_in_the_routes_shape(app: Application) -> None:
    status, headers, body = await call(app, "/v1/messages")
    assert status == 503 and headers[b"content-type"] == b"application/json"
    assert orjson.loads(body)["error"]["type"] == "api_error"
    status, _, body = await call(app, "/v1/chat/completions")
    assert status == 503 and orjson.loads(body)["error"]["type"] == "server_error"
    status, _, _ = await call(app, "/dashboard/usage")
    assert status == 503


async def test_an_unexpected_fault_is_a_500_in_shape_logged_without_its_message(
    app: Application, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="antex.edge"):
        status, headers, body = await call(app, "/v1/models")
        assert status == 500 and headers[b"content-type"] == b"application/json"
        assert orjson.loads(body)["error"] == {"type": "api_error", "message": "Internal error."}
        status, _, body = await call(app, "/v1/responses")
        assert status == 500 and orjson.loads(body)["error"]["type"] == "server_error"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "ValueError" in logged and "test_edge_faults.py" in logged
    assert SECRET not in logged and SECRET.encode() not in body
