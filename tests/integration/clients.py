"""What the real-client tests share: finding the pinned CLIs `make test` installs under
``.tools/`` (else the same command on PATH), and reading back what a run did upstream and
what the gateway billed for it."""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import valkey

from gateway.keyspace import AccountKeys
from tests.integration.conftest import ROOT, Customer, Stack

TOOLS = ROOT / ".tools"
# Clients forward it untouched; it lets a test pick its own requests out of the simulator's log.
RUN_HEADER = "x-test-run"


def find_cli(folder: str, command: str, *, path_too: bool = True) -> str | None:
    """The pinned copy under ``.tools/<folder>/``, else ``command`` on PATH when allowed."""
    pinned = TOOLS / folder / "node_modules" / ".bin" / command
    if pinned.exists():
        return str(pinned)
    return shutil.which(command) if path_too else None


def needs(cli: str | None, what: str, folder: str, *, path_too: bool = True) -> Any:
    where = f".tools/{folder}/" + (" or PATH" if path_too else "")
    return pytest.mark.skipif(
        cli is None,
        reason=f"{what} not found in {where}: `make test` installs it when npm is present",
    )


def new_run() -> str:
    return uuid.uuid4().hex


def sim_requests(stack: Stack, run: str, path: str = "/v1/messages") -> list[dict[str, Any]]:
    """The simulator's metadata of this run's upstream requests to ``path``, oldest first."""
    every = httpx.get(f"{stack.sim_url}/_sim/requests", timeout=5).json()
    return [
        r for r in every
        if r["path"] == path and any(k.lower() == RUN_HEADER and v == run for k, v in r["headers"])
    ]  # fmt: skip


def billed(client: valkey.Valkey, customer: Customer, count: int) -> list[dict[str, str]]:
    """The account's settled log entries, once at least ``count`` are there (10 s at most):
    the gateway settles after the answer has been sent."""
    key = AccountKeys(customer.account_id).log
    deadline = time.monotonic() + 10
    while True:
        entries = [fields for _, fields in client.xrange(key)]
        if len(entries) >= count or time.monotonic() > deadline:
            return entries
        time.sleep(0.02)


def home_dir(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return home
