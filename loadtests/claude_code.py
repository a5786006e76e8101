"""Claude Code fleet: many users per key (a handful of keys and accounts, one source address:
locust cannot bind several), streaming tool loops whose context grows every turn,
count_tokens calls, mostly Sonnet with some Opus and Haiku, think time, Claude Code headers.
"""

from __future__ import annotations

import random
import re
import time
from typing import Any

import orjson
from locust import FastHttpUser, between, task

from loadtests.common import error_type, expected, next_key

_MODELS = (["claude-sonnet-4-6"] * 8) + ["claude-opus-4-6", "claude-haiku-4-5-20251001"]
_TOOL_ID = re.compile(rb'"id":"(toolu_[^"]+)"')
_TOOLS = [
    {
        "name": "Read",
        "description": "Read a file from the local filesystem.",
        "input_schema": {
            "type": "object",
            "properties": {"file_path": {"type": "string"}, "limit": {"type": "integer"}},
            "required": ["file_path"],
        },
    },
    {
        "name": "Bash",
        "description": "Run a shell command.",
        "input_schema": {
            "type": "object",
            "properties": {"command": {"type": "string"}},
            "required": ["command"],
        },
    },
]
_PROMPTS = [
    "Fix the failing test in tests/test_api.py",
    "Add retries to the HTTP client",
    "Explain what gateway/limits.py does",
    "Refactor the config loader",
]
_FILE = "def handler(event):\n    return {'ok': True}\n" * 40  # a tool result of a few KB


def headers(key: str, session: str) -> dict[str, str]:
    """What Claude Code 2.x sends (the SDK's x-stainless-* set, its beta flags, its agent)."""
    return {
        "x-api-key": key,
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,"
        "fine-grained-tool-streaming-2025-05-14",
        "anthropic-dangerous-direct-browser-access": "true",
        "user-agent": "claude-cli/2.0.14 (external, cli)",
        "x-app": "cli",
        "x-stainless-lang": "js",
        "x-stainless-runtime": "node",
        "x-stainless-package-version": "0.60.0",
        "x-stainless-retry-count": "0",
        "x-stainless-timeout": "600",
        "x-claude-code-session-id": session,
        "content-type": "application/json",
    }


class ClaudeCodeUser(FastHttpUser):
    wait_time = between(1.0, 4.0)  # the developer reading, the tools running

    def on_start(self) -> None:
        self.key = next_key()
        self.new_session()

    def new_session(self) -> None:
        self.session = f"{random.getrandbits(64):016x}"
        self.messages: list[dict[str, Any]] = []
        self.turns = 0

    def _post(self, path: str, name: str, body: dict[str, Any], extra: dict[str, str]) -> bytes:
        started = time.perf_counter()
        with self.client.post(
            path,
            data=orjson.dumps(body),
            headers={**headers(self.key, self.session), **extra},
            name=name,
            catch_response=True,
        ) as resp:
            content = resp.content or b""
            if resp.status_code == 200:
                resp.success()
            elif resp.status_code == 429 and error_type(content) == "rate_limit_error":
                resp.success()  # a plan limit doing its job, not a gateway failure
                expected(self.environment, "429 rate_limit_error (window refusal)", started)
            else:
                resp.failure(f"{resp.status_code} {error_type(content)}")
            return content

    @task(10)
    def turn(self) -> None:
        """One user prompt and the tool loop it triggers: tool_use, tool_result, answer."""
        if self.turns >= random.randint(4, 10):
            self.new_session()
        self.turns += 1
        self.messages.append({"role": "user", "content": random.choice(_PROMPTS)})
        model = random.choice(_MODELS)
        context = sum(len(orjson.dumps(m)) for m in self.messages) // 4
        for _ in range(3):  # the simulator answers a tool call, then text after the result
            body = {
                "model": model,
                "max_tokens": 8192,
                "stream": True,
                "tools": _TOOLS,
                "system": [
                    {
                        "type": "text",
                        "text": "You are Claude Code.",
                        "cache_control": {"type": "ephemeral"},
                    }
                ],
                "messages": self.messages,
            }
            extra = {
                "x-sim-chunks": "12",
                "x-sim-event-delay-ms": "20",
                "x-sim-ttft-ms": "0",
                "x-sim-burst": "0",
                "x-sim-output-tokens": str(random.randint(40, 400)),
                "x-sim-cache-read": str(context),
            }
            content = self._post(
                "/v1/messages?beta=true", "/v1/messages?beta=true (stream)", body, extra
            )
            found = _TOOL_ID.search(content)
            if found is None:
                self.messages.append({"role": "assistant", "content": "Done."})
                return
            tool_id = found.group(1).decode()
            self.messages.append(
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "tool_use",
                            "id": tool_id,
                            "name": "Read",
                            "input": {"file_path": "app.py"},
                        }
                    ],
                }
            )
            self.messages.append(
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": tool_id, "content": _FILE}],
                }
            )

    @task(2)
    def count_tokens(self) -> None:
        body = {
            "model": "claude-sonnet-4-6",
            "tools": _TOOLS,
            "messages": self.messages or [{"role": "user", "content": "hi"}],
        }
        self._post("/v1/messages/count_tokens?beta=true", "/v1/messages/count_tokens", body, {})

    @task(1)
    def title(self) -> None:
        """Claude Code names the session with a short Haiku call."""
        body = {
            "model": "claude-haiku-4-5-20251001",
            "max_tokens": 64,
            "stream": True,
            "messages": [{"role": "user", "content": "Title for: " + _PROMPTS[0]}],
        }
        self._post(
            "/v1/messages?beta=true",
            "/v1/messages?beta=true (haiku title)",
            body,
            {"x-sim-output-tokens": "8"},
        )
