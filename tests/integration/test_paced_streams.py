"""Streams over an upstream that writes each SSE event on its own, as the real API does:
every route ends in its terminal event, and bills the whole stream's usage.

A ping or a content_block_stop translates to nothing on the OpenAI routes; written as an
empty chunk it used to end the client's chunked body right there.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
import pytest
import valkey

from gateway.keyspace import AccountKeys
from gateway.plans import Plan
from tests.integration.conftest import Stack, new_customer

STREAMS = 200
CONCURRENCY = 25
OUTPUT_TOKENS = 40
MODEL = "claude-sonnet-4-6"
# Paced per request, so this holds whatever the simulator's default pacing is: every event
# is its own write, 4 ms apart, the first after 20 ms.
PACED = {"x-sim-ttft-ms": "20", "x-sim-event-delay-ms": "4", "x-sim-output-tokens": "40"}
ROOMY = Plan(
    name="paced-roomy", credits_5h=10**7, credits_7d=10**8, ip_slots=1, concurrency=64,
    period_days=30,
)

ROUTES: dict[str, tuple[str, dict[str, Any]]] = {
    "messages": (
        "/v1/messages",
        {"model": MODEL, "max_tokens": 64, "stream": True,
         "messages": [{"role": "user", "content": "Tell me something"}]},
    ),
    "chat_completions": (
        "/v1/chat/completions",
        {"model": MODEL, "max_tokens": 64, "stream": True,
         "stream_options": {"include_usage": True},
         "messages": [{"role": "user", "content": "Tell me something"}]},
    ),
    "responses": (
        "/v1/responses",
        {"model": MODEL, "max_output_tokens": 64, "stream": True, "input": "Tell me something"},
    ),
}  # fmt: skip


def _events(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for line in raw.split(b"\n"):
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            out.append(orjson.loads(line[6:]))
    return out


def _ended_well(route: str, raw: bytes) -> bool:
    """The route's terminal event arrived, carrying the whole answer's usage."""
    events = _events(raw)
    if not events:
        return False
    if route == "messages":
        deltas = [e for e in events if e.get("type") == "message_delta"]
        return (
            events[-1].get("type") == "message_stop"
            and bool(deltas)
            and deltas[-1]["usage"]["output_tokens"] == OUTPUT_TOKENS
        )
    if route == "chat_completions":
        finishes = [c["choices"][0].get("finish_reason") for c in events if c.get("choices")]
        usage = events[-1].get("usage") or {}
        return (
            raw.rstrip().endswith(b"data: [DONE]")
            and finishes[-1:] == ["stop"]
            and usage.get("completion_tokens") == OUTPUT_TOKENS
        )
    last = events[-1]
    return (
        last.get("type") == "response.completed"
        and last["response"]["usage"]["output_tokens"] == OUTPUT_TOKENS
    )


@pytest.mark.parametrize("route", list(ROUTES))
async def test_every_paced_stream_ends_in_its_terminal_event_and_bills_it_whole(
    stack: Stack, valkey_url: str, sync_valkey: valkey.Valkey, route: str
) -> None:
    customer = await new_customer(valkey_url, ROOMY)
    path, body = ROUTES[route]
    headers = {"x-api-key": customer.key, **PACED}
    gate = asyncio.Semaphore(CONCURRENCY)
    limits = httpx.Limits(max_connections=CONCURRENCY)

    async with httpx.AsyncClient(base_url=stack.url, timeout=60, limits=limits) as client:

        async def one() -> tuple[int, bytes]:
            async with gate:
                resp = await client.post(path, content=orjson.dumps(body), headers=headers)
                return resp.status_code, resp.content

        answers = await asyncio.gather(*(one() for _ in range(STREAMS)))

    assert [status for status, _ in answers] == [200] * STREAMS
    cut = [raw[-300:] for _, raw in answers if not _ended_well(route, raw)]
    assert cut == [], f"{len(cut)} of {STREAMS} streams did not end in their terminal event"

    # Billed from the whole stream: the account's counters hold every stream's output, and
    # the kept records (the newest 100) hold the simulator's count and no error.
    keys = AccountKeys(customer.account_id)

    def counted(what: str) -> int:
        agg = sync_valkey.hgetall(keys.daily)
        return sum(int(v) for k, v in agg.items() if k.endswith(f":{MODEL}:{what}"))

    deadline = time.monotonic() + 20
    while counted("n") < STREAMS:
        assert time.monotonic() < deadline, f"only {counted('n')} settled"
        await asyncio.sleep(0.05)
    assert (counted("n"), counted("out")) == (STREAMS, STREAMS * OUTPUT_TOKENS)
    entries = [fields for _, fields in sync_valkey.xrange(keys.log)]
    assert entries and {e["output_tokens"] for e in entries} == {str(OUTPUT_TOKENS)}
    assert {e["route"] for e in entries} == {route}
    assert not [e for e in entries if "error_type" in e]
