"""Prometheus metrics summed over every granian worker, the access log (metadata only), and
``register(app, res)``, which serves ``GET /metrics`` and hooks the counters into the app.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from blacksheep import Application, Content, Request, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as prom_values
from prometheus_client.metrics import disable_created_metrics
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from gateway import __version__, errors
from gateway.edge import route_template
from gateway.pool_metrics import PoolMetrics
from gateway.usage import Usage

_ACCESS = "antex.access"
access = logging.getLogger(_ACCESS)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The classic text format: every Prometheus version parses it.
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

WINDOWS = ("5h", "7d", "concurrency", "in_flight")
UPSTREAM_KINDS = ("connect", "read", "stream", "event")
# Whole requests include minutes-long streams; TTFB is where the gateway's overhead shows.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TTFB_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass(frozen=True, slots=True)
class _Series:
    """The children one finished request touches, looked up once per label tuple."""

    requests: Any
    latency: Any
    ttfb: Any
    input: Any
    cache_write: Any
    cache_read: Any
    output: Any
    credits: Any


class _CachedPid:
    """The process identifier for prometheus_client, which asks for it on every write:
    os.getpid() is a system call, ten per request; a fork in this process re-reads it."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        os.register_at_fork(after_in_child=self.refresh)

    def refresh(self) -> None:
        self.pid = os.getpid()

    def __call__(self) -> int:
        return self.pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fresh_metrics_dir(data_dir: Path) -> Path:
    """A new folder under ``data_dir`` for this run's multiprocess files (one set per worker).

    Folders of runs whose process is gone are wiped, or their counters would be added to
    this run's; a run still serving from the same data dir keeps its folder.
    """
    root = data_dir / "metrics"
    root.mkdir(parents=True, exist_ok=True)
    me = os.getpid()
    for old in root.iterdir():
        # Our own pid here is a stale folder from a reused pid (pid 1 in containers).
        if not (old.name.isdigit() and int(old.name) != me and _alive(int(old.name))):
            shutil.rmtree(old, ignore_errors=True)
    run = root / str(me)
    run.mkdir()
    return run


def _reap_dead_workers(directory: str) -> None:
    """Live gauges (in-flight streams) of a worker that died without stopping would stay
    summed forever; drop their files. Counters of dead workers are kept on purpose."""
    for path in Path(directory).glob("gauge_live*_*.db"):
        pid = path.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            mark_process_dead(int(pid), directory)  # type: ignore[no-untyped-call]


class Metrics:
    """The ``antex_*`` families. Under ``antex serve`` every worker writes its values to
    mmap'd files in ``PROMETHEUS_MULTIPROC_DIR`` and any worker's scrape sums them all;
    without that variable (an app built in-process) the registry is this process's own."""

    def __init__(self) -> None:
        self.multiproc_dir = os.environ.get(MULTIPROC_ENV) or None
        # *_created series double the output and nobody reads them
        disable_created_metrics()  # type: ignore[no-untyped-call]
        own: CollectorRegistry | None = None
        if self.multiproc_dir is not None:
            # prometheus_client picks its value class when first imported. The serve process
            # imports it (logging set-up) before it sets the directory, and forked workers
            # inherit that choice, so choose again here, before the first metric exists.
            if not getattr(prom_values.ValueClass, "_antex_pid", False):
                value_class = prom_values.MultiProcessValue(_CachedPid())  # type: ignore[no-untyped-call]
                value_class._antex_pid = True
                prom_values.ValueClass = value_class
            _reap_dead_workers(self.multiproc_dir)
            self.scrape_registry = CollectorRegistry()
            MultiProcessCollector(self.scrape_registry, path=self.multiproc_dir)  # type: ignore[no-untyped-call]
        else:
            own = self.scrape_registry = CollectorRegistry()

        self._requests = Counter(
            "antex_requests",
            "Billed requests by route, final status and model.",
            ("route", "status", "model"),
            registry=own,
        )
        self._latency = Histogram(
            "antex_request_duration_seconds",
            "Billed request time, from admission to the last byte.",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=own,
        )
        self._ttfb = Histogram(
            "antex_time_to_first_byte_seconds",
            "Time from admission to the first upstream byte sent to the client.",
            ("route",),
            buckets=TTFB_BUCKETS,
            registry=own,
        )
        self._tokens = Counter(
            "antex_tokens",
            "Tokens billed, by model and kind (input, cache_write, cache_read, output).",
            ("model", "kind"),
            registry=own,
        )
        self._credits = Counter(
            "antex_millicredits", "Milli-credits charged, by model.", ("model",), registry=own
        )
        self._streams = Gauge(
            "antex_streams_in_flight",
            "SSE responses currently open, summed over live workers.",
            registry=own,
            multiprocess_mode="livesum",
        )
        build = Gauge(
            "antex_build_info",
            "Always 1; the labels say which release and Python this gateway runs.",
            ("version", "python"),
            registry=own,
            multiprocess_mode="max",
        )
        build.labels(__version__, platform.python_version()).set(1)
        self._upstream = Counter(
            "antex_upstream_errors",
            "Upstream failures: connect, read, stream (lost mid-stream), event (an error "
            "event in a stream) or the upstream's 429/5xx status.",
            ("kind",),
            registry=own,
        )
        self._refusals = Counter(
            "antex_window_refusals",
            "429s from the admit script, by window: 5h, 7d (full), concurrency, in_flight (the "
            "rest of a window held by requests in flight).",
            ("window",),
            registry=own,
        )
        self._auth = Counter(
            "antex_auth_cache_lookups",
            "Key lookups in the workers' verified-key cache, by result (hit, miss).",
            ("result",),
            registry=own,
        )
        self._wrong_secrets = Counter(
            "antex_auth_wrong_secrets",
            "Wrong secrets presented for existing key ids (brute force on a known id).",
            registry=own,
        )
        bcrypt = Counter(
            "antex_auth_bcrypt",
            "bcrypt verifications run (cache misses of keys that exist), by result (match, "
            "mismatch).",
            ("result",),
            registry=own,
        )
        self._bcrypt = {True: bcrypt.labels("match"), False: bcrypt.labels("mismatch")}
        refused = Counter(
            "antex_auth_bcrypt_refused",
            "Verifications refused without hashing because wrong secrets spent a budget, by "
            "budget (key: the key id's, address: the address's).",
            ("budget",),
            registry=own,
        )
        self._bcrypt_refused = {b: refused.labels(b) for b in ("key", "address")}
        self._security = Counter(
            "antex_security_events",
            "Security events written for the operator, by type (wrong_secrets: a burst of "
            "wrong secrets for one key id crossed ANTEX_QUARANTINE_FAILURES).",
            ("type",),
            registry=own,
        )
        self._valkey = Counter(
            "antex_valkey_errors",
            "Valkey calls that failed (requests refused with 503, settlements lost).",
            registry=own,
        )
        self._errors = Counter(
            "antex_error_responses",
            "Error responses produced by the gateway itself, by status and error type.",
            ("status", "type"),
            registry=own,
        )
        self.pool = PoolMetrics(own)
        webhooks = Counter(
            "antex_webhook_deliveries",
            "Operator webhook deliveries by result: delivered, failed (all retries spent), "
            "dropped (this worker's queue was full).",
            ("result",),
            registry=own,
        )
        self._webhooks = {r: webhooks.labels(r) for r in ("delivered", "failed", "dropped")}
        self._series: dict[tuple[str, int, str], _Series] = {}
        self._upstream_kinds = {k: self._upstream.labels(k) for k in UPSTREAM_KINDS}
        self._windows = {w: self._refusals.labels(w) for w in WINDOWS}
        self._auth_hit = self._auth.labels("hit")
        self._auth_miss = self._auth.labels("miss")
        self._error_kinds: dict[tuple[int, str], Any] = {}
        self._streams.set(0)  # so the series exists (at 0) before the first stream
        self._valkey.inc(0)
        self._wrong_secrets.inc(0)

    def _new_series(self, route: str, status: int, model: str) -> _Series:
        tokens = self._tokens
        series = _Series(
            requests=self._requests.labels(route, str(status), model),
            latency=self._latency.labels(route),
            ttfb=self._ttfb.labels(route),
            input=tokens.labels(model, "input"),
            cache_write=tokens.labels(model, "cache_write"),
            cache_read=tokens.labels(model, "cache_read"),
            output=tokens.labels(model, "output"),
            credits=self._credits.labels(model),
        )
        self._series[(route, status, model)] = series
        return series

    def request_done(
        self,
        route: str,
        status: int,
        model: str,
        latency_s: float,
        ttfb_s: float,
        usage: Usage,
        cost_mc: int,
    ) -> None:
        s = self._series.get((route, status, model)) or self._new_series(route, status, model)
        s.requests.inc()
        s.latency.observe(latency_s)
        s.ttfb.observe(ttfb_s)
        # Every inc is a locked mmap write: skip the zeros.
        if usage.input_tokens:
            s.input.inc(usage.input_tokens)
        if usage.cache_creation_input_tokens:
            s.cache_write.inc(usage.cache_creation_input_tokens)
        if usage.cache_read_input_tokens:
            s.cache_read.inc(usage.cache_read_input_tokens)
        if usage.output_tokens:
            s.output.inc(usage.output_tokens)
        if cost_mc:
            s.credits.inc(cost_mc)

    def window_refused(self, scope: str) -> None:
        child = self._windows.get(scope)
        if child is None:
            child = self._windows[scope] = self._refusals.labels(scope)
        child.inc()

    def valkey_error(self) -> None:
        self._valkey.inc()

    def webhook(self, result: str) -> None:
        self._webhooks[result].inc()

    def upstream_error(self, kind: str) -> None:
        child = self._upstream_kinds.get(kind)
        if child is None:
            child = self._upstream_kinds[kind] = self._upstream.labels(kind)
        child.inc()

    def stream_opened(self) -> None:
        self._streams.inc()

    def stream_closed(self) -> None:
        self._streams.dec()

    def auth_lookup(self, hit: bool) -> None:
        (self._auth_hit if hit else self._auth_miss).inc()

    def bcrypt(self, matched: bool) -> None:
        self._bcrypt[matched].inc()

    def bcrypt_refused(self, budget: str) -> None:
        self._bcrypt_refused[budget].inc()

    def wrong_secret(self, alerted: bool) -> None:
        self._wrong_secrets.inc()
        if alerted:
            self._security.labels("wrong_secrets").inc()

    def error_response(self, status: int, error_type: str) -> None:
        child = self._error_kinds.get((status, error_type))
        if child is None:
            child = self._errors.labels(str(status), error_type)
            self._error_kinds[(status, error_type)] = child
        child.inc()

    def render(self) -> bytes:
        """The Prometheus text exposition; reads every worker's files in multiprocess mode."""
        return bytes(generate_latest(self.scrape_registry))

    def worker_stopped(self) -> None:
        """A stopped worker's streams are closed: its live gauges leave the sum."""
        if self.multiproc_dir is not None:
            mark_process_dead(os.getpid(), self.multiproc_dir)  # type: ignore[no-untyped-call]


class _SecondCache:
    """A formatted timestamp reused for every line of the same second: strftime and
    datetime.isoformat cost more than the rest of an access line."""

    def __init__(self, render: Callable[[int], str]) -> None:
        self._render = render
        self._second = -1
        self._text = ""

    def __call__(self, created: float) -> tuple[str, int]:
        second = int(created)
        if second != self._second:
            self._second, self._text = second, self._render(second)
        return self._text, int((created - second) * 1000)


def _local_second(second: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))


def _utc_second(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")


class _TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")
        self._second = _SecondCache(_local_second)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # logging's own default shape, "2026-01-31 12:00:00,123"
        text, ms = self._second(record.created)
        return f"{text},{ms:03d}"

    def formatMessage(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        if fields is not None:
            record.message = " ".join(f"{k}={v}" for k, v in fields.items())
        return super().formatMessage(record)


class _JsonFormatter(logging.Formatter):
    """One JSON object per line; access records carry their fields at the top level."""

    def __init__(self) -> None:
        super().__init__()
        self._second = _SecondCache(_utc_second)

    def format(self, record: logging.LogRecord) -> str:
        text, ms = self._second(record.created)
        doc: dict[str, Any] = {
            "ts": f"{text}.{ms:03d}+00:00",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if fields is not None:
            doc.update(fields)
        else:
            doc["msg"] = record.getMessage()
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


class _OurHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler configure_logging installs, so a second call replaces it."""


def _no_handled_error_messages(record: logging.LogRecord) -> bool:
    # blacksheep logs every handled domain error at INFO with its message, and a message can
    # quote the client's input (an unknown model name); the access line keeps the type.
    return record.levelno >= logging.WARNING or record.name != "blacksheep.server"


def configure_logging(level: str, fmt: str) -> None:
    """Root handler on stderr: ``text`` lines or ``json`` objects (ANTEX_LOG_FORMAT)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _OurHandler)]:
        root.removeHandler(old)
    handler = _OurHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    handler.addFilter(_no_handled_error_messages)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Neither format prints the thread or process; LogRecord looks both up for every line.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False


def access_log(request_id: str, account_id: str, record: dict[str, Any]) -> None:
    """The line for one billed request; ``record`` holds metadata only, never content."""
    if access.isEnabledFor(logging.INFO):
        fields = {"request_id": request_id, "account": account_id, **record}
        # makeRecord + handle is what access.info does minus the caller lookup (a walk up
        # the stack per line); the lines name no source file or function.
        line = access.makeRecord(
            _ACCESS, logging.INFO, _ACCESS, 0, "access", (), None, extra={"fields": fields}
        )
        access.handle(line)


ErrorObserver = Callable[[Application, Request, errors.AntexError, Response], None]


def error_observer(
    metrics: Metrics, client_tag: Callable[[Request], str], on_outage: Callable[[], None]
) -> ErrorObserver:
    """What the app's one domain-error handler calls with each error answer: counts it,
    Valkey outages among them, and logs refusals (401/403/429/400/503) that never reached
    the pipeline's billed line. Only the error type is logged: messages can quote the
    client's input."""

    def observed(
        app_: Application, request: Request, exc: errors.AntexError, response: Response
    ) -> None:
        metrics.error_response(response.status, exc.code)
        if isinstance(exc, errors.ServiceUnavailable):
            metrics.valkey_error()
            on_outage()
        # An upstream failure after admission already has its billed line from finish().
        if not isinstance(exc, errors.UpstreamFailed) and access.isEnabledFor(logging.INFO):
            rid = response.get_first_header(b"request-id")
            fields = {
                "request_id": rid.decode() if rid else None,
                "method": request.method,
                "path": route_template(app_, request),
                "ip_tag": client_tag(request),
                "status": response.status,
                "error_type": exc.code,
            }
            if isinstance(exc, errors.RateLimited):
                fields["window"] = exc.scope
            access.info("access", extra={"fields": fields})

    return observed


def _bearer(request: Request) -> bytes:
    auth = request.get_first_header(b"authorization") or b""
    return auth[7:].strip() if auth[:7].lower() == b"bearer " else b""


def register(app: Application, metrics: Metrics, token_text: str | None) -> None:
    """``GET /metrics`` plus the hooks that feed it (error answers: ``error_observer``).

    /metrics needs no API key: keep it off the public listener (bind Antex privately or
    block the path at the proxy), or set ANTEX_METRICS_TOKEN to require that bearer token.
    """
    token = token_text.encode() if token_text else None

    async def serve_metrics(request: Request) -> Response:
        if token is not None and not hmac.compare_digest(_bearer(request), token):
            raise errors.AuthenticationFailed("Send the metrics token as Authorization: Bearer.")
        # Reading every worker's files is blocking I/O: keep it off the loop.
        body = await asyncio.to_thread(metrics.render)
        return Response(200, [(b"cache-control", b"no-store")], Content(CONTENT_TYPE, body))

    async def on_stop(_: Application) -> None:
        metrics.worker_stopped()

    app.router.add_get("/metrics", serve_metrics)
    app.on_stop += on_stop
