"""Settings from ``ANTEX_*`` environment variables, read once into a frozen value.

Nothing reads ``os.environ`` at import time; every bad value raises ``ConfigError`` naming
the variable.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any

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


def _env(name: str, kind: str = "str", minimum: int = 0, **extra: Any) -> dict[str, Any]:
    """A field's metadata: the variable it is read from and how (see ``_parse``). An unset
    or empty variable leaves the field's own default (``env_default`` overrides it)."""
    return {"env": name, "kind": kind, "min": minimum, **extra}


def _parse(env: Mapping[str, str], f: Field[Any], raw: str) -> Any:
    meta = f.metadata
    name, kind = meta["env"], meta["kind"]
    if kind == "int":
        return _int(env, name, 0, meta["min"])
    if kind == "float":
        return _float(env, name, 0.0)
    if kind == "path":
        return Path(raw)
    if kind == "url":
        # "/" alone: no URL (None where the setting is optional).
        return raw.rstrip("/") or (None if f.default is None else "")
    if kind == "choice":
        return _choice(env, name, "", meta["choices"])
    if kind == "switch":
        return _choice(env, name, "off", ("off", "on")) == "on"
    if kind == "networks":
        return _networks(env, name)
    if kind == "origins":
        return _origins(env, name)
    return raw


def _env_default(f: Field[Any]) -> Any:
    make = f.metadata.get("env_default")
    return f.default if make is None else make()


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting, declared once: its type and default here, its ``ANTEX_*`` variable
    and parsing in the field's metadata (``from_env`` reads them all)."""

    host: str = field(default="127.0.0.1", metadata=_env("ANTEX_HOST"))
    port: int = field(default=8080, metadata=_env("ANTEX_PORT", "int", 1))
    workers: int = field(
        default=1, metadata=_env("ANTEX_WORKERS", "int", 1, env_default=lambda: os.cpu_count() or 1)
    )
    data_dir: Path = field(default=Path("var"), metadata=_env("ANTEX_DATA_DIR", "path"))
    valkey_url: str | None = field(default=None, metadata=_env("ANTEX_VALKEY_URL"))
    upstream_url: str = field(
        default="https://api.anthropic.com", metadata=_env("ANTEX_UPSTREAM_URL", "url")
    )
    upstream_key: str | None = field(
        default=None, repr=False, metadata=_env("ANTEX_UPSTREAM_KEY")
    )
    upstream_connect_timeout: float = field(
        default=10.0, metadata=_env("ANTEX_UPSTREAM_CONNECT_TIMEOUT", "float")
    )
    # The pool: attempts per request, the time after which no new attempt starts, a stream's
    # wait for response headers, and the fallback cooldowns when no retry-after comes.
    upstream_attempts: int = field(default=3, metadata=_env("ANTEX_UPSTREAM_ATTEMPTS", "int", 1))
    upstream_retry_budget: float = field(
        default=30.0, metadata=_env("ANTEX_UPSTREAM_RETRY_BUDGET", "float")
    )
    upstream_first_byte_timeout: float = field(
        default=30.0, metadata=_env("ANTEX_UPSTREAM_FIRST_BYTE_TIMEOUT", "float")
    )
    upstream_overload_cooldown: float = field(
        default=5.0, metadata=_env("ANTEX_UPSTREAM_OVERLOAD_COOLDOWN", "float")
    )
    upstream_breaker_failures: int = field(
        default=3, metadata=_env("ANTEX_UPSTREAM_BREAKER_FAILURES", "int", 1)
    )
    upstream_breaker_open: float = field(
        default=30.0, metadata=_env("ANTEX_UPSTREAM_BREAKER_OPEN", "float")
    )
    upstream_low_headroom: float = field(
        default=0.05, metadata=_env("ANTEX_UPSTREAM_LOW_HEADROOM", "float")
    )
    # Master key sealing upstream keys in Valkey; None: <data_dir>/secret.key.
    secret_key: str | None = field(default=None, repr=False, metadata=_env("ANTEX_SECRET_KEY"))
    # Idle time allowed between two upstream chunks; no total timeout (streams run minutes).
    upstream_read_timeout: float = field(
        default=300.0, metadata=_env("ANTEX_UPSTREAM_READ_TIMEOUT", "float")
    )
    # Wait for a non-streamed answer (and count_tokens): Anthropic allows such requests up
    # to 10 minutes, and Claude Code falls back to them after a stream error.
    upstream_nonstream_timeout: float = field(
        default=600.0, metadata=_env("ANTEX_UPSTREAM_NONSTREAM_TIMEOUT", "float")
    )
    max_body_bytes: int = field(
        default=2 * 1024 * 1024, metadata=_env("ANTEX_MAX_BODY_BYTES", "int", 1)
    )
    # Deadlines, in seconds: the whole request body from the request's start; the request
    # line and headers of each request on a connection (granian's own timer); Valkey calls
    # on the hot path (connect and each socket read/write); /readyz's own answer.
    body_read_timeout: float = field(
        default=30.0, metadata=_env("ANTEX_BODY_READ_TIMEOUT", "float")
    )
    header_read_timeout: float = field(
        default=10.0, metadata=_env("ANTEX_HEADER_READ_TIMEOUT", "float")
    )
    valkey_timeout: float = field(default=0.5, metadata=_env("ANTEX_VALKEY_TIMEOUT", "float"))
    valkey_connect_timeout: float = field(
        default=0.5, metadata=_env("ANTEX_VALKEY_CONNECT_TIMEOUT", "float")
    )
    readyz_timeout: float = field(default=1.0, metadata=_env("ANTEX_READYZ_TIMEOUT", "float"))
    # An operator's cap on max_tokens below the models' own output limits; None: the model's.
    max_tokens_limit: int | None = field(default=None, metadata=_env("ANTEX_MAX_TOKENS", "int", 1))
    # Origins allowed to call /v1/* from a browser; None: any (keys, not cookies, authenticate).
    cors_origins: frozenset[str] | None = field(
        default=None, metadata=_env("ANTEX_CORS_ORIGINS", "origins")
    )
    bcrypt_rounds: int = field(default=10, metadata=_env("ANTEX_BCRYPT_ROUNDS", "int", 4))
    auth_cache_ttl: float = field(default=300.0, metadata=_env("ANTEX_AUTH_CACHE_TTL", "float"))
    auth_cache_size: int = field(
        default=100_000, metadata=_env("ANTEX_AUTH_CACHE_SIZE", "int", 1)
    )
    trusted_proxies: tuple[IPNetwork, ...] = field(
        default=(), metadata=_env("ANTEX_TRUSTED_PROXIES", "networks")
    )
    models_file: Path | None = field(default=None, metadata=_env("ANTEX_MODELS_FILE", "path"))
    default_plan: str = field(default="pro", metadata=_env("ANTEX_DEFAULT_PLAN"))
    log_level: str = field(
        default="info",
        metadata=_env("ANTEX_LOG_LEVEL", "choice", choices=("debug", "info", "warning", "error")),
    )
    log_format: str = field(
        default="text", metadata=_env("ANTEX_LOG_FORMAT", "choice", choices=("text", "json"))
    )
    # Test hook: a file holding a millisecond offset added to the wall clock.
    clock_file: Path | None = field(default=None, metadata=_env("ANTEX_CLOCK_FILE", "path"))
    reserve_output_cap: int = field(
        default=8192, metadata=_env("ANTEX_RESERVE_OUTPUT_TOKENS", "int", 0)
    )
    # Auto-quarantine: distinct refused (unbound) IPs within a period, wrong secrets within one.
    quarantine_ip_count: int = field(default=3, metadata=_env("ANTEX_QUARANTINE_IPS", "int", 1))
    quarantine_ip_period_s: int = field(
        default=600, metadata=_env("ANTEX_QUARANTINE_IPS_PERIOD", "int", 1)
    )
    quarantine_failures: int = field(
        default=20, metadata=_env("ANTEX_QUARANTINE_FAILURES", "int", 1)
    )
    quarantine_failure_period_s: int = field(
        default=300, metadata=_env("ANTEX_QUARANTINE_FAILURES_PERIOD", "int", 1)
    )
    simulator_port: int = field(default=8090, metadata=_env("ANTEX_SIMULATOR_PORT", "int", 0))
    public_url: str | None = field(default=None, metadata=_env("ANTEX_PUBLIC_URL", "url"))
    smtp_url: str | None = field(default=None, metadata=_env("ANTEX_SMTP_URL"))
    smtp_sender: str = field(default="antex@localhost", metadata=_env("ANTEX_SMTP_SENDER"))
    plans_page_text: str = field(
        default="Ask your operator to change plans or add IP slots.",
        metadata=_env("ANTEX_PLANS_TEXT"),
    )
    # Bearer token GET /metrics requires; None: /metrics is open (keep it off the public side).
    metrics_token: str | None = field(
        default=None, repr=False, metadata=_env("ANTEX_METRICS_TOKEN")
    )
    audit_retention_days: int = field(
        default=400, metadata=_env("ANTEX_AUDIT_RETENTION_DAYS", "int", 1)
    )
    # Read from ANTEX_WEBHOOK_URL and ANTEX_WEBHOOK_URLS together (see from_env).
    webhook_urls: tuple[str, ...] = ()
    webhook_secret: str | None = field(default=None, metadata=_env("ANTEX_WEBHOOK_SECRET"))
    customer_notices: bool = field(
        default=False, metadata=_env("ANTEX_CUSTOMER_NOTICES", "switch")
    )
    # Reservation lease (s): renewed while the request runs, so only a dead worker's lapse.
    reservation_ttl_s: int = field(default=120, metadata=_env("ANTEX_RESERVATION_TTL", "int", 10))
    # Settlement batching: while other requests are in flight, a charge waits at most this
    # long (ms) for others to share its round trip; an idle worker settles at once.
    settle_flush_ms: int = field(default=25, metadata=_env("ANTEX_SETTLE_FLUSH_MS", "int", 1))
    # A settle round trip unanswered this long (s) is retried (a repeat is a no-op).
    settle_timeout_s: float = field(default=5.0, metadata=_env("ANTEX_SETTLE_TIMEOUT", "float"))
    # Open streams' provisional charges are re-spooled at most this often (ms).
    checkpoint_ms: int = field(default=1000, metadata=_env("ANTEX_CHECKPOINT_MS", "int", 50))
    # A stop waits this long for open requests, then for queued settlements.
    drain_seconds: int = field(default=30, metadata=_env("ANTEX_DRAIN_SECONDS", "int", 1))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Raises ConfigError naming the variable of the first bad value."""
        e = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f.metadata.get("env")
            if name is None:
                continue
            raw = e.get(name)
            if raw is None or raw == "":
                values[f.name] = _env_default(f)
            else:
                values[f.name] = _parse(e, f, raw)
        values["webhook_urls"] = _webhook_urls(e)
        values["webhook_secret"] = _webhook_secret(e)
        return cls(**values)

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
