"""Builds the blacksheep application: lifespan resources, routes, the one error handler."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

import valkey.asyncio as avalkey
from blacksheep import Application, Content, Request, Response

from gateway import admin_api, errors, observability
from gateway.anthropic_routes import AnthropicRoutes, json_response
from gateway.config import Settings
from gateway.console import routes as console
from gateway.dashboard import routes as dashboard
from gateway.edge import asgi_guard, edge_middleware, error_response
from gateway.observability import configure_logging
from gateway.openai_routes import OpenAIRoutes
from gateway.resources import Resources

Handler = Callable[[Request], Awaitable[Response]]


def handler(method: Handler) -> Handler:
    """Blacksheep marks handler functions with attributes, which bound methods refuse."""

    async def call(request: Request) -> Response:
        return await method(request)

    return call


def create_app(settings: Settings) -> Application:
    app = Application(show_error_details=False)
    res = Resources(settings)
    app.services.register(Resources, instance=res)
    anthropic = AnthropicRoutes(res.pipeline, res.upstream, res.valkey)
    openai = OpenAIRoutes(res.pipeline, res.upstream)

    async def on_start(_: Application) -> None:
        await res.start()

    async def on_stop(_: Application) -> None:
        await res.stop()

    app.on_start += on_start
    app.on_stop += on_stop

    observe_error = observability.error_observer(
        res.metrics, res.pipeline.client_tag, lambda: res.alerts.valkey_error("request")
    )

    async def handle_domain_error(
        app_: Application, request: Request, exc: errors.AntexError
    ) -> Response:
        response = error_response(request, exc)
        observe_error(app_, request, exc, response)
        return response

    app.exceptions_handlers[errors.AntexError] = handle_domain_error
    origins = settings.cors_origins
    app.middlewares.append(
        edge_middleware(app, None if origins is None else frozenset(o.encode() for o in origins))
    )

    async def root(request: Request) -> Response:
        return Response(200, [], Content(b"text/plain", b"Antex gateway\n"))

    async def healthz(request: Request) -> Response:
        return json_response(200, {"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:
            async with asyncio.timeout(settings.readyz_timeout):
                await res.valkey.ping()
                if not res.ready:
                    await res.scripts.load(res.valkey)
                    res.ready = True
        except (OSError, avalkey.ValkeyError, errors.ServiceUnavailable, TimeoutError):
            return json_response(503, {"status": "valkey unreachable"})
        return json_response(200, {"status": "ready"})

    async def not_found(request: Request) -> Response:
        # Raised, not returned: the error handler logs it, so a wrong base URL shows up in
        # the access log under the request id the client got.
        raise errors.NotFound(f"Not found: {request.method} {request.path}")

    async def get_model(request: Request, model_id: str) -> Response:
        return await anthropic.get_model(request, model_id)

    async def get_response(request: Request, response_id: str) -> Response:
        return await openai.get_response(request, response_id)

    router = app.router
    router.add_get("/", root)
    router.add_head("/", root)
    router.add_get("/healthz", healthz)
    router.add_head("/healthz", healthz)  # uptime probes often send HEAD
    router.add_get("/readyz", readyz)
    router.add_head("/readyz", readyz)
    router.add_post("/v1/messages", handler(anthropic.messages))
    router.add_post("/v1/messages/count_tokens", handler(anthropic.count_tokens))
    router.add_get("/v1/models", handler(anthropic.list_models))
    router.add_get("/v1/models/:model_id", get_model)
    router.add_post("/v1/chat/completions", handler(openai.chat_completions))
    router.add_post("/v1/responses", handler(openai.responses))
    router.add_get("/v1/responses/:response_id", get_response)
    router.add_get("/v1/usage", handler(anthropic.usage))
    router.add_get("/api/oauth/usage", handler(anthropic.usage))
    router.fallback = not_found
    observability.register(app, res.metrics, settings.metrics_token)  # GET /metrics
    admin_api.register(app, res)  # /admin/... (operator token) and /openapi.json
    dashboard.register(app, res)  # /dashboard/... (customer pages, cookie sessions)
    console.register(app, res)  # /admin/console/... (operator pages, token-backed sessions)
    return app


def app_from_env() -> Any:
    """The granian factory target: each worker builds its app from the environment."""
    settings = Settings.from_env(os.environ)
    configure_logging(settings.log_level, settings.log_format)
    return asgi_guard(create_app(settings), settings.body_read_timeout)
