"""The dashboard's pure chart module: settle.lua's aggregate fields in, SVG out."""

from __future__ import annotations

import ast
from pathlib import Path

from gateway.dashboard import charts

HOUR = 3_600_000
DAY = 24 * HOUR
# 2026-05-17 13:30 UTC
NOW = 1_779_000_000_000 - 1_779_000_000_000 % DAY + 13 * HOUR + 30 * 60_000


def test_hours_and_days_outside_the_seven_days_are_ignored() -> None:
    hour, day = NOW // HOUR, NOW // DAY
    raw = {
        f"h:{hour}": "500",
        f"h:{hour - 167}": "100",  # the oldest hour still shown
        f"h:{hour - 168}": "999",  # one hour too old
        f"h:{hour + 1}": "999",  # from a clock ahead of ours
        f"d:{day}:claude-sonnet-4-6:n": "2",
        f"d:{day}:claude-sonnet-4-6:in": "10",
        f"d:{day}:claude-sonnet-4-6:out": "30",
        f"d:{day - 6}:claude-opus-4-7:n": "1",
        f"d:{day - 6}:claude-opus-4-7:cr": "1000",
        f"d:{day - 7}:claude-opus-4-7:cr": "999999",  # too old
        "last_h": str(hour),
    }
    agg = charts.parse_aggregates(raw, NOW, limit_7d_mc=10_000)
    assert len(agg.hourly_mc) == 168
    assert agg.hourly_mc[-1] == 500 and agg.hourly_mc[0] == 100
    assert sum(agg.hourly_mc) == 600
    assert [m.model for m in agg.models] == ["claude-opus-4-7", "claude-sonnet-4-6"]
    opus, sonnet = agg.models
    assert (opus.requests, opus.cache_read, opus.total) == (1, 1000, 1000)
    assert (sonnet.requests, sonnet.input, sonnet.output) == (2, 10, 30)
    assert [d.day for d in agg.days] == list(range(day - 6, day + 1))
    assert agg.days[-1].share_of_week == 5.0 and agg.days[-1].tokens == 40
    assert agg.days[-1].requests == 2


def test_fields_parse_with_colons_in_model_names() -> None:
    hour = NOW // HOUR
    raw = {f"h:{hour}": "42", "d:1:model:with:colons:out": "7"}
    agg = charts.parse_aggregates(raw, NOW, 1000)
    assert agg.hourly_mc[-1] == 42
    assert agg.models == ()  # day 1 is long gone


def test_small_usage_never_reads_as_zero_percent() -> None:
    assert charts.share_text(1, 10_000_000) == "< 0.01 %"
    assert charts.share_text(0, 10_000_000) == "0 %"
    assert charts.share_text(2_500, 10_000) == "25 %"


def test_svg_escapes_model_names_and_shows_no_credits() -> None:
    models = [charts.ModelTokens('<script>"x"</script>', requests=1, input=5, output=5)]
    svg = charts.models_svg(models)
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    hourly = charts.hourly_svg(charts.parse_aggregates({}, NOW, 1000), 1000)
    assert hourly.startswith("<svg") and "credit" not in hourly.lower()


def test_usage_bar_is_clamped() -> None:
    assert 'width="100.0"' in charts.usage_bar_svg(140.0, "over")
    assert "meter-full" in charts.usage_bar_svg(100.0, "full")
    assert 'width="0.0"' in charts.usage_bar_svg(-3.0, "none")


def test_charts_module_stays_pure() -> None:
    source = Path(charts.__file__).read_text()
    imported = {
        (node.module or "").split(".")[0]
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ImportFrom)
    } | {
        alias.name.split(".")[0]
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert not imported & {"valkey", "aiohttp", "blacksheep", "gateway"}
