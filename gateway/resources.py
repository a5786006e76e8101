"""What one worker opens at start-up and closes at shutdown: the Valkey clients and
scripts, the upstream session, the clock, the limiter, settler, authenticator, pipeline and
alerts. Route modules receive it; nothing here knows the routes."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from types import FrameType

import valkey.asyncio as avalkey
from valkey.asyncio.retry import Retry
from valkey.backoff import NoBackoff

from gateway import errors
from gateway.alerts import Alerts
from gateway.auth import Authenticator
from gateway.catalog import load_catalog
from gateway.clock import make_clock
from gateway.config import Settings
from gateway.limits import CreditLimiter, LimiterSettings
from gateway.observability import Metrics
from gateway.pipeline import Pipeline
from gateway.pool_state import PoolView
from gateway.pool_sync import PoolSync
from gateway.settlement import Settler
from gateway.store import Scripts, is_cluster, open_client, open_connections
from gateway.upstream import Upstream

log = logging.getLogger("antex.resources")
# A stopping worker's last settlement flushes (after granian's ANTEX_DRAIN_SECONDS); what
# is still queued then stays spooled for the next start.
SETTLE_DRAIN_S = 10
# How long before granian's kill open streams are ended (and their charges spooled).
STREAM_CUT_MARGIN_S = 1.5
# Valkey connections per worker: opened at start-up (a burst of new clients then finds them
# ready) and at most (a burst beyond waits for one to come back instead of connecting more).
VALKEY_CONNECTIONS_OPEN = 64
VALKEY_CONNECTIONS_MAX = 512

class Resources:
    """Everything one worker opens at start-up and closes at shutdown."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Sub-second socket timeouts and no retries: a hung Valkey turns into a 503 within
        # a second instead of stalling every request for valkey-py's default 5 s. A command
        # waits at most half its own deadline for a pooled connection, so wait + command
        # stays within that second even when a hang has every connection busy.
        self.valkey = open_client(
            settings.valkey_url or "",
            pool_wait=settings.valkey_timeout / 2,
            max_connections=VALKEY_CONNECTIONS_MAX,
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
        # The one clock of this worker: admission, the dashboard, the console and the admin
        # API all stamp the same time (a test clock moves them together).
        self.clock = make_clock(settings.clock_file)
        self.catalog = load_catalog(settings.models_file)
        self.metrics = Metrics()
        self.upstream = Upstream(settings, PoolView(settings.pool_policy()))
        self.pool = PoolSync(settings, self.valkey, self.upstream.view, self.metrics.pool)
        self.upstream.metrics = self.metrics.pool
        self.upstream.on_event = self.pool.share
        self.limiter = CreditLimiter(
            self.valkey,
            self.scripts,
            self.clock,
            LimiterSettings(
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
            checkpoint_s=settings.checkpoint_ms / 1000,
            on_error=self._settle_error,
        )
        self.auth = Authenticator(
            self.valkey,
            ttl=settings.auth_cache_ttl,
            size=settings.auth_cache_size,
            on_bad_secret=self._bad_secret,
        )
        self.auth.on_cache_lookup = self.metrics.auth_lookup
        self.auth.on_bcrypt = self.metrics.bcrypt
        self.auth.on_refused = self.metrics.bcrypt_refused
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
            await open_connections(self.valkey, VALKEY_CONNECTIONS_OPEN)
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
