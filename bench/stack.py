"""Starts the processes a benchmark or load test measures, each on a free loopback port,
and reads their CPU time and memory from /proc (psutil) so costs are per process tree.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import valkey as syncvalkey
import valkey.asyncio as avalkey

from gateway import accounts
from gateway.clock import system_clock
from gateway.embedded_valkey import EmbeddedValkey, free_port
from gateway.plans import Plan, list_plans, set_plan

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM_KEY = "sk-bench-upstream"
# Generous enough that no window, concurrency cap or IP slot ever refuses a bench request.
BIG_PLAN = Plan("bench", 10**9, 10**9, 64, 1_000_000, 30, "benchmark: never refuses", max_keys=1000)


def raise_nofile_limit() -> int:
    """Thousands of open streams need thousands of descriptors; children inherit this."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status) < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except OSError:
        return False


@dataclass
class Service:
    """One started process (with whatever children it forks) and where it listens."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path
    command: str

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def processes(self) -> list[psutil.Process]:
        try:
            main = psutil.Process(self.proc.pid)
            return [main, *main.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        return tree_cpu(self.processes())

    def rss_bytes(self) -> int:
        total = 0
        for p in self.processes():
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def wait_ready(self, path: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")
            if http_ok(self.url + path, timeout=0.5):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer {self.url}{path} within {timeout:.0f}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def tree_cpu(processes: list[psutil.Process]) -> float:
    total = 0.0
    for p in processes:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def start_service(
    name: str,
    argv: list[str],
    logs: Path,
    port: int,
    *,
    env: dict[str, str] | None = None,
    ready_path: str = "/",
    timeout: float = 60.0,
) -> Service:
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    service = Service(name, proc, f"http://127.0.0.1:{port}", log_path, " ".join(argv))
    service.wait_ready(ready_path, timeout)
    return service


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTEX_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def start_valkey(work: Path) -> tuple[EmbeddedValkey, psutil.Process]:
    # The embedded default: a unix socket beside the data (what `antex serve` uses alone).
    server = EmbeddedValkey(work / "valkey", unix_socket=True)
    server.start()
    assert server.pid is not None
    return server, psutil.Process(server.pid)


def start_simulator(logs: Path, workers: int = 1, *, burst: bool) -> Service:
    """The shipped simulator; `burst` writes each answer at once (requests may still ask for
    pacing with `x-sim-burst: 0`), otherwise it paces like the real API by default."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "gateway.simulator",
        "--port",
        str(port),
        "--workers",
        str(workers),
        *(["--burst"] if burst else []),
    ]
    return start_service("simulator", argv, logs, port, env=clean_env(), ready_path="/_sim/stats")


def antex_env(
    valkey_url: str, upstream_url: str, data_dir: Path, port: int, **extra: str
) -> dict[str, str]:
    return clean_env(
        ANTEX_PORT=str(port),
        ANTEX_WORKERS="2",
        ANTEX_DATA_DIR=str(data_dir),
        ANTEX_VALKEY_URL=valkey_url,
        ANTEX_UPSTREAM_URL=upstream_url,
        ANTEX_UPSTREAM_KEY=UPSTREAM_KEY,
        **{"ANTEX_LOG_LEVEL": "warning", **extra},
    )


def start_antex(
    logs: Path, work: Path, valkey_url: str, upstream_url: str, **extra: str
) -> Service:
    port = free_port()
    env = antex_env(valkey_url, upstream_url, work / "antex-data", port, **extra)
    service = start_service(
        "antex",
        [sys.executable, "-m", "gateway", "serve"],
        logs,
        port,
        env=env,
        ready_path="/readyz",
    )
    service.command = (
        "ANTEX_PORT=$PORT ANTEX_WORKERS=2 ANTEX_LOG_LEVEL=warning ANTEX_VALKEY_URL=<valkey> "
        "ANTEX_UPSTREAM_URL=<simulator> ANTEX_UPSTREAM_KEY=<any> python -m gateway serve"
    )
    return service


def start_bare(logs: Path, upstream_url: str) -> Service:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "bench.bare_app",
        "--port",
        str(port),
        "--upstream",
        upstream_url,
        "--workers",
        "2",
    ]
    return start_service("bare", argv, logs, port, env=clean_env(), ready_path="/healthz")


_NGINX_CONF = """\
worker_processes 2;
worker_rlimit_nofile 65536;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    upstream simulator {{ server 127.0.0.1:{upstream_port}; keepalive 512; }}
    server {{
        listen 127.0.0.1:{proxy_port} backlog=4096;
        location / {{
            proxy_pass http://simulator;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 300s;
        }}
    }}
    server {{
        listen 127.0.0.1:{canned_port} backlog=4096;
        location = /canned/json {{ default_type application/json; return 200 '{canned_json}'; }}
        location = /canned/sse {{ default_type text/event-stream; return 200 '{canned_sse}'; }}
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None
    )


def start_nginx(
    logs: Path, work: Path, upstream_port: int, canned_json: bytes, canned_sse: bytes
) -> tuple[Service, str] | None:
    """nginx as a plain reverse proxy to the simulator, plus a canned-answer server that
    shows the load generator's own ceiling. None when nginx is not installed."""
    binary = nginx_binary()
    if binary is None:
        return None
    prefix = work / "nginx"
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    proxy_port, canned_port = free_port(), free_port()

    def quoted(body: bytes) -> str:
        return body.decode().replace("\\", "\\\\").replace("'", "\\'")

    conf = prefix / "nginx.conf"
    conf.write_text(
        _NGINX_CONF.format(
            prefix=prefix,
            upstream_port=upstream_port,
            proxy_port=proxy_port,
            canned_port=canned_port,
            canned_json=quoted(canned_json),
            canned_sse=quoted(canned_sse),
        )
    )
    argv = [binary, "-p", str(prefix), "-c", str(conf), "-g", "daemon off; user root;"]
    service = start_service("nginx", argv, logs, proxy_port, ready_path="/_sim/stats")
    service.command = (
        "nginx -c nginx.conf (2 workers; proxy_pass to the simulator with keepalive 512, "
        "proxy_buffering off)"
    )
    return service, f"http://127.0.0.1:{canned_port}"


LITELLM_VENV = ROOT / "bench" / "work" / "litellm-venv"
LITELLM_MASTER = "sk-bench-litellm-master"

_LITELLM_CONF = """\
model_list:
  - model_name: claude-sonnet-4-6
    litellm_params:
      model: anthropic/claude-sonnet-4-6
      api_base: {upstream}
      api_key: {key}
general_settings:
  master_key: {master}
litellm_settings:
  drop_params: true
"""


def litellm_binary() -> Path | None:
    binary = LITELLM_VENV / "bin" / "litellm"
    return binary if binary.exists() else None


def start_litellm(logs: Path, work: Path, upstream_url: str) -> Service | None:
    binary = litellm_binary()
    if binary is None:
        return None
    conf = work / "litellm.yaml"
    conf.write_text(
        _LITELLM_CONF.format(upstream=upstream_url, key=UPSTREAM_KEY, master=LITELLM_MASTER)
    )
    port = free_port()
    argv = [
        str(binary),
        "--config",
        str(conf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "2",
    ]
    env = clean_env(
        LITELLM_LOG="ERROR", LITELLM_TELEMETRY="False", NO_DOCS="True", DISABLE_SCHEMA_UPDATE="True"
    )
    env.pop("PYTHONPATH", None)
    service = start_service(
        "litellm", argv, logs, port, env=env, ready_path="/health/liveliness", timeout=180
    )
    service.command = (
        "bench/work/litellm-venv/bin/litellm --config litellm.yaml --num_workers 2 "
        "(master key only; model claude-sonnet-4-6 -> anthropic/ at the simulator)"
    )
    return service


async def create_customer(
    valkey_url: str, email: str, plan: Plan = BIG_PLAN, *, rounds: int = 10, keys: int = 1
) -> tuple[str, list[str]]:
    """An account on ``plan`` with fresh keys, made by the same code the CLI uses. The keys
    live in memory only: callers pass them to clients, never to a file or a log."""
    client = avalkey.Valkey.from_url(valkey_url, decode_responses=True)
    try:
        await list_plans(client)
        await set_plan(client, plan)
        account_id = await accounts.create_account(client, email, plan.name, now_ms=system_clock())
        made = [
            (
                await accounts.create_key(
                    client, account_id, f"bench{i}", rounds=rounds, now_ms=system_clock()
                )
            ).key
            for i in range(keys)
        ]
        return account_id, made
    finally:
        await client.aclose()


def customer(
    valkey_url: str, email: str, plan: Plan = BIG_PLAN, **kw: int
) -> tuple[str, list[str]]:
    return asyncio.run(create_customer(valkey_url, email, plan, **kw))


def command_calls(valkey_url: str) -> dict[str, int]:
    """Valkey's own per-command call counters (INFO commandstats)."""
    client = syncvalkey.Valkey.from_url(valkey_url, decode_responses=True)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def calls_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    out = {k: v - before.get(k, 0) for k, v in after.items()}
    out.pop("info", None)  # our own INFO calls
    return {k: v for k, v in out.items() if v}


def machine_busy_seconds() -> float:
    """CPU seconds spent by everything on the machine (all cores), from /proc/stat."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0))
