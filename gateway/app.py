"""Builds the blacksheep application: lifespan resources, routes, the one error handler."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import Any

import valkey.asyncio as avalkey
from blacksheep import Application, Content, Request, Response
from valkey.asyncio.retry import Retry
from valkey.backoff import NoBackoff

from gateway import admin_api, errors, observability
from gateway.alerts import Alerts
from gateway.anthropic_routes import AnthropicRoutes, json_response
from gateway.auth import Authenticator
from gateway.catalog import load_catalog
from gateway.clock import make_clock
from gateway.config import Settings
from gateway.console import routes as console
from gateway.dashboard import routes as dashboard
from gateway.edge import asgi_guard, edge_middleware, error_response
from gateway.limits import CreditLimiter, LimiterSettings
from gateway.observability import Metrics, configure_logging
from gateway.openai_routes import OpenAIRoutes
from gateway.pipeline import Pipeline
from gateway.pool_state import PoolView
from gateway.pool_sync import PoolSync
from gateway.scripts import Scripts
from gateway.settlement import Settler
from gateway.upstream import Upstream
from gateway.valkey_client import is_cluster, open_client

log = logging.getLogger("antex.app")
# A stopping worker's last settlement flushes (after granian's ANTEX_DRAIN_SECONDS); what
# is still queued then stays spooled for the next start.
SETTLE_DRAIN_S = 10
# How long before granian's kill open streams are ended (and their charges spooled).
STREAM_CUT_MARGIN_S = 1.5

class Resources:
    """Everything one worker opens at start-up and closes at shutdown."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Sub-second socket timeouts and no retries: a hung Valkey turns into a 503 within
        # a second instead of stalling every request for valkey-py's default 5 s.
        self.valkey = open_client(
            settings.valkey_url or "",
            max_connections=512,
            health_check_interval=30,
            socket_timeout=settings.valkey_timeout,
            socket_connect_timeout=settings.valkey_connect_timeout,
            retry=Retry(NoBackoff(), 0),
        )
        # Pub/sub waits for messages for hours: its own connection, without a read timeout.
        self.subscriber = open_client(
            settings.valkey_url or "",
            max_connections=2,
            health_check_interval=30,
            socket_connect_timeout=settings.valkey_connect_timeout,
        )
        self.scripts = Scripts()
        self.catalog = load_catalog(settings.models_file)
        self.metrics = Metrics()
        self.upstream = Upstream(settings, PoolView(settings.pool_policy()))
        self.pool = PoolSync(settings, self.valkey, self.upstream.view, self.metrics.pool)
        self.upstream.metrics = self.metrics.pool
        self.upstream.on_event = self.pool.share
        self.limiter = CreditLimiter(
            self.valkey,
            self.scripts,
            make_clock(settings.clock_file),
            LimiterSettings(
                reserve_output_cap=max(1, settings.reserve_output_cap),
                ip_quarantine_count=settings.quarantine_ip_count,
                ip_quarantine_period_ms=settings.quarantine_ip_period_s * 1000,
                failure_alert_count=settings.quarantine_failures,
                failure_alert_period_ms=settings.quarantine_failure_period_s * 1000,
                reservation_ttl_ms=settings.reservation_ttl_s * 1000,
            ),
        )
        self.settler = Settler(
            self.limiter,
            Path(settings.data_dir) / "spool",
            interval_s=settings.settle_flush_ms / 1000,
            call_timeout_s=settings.settle_timeout_s,
            on_error=self._settle_error,
        )
        self.auth = Authenticator(
            self.valkey,
            ttl=settings.auth_cache_ttl,
            size=settings.auth_cache_size,
            on_bad_secret=self._bad_secret,
        )
        self.pipeline = Pipeline(
            settings, self.auth, self.limiter, self.catalog, self.metrics, self.settler
        )
        self.alerts = Alerts(settings, self.valkey, metrics=self.metrics)
        self.limiter.notify = self.pipeline.notify = self.settler.notify = self.alerts.notify
        self.upstream.on_disabled = self.alerts.upstream_disabled
        self._tasks: list[asyncio.Task[None]] = []
        self.ready = False

    def _settle_error(self) -> None:
        self.metrics.valkey_error()
        self.alerts.valkey_error("settle")

    async def _bad_secret(self, account_id: str, key_id: str, ip_tag: str) -> None:
        alerted = await self.limiter.record_key_failure(
            account_id=account_id, key_id=key_id, ip_tag=ip_tag
        )
        self.metrics.wrong_secret(alerted)

    def _watch_stop(self) -> None:
        """Granian gives a stopping worker ANTEX_DRAIN_SECONDS, then kills it: just before,
        open streams are ended with an error event and billed for what they forwarded.
        Granian's own SIGTERM handling goes on unchanged (the loop's wakeup fd still fires).
        """
        loop = asyncio.get_running_loop()
        previous = signal.getsignal(signal.SIGTERM)
        cut_after_s = max(0.0, self.settings.drain_seconds - STREAM_CUT_MARGIN_S)

        def stopping() -> None:
            loop.call_later(cut_after_s, self.pipeline.cut_streams)

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            loop.call_soon_threadsafe(stopping)
            if callable(previous):
                previous(signum, frame)

        try:
            signal.signal(signal.SIGTERM, on_sigterm)
        except ValueError:  # not the main thread: no last-moment cut, streams die with it
            log.info("SIGTERM not watched; open streams are cut without an error event")

    async def start(self) -> None:
        await self.alerts.start()
        self.settler.start()
        self._watch_stop()
        try:
            await self.scripts.load(self.valkey)
        except errors.ServiceUnavailable:
            log.error("valkey unreachable at start-up; /readyz will report not ready")
            self.alerts.valkey_error("startup")
        else:
            self.ready = True
        await self.upstream.start()
        loop = asyncio.get_running_loop()
        # Cluster pub/sub is per shard; the admit script checks key status on every request
        # anyway, so on Cluster cached keys simply age out.
        cluster = is_cluster(self.settings.valkey_url or "")
        if not cluster:
            self._tasks.append(loop.create_task(self._listen()))
        try:
            await self.pool.load()
        except (OSError, avalkey.ValkeyError) as exc:
            log.error("upstream pool not loaded (%s); retrying in the background", exc)
        # On Cluster the pool has no pub/sub either: its resync carries the changes.
        self._tasks.append(loop.create_task(self.pool.run(listen=not cluster)))

    async def _listen(self) -> None:
        while True:
            try:
                await self.auth.listen_for_invalidations(self.subscriber)
            except (OSError, avalkey.ValkeyError):
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.pipeline.drain(SETTLE_DRAIN_S)
        await self.alerts.stop()
        await self.upstream.close()
        self.auth.close()
        await self.valkey.aclose()
        await self.subscriber.aclose()


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

    async def handle_domain_error(
        _: Application, request: Request, exc: errors.AntexError
    ) -> Response:
        return error_response(request, exc)

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
    observability.register(app, res)  # GET /metrics and the counters' hooks
    admin_api.register(app, res)  # /admin/... (operator token) and /openapi.json
    dashboard.register(app, res)  # /dashboard/... (customer pages, cookie sessions)
    console.register(app, res)  # /admin/console/... (operator pages, token-backed sessions)
    return app


def app_from_env() -> Any:
    """The granian factory target: each worker builds its app from the environment."""
    settings = Settings.from_env(os.environ)
    configure_logging(settings.log_level, settings.log_format)
    return asgi_guard(create_app(settings), settings.body_read_timeout)
