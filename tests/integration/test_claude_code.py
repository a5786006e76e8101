"""Claude Code with only ANTHROPIC_BASE_URL and a key pointed at the gateway."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import Customer, Stack

CLAUDE = shutil.which("claude")

pytestmark = [
    pytest.mark.cli_client,
    pytest.mark.skipif(CLAUDE is None, reason="the claude CLI is not installed"),
]


@pytest.mark.parametrize("credential", ["ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"])
def test_claude_print_mode_completes_through_the_gateway(
    stack: Stack, customer: Customer, tmp_path: Path, credential: str
) -> None:
    before = stack.sim_stats()["completed"]
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "ANTHROPIC_BASE_URL": stack.url,
        credential: customer.key,
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    done = subprocess.run(
        [str(CLAUDE), "-p", "Say hello", "--model", "claude-sonnet-4-6"],
        env=env, cwd=tmp_path, capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    # The simulator's filler text came back through the gateway.
    assert b"simulated" in done.stdout
    assert stack.sim_stats()["completed"] > before
