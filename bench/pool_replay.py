"""A Claude Code–like replay for the upstream pool: many concurrent conversations, each with
its own ``metadata.user_id`` session, one shared system prompt, context that grows every
turn, and a tool loop per turn (tool_use → tool_result → text), all streamed.

Used by the pool's integration tests and by ``bench/pool_cpu.py``; also runs on its own:

    python -m bench.pool_replay --url http://127.0.0.1:8080 --key sk_live_… [--conversations 24]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

MODEL = "claude-sonnet-4-6"
SYSTEM = [
    {
        "type": "text",
        "text": "You are Claude Code, an interactive CLI tool that helps with software "
        "engineering tasks. Follow the repository's conventions. " * 60,
        "cache_control": {"type": "ephemeral"},
    }
]
TOOLS = [
    {
        "name": "Bash",
        "description": "Run a shell command",
        "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}},
    }
]
USAGE_KINDS = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens",
               "output_tokens")  # fmt: skip


@dataclass
class Conversation:
    id: str
    user_id: str
    model: str = MODEL
    messages: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ReplayResult:
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    stream_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    usage: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def failures(self) -> int:
        """Customer-visible failures: any non-200 answer or an error event in a stream."""
        return self.requests - self.statuses[200] + sum(self.stream_errors.values())

    @property
    def cache_read_share(self) -> float:
        u = self.usage
        total = u["input_tokens"] + u["cache_read_input_tokens"] + u["cache_creation_input_tokens"]
        return u["cache_read_input_tokens"] / total if total else 0.0


def new_conversations(count: int, seed: str = "", model: str = MODEL) -> list[Conversation]:
    out = []
    for i in range(count):
        session = uuid.uuid5(uuid.NAMESPACE_URL, f"{seed}-{i}")
        user_id = f"user_{i:04x}_account_{uuid.UUID(int=i)}_session_{session}"
        out.append(Conversation(f"conv-{seed}-{i}", user_id, model))
    return out


def _parse_stream(raw: bytes) -> tuple[list[dict[str, Any]], dict[str, Any], str | None]:
    """(content blocks, billed usage, error type) from a whole SSE body."""
    blocks: dict[int, dict[str, Any]] = {}
    partial: dict[int, str] = collections.defaultdict(str)
    usage: dict[str, Any] = {}
    error = None
    for event in raw.split(b"\n\n"):
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            data = orjson.loads(line[5:])
            kind = data.get("type")
            if kind == "message_start":
                usage.update(data["message"].get("usage") or {})
            elif kind == "message_delta":
                usage.update(data.get("usage") or {})
            elif kind == "content_block_start":
                blocks[data["index"]] = dict(data["content_block"])
            elif kind == "content_block_delta":
                delta = data["delta"]
                block = blocks[data["index"]]
                if delta["type"] == "text_delta":
                    block["text"] = block.get("text", "") + delta["text"]
                elif delta["type"] == "input_json_delta":
                    partial[data["index"]] += delta["partial_json"]
            elif kind == "error":
                error = str(data["error"]["type"])
    for index, text in partial.items():
        blocks[index]["input"] = orjson.loads(text) if text else {}
    content = [blocks[i] for i in sorted(blocks) if blocks[i]["type"] in ("text", "tool_use")]
    return content, usage, error


async def _request(
    client: httpx.AsyncClient, url: str, key: str, conv: Conversation, result: ReplayResult
) -> list[dict[str, Any]] | None:
    body = {
        "model": conv.model, "max_tokens": 512, "stream": True, "system": SYSTEM, "tools": TOOLS,
        "metadata": {"user_id": conv.user_id}, "messages": conv.messages,
    }  # fmt: skip
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01",
               "x-sim-conversation": conv.id}  # fmt: skip
    async with client.stream("POST", f"{url}/v1/messages", content=orjson.dumps(body),
                             headers=headers) as resp:  # fmt: skip
        raw = await resp.aread()
    result.statuses[resp.status_code] += 1
    if resp.status_code != 200:
        return None
    content, usage, error = _parse_stream(raw)
    if error is not None:
        result.stream_errors[error] += 1
        return None
    for kind in USAGE_KINDS:
        result.usage[kind] += int(usage.get(kind) or 0)
    return content


async def _turn(
    client: httpx.AsyncClient, url: str, key: str, conv: Conversation, result: ReplayResult,
    tick: Callable[[], Awaitable[None]],
) -> None:
    """One user turn: a tool call and its result, then the answer (two requests)."""
    n = len(conv.messages) // 4
    conv.messages.append({"role": "user", "content": f"Task {conv.id} step {n}: fix the next "
                          "failing test and explain the change. " * 4})  # fmt: skip
    while True:
        content = await _request(client, url, key, conv, result)
        await tick()
        if content is None:
            conv.messages.pop()  # as a client retrying later would: drop the unanswered turn
            return
        conv.messages.append({"role": "assistant", "content": content})
        calls = [b for b in content if b["type"] == "tool_use"]
        if not calls:
            return
        conv.messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": c["id"],
             "content": f"$ {c['input']}\n" + "ok: 12 passed, 0 failed\n" * 20}
            for c in calls]})  # fmt: skip


async def replay(
    url: str,
    key: str,
    conversations: list[Conversation],
    *,
    turns: int = 4,
    midway: Callable[[], Awaitable[None]] | None = None,
    concurrency: int = 32,
) -> ReplayResult:
    """Runs ``turns`` more user turns of every conversation, ``concurrency`` at a time;
    ``midway`` runs once when half of the expected requests are done."""
    result = ReplayResult()
    expected = len(conversations) * turns * 2
    fired = False
    gate = asyncio.Semaphore(concurrency)

    async def tick() -> None:
        nonlocal fired
        if midway is not None and not fired and result.requests >= expected // 2:
            fired = True
            await midway()

    async def run(conv: Conversation, client: httpx.AsyncClient) -> None:
        async with gate:
            for _ in range(turns):
                await _turn(client, url, key, conv, result, tick)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        await asyncio.gather(*(run(c, client) for c in conversations))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--conversations", type=int, default=24)
    parser.add_argument("--turns", type=int, default=4)
    args = parser.parse_args()
    convs = new_conversations(args.conversations, uuid.uuid4().hex[:6])
    result = asyncio.run(replay(args.url, args.key, convs, turns=args.turns))
    print(orjson.dumps({"requests": result.requests, "statuses": dict(result.statuses),
                        "stream_errors": dict(result.stream_errors), "usage": result.usage,
                        "cache_read_share": round(result.cache_read_share, 4)}).decode())


if __name__ == "__main__":
    main()
