"""The model catalog: accepted model ids, their aliases and credit rates, from a TOML file.

The shipped ``gateway/data/models.toml`` holds list-price defaults; operators may point the
gateway at their own copy. Lookups are one dict access on the hot path.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from gateway.translate.common import model_generation
from gateway.usage import Rates

_RATE_FIELDS = ("input", "cache_write_5m", "cache_write_1h", "cache_read", "output")
_EPOCH = "1970-01-01T00:00:00Z"
THINKING = ("adaptive", "budget")


def default_thinking(model_id: str) -> str:
    """How a model not described by the catalog takes extended thinking, by Claude Code's
    rule (protocol B): models before 4.6 (claude-opus-4-5-…, claude-3-7-sonnet-…) take a
    token budget; 4.6 and later, and names without a version (claude-mythos-preview), take
    ``thinking: {type: adaptive}`` (Sonnet 5 refuses budgets)."""
    generation = model_generation(model_id)
    return "budget" if generation is not None and generation < (4, 6) else "adaptive"


def adaptive_thinking(model_id: str) -> bool:
    return default_thinking(model_id) == "adaptive"


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    display_name: str
    created_at: str  # RFC 3339, UTC, "Z" suffix
    aliases: tuple[str, ...]
    rates: Rates
    max_output_tokens: int | None = None
    thinking: str = "adaptive"  # "adaptive" or "budget": what the model's thinking takes


@dataclass(frozen=True, slots=True)
class Catalog:
    models: tuple[ModelInfo, ...]  # newest first, as /v1/models lists them
    by_id: Mapping[str, ModelInfo]  # canonical ids and aliases
    allow_unknown: bool = False
    unknown_rates: Rates | None = None

    def lookup(self, model_id: str) -> ModelInfo | None:
        info = self.by_id.get(model_id)
        if info is not None or not self.allow_unknown or self.unknown_rates is None:
            return info
        return ModelInfo(
            model_id, model_id, _EPOCH, (), self.unknown_rates, thinking=default_thinking(model_id)
        )

    def adaptive_thinking(self, model_id: str) -> bool:
        """Whether ``model_id`` takes adaptive thinking rather than a token budget."""
        info = self.lookup(model_id)
        thinking = info.thinking if info is not None else default_thinking(model_id)
        return thinking == "adaptive"


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where} must be a non-negative integer, got {value!r}")
    return value


def _rates(raw: Any, where: str) -> Rates:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a table of {', '.join(_RATE_FIELDS)}")
    missing = [f for f in _RATE_FIELDS if f not in raw]
    extra = sorted(set(raw) - set(_RATE_FIELDS))
    if missing or extra:
        raise ConfigError(f"{where}: missing {missing or 'nothing'}, unknown {extra or 'nothing'}")
    i, w5, w1, r, o = (_int(raw[f], f"{where}.{f}") for f in _RATE_FIELDS)
    return Rates(i, w5, w1, r, o)


def _timestamp(raw: Any, where: str) -> datetime:
    if isinstance(raw, datetime):
        value = raw
    elif isinstance(raw, str):
        try:
            value = datetime.fromisoformat(raw)
        except ValueError as exc:
            raise ConfigError(f"{where} is not RFC 3339: {raw!r}") from exc
    else:
        raise ConfigError(f"{where} must be an RFC 3339 timestamp")
    if value.tzinfo is None:
        raise ConfigError(f"{where} needs a time zone (use a trailing Z)")
    return value.astimezone(UTC)


def _model(raw: Any, where: str) -> tuple[datetime, ModelInfo]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a table")
    model_id = raw.get("id")
    if not isinstance(model_id, str) or not model_id:
        raise ConfigError(f"{where}.id must be a non-empty string")
    where = f"model {model_id!r}"
    aliases = raw.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise ConfigError(f"{where}: aliases must be a list of strings")
    rates = _rates(raw.get("rates"), f"{where}.rates")
    threshold = raw.get("long_context_threshold")
    long_raw = raw.get("long_context_rates")
    if (threshold is None) != (long_raw is None):
        raise ConfigError(f"{where}: set both long_context_threshold and long_context_rates")
    if threshold is not None:
        rates = Rates(
            rates.input,
            rates.cache_write_5m,
            rates.cache_write_1h,
            rates.cache_read,
            rates.output,
            long_context_threshold=_int(threshold, f"{where}.long_context_threshold"),
            long_context=_rates(long_raw, f"{where}.long_context_rates"),
        )
    max_out = raw.get("max_output_tokens")
    thinking = raw.get("thinking", default_thinking(model_id))
    if thinking not in THINKING:
        raise ConfigError(f"{where}: thinking must be one of {', '.join(THINKING)}")
    created = _timestamp(raw.get("created_at"), f"{where}.created_at")
    info = ModelInfo(
        id=model_id,
        display_name=str(raw.get("display_name") or model_id),
        created_at=created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        aliases=tuple(aliases),
        rates=rates,
        max_output_tokens=None if max_out is None else _int(max_out, f"{where}.max_output_tokens"),
        thinking=thinking,
    )
    return created, info


def parse_catalog(doc: Mapping[str, Any], source: str = "models.toml") -> Catalog:
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, Mapping):
        raise ConfigError(f"{source}: [defaults] must be a table")
    allow_unknown = defaults.get("allow_unknown", False)
    if not isinstance(allow_unknown, bool):
        raise ConfigError(f"{source}: defaults.allow_unknown must be true or false")
    unknown_raw = defaults.get("unknown_rates")
    unknown = None if unknown_raw is None else _rates(unknown_raw, f"{source}: unknown_rates")
    if allow_unknown and unknown is None:
        raise ConfigError(f"{source}: allow_unknown = true needs defaults.unknown_rates")

    raw_models = doc.get("models", [])
    if not isinstance(raw_models, list) or not raw_models:
        raise ConfigError(f"{source}: no [[models]] entries")
    parsed = [_model(m, f"{source}: models[{i}]") for i, m in enumerate(raw_models)]
    by_id: dict[str, ModelInfo] = {}
    for _, info in parsed:
        for name in (info.id, *info.aliases):
            if name in by_id:
                raise ConfigError(f"{source}: model id or alias {name!r} is defined twice")
            by_id[name] = info
    # Stable sort: models released the same day keep their file order.
    ordered = tuple(info for _, info in sorted(parsed, key=lambda p: p[0], reverse=True))
    return Catalog(ordered, by_id, allow_unknown, unknown)


def load_catalog(path: Path | None = None) -> Catalog:
    """The operator's catalog at ``path``, or the shipped defaults when ``path`` is None."""
    if path is None:
        text = resources.files("gateway").joinpath("data/models.toml").read_text("utf-8")
        source = "gateway/data/models.toml"
    else:
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read model catalog {path}: {exc}") from exc
        source = str(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    return parse_catalog(doc, source)
