"""Metrics in a single process (an app built without ``antex serve``) and the log formats."""

from __future__ import annotations

import logging
import platform
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import __version__
from gateway.observability import Metrics, access_log, configure_logging, fresh_metrics_dir
from gateway.usage import Usage


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = metrics.render().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_without_a_multiprocess_dir_the_registry_is_the_process_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    metrics = Metrics()
    usage = Usage(input_tokens=10, cache_creation_input_tokens=4, cache_write_5m=4,
                  cache_read_input_tokens=3, output_tokens=5)  # fmt: skip
    metrics.request_done("messages", 200, "m", 0.040, 0.003, usage, 70)
    metrics.request_done("messages", 200, "m", 2.0, 0.9, usage, 70)
    metrics.window_refused("7d")
    metrics.auth_lookup(True)
    metrics.auth_lookup(False)
    metrics.stream_opened()
    metrics.stream_opened()
    metrics.stream_closed()
    got = samples(metrics)

    def at(name: str, **labels: str) -> float:
        return got[(name, frozenset(labels.items()))]

    assert at("antex_requests_total", route="messages", status="200", model="m") == 2
    assert at("antex_request_duration_seconds_bucket", route="messages", le="0.05") == 1
    assert at("antex_request_duration_seconds_bucket", route="messages", le="2.5") == 2
    assert at("antex_time_to_first_byte_seconds_bucket", route="messages", le="0.005") == 1
    assert at("antex_request_duration_seconds_sum", route="messages") == pytest.approx(2.04)
    assert at("antex_tokens_total", model="m", kind="cache_write") == 8
    assert at("antex_tokens_total", model="m", kind="output") == 10
    assert at("antex_millicredits_total", model="m") == 140
    assert at("antex_window_refusals_total", window="7d") == 1
    assert at("antex_window_refusals_total", window="5h") == 0  # present before any refusal
    assert at("antex_auth_cache_lookups_total", result="miss") == 1
    assert at("antex_streams_in_flight") == 1
    assert at("antex_valkey_errors_total") == 0
    assert at("antex_build_info", version=__version__, python=platform.python_version()) == 1
    assert not any(name.endswith("_created") for name, _ in got)


def test_each_metrics_object_counts_on_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    first, second = Metrics(), Metrics()  # two apps in one test process
    first.valkey_error()
    assert samples(first)[("antex_valkey_errors_total", frozenset())] == 1
    assert samples(second)[("antex_valkey_errors_total", frozenset())] == 0


def test_a_new_run_wipes_the_metrics_of_dead_runs_only(tmp_path: Path) -> None:
    dead = tmp_path / "metrics" / "999999999"  # above any pid_max: never a live process
    dead.mkdir(parents=True)
    (dead / "counter_1.db").write_bytes(b"old")
    stray = tmp_path / "metrics" / "notes"
    stray.mkdir()
    alive = tmp_path / "metrics" / "1"  # init: always running
    alive.mkdir()
    run = fresh_metrics_dir(tmp_path)
    assert run.is_dir() and not any(run.iterdir())
    assert not dead.exists() and not stray.exists()
    assert alive.exists()


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_format_writes_one_object_per_access_line(
    restore_root_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("info", "json")
    access_log("req_1", "acct", {"model": "m", "status": 200, "credits_mc": 7})
    logging.getLogger("blacksheep.server").info("Handled error: model: secret-model")
    logging.getLogger("antex.app").warning("valkey %s", "down")
    lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert len(lines) == 2  # blacksheep's copy of a handled error's message is dropped
    assert lines[0]["logger"] == "antex.access" and lines[0]["level"] == "info"
    assert {k: lines[0][k] for k in ("request_id", "account", "model", "status", "credits_mc")} == {
        "request_id": "req_1", "account": "acct", "model": "m", "status": 200, "credits_mc": 7,
    }  # fmt: skip
    assert lines[0]["ts"].endswith("+00:00")
    assert lines[1]["msg"] == "valkey down" and lines[1]["level"] == "warning"


def test_text_format_writes_key_value_access_lines(
    restore_root_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("info", "text")
    configure_logging("info", "text")  # again: still one handler, one line
    access_log("req_1", "acct", {"model": "m", "status": 200})
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith("INFO antex.access request_id=req_1 account=acct model=m status=200")
