"""OpenAI-format clients: Codex CLI on /v1/responses (streaming, function-call loops) and
chat-completions SDK users on /v1/chat/completions (streaming). A 404 means the route is not
built on this gateway yet: it is counted as its own expected row, not as a failure.
"""

from __future__ import annotations

import random
import re
import time
from typing import Any

import orjson
from locust import FastHttpUser, between, task

from loadtests.common import error_type, expected, next_key

_CALL_ID = re.compile(rb'"call_id":"([^"]+)"')
_FUNCTIONS = [
    {
        "type": "function",
        "name": "shell",
        "description": "Run a shell command.",
        "parameters": {
            "type": "object",
            "properties": {"command": {"type": "string"}},
            "required": ["command"],
        },
    }
]
_CHAT_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": f["name"],
            "description": f["description"],
            "parameters": f["parameters"],
        },
    }
    for f in _FUNCTIONS
]
_OUTPUT = "total 24\n-rw-r--r-- 1 dev dev 1022 app.py\n" * 20


class CodexUser(FastHttpUser):
    wait_time = between(1.0, 4.0)

    def on_start(self) -> None:
        self.key = next_key()
        self.input: list[dict[str, Any]] = []

    def _post(self, path: str, name: str, body: dict[str, Any]) -> bytes:
        started = time.perf_counter()
        hdrs = {
            "authorization": f"Bearer {self.key}",
            "content-type": "application/json",
            "originator": "codex_cli_rs",
            "user-agent": "codex_cli_rs/0.46.0",
            "x-sim-chunks": "10",
            "x-sim-event-delay-ms": "20",
            "x-sim-ttft-ms": "0",
            "x-sim-burst": "0",
            "x-sim-output-tokens": str(random.randint(40, 300)),
        }
        with self.client.post(
            path, data=orjson.dumps(body), headers=hdrs, name=name, catch_response=True
        ) as resp:
            content = resp.content or b""
            if resp.status_code == 200:
                resp.success()
            elif resp.status_code == 404:
                resp.success()
                expected(self.environment, f"404 {path} (route not built yet)", started)
            elif resp.status_code == 429 and error_type(content) == "rate_limit_error":
                resp.success()
                expected(self.environment, "429 rate_limit_error (window refusal)", started)
            else:
                resp.failure(f"{resp.status_code} {error_type(content)}")
            return content

    @task(3)
    def responses_loop(self) -> None:
        if len(self.input) > 24:
            self.input = []
        self.input.append(
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "List the files."}],
            }
        )
        for _ in range(3):
            body = {
                "model": "claude-sonnet-4-6",
                "instructions": "You are Codex.",
                "input": self.input,
                "tools": _FUNCTIONS,
                "stream": True,
                "store": False,
            }
            content = self._post("/v1/responses", "/v1/responses (stream)", body)
            found = _CALL_ID.search(content)
            if found is None:
                return
            call_id = found.group(1).decode()
            self.input += [
                {
                    "type": "function_call",
                    "call_id": call_id,
                    "name": "shell",
                    "arguments": '{"command":"ls -l"}',
                },
                {"type": "function_call_output", "call_id": call_id, "output": _OUTPUT},
            ]

    @task(2)
    def chat_stream(self) -> None:
        body = {
            "model": "claude-sonnet-4-6",
            "stream": True,
            "max_tokens": 1024,
            "stream_options": {"include_usage": True},
            "tools": _CHAT_TOOLS,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is a rolling window?"},
            ],
        }
        self._post("/v1/chat/completions", "/v1/chat/completions (stream)", body)
