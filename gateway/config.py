"""Settings from ``ANTEX_*`` environment variables, read once into a frozen value.

Nothing reads ``os.environ`` at import time; every bad value raises ``ConfigError`` naming
the variable.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway.errors import ConfigError
from gateway.pool_state import PoolPolicy

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value}")
    return value


def _networks(env: Mapping[str, str], name: str) -> tuple[IPNetwork, ...]:
    raw = env.get(name, "")
    try:
        return tuple(
            ipaddress.ip_network(p.strip(), strict=False) for p in raw.split(",") if p.strip()
        )
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _origins(env: Mapping[str, str], name: str) -> frozenset[str] | None:
    """``*`` or unset: any origin; else a comma-separated list of exact origins."""
    raw = (env.get(name) or "*").strip()
    if raw == "*":
        return None
    origins = frozenset(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
    for origin in origins:
        if not origin.startswith(("http://", "https://")):
            raise ConfigError(f"{name}: {origin!r} is not an origin like https://app.example")
    return origins


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, default) or default
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _webhook_urls(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = ",".join(env.get(name, "") for name in ("ANTEX_WEBHOOK_URL", "ANTEX_WEBHOOK_URLS"))
    urls = tuple(dict.fromkeys(u.strip() for u in raw.split(",") if u.strip()))
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"ANTEX_WEBHOOK_URL(S): {url!r} is not an http(s) URL")
    return urls


def _webhook_secret(env: Mapping[str, str]) -> str | None:
    secret = env.get("ANTEX_WEBHOOK_SECRET") or None
    if _webhook_urls(env) and (secret is None or len(secret) < 16):
        raise ConfigError("ANTEX_WEBHOOK_SECRET (16+ characters) signs webhooks; set it")
    return secret


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    data_dir: Path = Path("var")
    valkey_url: str | None = None
    upstream_url: str = "https://api.anthropic.com"
    upstream_key: str | None = field(default=None, repr=False)
    upstream_connect_timeout: float = 10.0
    # The pool: attempts per request, the time after which no new attempt starts, a stream's
    # wait for response headers, and the fallback cooldowns when no retry-after comes.
    upstream_attempts: int = 3
    upstream_retry_budget: float = 30.0
    upstream_first_byte_timeout: float = 30.0
    upstream_overload_cooldown: float = 5.0
    upstream_breaker_failures: int = 3
    upstream_breaker_open: float = 30.0
    upstream_low_headroom: float = 0.05
    # Master key sealing upstream keys in Valkey; None: <data_dir>/secret.key.
    secret_key: str | None = field(default=None, repr=False)
    # Idle time allowed between two upstream chunks; no total timeout (streams run minutes).
    upstream_read_timeout: float = 300.0
    # Wait for a non-streamed answer (and count_tokens): Anthropic allows such requests up
    # to 10 minutes, and Claude Code falls back to them after a stream error.
    upstream_nonstream_timeout: float = 600.0
    max_body_bytes: int = 2 * 1024 * 1024
    # Deadlines, in seconds: the whole request body from the request's start; the request
    # line and headers of each request on a connection (granian's own timer); Valkey calls
    # on the hot path (connect and each socket read/write); /readyz's own answer.
    body_read_timeout: float = 30.0
    header_read_timeout: float = 10.0
    valkey_timeout: float = 0.5
    valkey_connect_timeout: float = 0.5
    readyz_timeout: float = 1.0
    # An operator's cap on max_tokens below the models' own output limits; None: the model's.
    max_tokens_limit: int | None = None
    # Origins allowed to call /v1/* from a browser; None: any (keys, not cookies, authenticate).
    cors_origins: frozenset[str] | None = None
    bcrypt_rounds: int = 10
    auth_cache_ttl: float = 300.0
    auth_cache_size: int = 100_000
    trusted_proxies: tuple[IPNetwork, ...] = field(default_factory=tuple)
    models_file: Path | None = None
    default_plan: str = "pro"
    log_level: str = "info"
    log_format: str = "text"
    # Test hook: a file holding a millisecond offset added to the wall clock.
    clock_file: Path | None = None
    reserve_output_cap: int = 8192
    # Auto-quarantine: distinct refused (unbound) IPs within a period, wrong secrets within one.
    quarantine_ip_count: int = 3
    quarantine_ip_period_s: int = 600
    quarantine_failures: int = 20
    quarantine_failure_period_s: int = 300
    simulator_port: int = 8090
    public_url: str | None = None
    smtp_url: str | None = None
    smtp_sender: str = "antex@localhost"
    plans_page_text: str = "Ask your operator to change plans or add IP slots."
    audit_retention_days: int = 400
    webhook_urls: tuple[str, ...] = ()
    webhook_secret: str | None = None
    customer_notices: bool = False
    # Reservation lease (s): renewed while the request runs, so only a dead worker's lapse.
    reservation_ttl_s: int = 120
    # Settlement batching: while other requests are in flight, a charge waits at most this
    # long (ms) for others to share its round trip; an idle worker settles at once.
    settle_flush_ms: int = 25
    # A settle round trip unanswered this long (s) is retried (a repeat is a no-op).
    settle_timeout_s: float = 5.0
    # Open streams' provisional charges are re-spooled at most this often (ms).
    checkpoint_ms: int = 1000
    # A stop waits this long for open requests, then for queued settlements.
    drain_seconds: int = 30

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        models_file = e.get("ANTEX_MODELS_FILE")
        clock_file = e.get("ANTEX_CLOCK_FILE")
        return cls(
            host=e.get("ANTEX_HOST", "127.0.0.1") or "127.0.0.1",
            port=_int(e, "ANTEX_PORT", 8080, 1),
            workers=_int(e, "ANTEX_WORKERS", os.cpu_count() or 1, 1),
            data_dir=Path(e.get("ANTEX_DATA_DIR", "var") or "var"),
            valkey_url=e.get("ANTEX_VALKEY_URL") or None,
            upstream_url=(e.get("ANTEX_UPSTREAM_URL") or "https://api.anthropic.com").rstrip("/"),
            upstream_key=e.get("ANTEX_UPSTREAM_KEY") or None,
            upstream_connect_timeout=_float(e, "ANTEX_UPSTREAM_CONNECT_TIMEOUT", 10.0),
            upstream_attempts=_int(e, "ANTEX_UPSTREAM_ATTEMPTS", 3, 1),
            upstream_retry_budget=_float(e, "ANTEX_UPSTREAM_RETRY_BUDGET", 30.0),
            upstream_first_byte_timeout=_float(e, "ANTEX_UPSTREAM_FIRST_BYTE_TIMEOUT", 30.0),
            upstream_overload_cooldown=_float(e, "ANTEX_UPSTREAM_OVERLOAD_COOLDOWN", 5.0),
            upstream_breaker_failures=_int(e, "ANTEX_UPSTREAM_BREAKER_FAILURES", 3, 1),
            upstream_breaker_open=_float(e, "ANTEX_UPSTREAM_BREAKER_OPEN", 30.0),
            upstream_low_headroom=_float(e, "ANTEX_UPSTREAM_LOW_HEADROOM", 0.05),
            secret_key=e.get("ANTEX_SECRET_KEY") or None,
            upstream_read_timeout=_float(e, "ANTEX_UPSTREAM_READ_TIMEOUT", 300.0),
            upstream_nonstream_timeout=_float(e, "ANTEX_UPSTREAM_NONSTREAM_TIMEOUT", 600.0),
            max_body_bytes=_int(e, "ANTEX_MAX_BODY_BYTES", 2 * 1024 * 1024, 1),
            body_read_timeout=_float(e, "ANTEX_BODY_READ_TIMEOUT", 30.0),
            header_read_timeout=_float(e, "ANTEX_HEADER_READ_TIMEOUT", 10.0),
            valkey_timeout=_float(e, "ANTEX_VALKEY_TIMEOUT", 0.5),
            valkey_connect_timeout=_float(e, "ANTEX_VALKEY_CONNECT_TIMEOUT", 0.5),
            readyz_timeout=_float(e, "ANTEX_READYZ_TIMEOUT", 1.0),
            max_tokens_limit=_int(e, "ANTEX_MAX_TOKENS", 0, 1) or None,
            cors_origins=_origins(e, "ANTEX_CORS_ORIGINS"),
            bcrypt_rounds=_int(e, "ANTEX_BCRYPT_ROUNDS", 10, 4),
            auth_cache_ttl=_float(e, "ANTEX_AUTH_CACHE_TTL", 300.0),
            auth_cache_size=_int(e, "ANTEX_AUTH_CACHE_SIZE", 100_000, 1),
            trusted_proxies=_networks(e, "ANTEX_TRUSTED_PROXIES"),
            models_file=Path(models_file) if models_file else None,
            default_plan=e.get("ANTEX_DEFAULT_PLAN", "pro") or "pro",
            log_level=_choice(e, "ANTEX_LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
            log_format=_choice(e, "ANTEX_LOG_FORMAT", "text", ("text", "json")),
            clock_file=Path(clock_file) if clock_file else None,
            reserve_output_cap=_int(e, "ANTEX_RESERVE_OUTPUT_TOKENS", 8192, 0),
            quarantine_ip_count=_int(e, "ANTEX_QUARANTINE_IPS", 3, 1),
            quarantine_ip_period_s=_int(e, "ANTEX_QUARANTINE_IPS_PERIOD", 600, 1),
            quarantine_failures=_int(e, "ANTEX_QUARANTINE_FAILURES", 20, 1),
            quarantine_failure_period_s=_int(e, "ANTEX_QUARANTINE_FAILURES_PERIOD", 300, 1),
            simulator_port=_int(e, "ANTEX_SIMULATOR_PORT", 8090, 0),
            public_url=(e.get("ANTEX_PUBLIC_URL") or "").rstrip("/") or None,
            smtp_url=e.get("ANTEX_SMTP_URL") or None,
            smtp_sender=e.get("ANTEX_SMTP_SENDER", "antex@localhost") or "antex@localhost",
            plans_page_text=e.get("ANTEX_PLANS_TEXT")
            or "Ask your operator to change plans or add IP slots.",
            audit_retention_days=_int(e, "ANTEX_AUDIT_RETENTION_DAYS", 400, 1),
            webhook_urls=_webhook_urls(e),
            webhook_secret=_webhook_secret(e),
            customer_notices=_choice(e, "ANTEX_CUSTOMER_NOTICES", "off", ("off", "on")) == "on",
            reservation_ttl_s=_int(e, "ANTEX_RESERVATION_TTL", 120, 10),
            settle_flush_ms=_int(e, "ANTEX_SETTLE_FLUSH_MS", 25, 1),
            settle_timeout_s=_float(e, "ANTEX_SETTLE_TIMEOUT", 5.0),
            checkpoint_ms=_int(e, "ANTEX_CHECKPOINT_MS", 1000, 50),
            drain_seconds=_int(e, "ANTEX_DRAIN_SECONDS", 30, 1),
        )

    def pool_policy(self) -> PoolPolicy:
        return PoolPolicy(
            attempts=self.upstream_attempts,
            budget_s=self.upstream_retry_budget,
            first_byte_timeout_s=self.upstream_first_byte_timeout,
            overload_cooldown_s=self.upstream_overload_cooldown,
            breaker_failures=self.upstream_breaker_failures,
            breaker_open_s=self.upstream_breaker_open,
            low_headroom=self.upstream_low_headroom,
        )

    @property
    def base_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"
