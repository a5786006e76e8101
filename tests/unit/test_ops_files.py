"""The files in ops/ parse, load in the real programs where those are installed, and refer
only to metrics that /metrics serves."""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import valkey
import valkey.asyncio as avalkey
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import Settings
from gateway.embedded_valkey import free_port, valkey_binary
from gateway.observability import Metrics
from gateway.resources import SETTLE_DRAIN_S
from gateway.store import Scripts
from gateway.usage import Usage

OPS = Path(__file__).resolve().parents[2] / "ops"
METRIC = re.compile(r"\bantex_[a-z0-9_]+")


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((OPS / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    dash = json.loads((OPS / "grafana-dashboard.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def referenced_metric_names() -> set[str]:
    """Every antex_* series name the alert rules and the dashboard query."""
    exprs = [rule["expr"] for rule in alert_rules()] + dashboard_exprs()
    return {name for expr in exprs for name in METRIC.findall(expr)}


def exposed_metric_names(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Sample names of a single-process Metrics after every kind of event."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    metrics = Metrics()
    usage = Usage(1, 2, 2, 0, 3, 4)
    metrics.request_done("messages", 200, "claude-sonnet-4-6", 120, 30, usage, 99)
    metrics.window_refused("5h")
    metrics.upstream_error("529")
    metrics.valkey_error()
    metrics.stream_opened()
    metrics.auth_lookup(True)
    metrics.error_response(401, "authentication_error")
    metrics.webhook("failed")
    text = metrics.render().decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_alert_rules_cover_the_signals_operators_need() -> None:
    rules = alert_rules()
    names = {rule["alert"] for rule in rules}
    assert {
        "AntexDown",
        "AntexNotReady",
        "AntexValkeyErrors",
        "AntexUpstreamErrorRate",
        "AntexWindowRefusalSurge",
        "AntexNoTraffic",
        "AntexWebhooksFailing",
    } <= names
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["expr"].strip(), rule["alert"]


def test_dashboard_panels_all_query_prometheus() -> None:
    dash = json.loads((OPS / "grafana-dashboard.json").read_text())
    assert dash["uid"] and dash["title"]
    graphs = [p for p in dash["panels"] if p["type"] != "row"]
    assert len(graphs) >= 10
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in graphs:
        assert panel["datasource"]["type"] == "prometheus", panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]


def test_ops_files_reference_only_served_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    referenced = referenced_metric_names()
    exposed = exposed_metric_names(monkeypatch)
    # Each family the issue asks for is both served and used.
    for family in (
        "antex_requests_total",
        "antex_request_duration_seconds_bucket",
        "antex_time_to_first_byte_seconds_bucket",
        "antex_streams_in_flight",
        "antex_upstream_errors_total",
        "antex_window_refusals_total",
        "antex_tokens_total",
        "antex_millicredits_total",
        "antex_auth_cache_lookups_total",
        "antex_valkey_errors_total",
        "antex_webhook_deliveries_total",
    ):
        assert family in exposed and family in referenced, family
    assert referenced - exposed == set()


def test_prometheus_config_scrapes_metrics_and_loads_the_rules() -> None:
    doc = yaml.safe_load((OPS / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in doc["scrape_configs"]}
    assert jobs["antex"]["metrics_path"] == "/metrics"
    assert jobs["antex"]["authorization"]["type"] == "Bearer"
    assert any("/readyz" in t for s in jobs["antex-ready"]["static_configs"] for t in s["targets"])
    assert any(path.endswith("alerts.yml") for path in doc["rule_files"])


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_rules_and_every_dashboard_query(tmp_path: Path) -> None:
    checked = subprocess.run(
        ["promtool", "check", "rules", str(OPS / "alerts.yml")], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # Dashboard queries as recording rules, with Grafana's variables filled in.
    rules = [
        {
            "record": f"antex:dashboard:{i}",
            "expr": expr.replace("$__rate_interval", "1m").replace("$instance", ".*"),
        }
        for i, expr in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.fixture
def ops_valkey(tmp_path: Path) -> Iterator[int]:
    """valkey-server started from ops/valkey.conf, with its ACL example users enabled."""
    conf = (OPS / "valkey.conf").read_text()
    assert "\ndir /var/lib/valkey\n" in conf
    conf = conf.replace("\ndir /var/lib/valkey\n", f"\ndir {tmp_path}\n")
    users = [line.lstrip("# ").strip() for line in conf.splitlines() if line.startswith("#   user")]
    assert users, "the ACL example is gone"
    path = tmp_path / "valkey.conf"
    path.write_text(conf + "\n" + "\n".join(users) + "\n")
    port = free_port()
    args = [valkey_binary(), str(path), "--port", str(port), "--supervised", "no"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, (
                f"valkey-server rejected ops/valkey.conf ({proc.returncode})"
            )
            probe = valkey.Valkey(port=port, username="antex", password="CHANGE_ME")
            try:
                if probe.ping():
                    break
            except valkey.ConnectionError:
                assert time.monotonic() < deadline, "valkey-server did not start"
                time.sleep(0.02)
            finally:
                probe.close()
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


async def test_valkey_conf_persists_never_evicts_and_its_acl_runs_the_gateway(
    ops_valkey: int,
) -> None:
    ops = valkey.Valkey(port=ops_valkey, username="ops", password="CHANGE_ME_TOO")
    try:
        settings = ops.config_get("appendonly", "appendfsync", "maxmemory-policy")
    finally:
        ops.close()
    assert settings == {
        "appendonly": "yes",
        "appendfsync": "everysec",
        "maxmemory-policy": "noeviction",
    }

    client = avalkey.Valkey(port=ops_valkey, username="antex", password="CHANGE_ME")
    try:
        await Scripts().load(client)  # the gateway's own start-up: SCRIPT LOAD of each script
        await client.set("antex:probe", 1)
        await client.publish("antex:invalidate", "k")
        assert await client.info("server")
        with pytest.raises(valkey.exceptions.NoPermissionError):
            await client.flushall()
        with pytest.raises(valkey.exceptions.NoPermissionError):
            await client.set("other:probe", 1)  # the antex user sees antex:* keys only
    finally:
        await client.aclose()


def test_systemd_unit_runs_antex_serve_with_a_state_dir() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(OPS / "antex.service")
    service = unit["Service"]
    assert service["ExecStart"].endswith("antex serve")
    assert service["Environment"] == "ANTEX_DATA_DIR=/var/lib/antex"
    assert service["StateDirectory"] == "antex"
    assert service["EnvironmentFile"].startswith("/etc/antex/")
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    # systemd's SIGKILL comes only after the drain and the last settlement flush.
    assert int(service["TimeoutStopSec"]) > Settings().drain_seconds + SETTLE_DRAIN_S


@pytest.mark.skipif(
    shutil.which("nginx") is None or shutil.which("openssl") is None,
    reason="nginx or openssl is not installed",
)
def test_nginx_accepts_the_tls_front(tmp_path: Path) -> None:
    conf = (OPS / "nginx-tls.conf").read_text()
    for needed in (
        "proxy_buffering off",
        "proxy_set_header X-Forwarded-For $remote_addr",
        'proxy_set_header Forwarded ""',
        "ANTEX_TRUSTED_PROXIES=127.0.0.1/32",
    ):
        assert needed in conf, needed
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-subj", "/CN=localhost",
         "-days", "1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    conf = (
        conf.replace("/etc/letsencrypt/live/api.example.com/fullchain.pem", str(cert))
        .replace("/etc/letsencrypt/live/api.example.com/privkey.pem", str(key))
        .replace("/var/log/nginx/", f"{tmp_path}/")
    )
    (tmp_path / "antex.conf").write_text(conf)
    main = tmp_path / "nginx.conf"
    main.write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
        f"http {{\n  include {tmp_path}/antex.conf;\n}}\n"
    )
    checked = subprocess.run(
        ["nginx", "-t", "-c", str(main), "-p", str(tmp_path), "-e", "stderr"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr


def test_nginx_keeps_the_operator_surfaces_off_the_public_listener() -> None:
    conf = (OPS / "nginx-tls.conf").read_text()
    for location in ("location = /metrics", "location ^~ /admin"):
        start = conf.index(location + " {")
        body = conf[start : conf.index("}", start)]
        assert "return 404;" in body and "proxy_pass" not in body, location


ROOT = OPS.parent


def test_compose_runs_the_gateway_against_a_separate_persistent_valkey() -> None:
    doc = yaml.safe_load((ROOT / "compose.yaml").read_text())
    valkey_service, gateway = doc["services"]["valkey"], doc["services"]["antex"]
    command = valkey_service["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert any(v.endswith(":/data") for v in valkey_service["volumes"])
    assert gateway["build"]["dockerfile"] == "Containerfile"
    assert gateway["environment"]["ANTEX_VALKEY_URL"].startswith("valkey://")
    assert gateway["depends_on"]["valkey"]["condition"] == "service_healthy"
    assert any(v.endswith(":/var/lib/antex") for v in gateway["volumes"])
    config = (ROOT / "gateway" / "config.py").read_text() + (
        ROOT / "gateway" / "observability.py"
    ).read_text()
    for name in gateway["environment"]:
        assert f'"{name}"' in config, f"{name} is not a setting Antex reads"


def test_the_containerfile_runs_unprivileged_with_a_volume_and_a_readiness_check() -> None:
    text = (ROOT / "Containerfile").read_text()
    assert "ARG BASE=python:3.11-slim" in text
    assert text.count("FROM ${BASE}") == 2  # wheels built in the first stage
    final = text[text.rindex("FROM ${BASE}") :]
    assert "USER antex" in final and 'VOLUME ["/var/lib/antex"]' in final
    assert "/readyz" in final.split("HEALTHCHECK", 1)[1].split("\n\n", 1)[0]
    assert 'CMD ["serve"]' in final and "--demo" not in final
