"""``antex serve``: embedded Valkey and simulator when needed, then granian workers.

Both helpers start once in the main process, before the workers fork, and their
addresses reach the workers through the environment.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gateway import accounts, keyspace, layout, upstream_store
from gateway.clock import make_clock
from gateway.config import Settings
from gateway.embedded_valkey import EmbeddedValkey, free_port
from gateway.errors import ConfigError
from gateway.observability import fresh_metrics_dir
from gateway.plans import list_plans
from gateway.secretbox import load_master_key
from gateway.store import open_client

log = logging.getLogger("antex.serve")

DEMO_EMAIL = "demo@antex.local"
_DEMO_BODY = (
    '{"model":"claude-sonnet-4-6","max_tokens":256,"stream":true,'
    '"messages":[{"role":"user","content":"Hello"}]}'
)


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def start_simulator(port: int) -> tuple[subprocess.Popen[bytes], str]:
    if port == 0 or not _port_free("127.0.0.1", port):
        port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.simulator", "--host", "127.0.0.1", "--port", str(port)],
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ConfigError(f"the upstream simulator exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, url
        time.sleep(0.05)
    proc.terminate()
    raise ConfigError("the upstream simulator did not start within 15s")


async def _pool_size(settings: Settings) -> int:
    client = open_client(settings.valkey_url or "")
    try:
        return int(await client.scard(upstream_store.IDS))
    finally:
        await client.aclose()


async def _prepare(settings: Settings, demo: bool) -> str | None:
    """Seeds plans; with ``demo``, makes the demo account and returns a new key once."""
    client = open_client(settings.valkey_url or "")
    try:
        # Before any worker starts: refuse a newer data layout, migrate an older one.
        await layout.ensure_layout(client)
        await list_plans(client)  # seeds the shipped plans on first use
        # Operator commands build sign-in links with the server's address, not their own env.
        await client.set(keyspace.PUBLIC_URL, settings.base_url)
        if not demo:
            return None
        now_ms = make_clock(settings.clock_file)()
        account_id = await accounts.find_account(client, DEMO_EMAIL)
        if account_id is None:
            account_id = await accounts.create_account(
                client, DEMO_EMAIL, settings.default_plan, now_ms=now_ms
            )
        if await client.scard(keyspace.AccountKeys(account_id).keys):
            return None
        created = await accounts.create_key(
            client, account_id, "demo", rounds=settings.bcrypt_rounds, now_ms=now_ms
        )
        return created.key
    finally:
        await client.aclose()


def _print_demo(settings: Settings, key: str | None) -> None:
    base = settings.base_url
    if key is None:
        print(
            f"\nDemo account {DEMO_EMAIL} exists; its key was printed on first start.\n"
            f"New key:  antex key create {DEMO_EMAIL} --name demo\n",
            flush=True,
        )
        return
    print(
        f"""
Antex is starting on {base}

  Demo API key (shown once, save it now):
    {key}

  Try it:
    curl -N {base}/v1/messages -H "x-api-key: {key}" \\
      -H "anthropic-version: 2023-06-01" -H "content-type: application/json" \\
      -d '{_DEMO_BODY}'

  Claude Code:
    export ANTHROPIC_BASE_URL={base}
    export ANTHROPIC_API_KEY={key}
""",
        flush=True,
    )


# A request allocates hundreds of containers: at the default young threshold (700) and with
# every start-up object still tracked, a worker spent 120-170 µs of CPU per request in the
# cyclic collector (full passes walked the whole heap). Frozen start-up objects and a
# threshold of 5,000 bring that to 20-65 µs; a young pass stays a few milliseconds at most.
_GC_YOUNG_THRESHOLD = 5_000


def worker_app() -> Any:
    """The granian factory target: the app from the environment (``app_from_env``), then
    tuned collection: start-up objects (modules, routes, templates, clients) live as long as
    the worker, so they are frozen out of every collection."""
    from gateway.app import app_from_env

    app = app_from_env()
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(_GC_YOUNG_THRESHOLD, older, oldest)
    return app


def serve(settings: Settings, *, demo: bool = False) -> None:
    from granian import Granian
    from granian.constants import Interfaces, Loops
    from granian.http import HTTP1Settings

    embedded: EmbeddedValkey | None = None
    simulator: subprocess.Popen[bytes] | None = None
    env_updates: dict[str, str] = {}
    try:
        if settings.valkey_url is None:
            embedded = EmbeddedValkey(Path(settings.data_dir))
            running = embedded.running_url()
            if running:
                log.warning("reusing the embedded valkey already serving %s", settings.data_dir)
                env_updates["ANTEX_VALKEY_URL"], embedded = running, None
            else:
                env_updates["ANTEX_VALKEY_URL"] = embedded.start()
        os.environ.update(env_updates)
        settings = Settings.from_env(os.environ)
        # Created now, before the workers fork, so they all read the same master key.
        load_master_key(settings.secret_key, Path(settings.data_dir))
        if settings.upstream_key is None and not asyncio.run(_pool_size(settings)):
            simulator, url = start_simulator(settings.simulator_port)
            env_updates["ANTEX_UPSTREAM_URL"] = url
            env_updates["ANTEX_UPSTREAM_KEY"] = "simulator"
            log.warning(
                "NO UPSTREAM CREDENTIALS (ANTEX_UPSTREAM_KEY unset, no `antex upstream add`): "
                "serving answers from the built-in simulator at %s, not from Claude. Set "
                "ANTEX_UPSTREAM_KEY or add upstreams for real use.",
                url,
            )
        # Workers pick multiprocess metrics from this variable: set it before they fork.
        env_updates["PROMETHEUS_MULTIPROC_DIR"] = str(fresh_metrics_dir(Path(settings.data_dir)))
        os.environ.update(env_updates)
        settings = Settings.from_env(os.environ)
        demo_key = asyncio.run(_prepare(settings, demo))
        if demo:
            _print_demo(settings, demo_key)
        server = Granian(
            "gateway.serve:worker_app",
            factory=True,
            interface=Interfaces.ASGI,
            address=settings.host,
            port=settings.port,
            workers=settings.workers,
            loop=Loops.uvloop,
            backlog=4096,
            log_access=False,
            # A connection that does not send a complete request line and headers in time is
            # closed by granian itself (capped at its 60 s maximum).
            http1_settings=HTTP1Settings(
                header_read_timeout=max(1, min(60_000, int(settings.header_read_timeout * 1000)))
            ),
            # A worker that dies is replaced; the new one replays its settlement spool.
            respawn_failed_workers=True,
            respawn_interval=0.5,
            # A stop lets open requests finish for ANTEX_DRAIN_SECONDS, then kills.
            workers_kill_timeout=settings.drain_seconds,
        )
        server.serve()
    finally:
        if simulator is not None:
            simulator.terminate()
            simulator.wait(10)
        if embedded is not None:
            embedded.stop()
