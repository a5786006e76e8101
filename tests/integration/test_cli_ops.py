"""Operator ergonomics of the ``antex`` command: its version, refusing to start a second,
empty store by mistake, and sign-in links that point at the serving gateway."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gateway import __version__
from gateway.embedded_valkey import free_port
from tests.integration.conftest import ROOT, Stack, gateway_env, new_customer, run_gateway
from tests.integration.ops_helpers import cli


def bare(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``antex ARGS`` with only ANTEX_DATA_DIR set, as an operator's fresh shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTEX_")}
    env.update(ANTEX_DATA_DIR=str(data_dir), PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_version(tmp_path: Path) -> None:
    done = bare(tmp_path, "--version")
    assert done.returncode == 0 and done.stdout.strip() == f"antex {__version__}"


def test_a_folder_without_a_store_is_refused_unless_init(tmp_path: Path) -> None:
    data = tmp_path / "elsewhere"
    refused = bare(data, "account", "list")
    assert refused.returncode == 1
    assert "no Valkey is running" in refused.stderr and "--init" in refused.stderr
    assert not (data / "appendonlydir").exists()

    made = bare(data, "--init", "account", "create", "first@example.test", "--json")
    assert made.returncode == 0, made.stderr
    # The store now holds data: later commands start it again without --init.
    listed = bare(data, "account", "list")
    assert listed.returncode == 0 and "first@example.test" in listed.stdout


async def test_login_link_points_at_the_serving_gateway(
    stack: Stack, simulator: str, tmp_path: Path
) -> None:
    customer = await new_customer(stack.valkey_url)
    public = "https://antex.example.test"
    port = free_port()
    (tmp_path / "clock").write_text("0")
    env = gateway_env(stack.valkey_url, simulator, tmp_path, port, ANTEX_PUBLIC_URL=public)
    with run_gateway(env, port, tmp_path / "gateway.log"):
        # The CLI's own environment names no public URL: the link uses the server's.
        link = cli(stack, "login-link", customer.email)
    assert link.code == 0, link.err
    assert link.out.startswith(public + "/dashboard/signin/link?token=")
