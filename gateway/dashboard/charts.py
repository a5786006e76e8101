"""Pure: the dashboard's 7-day aggregates parsed from settle.lua's hash, drawn as inline SVG.

Credits never reach the page: hourly usage is shown as a share of the weekly allowance,
and the per-model breakdown is in tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape

HOUR_MS = 3_600_000
DAY_HOURS = 24

# Token kinds in the order they are stacked, with colours readable on white (WCAG AA
# against the page background for the legend text is handled by the labels, not the fill).
TOKEN_KINDS: tuple[tuple[str, str, str], ...] = (
    ("input", "Input", "#2563eb"),
    ("cache_write", "Cache write", "#7c3aed"),
    ("cache_read", "Cache read", "#0f766e"),
    ("output", "Output", "#b45309"),
)
_COUNTERS = {"n": "requests", "in": "input", "out": "output", "cr": "cache_read",
             "cw": "cache_write"}  # fmt: skip


@dataclass(slots=True)
class ModelTokens:
    model: str
    requests: int = 0
    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0

    @property
    def total(self) -> int:
        return self.input + self.output + self.cache_read + self.cache_write


@dataclass(frozen=True, slots=True)
class DayTotals:
    day: int  # days since the epoch, UTC
    share_of_week: float  # percent of the weekly allowance charged that day
    share_label: str
    requests: int
    tokens: int


@dataclass(frozen=True, slots=True)
class Aggregates:
    """The last ``days`` days: one value per hour (oldest first) and per-model token sums."""

    first_hour: int  # hours since the epoch of hourly[0]
    hourly_mc: tuple[int, ...]
    models: tuple[ModelTokens, ...]  # largest total first
    days: tuple[DayTotals, ...] = field(default=())


def _int(value: bytes | str) -> int:
    try:
        return int(value)  # int() takes ASCII bytes as they come from Valkey
    except ValueError:
        return 0


def parse_aggregates(
    raw: Mapping[str, str],
    now_ms: int,
    limit_7d_mc: int,
    days: int = 7,
) -> Aggregates:
    """Reads the ``h:<hour>`` and ``d:<day>:<model>:<counter>`` fields settle.lua writes."""
    first_hour = now_ms // HOUR_MS - days * DAY_HOURS + 1
    first_day = now_ms // (DAY_HOURS * HOUR_MS) - days + 1
    hourly = [0] * (days * DAY_HOURS)
    models: dict[str, ModelTokens] = {}
    day_requests: dict[int, int] = {}
    day_tokens: dict[int, int] = {}
    for name, value in raw.items():
        kind = name[:2]
        if kind == "h:":
            index = _int(name[2:]) - first_hour
            if 0 <= index < len(hourly):
                hourly[index] += _int(value)
        elif kind == "d:":
            parts = name.split(":")
            attr = _COUNTERS.get(parts[-1]) if len(parts) >= 4 else None
            day = _int(parts[1])
            if attr is None or day < first_day:
                continue
            model = ":".join(parts[2:-1])
            entry = models.get(model)
            if entry is None:
                entry = models[model] = ModelTokens(model)
            count = _int(value)
            setattr(entry, attr, getattr(entry, attr) + count)
            counts = day_requests if attr == "requests" else day_tokens
            counts[day] = counts.get(day, 0) + count
    totals = []
    for offset in range(days):
        day = first_day + offset
        start = day * DAY_HOURS - first_hour
        charged = sum(hourly[max(0, start) : max(0, start + DAY_HOURS)])
        totals.append(
            DayTotals(
                day,
                share(charged, limit_7d_mc),
                share_text(charged, limit_7d_mc),
                day_requests.get(day, 0),
                day_tokens.get(day, 0),
            )
        )
    ranked = sorted(models.values(), key=lambda m: (-m.total, m.model))
    return Aggregates(first_hour, tuple(hourly), tuple(ranked), tuple(totals))


def share(amount_mc: int, limit_mc: int) -> float:
    """Percent of ``limit_mc``, to two decimals."""
    if limit_mc <= 0:
        return 0.0
    return round(amount_mc * 100 / limit_mc, 2)


def share_text(amount_mc: int, limit_mc: int) -> str:
    """``share`` for people: some usage never reads as "0.0 %"."""
    value = share(amount_mc, limit_mc)
    if amount_mc > 0 and value < 0.01:
        return "< 0.01 %"
    return f"{value:g} %"


def compact(n: int) -> str:
    """Token counts for labels: 950, 12.3 K, 4.56 M."""
    if n < 1000:
        return str(n)
    for size, unit in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "K")):
        if n >= size:
            value = n / size
            digits = 2 if value < 10 else 1 if value < 100 else 0
            return f"{value:.{digits}f} {unit}"
    return str(n)  # pragma: no cover - unreachable


def _day_label(hour: int, fmt: str = "%a %d") -> str:
    return datetime.fromtimestamp(hour * 3600, UTC).strftime(fmt)


def hourly_svg(agg: Aggregates, limit_7d_mc: int) -> str:
    """One bar per hour for the whole period, scaled to the busiest hour."""
    width, height, top, bottom = 840, 170, 18, 22
    plot = height - top - bottom
    n = len(agg.hourly_mc)
    step = width / n if n else width
    peak = max(agg.hourly_mc, default=0)
    peak_share = share_text(peak, limit_7d_mc)
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        'aria-labelledby="hourly-title hourly-desc">',
        '<title id="hourly-title">Usage per hour, last 7 days (UTC)</title>',
        f'<desc id="hourly-desc">Each bar is one hour. The busiest hour used {peak_share} '
        "of the weekly allowance; the table below lists each day.</desc>",
        f'<line class="axis" x1="0" y1="{top + plot}" x2="{width}" y2="{top + plot}"/>',
    ]
    for i in range(n):
        hour = agg.first_hour + i
        if hour % DAY_HOURS == 0:
            x = i * step
            parts.append(
                f'<line class="grid" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot}"/>'
            )
            if x + 48 <= width:  # a label that would be cut at the right edge is left out
                parts.append(
                    f'<text class="tick" x="{x + 3:.1f}" y="{height - 6}">{_day_label(hour)}</text>'
                )
    days: dict[int, str] = {}  # strftime once per day, not once per bar
    bar_w = max(1.0, step - 1)
    for i, value in enumerate(agg.hourly_mc):
        if value <= 0 or peak <= 0:
            continue
        hour = agg.first_hour + i
        day = days.get(hour // DAY_HOURS)
        if day is None:
            day = days[hour // DAY_HOURS] = _day_label(hour, "%a %d %b")
        h = max(1.0, value / peak * plot)
        parts.append(
            f'<rect class="bar" x="{i * step:.1f}" y="{top + plot - h:.2f}" width="{bar_w:.1f}" '
            f'height="{h:.2f}"><title>{day} {hour % DAY_HOURS:02d}:00 UTC: '
            f"{share_text(value, limit_7d_mc)} of the week</title></rect>"
        )
    parts.append(
        f'<text class="tick" x="0" y="12">peak hour: {peak_share} of the weekly allowance</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def models_svg(models: Sequence[ModelTokens]) -> str:
    """A stacked horizontal bar of token kinds per model, scaled to the largest model."""
    if not models:
        return ""
    label_w, bar_w, row_h, legend_h = 210, 520, 30, 28
    width = label_w + bar_w + 110
    height = legend_h + row_h * len(models)
    biggest = max(m.total for m in models) or 1
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        'aria-labelledby="models-title models-desc">',
        '<title id="models-title">Tokens per model, last 7 days</title>',
        '<desc id="models-desc">Stacked bars of input, cache-write, cache-read and output '
        "tokens per model; exact figures are in the table below.</desc>",
    ]
    x = 0
    for _, label, colour in TOKEN_KINDS:
        parts.append(f'<rect x="{x}" y="6" width="12" height="12" fill="{colour}"/>')
        parts.append(f'<text class="tick" x="{x + 16}" y="16">{label}</text>')
        x += 120
    for row, m in enumerate(models):
        y = legend_h + row * row_h
        parts.append(f'<text class="label" x="0" y="{y + 18}">{escape(m.model[:32])}</text>')
        offset = float(label_w)
        for attr, label, colour in TOKEN_KINDS:
            count = int(getattr(m, attr))
            if count <= 0:
                continue
            w = max(0.5, round(count / biggest * bar_w, 2))
            parts.append(
                f'<rect x="{round(offset, 2)}" y="{y + 5}" width="{w}" height="18" '
                f'fill="{colour}"><title>{escape(m.model)}: {count:,} {label.lower()} '
                "tokens</title></rect>"
            )
            offset += w
        parts.append(
            f'<text class="tick" x="{round(offset + 6, 2)}" y="{y + 18}">{compact(m.total)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def usage_bar_svg(utilization: float, label: str) -> str:
    """A percentage bar; attributes rather than inline styles keep it inside the CSP."""
    filled = max(0.0, min(100.0, utilization))
    level = "full" if filled >= 100 else "high" if filled >= 80 else "ok"
    return (
        f'<svg class="meter meter-{level}" viewBox="0 0 100 8" preserveAspectRatio="none" '
        f'aria-hidden="true" focusable="false"><title>{escape(label)}</title>'
        '<rect class="meter-track" x="0" y="0" width="100" height="8" rx="1"/>'
        f'<rect class="meter-fill" x="0" y="0" width="{filled}" height="8" rx="1"/></svg>'
    )
