"""The model catalog: shipped defaults, aliases, unknown ids, operator overrides."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.catalog import adaptive_thinking, load_catalog
from gateway.errors import ConfigError

A8_MODELS = [
    "claude-sonnet-5", "claude-fable-5", "claude-mythos-5", "claude-opus-5", "claude-opus-4-8",
    "claude-opus-4-7", "claude-mythos-preview", "claude-opus-4-6", "claude-sonnet-4-6",
    "claude-haiku-4-5", "claude-haiku-4-5-20251001", "claude-opus-4-5",
    "claude-opus-4-5-20251101", "claude-sonnet-4-5", "claude-sonnet-4-5-20250929",
    "claude-opus-4-1", "claude-opus-4-1-20250805", "claude-opus-5-5", "claude-sonnet-5-5",
    "claude-haiku-5-5", "claude-fable-5-1", "claude-mythos-5-1",
]  # fmt: skip


def test_shipped_catalog_knows_every_model_of_the_price_list() -> None:
    catalog = load_catalog()
    missing = [m for m in A8_MODELS if catalog.lookup(m) is None]
    assert missing == []


def test_dated_alias_and_short_alias_resolve_to_one_entry() -> None:
    catalog = load_catalog()
    dated = catalog.lookup("claude-sonnet-4-5-20250929")
    assert dated is not None
    assert catalog.lookup("claude-sonnet-4-5") is dated
    assert dated.id == "claude-sonnet-4-5-20250929"
    assert dated.display_name == "Claude Sonnet 4.5"
    assert dated.created_at == "2025-09-29T00:00:00Z"


def test_unknown_model_is_refused_by_default() -> None:
    catalog = load_catalog()
    assert catalog.lookup("claude-nonexistent-9") is None
    assert catalog.lookup("gpt-4o") is None


def test_models_are_listed_newest_first() -> None:
    models = load_catalog().models
    stamps = [m.created_at for m in models]
    assert stamps == sorted(stamps, reverse=True)
    assert models[0].id == "claude-haiku-5-5"
    assert models[-1].id == "claude-opus-4-1-20250805"
    # Aliases are not listed as separate models.
    assert len({m.id for m in models}) == len(models) == 18


def test_opus_4x_costs_more_than_sonnet_4x() -> None:
    catalog = load_catalog()
    for opus in ("claude-opus-4-5", "claude-opus-4-6", "claude-opus-4-7", "claude-opus-4-8"):
        for sonnet in ("claude-sonnet-4-5", "claude-sonnet-4-6"):
            o, s = catalog.lookup(opus), catalog.lookup(sonnet)
            assert o is not None and s is not None
            assert o.rates.input > s.rates.input and o.rates.output > s.rates.output


def test_haiku_55_carries_its_long_prompt_tier() -> None:
    info = load_catalog().lookup("claude-haiku-5-5")
    assert info is not None
    assert info.rates.long_context_threshold == 100_000
    assert info.rates.long_context is not None
    assert info.rates.long_context.output == 250


OPERATOR_FILE = """
[defaults]
allow_unknown = true
unknown_rates = { input = 1000, cache_write_5m = 1250, cache_write_1h = 2000, cache_read = 100, \
output = 5000 }

[[models]]
id = "claude-house-1"
display_name = "House model"
created_at = 2026-01-02T03:04:05Z
aliases = ["house"]
max_output_tokens = 4096
rates = { input = 1, cache_write_5m = 2, cache_write_1h = 3, cache_read = 0, output = 4 }
"""


def test_operator_file_replaces_the_shipped_catalog(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(OPERATOR_FILE)
    catalog = load_catalog(path)
    assert [m.id for m in catalog.models] == ["claude-house-1"]
    house = catalog.lookup("house")
    assert house is not None and house.id == "claude-house-1"
    assert house.created_at == "2026-01-02T03:04:05Z"
    assert house.max_output_tokens == 4096
    assert catalog.lookup("claude-sonnet-4-6") is not None  # accepted as unknown...
    unknown = catalog.lookup("claude-sonnet-4-6")
    assert unknown is not None and unknown.rates.output == 5000  # ...at the unknown rates


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        (OPERATOR_FILE.replace("output = 4 }", "output = 4.5 }"), "non-negative integer"),
        (OPERATOR_FILE.replace('aliases = ["house"]', 'aliases = ["claude-house-1"]'), "twice"),
        (OPERATOR_FILE.replace("cache_read = 0, ", ""), "missing"),
        (OPERATOR_FILE.replace("unknown_rates", "# unknown_rates"), "unknown_rates"),
        (OPERATOR_FILE.replace("2026-01-02T03:04:05Z", '"yesterday"'), "RFC 3339"),
        ("[defaults]\n", r"no \[\[models\]\]"),
        ("not toml = = 1", "models.toml"),
    ],
)
def test_bad_operator_file_fails_with_a_clear_message(
    tmp_path: Path, text: str, complaint: str
) -> None:
    path = tmp_path / "models.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=complaint):
        load_catalog(path)


def test_missing_operator_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_catalog(tmp_path / "absent.toml")


def test_pure_modules_import_no_io_libraries() -> None:
    code = (
        "import sys, gateway.usage, gateway.catalog, gateway.keyspace\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('valkey', 'aiohttp', 'blacksheep')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_the_shipped_catalog_names_how_each_model_thinks() -> None:
    catalog = load_catalog()
    assert all(m.thinking in ("adaptive", "budget") for m in catalog.models)
    for model in catalog.models:  # the catalog agrees with the rule for undescribed models
        assert catalog.adaptive_thinking(model.id) is adaptive_thinking(model.id)
    assert not catalog.adaptive_thinking("claude-opus-4-5")  # an alias resolves to its model
    assert catalog.adaptive_thinking("claude-sonnet-4-6")
