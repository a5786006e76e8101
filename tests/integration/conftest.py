"""A real stack per test session: the shipped simulator and ``antex serve`` with 2 workers."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import valkey.asyncio as avalkey

from gateway import accounts
from gateway.clock import system_clock
from gateway.embedded_valkey import free_port
from gateway.plans import Plan, list_plans, set_plan

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM_KEY = "sk-upstream-test-0001"


def wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=0.5).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not answer at {url} within {timeout}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def running(
    args: list[str],
    port: int,
    ready: str,
    what: str,
    log_path: Path,
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Starts a server process logging to ``log_path``; yields its URL once ``ready`` answers."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{url}{ready}", proc, what)
            yield url
        finally:
            stop(proc)


def run_gateway(env: dict[str, str], port: int, log_path: Path, what: str = "gateway") -> Any:
    return running(
        [sys.executable, "-m", "gateway", "serve"], port, "/healthz", what, log_path, env
    )


# Small but real pacing: every SSE event is its own write, as the real API sends them.
SIM_PACING = ("--ttft-ms", "20", "--event-delay-ms", "3")


def run_simulator(port: int, log_path: Path) -> Any:
    args = [sys.executable, "-m", "gateway.simulator", "--port", str(port), *SIM_PACING]
    return running(args, port, "/_sim/stats", "simulator", log_path)


@dataclass
class Stack:
    url: str
    sim_url: str
    valkey_url: str
    data_dir: Path
    log_path: Path
    clock_file: Path

    def sim_stats(self) -> dict[str, int]:
        return dict(httpx.get(f"{self.sim_url}/_sim/stats").json())

    def move_clock(self, ms: int) -> None:
        """Moves every worker's clock: they re-read the offset file when it changes."""
        current = int(self.clock_file.read_text() or 0)
        self.clock_file.write_text(str(current + ms))
        time.sleep(0.01)  # distinct mtime even on coarse filesystems


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def simulator(logs_dir: Path) -> Iterator[str]:
    port = free_port()
    log = open(logs_dir / "simulator.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.simulator", "--port", str(port), *SIM_PACING],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/_sim/stats", proc, "simulator")
        yield url
    finally:
        stop(proc)
        log.close()


def gateway_env(
    valkey_url: str, sim_url: str, data_dir: Path, port: int, **extra: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTEX_")}
    env.update(
        ANTEX_PORT=str(port),
        ANTEX_WORKERS="2",
        ANTEX_DATA_DIR=str(data_dir),
        ANTEX_VALKEY_URL=valkey_url,
        ANTEX_UPSTREAM_URL=sim_url,
        ANTEX_UPSTREAM_KEY=UPSTREAM_KEY,
        ANTEX_BCRYPT_ROUNDS="4",
        ANTEX_UPSTREAM_READ_TIMEOUT="3",
        ANTEX_CLOCK_FILE=str(data_dir / "clock"),
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def stack(
    valkey_url: str, simulator: str, tmp_path_factory: pytest.TempPathFactory, logs_dir: Path
) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("gateway-data")
    (data_dir / "clock").write_text("0")
    port = free_port()
    log_path = logs_dir / "gateway.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve"],
        cwd=ROOT,
        env=gateway_env(
            valkey_url, simulator, data_dir, port, ANTEX_TRUSTED_PROXIES="127.0.0.2/32"
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz", proc, "gateway")
        yield Stack(url, simulator, valkey_url, data_dir, log_path, data_dir / "clock")
    finally:
        stop(proc)
        log.close()


@dataclass
class Customer:
    account_id: str
    key: str
    key_id: str
    email: str


async def new_customer(
    valkey_url: str, plan: Plan | None = None, *, key_name: str = "test"
) -> Customer:
    """An account and key made by the same code the CLI uses."""
    client = avalkey.Valkey.from_url(valkey_url, decode_responses=True)
    try:
        await list_plans(client)  # seeds the shipped plans on first use
        plan_name = "pro"
        if plan is not None:
            await set_plan(client, plan)
            plan_name = plan.name
        email = f"{uuid.uuid4().hex[:10]}@example.test"
        account_id = await accounts.create_account(client, email, plan_name, now_ms=system_clock())
        created = await accounts.create_key(
            client, account_id, key_name, rounds=4, now_ms=system_clock()
        )
        return Customer(account_id, created.key, created.key_id, email)
    finally:
        await client.aclose()


@pytest.fixture
async def customer(valkey_url: str) -> Customer:
    return await new_customer(valkey_url)
