"""Anthropic-wire upstream simulator on granian RSGI: the upstream for first runs, tests,
benchmarks and load tests. Each request steers its answer with `x-sim-*` headers.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import functools
import itertools
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import orjson
from granian._granian import RSGIHTTPProtocol as HTTPProtocol
from granian._granian import RSGIProtocolClosed, RSGIProtocolError
from granian.rsgi import Scope

REQUIRE_KEY_ENV = "ANTEX_SIM_REQUIRE_KEY"
_GONE = (RSGIProtocolClosed, RSGIProtocolError)  # what a send raises once the client left

_JSON = [("content-type", "application/json")]
_SSE = [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache")]
# A drop advertises more bytes than it sends: the server then has to cut the connection
# instead of ending the body cleanly.
_DROP_EXTRA_BYTES = 1_000_000

_MODELS = (  # newest first, as the real endpoint lists them
    ("claude-sonnet-4-6", "Claude Sonnet 4.6", "2026-02-17T00:00:00Z"),
    ("claude-opus-4-6", "Claude Opus 4.6", "2026-02-05T00:00:00Z"),
    ("claude-opus-4-5-20251101", "Claude Opus 4.5", "2025-11-24T00:00:00Z"),
    ("claude-haiku-4-5-20251001", "Claude Haiku 4.5", "2025-10-15T00:00:00Z"),
    ("claude-sonnet-4-5-20250929", "Claude Sonnet 4.5", "2025-09-29T00:00:00Z"),
)
_MODEL_INFO = {mid: {"type": "model", "id": mid, "display_name": name, "created_at": created}
               for mid, name, created in _MODELS}

_FAULTS = {
    "429": (429, "rate_limit_error", "This request would exceed the rate limit for your "
            "organization of 50 requests per minute. Please try again later."),
    "529": (529, "overloaded_error", "Overloaded"),
    "500": (500, "api_error", "Internal server error"),
    "400": (400, "invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum"),
}
_STREAM_FAULTS = ("error-mid-stream", "stall", "drop")

_WORDS = (
    "the quick simulated answer walks through each step of the request and checks every "
    "detail before it moves on to the next part so that streaming clients and gateways "
    "see a steady flow of plain words with predictable length and spacing"
).split()
_CYCLE = "".join(" " + w for w in _WORDS)
_STARTS = list(itertools.accumulate((len(w) + 1 for w in _WORDS), initial=0))
_THINKING = ("Let me work through this request", " carefully before answering.")

_PING = b'event: ping\ndata: {"type":"ping"}\n\n'
_MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
_MID_STREAM_ERROR = (b'event: error\ndata: {"type":"error","error":'
                     b'{"type":"overloaded_error","message":"Overloaded"}}\n\n')
_DELTA_HEAD = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


@functools.lru_cache(maxsize=128)
def _deltas(index: int, kind: str, key: str, pieces: tuple[str, ...]) -> tuple[bytes, ...]:
    head = b"".join((_DELTA_HEAD, str(index).encode(), b',"delta":{"type":"', kind.encode(),
                     b'","', key.encode(), b'":'))
    return tuple(head + orjson.dumps(p) + b"}}\n\n" for p in pieces)


@functools.lru_cache(maxsize=128)
def _filler(words: int, chunks: int) -> tuple[str, ...]:
    """`max(words, chunks)` deterministic filler words cut into `chunks` non-empty pieces."""
    words = max(words, chunks, 1)
    text = _CYCLE * (words // len(_WORDS) + 1)

    def pos(i: int) -> int:  # offset of word i (with its leading space) in the repeated cycle
        turn, rest = divmod(i, len(_WORDS))
        return turn * len(_CYCLE) + _STARTS[rest]

    cuts = [pos(words * i // chunks) for i in range(chunks + 1)]
    pieces = [text[a:b] for a, b in itertools.pairwise(cuts)]
    pieces[0] = pieces[0][1:]
    return tuple(pieces)


def _tool_input(schema: Any) -> dict[str, Any]:
    props = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(props, dict):
        return {}
    values: dict[Any, Any] = {"string": "sim", "number": 1, "integer": 1, "boolean": True}
    out: dict[str, Any] = {}
    for name, spec in props.items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        out[name] = {} if kind == "object" else [] if kind == "array" else values.get(kind)
    return out


class BadRequest(Exception):
    """A request the real API answers with 400 invalid_request_error."""


def _header_int(headers: dict[str, str], name: str) -> int | None:
    raw = headers.get(name)
    if raw is not None and not (raw.isascii() and raw.isdigit()):
        raise BadRequest(f"{name}: expected a non-negative integer")
    return None if raw is None else int(raw)


def _parse_body(body: bytes, *, counting: bool = False) -> dict[str, Any]:
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("There was an error parsing the body of your request: "
                         "it is not valid JSON.") from None
    if not isinstance(req, dict):
        raise BadRequest("Input should be a valid dictionary")
    for field in ("model", "messages") if counting else ("model", "max_tokens", "messages"):
        if field not in req:
            raise BadRequest(f"{field}: Field required")
    if not isinstance(req["model"], str):
        raise BadRequest("model: Input should be a valid string")
    if not isinstance(req["messages"], list) or not req["messages"]:
        raise BadRequest("messages: at least one message is required")
    max_tokens = req.get("max_tokens", 1)
    if type(max_tokens) is not int:
        raise BadRequest("max_tokens: Input should be a valid integer")
    if max_tokens < 1:
        raise BadRequest("max_tokens: Input should be greater than or equal to 1")
    return req


def _wants_tool(req: dict[str, Any]) -> dict[str, Any] | None:
    """The tool to call, or None when the answer is plain text."""
    tools, choice, last = req.get("tools"), req.get("tool_choice"), req["messages"][-1]
    if not isinstance(tools, list) or (isinstance(choice, dict) and choice.get("type") == "none"):
        return None
    content = last.get("content") if isinstance(last, dict) else None
    if isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in content):
        return None
    named = [t for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)]
    if isinstance(choice, dict) and choice.get("type") == "tool":
        named = [t for t in named if t["name"] == choice.get("name")] or named
    return named[0] if named else None


@dataclass(frozen=True, slots=True)
class _Plan:
    """One answer, rendered either as a JSON message or as SSE."""

    msg_id: str
    model: str
    usage: dict[str, Any]
    stop_reason: str
    # (type, pieces, extra): thinking/text pieces become deltas, tool_use pieces JSON fragments.
    blocks: list[tuple[str, tuple[str, ...], dict[str, Any]]]

    def _envelope(self, content: list[Any], stop: str | None, usage: Any) -> dict[str, Any]:
        return {"id": self.msg_id, "type": "message", "role": "assistant", "model": self.model,
                "content": content, "stop_reason": stop, "stop_sequence": None, "usage": usage}

    def message(self) -> dict[str, Any]:
        content = [{"type": kind, **extra} if kind == "tool_use"
                   else {"type": kind, kind: "".join(pieces), **extra}
                   for kind, pieces, extra in self.blocks]
        return self._envelope(content, self.stop_reason, self.usage)

    def sse(self) -> tuple[list[bytes], list[bytes]]:
        """Head events (message_start, first block start, ping) and segments that each open
        with one delta: pacing sleeps before every delta, block boundaries ride along."""
        message = self._envelope([], None, {**self.usage, "output_tokens": 1})
        head = [_event("message_start", {"type": "message_start", "message": message})]
        segments: list[bytes] = []
        for index, (kind, pieces, extra) in enumerate(self.blocks):
            if kind == "tool_use":
                block = {"type": kind, "id": extra["id"], "name": extra["name"], "input": {}}
                deltas = _deltas(index, "input_json_delta", "partial_json", pieces)
            elif kind == "thinking":
                block = {"type": kind, "thinking": ""}
                deltas = (*_deltas(index, "thinking_delta", "thinking", pieces),
                          *_deltas(index, "signature_delta", "signature", (extra["signature"],)))
            else:
                block = {"type": kind, "text": ""}
                deltas = _deltas(index, "text_delta", "text", pieces)
            opening = _event("content_block_start", {"type": "content_block_start",
                                                     "index": index, "content_block": block})
            if index == 0:
                head += (opening, _PING)
            else:
                segments[-1] += opening
            segments += deltas
            segments[-1] += _event("content_block_stop", {"type": "content_block_stop",
                                                          "index": index})
        u = self.usage
        usage = {"input_tokens": u["input_tokens"], "output_tokens": u["output_tokens"],
                 "cache_creation_input_tokens": u["cache_creation_input_tokens"],
                 "cache_read_input_tokens": u["cache_read_input_tokens"]}
        delta = {"type": "message_delta", "usage": usage,
                 "delta": {"stop_reason": self.stop_reason, "stop_sequence": None}}
        segments[-1] += _event("message_delta", delta) + _MESSAGE_STOP
        return head, segments


@dataclass(slots=True)
class _Stats:
    started: int = 0
    completed: int = 0
    disconnected: int = 0
    in_flight: int = 0


class Simulator:
    """The RSGI application. Counters and the request log are per worker process."""

    def __init__(self) -> None:
        self.require_key: str | None = None
        self.stats = _Stats()
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=50)
        self._ids = itertools.count(1)
        self._prefix = ""

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Per process, so forked workers never hand out colliding ids.
        self._prefix = os.urandom(4).hex()
        self.require_key = os.environ.get(REQUIRE_KEY_ENV) or None

    def _next_id(self) -> str:
        return f"{self._prefix}{next(self._ids):08x}"

    def _error(self, proto: HTTPProtocol, rid: str, status: int, kind: str, message: str,
               extra: Sequence[tuple[str, str]] = ()) -> None:
        body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": rid}
        proto.response_bytes(status, [*_JSON, ("request-id", rid), *extra], orjson.dumps(body))

    def _json(self, proto: HTTPProtocol, rid: str, payload: Any) -> None:
        proto.response_bytes(200, [*_JSON, ("request-id", rid)], orjson.dumps(payload))

    async def __rsgi__(self, scope: Scope, proto: HTTPProtocol) -> None:
        rid = "req_sim_" + self._next_id()
        method, path = scope.method, scope.path
        pairs = scope.headers.items()
        headers = dict(pairs)
        try:
            body = await proto() if method in ("POST", "PUT", "PATCH") else b""
        except _GONE:  # the client left while still uploading
            return
        if path.startswith("/_sim/"):
            return self._control(proto, rid, method, path)
        # Metadata only: the simulator never keeps or logs prompts.
        self.recent.append({"method": method, "path": path, "query_string": scope.query_string,
                            "headers": pairs, "body_length": len(body)})
        key = self.require_key
        # The anthropic SDK sends its api_key as `Authorization: Bearer`, raw clients x-api-key.
        if key and key != headers.get("x-api-key") and \
                headers.get("authorization") != "Bearer " + key:
            self._error(proto, rid, 401, "authentication_error", "invalid x-api-key")
        elif method == "POST" and path == "/v1/messages":
            await self._messages(proto, rid, headers, body)
        elif method == "POST" and path == "/v1/messages/count_tokens":
            try:
                _parse_body(body, counting=True)
            except BadRequest as exc:
                return self._error(proto, rid, 400, "invalid_request_error", str(exc))
            self._json(proto, rid, {"input_tokens": max(1, len(body) // 4)})
        elif method == "GET" and path == "/v1/models":
            self._models(proto, rid, scope.query_string)
        elif method == "GET" and path.startswith("/v1/models/"):
            model = path.removeprefix("/v1/models/")
            if model in _MODEL_INFO:
                self._json(proto, rid, _MODEL_INFO[model])
            else:
                self._error(proto, rid, 404, "not_found_error", f"model: {model}")
        else:
            self._error(proto, rid, 404, "not_found_error", f"Not found: {method} {path}")

    def _control(self, proto: HTTPProtocol, rid: str, method: str, path: str) -> None:
        s = self.stats
        if method == "POST" and path == "/_sim/reset":
            # In place: running handlers hold this object, and in_flight stays truthful.
            s.started = s.completed = s.disconnected = 0
            self.recent.clear()
            self._json(proto, rid, {"ok": True})
        elif method == "GET" and path == "/_sim/stats":
            self._json(proto, rid, {"started": s.started, "completed": s.completed,
                                    "disconnected": s.disconnected, "in_flight": s.in_flight})
        elif method == "GET" and path == "/_sim/requests":
            self._json(proto, rid, list(self.recent))
        else:
            self._error(proto, rid, 404, "not_found_error", f"Not found: {method} {path}")

    def _models(self, proto: HTTPProtocol, rid: str, query: str) -> None:
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        ids = [m[0] for m in _MODELS]
        if params.get("after_id") in ids:  # the SDK's auto-pagination walks forward only
            ids = ids[ids.index(params["after_id"]) + 1:]
        limit = params.get("limit", "20")
        if not limit.isdigit() or not 1 <= int(limit) <= 1000:
            return self._error(proto, rid, 400, "invalid_request_error",
                               "limit: Input should be between 1 and 1000")
        page = [_MODEL_INFO[i] for i in ids[:int(limit)]]
        self._json(proto, rid, {"data": page, "has_more": len(ids) > len(page),
                                "first_id": page[0]["id"] if page else None,
                                "last_id": page[-1]["id"] if page else None})

    def _plan(self, req: dict[str, Any], headers: dict[str, str], body_len: int) -> _Plan:
        max_tokens: int = req["max_tokens"]
        wanted = _header_int(headers, "x-sim-output-tokens")
        out_tokens = min(max_tokens, 32 if wanted is None else wanted)
        write_5m = _header_int(headers, "x-sim-cache-write-5m") or 0
        write_1h = _header_int(headers, "x-sim-cache-write-1h") or 0
        chunks = _header_int(headers, "x-sim-chunks") or max(1, -(-out_tokens // 8))
        # x-sim-deterministic: ids depend on nothing but the request, so two identical
        # requests produce byte-identical answers (lets tests compare a proxied stream).
        fixed = headers.get("x-sim-deterministic") == "1"
        msg_id = "msg_sim_fixed" if fixed else "msg_sim_" + self._next_id()
        blocks: list[tuple[str, tuple[str, ...], dict[str, Any]]] = []
        thinking = req.get("thinking")
        if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"):
            signature = base64.b64encode(b"sim-signature:" + msg_id.encode()).decode()
            blocks.append(("thinking", _THINKING, {"signature": signature}))
        blocks.append(("text", _filler(out_tokens, chunks), {}))
        stop_reason = "end_turn"
        tool = _wants_tool(req)
        if tool is not None:
            args = _tool_input(tool.get("input_schema"))
            raw = orjson.dumps(args).decode()
            cut = max(1, len(raw) // 2)  # >= 2 fragments, like the real API streams them
            tool_id = "toolu_sim_fixed" if fixed else "toolu_sim_" + self._next_id()
            extra = {"id": tool_id, "name": tool["name"], "input": args}
            blocks.append(("tool_use", (raw[:cut], raw[cut:]), extra))
            stop_reason = "tool_use"
        if wanted is not None and wanted > max_tokens:
            stop_reason = "max_tokens"  # the answer was cut at max_tokens
        usage = {"input_tokens": max(1, body_len // 4),
                 "cache_creation_input_tokens": write_5m + write_1h,
                 "cache_read_input_tokens": _header_int(headers, "x-sim-cache-read") or 0,
                 "cache_creation": {"ephemeral_5m_input_tokens": write_5m,
                                    "ephemeral_1h_input_tokens": write_1h},
                 "output_tokens": out_tokens, "service_tier": "standard"}
        return _Plan(msg_id, req["model"], usage,
                     headers.get("x-sim-stop-reason", stop_reason), blocks)

    async def _messages(self, proto: HTTPProtocol, rid: str, headers: dict[str, str],
                        body: bytes) -> None:
        stats = self.stats
        stats.started += 1
        stats.in_flight += 1
        finished = True
        try:
            fault = headers.get("x-sim-fault")
            if fault in _FAULTS:
                status, kind, message = _FAULTS[fault]
                extra = [("retry-after", "7")] if status == 429 else []
                return self._error(proto, rid, status, kind, message, extra)
            try:
                if fault is not None and fault not in _STREAM_FAULTS:
                    raise BadRequest(f"x-sim-fault: unknown fault {fault!r}")
                req = _parse_body(body)
                plan = self._plan(req, headers, len(body))
                delay = (_header_int(headers, "x-sim-chunk-delay-ms") or 0) / 1000
            except BadRequest as exc:
                return self._error(proto, rid, 400, "invalid_request_error", str(exc))
            if req.get("stream"):
                finished = await self._stream(proto, rid, plan, fault, delay)
            else:
                finished = await self._whole(proto, rid, plan, fault, delay)
        finally:
            stats.in_flight -= 1
            if finished:
                stats.completed += 1
            else:
                stats.disconnected += 1

    async def _whole(self, proto: HTTPProtocol, rid: str, plan: _Plan, fault: str | None,
                     delay: float) -> bool:
        """A non-stream answer; the stream faults map to their non-stream analogues."""
        if fault == "stall":
            await proto.client_disconnect()
            return False
        if fault == "error-mid-stream":
            self._error(proto, rid, *_FAULTS["529"])
            return True
        if delay > 0 and not await _race_disconnect(
                proto, asyncio.sleep(delay * len(plan.sse()[1]))):
            return False
        body = orjson.dumps(plan.message())
        if fault != "drop":
            proto.response_bytes(200, [*_JSON, ("request-id", rid)], body)
            return True
        length = str(len(body) + _DROP_EXTRA_BYTES)
        transport = proto.response_stream(
            200, [*_JSON, ("request-id", rid), ("content-length", length)])
        try:
            await transport.send_bytes(body[: len(body) // 2])
        except _GONE:
            return False
        return True

    async def _stream(self, proto: HTTPProtocol, rid: str, plan: _Plan, fault: str | None,
                      delay: float) -> bool:
        """Send the stream or its faulty variant; False when the client went away first."""
        head, segments = plan.sse()
        headers = [*_SSE, ("request-id", rid)]
        if fault == "drop":
            size = sum(map(len, head)) + sum(map(len, segments)) + _DROP_EXTRA_BYTES
            headers.append(("content-length", str(size)))
        transport = proto.response_stream(200, headers)
        try:
            if fault == "stall":
                await transport.send_bytes(head[0])
                await proto.client_disconnect()
                return False
            if fault in ("error-mid-stream", "drop"):
                cut = len(segments) // 2
                # A one-delta stream keeps its delta but not the message end riding on it.
                segments = segments[:cut] if cut else [segments[0].split(b"\n\n", 1)[0] + b"\n\n"]
                if fault == "error-mid-stream":
                    segments.append(_MID_STREAM_ERROR)
            if delay <= 0:
                # One write: the client sees the same bytes and the hot path stays cheap.
                await transport.send_bytes(b"".join((*head, *segments)))
                return True
            send = transport.send_bytes
            return await _race_disconnect(proto, _paced(send, b"".join(head), segments, delay))
        except _GONE:
            return False


async def _paced(send: Callable[[bytes], Awaitable[None]], head: bytes,
                 segments: list[bytes], delay: float) -> None:
    await send(head)
    for segment in segments:
        await asyncio.sleep(delay)
        await send(segment)


async def _until_disconnect(proto: HTTPProtocol) -> None:
    await proto.client_disconnect()


async def _race_disconnect(proto: HTTPProtocol, work_coro: Awaitable[None]) -> bool:
    """Run `work_coro` until it ends (True) or the client disconnects (False).

    Granian raises nothing while the app sleeps between writes, so a slow stream would only
    notice a vanished client at its next send; `client_disconnect()` frees it at once.
    """
    work: asyncio.Future[None] = asyncio.ensure_future(work_coro)
    # A real Task around granian's future-like object: that object has a single
    # done-callback slot and lacks private attributes that gather() reads.
    gone = asyncio.ensure_future(_until_disconnect(proto))
    try:
        await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        work.cancel()
        gone.cancel()
    await asyncio.gather(work, gone, return_exceptions=True)
    if work.cancelled():
        return False
    exc = work.exception()
    if exc is None or isinstance(exc, _GONE):
        return exc is None
    raise exc


app = Simulator()


def run(host: str = "127.0.0.1", port: int = 8090, workers: int = 1,
        require_key: str | None = None) -> None:
    """Serve the simulator with granian (RSGI, uvloop) until interrupted."""
    from granian import Granian
    from granian.constants import Interfaces, Loops

    # Workers are processes that import `app` themselves; the environment reaches them
    # under both fork and spawn.
    os.environ[REQUIRE_KEY_ENV] = require_key or ""
    server = Granian("gateway.simulator:app", address=host, port=port, workers=workers,
                     interface=Interfaces.RSGI, loop=Loops.uvloop,
                     # Long-stream benchmarks hold thousands of open streams per worker.
                     backlog=4096, backpressure=65536)
    server.serve()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Anthropic-wire upstream simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--require-key", default=None,
                        help="answer 401 unless x-api-key (or Bearer) carries this key")
    args = parser.parse_args(argv)
    run(args.host, args.port, args.workers, args.require_key)


if __name__ == "__main__":
    main()
