"""Window exhaustion: accounts on a tiny plan keep sending until their 5-hour window refuses
them. Every 429 must be an Anthropic rate_limit_error (with retry-after); those are expected,
anything else is a failure.
"""

from __future__ import annotations

import time

import orjson
from locust import FastHttpUser, between, task

from loadtests.common import error_type, expected, next_key

_BODY = orjson.dumps(
    {
        "model": "claude-sonnet-4-6",
        "max_tokens": 512,
        "stream": True,
        "messages": [{"role": "user", "content": "Summarize the repo."}],
    }
)


class ExhaustingUser(FastHttpUser):
    wait_time = between(0.2, 1.0)

    def on_start(self) -> None:
        self.key = next_key()

    @task
    def message(self) -> None:
        started = time.perf_counter()
        hdrs = {
            "x-api-key": self.key,
            "anthropic-version": "2023-06-01",
            "content-type": "application/json",
            "x-sim-output-tokens": "400",
        }
        with self.client.post(
            "/v1/messages",
            data=_BODY,
            headers=hdrs,
            name="/v1/messages (stream)",
            catch_response=True,
        ) as resp:
            content = resp.content or b""
            if resp.status_code == 200:
                resp.success()
            elif resp.status_code == 429 and error_type(content) == "rate_limit_error":
                if not resp.headers.get("retry-after"):
                    resp.failure("429 without retry-after")
                    return
                resp.success()
                expected(self.environment, "429 rate_limit_error (window refusal)", started)
            else:
                resp.failure(f"{resp.status_code} {error_type(content)}")
