"""Claude Code (`claude -p`), pinned current and older releases, with only ANTHROPIC_BASE_URL
and a key pointed at the gateway: a plain turn, a tool loop and a streamed turn."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

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

CURRENT = find_cli("claude-code", "claude")
OLDER = find_cli("claude-code-2.1.197", "claude", path_too=False)  # only the pinned copy
MODEL = "claude-sonnet-4-6"
# The simulator calls a tool whenever tools are offered: a plain turn offers none.
NO_TOOLS = ("--tools", "")

CLAUDES = [
    pytest.param(CURRENT, id="2.1.332", marks=needs(CURRENT, "claude (Claude Code)",
                                                    "claude-code")),
    pytest.param(OLDER, id="2.1.197", marks=needs(OLDER, "Claude Code 2.1.197",
                                                  "claude-code-2.1.197", path_too=False)),
]  # fmt: skip

pytestmark = pytest.mark.cli_client


def claude(
    cli: str, stack: Stack, key: str, tmp_path: Path, run: str, *args: str,
    credential: str = "ANTHROPIC_API_KEY", headers: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """One print-mode run with a fresh HOME; every request carries the run's tag header."""
    sent = {RUN_HEADER: run, **(headers or {})}
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home_dir(tmp_path)),
        "ANTHROPIC_BASE_URL": stack.url,
        credential: key,
        "ANTHROPIC_CUSTOM_HEADERS": "\n".join(f"{k}: {v}" for k, v in sent.items()),
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return subprocess.run(
        [cli, "-p", *args], env=env, cwd=work, capture_output=True, text=True, timeout=180,
        check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
    return done.stdout


def stream_json(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("cli", CLAUDES)
def test_the_pinned_claude_code_is_the_version_under_test(cli: str, request: Any) -> None:
    if not cli.startswith(str(TOOLS)):
        pytest.skip(f"{cli} is not the copy pinned under .tools/")
    done = subprocess.run([cli, "--version"], capture_output=True, text=True, check=True)
    assert done.stdout.split()[0] == request.node.callspec.id


@pytest.mark.parametrize("credential", ["ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"])
@pytest.mark.parametrize("cli", CLAUDES)
def test_claude_print_mode_answers_through_the_gateway(
    cli: str, credential: str, stack: Stack, customer: Customer, tmp_path: Path,
    sync_valkey: valkey.Valkey,
) -> None:  # fmt: skip
    run = new_run()
    done = claude(cli, stack, customer.key, tmp_path, run, "Say hello", "--model", MODEL,
                  *NO_TOOLS, credential=credential)  # fmt: skip
    # The simulator's filler text came back through the gateway.
    assert "simulated" in ok(done)
    sent = sim_requests(stack, run)
    assert sent, "no request of this run reached the upstream"
    entries = billed(sync_valkey, customer, len(sent))
    assert len(entries) == len(sent)
    assert all(e["status"] == "200" and int(e["credits_mc"]) > 0 for e in entries)


@pytest.mark.parametrize("cli", CLAUDES)
def test_claude_runs_a_tool_and_sends_its_result_back(
    cli: str, stack: Stack, customer: Customer, tmp_path: Path, sync_valkey: valkey.Valkey
) -> None:
    run = new_run()
    # Read is read-only (no permission prompt in print mode): the file "sim" does not exist.
    done = claude(
        cli, stack, customer.key, tmp_path, run, "What is in the file sim?", "--model", MODEL,
        "--output-format", "stream-json", "--verbose", headers={"x-sim-tool": "Read"},
    )  # fmt: skip
    events = stream_json(ok(done))
    blocks = [(e["type"], b) for e in events if e["type"] in ("assistant", "user")
              and isinstance(e["message"]["content"], list) for b in e["message"]["content"]]
    uses = [b for kind, b in blocks if kind == "assistant" and b["type"] == "tool_use"]
    results = [b for kind, b in blocks if kind == "user" and b["type"] == "tool_result"]
    assert [u["name"] for u in uses] == ["Read"]
    assert [r["tool_use_id"] for r in results] == [u["id"] for u in uses]
    (final,) = [e for e in events if e["type"] == "result"]
    assert final["subtype"] == "success" and "simulated" in final["result"]

    # Two model calls upstream: the second carried the tool result, so its body is larger.
    sent = sim_requests(stack, run)
    assert len(sent) >= 2
    assert sent[-1]["body_length"] > sent[0]["body_length"]
    entries = billed(sync_valkey, customer, len(sent))
    assert len(entries) == len(sent)
    assert all(e["status"] == "200" and int(e["credits_mc"]) > 0 for e in entries)


@pytest.mark.parametrize("cli", CLAUDES)
def test_claude_streams_its_turn_event_by_event(
    cli: str, stack: Stack, customer: Customer, tmp_path: Path, sync_valkey: valkey.Valkey
) -> None:
    run = new_run()
    done = claude(
        cli, stack, customer.key, tmp_path, run, "Say hello", "--model", MODEL, *NO_TOOLS,
        "--output-format", "stream-json", "--verbose", "--include-partial-messages",
        headers={"x-sim-output-tokens": "64", "x-sim-chunks": "8"},
    )  # fmt: skip
    events = stream_json(ok(done))
    partial = [e["event"] for e in events if e["type"] == "stream_event"]
    deltas = [e["delta"]["text"] for e in partial
              if e["type"] == "content_block_delta" and e["delta"]["type"] == "text_delta"]
    # The client saw the upstream's deltas one by one, not one block at the end.
    assert len(deltas) >= 8
    assert [p["type"] for p in partial].count("message_start") == 1
    assert partial[0]["type"] == "message_start" and partial[-1]["type"] == "message_stop"
    (final,) = [e for e in events if e["type"] == "result"]
    assert "".join(deltas) in final["result"] and "simulated" in final["result"]
    sent = sim_requests(stack, run)
    entries = billed(sync_valkey, customer, len(sent))
    assert sent and len(entries) == len(sent)
    assert all(e["stream"] == "1" and e["status"] == "200" for e in entries)


@needs(CURRENT, "claude (Claude Code)", "claude-code")
def test_claude_default_model_answers_through_the_gateway(
    stack: Stack, customer: Customer, tmp_path: Path, sync_valkey: valkey.Valkey
) -> None:
    """No --model: Claude Code picks its default (a model with a very large max_tokens)."""
    assert CURRENT is not None
    run = new_run()
    done = claude(CURRENT, stack, customer.key, tmp_path, run, "Say hello", *NO_TOOLS)
    assert "simulated" in ok(done)
    sent = sim_requests(stack, run)
    entries = billed(sync_valkey, customer, len(sent))
    assert sent and len(entries) == len(sent)
    # Every request of the turn was answered: a refused first attempt that Claude Code then
    # reshapes and retries still costs the customer a round trip.
    outcomes = [(e["model"], e["status"], e.get("error_type")) for e in entries]
    assert {(m, s) for m, s, _ in outcomes} == {("claude-opus-5-5", "200")}, outcomes
