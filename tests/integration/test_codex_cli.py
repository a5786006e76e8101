"""Codex CLI (`codex exec`) with a custom provider on /v1/responses, the simulator upstream."""

from __future__ import annotations

import asyncio
import json
import math
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
from gateway.keyspace import AccountKeys
from gateway.plans import Plan
from gateway.translate.openai_responses import responses_request_to_anthropic
from gateway.usage import estimate_mc
from tests.integration.clients import find_cli, needs
from tests.integration.conftest import Customer, Stack, new_customer

CODEX = find_cli("codex", "codex")
MODEL = "claude-sonnet-4-6"

pytestmark = [
    pytest.mark.cli_client,
    needs(CODEX, "codex (Codex CLI)", "codex"),
]


def codex_home(tmp_path: Path, stack: Stack, extra: str = "") -> Path:
    """The README's provider block; retries off so a broken stream fails the test."""
    home = tmp_path / "codex-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'model = "{MODEL}"\n'
        'model_provider = "antex"\n'
        f"{extra}\n"
        "[model_providers.antex]\n"
        'name = "Antex"\n'
        f'base_url = "{stack.url}/v1"\n'
        'env_key = "ANTEX_API_KEY"\n'
        'wire_api = "responses"\n'
        "request_max_retries = 0\n"
        "stream_max_retries = 0\n"
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


def rollout(home: Path) -> list[dict[str, Any]]:
    """The history items Codex recorded for its newest session (its own transcript)."""
    newest = max((home / "sessions").rglob("rollout-*.jsonl"), key=lambda p: p.stat().st_mtime)
    records = [json.loads(line) for line in newest.read_text().splitlines() if line]
    return [r["payload"] for r in records if r.get("type") == "response_item"]


def settled(client: valkey.Valkey, customer: Customer, count: int) -> list[dict[str, str]]:
    key = AccountKeys(customer.account_id).log
    deadline = time.monotonic() + 10
    while True:
        entries = [fields for _, fields in client.xrange(key)]
        if len(entries) >= count or time.monotonic() > deadline:
            return entries
        time.sleep(0.02)


def test_codex_exec_completes_a_turn_with_a_tool_call_loop(
    stack: Stack, customer: Customer, tmp_path: Path, sync_valkey: valkey.Valkey
) -> None:
    home = codex_home(tmp_path, stack)
    done = codex(home, customer.key, "List the files in this directory")
    assert done.returncode == 0, done.stderr[-3000:]
    stream = events(done)
    messages = [e["item"]["text"] for e in stream
                if e["type"] == "item.completed" and e["item"]["type"] == "agent_message"]
    assert messages and all("simulated" in m for m in messages)
    (usage,) = [e["usage"] for e in stream if e["type"] == "turn.completed"]

    # The simulator calls the first declared tool (exec_command); Codex runs its handler and
    # sends the output back in the next request, which the simulator answers with text.
    items = rollout(home)
    calls = [i for i in items if i["type"] == "function_call"]
    assert calls and calls[0]["name"] == "exec_command"
    outputs = [i for i in items if i["type"] == "function_call_output"]
    assert [o["call_id"] for o in outputs] == [c["call_id"] for c in calls]
    last = items[-1]
    assert last["type"] == "message" and last["role"] == "assistant"

    # Every request of the turn was admitted, streamed and billed on the Responses route, and
    # the usage Codex shows is exactly what the upstream reported.
    entries = settled(sync_valkey, customer, len(calls) + 1)
    assert len(entries) == len(calls) + 1
    assert {(e["route"], e["status"], e["stream"]) for e in entries} == {("responses", "200", "1")}
    assert usage["output_tokens"] == sum(int(e["output_tokens"]) for e in entries)
    assert usage["input_tokens"] == sum(
        int(e["input_tokens"]) + int(e["cache_read_input_tokens"])
        + int(e["cache_creation_input_tokens"]) for e in entries
    )  # fmt: skip


def test_codex_reasoning_turn_resumes_with_its_history(
    stack: Stack, customer: Customer, tmp_path: Path
) -> None:
    home = codex_home(tmp_path, stack, 'model_reasoning_effort = "low"')
    first = codex(home, customer.key, "Say hello")
    assert first.returncode == 0, first.stderr[-3000:]
    kinds = [e["item"]["type"] for e in events(first) if e["type"] == "item.completed"]
    assert "reasoning" in kinds and "agent_message" in kinds
    reasoning = [i for i in rollout(home) if i["type"] == "reasoning"]
    assert reasoning and all(r["encrypted_content"].startswith("antex1:") for r in reasoning)
    # The next turn resends the reasoning, the tool call and its output: all must replay.
    again = codex(home, customer.key, "resume", "--last", "And again")
    assert again.returncode == 0, again.stderr[-3000:]
    assert any(e["type"] == "turn.completed" for e in events(again))


async def test_codex_window_refusal_is_shown_with_its_window(
    stack: Stack, valkey_url: str, tmp_path: Path, sync_valkey: valkey.Valkey
) -> None:
    """A refused Codex stream is ``response.failed`` / rate_limit_exceeded (F.5): Codex
    reports the window's message instead of an opaque 429."""
    probe = {"model": MODEL, "max_output_tokens": 4000, "input": "hi"}
    translated = responses_request_to_anthropic(probe)[0]
    rates = load_catalog(None).by_id[MODEL].rates
    one = estimate_mc(len(orjson.dumps(translated)), 4000, rates, 8192)
    credits = math.ceil(1.5 * one / 1000)  # the probe fits the window, a second request not
    plan = Plan(f"codex-{uuid.uuid4().hex[:6]}", credits, credits, ip_slots=5, concurrency=8,
                period_days=30)  # fmt: skip
    customer = await new_customer(valkey_url, plan)
    async with httpx.AsyncClient(timeout=30) as client:
        spent = await client.post(
            f"{stack.url}/v1/responses", json=probe,
            headers={"authorization": f"Bearer {customer.key}", "x-sim-output-tokens": "4000"},
        )  # fmt: skip
    assert spent.status_code == 200
    await asyncio.to_thread(settled, sync_valkey, customer, 1)
    home = codex_home(tmp_path, stack)
    done = await asyncio.to_thread(codex, home, customer.key, "Say hello")
    assert done.returncode != 0
    shown = done.stdout + done.stderr
    assert "5-hour usage limit reached" in shown, shown[-3000:]
