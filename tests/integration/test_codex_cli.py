"""Codex CLI (`codex exec`) with a custom provider on /v1/responses, the simulator upstream."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import valkey

from gateway.catalog import load_catalog
from gateway.plans import Plan
from gateway.translate.openai_responses import responses_request_to_anthropic
from gateway.usage import estimate_mc
from tests.integration.clients import RUN_HEADER, billed, find_cli, needs, new_run, sim_requests
from tests.integration.conftest import Customer, Stack, new_customer

CODEX = find_cli("codex", "codex")
MODEL = "claude-sonnet-4-6"

pytestmark = [
    pytest.mark.cli_client,
    needs(CODEX, "codex (Codex CLI)", "codex"),
]


def codex_home(
    tmp_path: Path, stack: Stack, extra: str = "", headers: dict[str, str] | None = None,
    retries: bool = False,
) -> Path:
    """The README's provider block; retries off so a broken stream fails the test; commands
    the model asks for run in a read-only sandbox; no plugin sync (it would call GitHub)."""
    home = tmp_path / "codex-home"
    home.mkdir()
    sent = ", ".join(f'"{k}" = "{v}"' for k, v in (headers or {}).items())
    (home / "config.toml").write_text(
        f'model = "{MODEL}"\n'
        'model_provider = "antex"\n'
        'sandbox_mode = "read-only"\n'
        f"{extra}\n"
        "[model_providers.antex]\n"
        'name = "Antex"\n'
        f'base_url = "{stack.url}/v1"\n'
        'env_key = "ANTEX_API_KEY"\n'
        'wire_api = "responses"\n'
        + ("" if retries else "request_max_retries = 0\nstream_max_retries = 0\n") +
        f"http_headers = {{ {sent} }}\n"
        "[features]\n"
        "plugins = false\n"
    )
    return home


def codex(home: Path, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    work = home.parent / "work"
    work.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home.parent),
        "CODEX_HOME": str(home),
        "ANTEX_API_KEY": key,
        "NO_COLOR": "1",
    }
    assert CODEX is not None
    return subprocess.run(
        [CODEX, "exec", "--json", "--skip-git-repo-check", *args],
        env=env, cwd=work, capture_output=True, text=True, timeout=180, check=False,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def events(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def ok(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    """The run's JSON events, after checking it succeeded (its own error events otherwise)."""
    stream = events(done)
    errors = [e for e in stream if e["type"] in ("error", "turn.failed")]
    assert done.returncode == 0 and not errors, (errors, done.stderr[-2000:])
    return stream


def agent_messages(stream: list[dict[str, Any]]) -> list[str]:
    return [e["item"]["text"] for e in stream
            if e["type"] == "item.completed" and e["item"]["type"] == "agent_message"]  # fmt: skip


def rollout(home: Path) -> list[dict[str, Any]]:
    """The history items Codex recorded for its newest session (its own transcript)."""
    newest = max((home / "sessions").rglob("rollout-*.jsonl"), key=lambda p: p.stat().st_mtime)
    records = [json.loads(line) for line in newest.read_text().splitlines() if line]
    return [r["payload"] for r in records if r.get("type") == "response_item"]


def test_codex_exec_answers_a_turn(
    stack: Stack, customer: Customer, tmp_path: Path, sync_valkey: valkey.Valkey
) -> None:
    """Codex offers tools on every request, so the simulator calls the first one (a shell
    command named "sim", in the read-only sandbox) before it answers with text."""
    run = new_run()
    home = codex_home(tmp_path, stack, headers={RUN_HEADER: run})
    stream = ok(codex(home, customer.key, "Say hello"))
    messages = agent_messages(stream)
    assert messages and all("simulated" in m for m in messages)
    assert [e["type"] for e in stream][-1] == "turn.completed"
    sent = sim_requests(stack, run)
    entries = billed(sync_valkey, customer, len(sent))
    assert sent and len(entries) == len(sent)
    assert {(e["route"], e["status"]) for e in entries} == {("responses", "200")}
    assert all(int(e["credits_mc"]) > 0 for e in entries)


def test_codex_exec_completes_a_turn_with_a_tool_call_loop(
    stack: Stack, customer: Customer, tmp_path: Path, sync_valkey: valkey.Valkey
) -> None:
    run = new_run()
    home = codex_home(tmp_path, stack, headers={RUN_HEADER: run, "x-sim-tool": "exec_command"})
    stream = ok(codex(home, customer.key, "List the files in this directory"))
    messages = agent_messages(stream)
    assert messages and all("simulated" in m for m in messages)
    (usage,) = [e["usage"] for e in stream if e["type"] == "turn.completed"]

    # Codex runs its exec_command handler and sends the output back in the next request,
    # which the simulator answers with text.
    items = rollout(home)
    calls = [i for i in items if i["type"] == "function_call"]
    assert calls and calls[0]["name"] == "exec_command"
    outputs = [i for i in items if i["type"] == "function_call_output"]
    assert [o["call_id"] for o in outputs] == [c["call_id"] for c in calls]
    last = items[-1]
    assert last["type"] == "message" and last["role"] == "assistant"
    sent = sim_requests(stack, run)
    assert len(sent) == len(calls) + 1
    assert sent[-1]["body_length"] > sent[0]["body_length"]  # it carries the tool output

    # Every request of the turn was admitted, streamed and billed on the Responses route, and
    # the usage Codex shows is exactly what the upstream reported.
    entries = billed(sync_valkey, customer, len(calls) + 1)
    assert len(entries) == len(calls) + 1
    assert {(e["route"], e["status"], e["stream"]) for e in entries} == {("responses", "200", "1")}
    assert usage["output_tokens"] == sum(int(e["output_tokens"]) for e in entries)
    assert usage["input_tokens"] == sum(
        int(e["input_tokens"]) + int(e["cache_read_input_tokens"])
        + int(e["cache_creation_input_tokens"]) for e in entries
    )  # fmt: skip


def test_codex_receives_a_long_streamed_answer_whole(
    stack: Stack, customer: Customer, tmp_path: Path, sync_valkey: valkey.Valkey
) -> None:
    """Codex streams every request; a long answer in many paced events arrives complete."""
    steer = {"x-sim-output-tokens": "400", "x-sim-chunks": "40"}
    # The same answer, whole: the simulator's text depends only on these headers.
    whole = httpx.post(
        f"{stack.url}/v1/responses", json={"model": MODEL, "input": "hi"}, timeout=30,
        headers={"authorization": f"Bearer {customer.key}", **steer},
    )  # fmt: skip
    assert whole.status_code == 200, whole.text
    (expected,) = [c["text"] for o in whole.json()["output"] if o["type"] == "message"
                   for c in o["content"]]  # fmt: skip

    run = new_run()
    home = codex_home(tmp_path, stack, headers={RUN_HEADER: run, **steer})
    stream = ok(codex(home, customer.key, "Write a long answer"))
    assert agent_messages(stream)[-1] == expected
    sent = sim_requests(stack, run)
    entries = billed(sync_valkey, customer, 1 + len(sent))
    assert sent and len(entries) == 1 + len(sent)
    assert [(e["stream"], e["disconnected"], e["status"]) for e in entries[1:]] == [
        ("1", "0", "200")
    ] * len(sent)


def test_codex_reasoning_turn_resumes_with_its_history(
    stack: Stack, customer: Customer, tmp_path: Path
) -> None:
    home = codex_home(tmp_path, stack, 'model_reasoning_effort = "low"')
    first = ok(codex(home, customer.key, "Say hello"))
    kinds = [e["item"]["type"] for e in first if e["type"] == "item.completed"]
    assert "reasoning" in kinds and "agent_message" in kinds
    reasoning = [i for i in rollout(home) if i["type"] == "reasoning"]
    assert reasoning and all(r["encrypted_content"].startswith("antex1:") for r in reasoning)
    # The next turn resends the reasoning, the tool call and its output: all must replay.
    again = ok(codex(home, customer.key, "resume", "--last", "And again"))
    assert any(e["type"] == "turn.completed" for e in again)


async def test_codex_window_refusal_is_shown_with_its_window(
    stack: Stack, valkey_url: str, tmp_path: Path, sync_valkey: valkey.Valkey
) -> None:
    """A full window ends Codex's turn at once with the window's message, with Codex's own
    retry settings left at their defaults: a multi-hour "try again in" would have it sleep
    for hours, silently, up to five times."""
    probe = {"model": MODEL, "max_output_tokens": 4000, "input": "hi"}
    translated = responses_request_to_anthropic(probe)[0]
    rates = load_catalog(None).by_id[MODEL].rates
    one = estimate_mc(len(orjson.dumps(translated)), 4000, rates, 8192)
    # The probe fills the 5-hour window (windows refuse only once full); the week has room.
    plan = Plan(f"codex-{uuid.uuid4().hex[:6]}", one // 1000, 10 * one // 1000, ip_slots=5,
                concurrency=8, period_days=30)  # fmt: skip
    customer = await new_customer(valkey_url, plan)
    async with httpx.AsyncClient(timeout=30) as client:
        spent = await client.post(
            f"{stack.url}/v1/responses", json=probe,
            headers={"authorization": f"Bearer {customer.key}", "x-sim-output-tokens": "4000"},
        )  # fmt: skip
    assert spent.status_code == 200
    await asyncio.to_thread(billed, sync_valkey, customer, 1)
    home = codex_home(tmp_path, stack, retries=True)
    started = time.monotonic()
    done = await asyncio.to_thread(codex, home, customer.key, "Say hello")
    assert done.returncode != 0
    shown = done.stdout + done.stderr
    assert "5-hour usage limit reached" in shown, shown[-3000:]
    assert "frees at" in shown and "Reconnecting" not in shown
    assert time.monotonic() - started < 60
