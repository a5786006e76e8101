"""OpenCode (`opencode run`) through its Anthropic provider pointed at the gateway, offline:
a plain turn, a tool loop and a long streamed answer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import valkey

from tests.integration.clients import (
    RUN_HEADER,
    TOOLS,
    billed,
    find_cli,
    home_dir,
    needs,
    new_run,
    sim_requests,
)
from tests.integration.conftest import Customer, Stack

OPENCODE = find_cli("opencode", "opencode")
# On a fresh HOME OpenCode installs this package into its config folder with npm.
PLUGIN = TOOLS / "opencode-plugin"
MODEL = "claude-sonnet-4-6"

pytestmark = [
    pytest.mark.cli_client,
    needs(OPENCODE, "opencode (OpenCode)", "opencode"),
    pytest.mark.skipif(
        not (PLUGIN / "node_modules").is_dir(),
        reason="OpenCode's plugin package not found in .tools/opencode-plugin/: `make test` "
        "installs it when npm is present (without it OpenCode would fetch it from npm)",
    ),
]


def opencode(
    stack: Stack, key: str, tmp_path: Path, run: str, prompt: str, *,
    headers: dict[str, str] | None = None, tools: bool = True,
) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """One `opencode run` with a fresh HOME whose config folder is seeded from .tools/."""
    home = home_dir(tmp_path)
    config_dir = home / ".config" / "opencode"
    config_dir.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy(PLUGIN / name, config_dir / name)
    (config_dir / "node_modules").symlink_to(PLUGIN / "node_modules")
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    options = {"baseURL": f"{stack.url}/v1", "apiKey": key,
               "headers": {RUN_HEADER: run, **(headers or {})}}  # fmt: skip
    config: dict[str, Any] = {"provider": {"anthropic": {"options": options}}}
    if not tools:
        config["tools"] = {"*": False}
    (work / "opencode.json").write_text(json.dumps(config))
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "OPENCODE_DISABLE_MODELS_FETCH": "1",
        "OPENCODE_DISABLE_AUTOUPDATE": "1",
        "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
        "NO_COLOR": "1",
    }
    assert OPENCODE is not None
    return subprocess.run(
        [OPENCODE, "run", prompt, "--model", f"anthropic/{MODEL}", "--format", "json"],
        env=env, cwd=work, capture_output=True, text=True, timeout=180, check=False,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def parts(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    """The run's JSON events, after checking it succeeded."""
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    errors = [e for e in events if e["type"] == "error"]
    assert done.returncode == 0 and not errors, (errors, done.stderr[-2000:])
    return events


def texts(events: list[dict[str, Any]]) -> list[str]:
    return [e["part"]["text"] for e in events if e["type"] == "text"]


def finishes(events: list[dict[str, Any]]) -> list[str]:
    return [e["part"]["reason"] for e in events if e["type"] == "step_finish"]


def check_billed(
    stack: Stack, run: str, customer: Customer, client: valkey.Valkey, *, before: int = 0
) -> list[dict[str, str]]:
    """Every upstream request of the run was streamed, answered and billed."""
    sent = sim_requests(stack, run)
    entries = billed(client, customer, before + len(sent))[before:]
    assert sent and len(entries) == len(sent)
    assert {(e["route"], e["status"], e["stream"]) for e in entries} == {("messages", "200", "1")}
    assert all(int(e["credits_mc"]) > 0 for e in entries)
    return entries


def test_opencode_answers_a_plain_turn(
    stack: Stack, customer: Customer, tmp_path: Path, sync_valkey: valkey.Valkey
) -> None:
    run = new_run()
    events = parts(opencode(stack, customer.key, tmp_path, run, "Say hello", tools=False))
    assert finishes(events) == ["stop"]
    assert texts(events) and all("simulated" in t for t in texts(events))
    check_billed(stack, run, customer, sync_valkey)


def test_opencode_runs_a_tool_and_sends_its_result_back(
    stack: Stack, customer: Customer, tmp_path: Path, sync_valkey: valkey.Valkey
) -> None:
    run = new_run()
    # glob only lists files: harmless in the empty work folder.
    done = opencode(stack, customer.key, tmp_path, run, "Which files are here?",
                    headers={"x-sim-tool": "glob"})  # fmt: skip
    events = parts(done)
    (call,) = [e["part"] for e in events if e["type"] == "tool_use"]
    assert call["tool"] == "glob" and call["state"]["status"] in ("completed", "error")
    assert finishes(events) == ["tool-calls", "stop"]
    assert "simulated" in texts(events)[-1]
    # The model call after the tool carried its result: a larger body than the first call.
    sent = sim_requests(stack, run)
    smallest = min(r["body_length"] for r in sent)  # the title request offers no tools
    calls = [r for r in sent if r["body_length"] > smallest]
    assert len(calls) >= 2 and calls[-1]["body_length"] > calls[0]["body_length"]
    check_billed(stack, run, customer, sync_valkey)


def test_opencode_receives_a_long_streamed_answer_whole(
    stack: Stack, customer: Customer, tmp_path: Path, sync_valkey: valkey.Valkey
) -> None:
    steer = {"x-sim-output-tokens": "400", "x-sim-chunks": "40"}
    # The same answer, whole: the simulator's text depends only on these headers.
    whole = httpx.post(
        f"{stack.url}/v1/messages", timeout=30,
        json={"model": MODEL, "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-api-key": customer.key, "anthropic-version": "2023-06-01", **steer},
    )  # fmt: skip
    assert whole.status_code == 200, whole.text
    (expected,) = [b["text"] for b in whole.json()["content"] if b["type"] == "text"]

    run = new_run()
    done = opencode(stack, customer.key, tmp_path, run, "Write a long answer", headers=steer,
                    tools=False)  # fmt: skip
    events = parts(done)
    assert texts(events) == [expected]
    check_billed(stack, run, customer, sync_valkey, before=1)
