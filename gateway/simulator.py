"""Anthropic-wire upstream simulator on granian RSGI: the upstream for first runs, tests,
benchmarks and load tests. It paces, limits and refuses like the real API; each request can
steer its answer with `x-sim-*` headers.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import functools
import itertools
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import orjson
from granian._granian import RSGIHTTPProtocol as HTTPProtocol
from granian._granian import RSGIProtocolClosed, RSGIProtocolError
from granian.rsgi import Scope

from gateway import simulator_rules
from gateway.simulator_cache import PromptCache
from gateway.simulator_limits import Limits, RateLimiter
from gateway.simulator_rules import Rejected

REQUIRE_KEY_ENV = "ANTEX_SIM_REQUIRE_KEY"
TTFT_ENV = "ANTEX_SIM_TTFT_MS"
EVENT_DELAY_ENV = "ANTEX_SIM_EVENT_DELAY_MS"
BURST_ENV = "ANTEX_SIM_BURST"
RPM_ENV, ITPM_ENV, OTPM_ENV = "ANTEX_SIM_RPM", "ANTEX_SIM_ITPM", "ANTEX_SIM_OTPM"
KEYS_ENV, CACHE_ENV = "ANTEX_SIM_KEYS_FILE", "ANTEX_SIM_PROMPT_CACHE"
# Per-key faults switched at run time through POST /_sim/keys.
KEY_FAULTS = ("revoked", "overloaded", "stall")
# Shipped pacing: a quick but realistic upstream for `make run` (tests pass smaller values).
DEFAULT_TTFT_MS = 300
DEFAULT_EVENT_DELAY_MS = 15
# High enough that no test or benchmark meets them unless it sets its own.
DEFAULT_RPM, DEFAULT_ITPM, DEFAULT_OTPM = 10_000_000, 10_000_000_000, 10_000_000_000
PING_EVERY_S = 5.0  # the longest silence inside a stream before a keep-alive ping

_GONE = (RSGIProtocolClosed, RSGIProtocolError)  # what a send raises once the client left

_JSON = [("content-type", "application/json")]
_SSE = [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache")]
# A drop advertises more bytes than it sends: the server then has to cut the connection
# instead of ending the body cleanly.
_DROP_EXTRA_BYTES = 1_000_000

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
    """A malformed body or `x-sim-*` header: 400 invalid_request_error."""


def _env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "")
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit()):
        raise SystemExit(f"{name} must be a non-negative integer, got {raw!r}")
    return int(raw)


@dataclass(frozen=True, slots=True)
class SimSettings:
    """How one simulator process behaves; the workers read it from the environment."""

    ttft_ms: int = DEFAULT_TTFT_MS
    event_delay_ms: int = DEFAULT_EVENT_DELAY_MS
    burst: bool = False
    rpm: int = DEFAULT_RPM
    itpm: int = DEFAULT_ITPM
    otpm: int = DEFAULT_OTPM
    require_key: str | None = None
    keys_file: str | None = None  # JSON {key: {rpm, itpm, otpm}}: only these keys are valid
    prompt_cache: bool = False  # report cache reads/writes per key from a real prefix cache

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> SimSettings:
        return cls(
            ttft_ms=_env_int(environ, TTFT_ENV, DEFAULT_TTFT_MS),
            event_delay_ms=_env_int(environ, EVENT_DELAY_ENV, DEFAULT_EVENT_DELAY_MS),
            burst=environ.get(BURST_ENV, "") == "1",
            rpm=_env_int(environ, RPM_ENV, DEFAULT_RPM),
            itpm=_env_int(environ, ITPM_ENV, DEFAULT_ITPM),
            otpm=_env_int(environ, OTPM_ENV, DEFAULT_OTPM),
            require_key=environ.get(REQUIRE_KEY_ENV) or None,
            keys_file=environ.get(KEYS_ENV) or None,
            prompt_cache=environ.get(CACHE_ENV, "") == "1",
        )

    def to_env(self) -> dict[str, str]:
        return {TTFT_ENV: str(self.ttft_ms), EVENT_DELAY_ENV: str(self.event_delay_ms),
                BURST_ENV: "1" if self.burst else "", RPM_ENV: str(self.rpm),
                ITPM_ENV: str(self.itpm), OTPM_ENV: str(self.otpm),
                REQUIRE_KEY_ENV: self.require_key or "", KEYS_ENV: self.keys_file or "",
                CACHE_ENV: "1" if self.prompt_cache else ""}


@dataclass(frozen=True, slots=True)
class _Pacing:
    ttft: float  # seconds before message_start
    delay: float  # seconds between two events
    burst: bool  # the whole answer in one write, at once


def _header_int(headers: Mapping[str, str], name: str) -> int | None:
    raw = headers.get(name)
    if raw is not None and not (raw.isascii() and raw.isdigit()):
        raise BadRequest(f"{name}: expected a non-negative integer")
    return None if raw is None else int(raw)


def _pacing(headers: Mapping[str, str], settings: SimSettings) -> _Pacing:
    ttft = _header_int(headers, "x-sim-ttft-ms")
    delay = _header_int(headers, "x-sim-event-delay-ms")
    if delay is None:  # the older name of the same control
        delay = _header_int(headers, "x-sim-chunk-delay-ms")
    burst = headers.get("x-sim-burst")
    if burst not in (None, "0", "1"):
        raise BadRequest("x-sim-burst: expected 0 or 1")
    return _Pacing(
        (settings.ttft_ms if ttft is None else ttft) / 1000,
        (settings.event_delay_ms if delay is None else delay) / 1000,
        settings.burst if burst is None else burst == "1",
    )


def _parse_body(body: bytes, *, counting: bool = False) -> dict[str, Any]:
    """The checked request; raises BadRequest (not JSON) or Rejected (what the API refuses)."""
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("There was an error parsing the body of your request: "
                         "it is not valid JSON.") from None
    simulator_rules.check_messages_request(req, counting=counting)
    return req  # type: ignore[no-any-return]


def _wants_tool(req: dict[str, Any], chosen: str | None) -> dict[str, Any] | None:
    """The tool to call (`chosen` names it, else the first offered), or None for plain text."""
    tools, choice = req.get("tools"), req.get("tool_choice")
    # The conversation's last turn: system messages may follow it (they hold no results).
    last = next(m for m in reversed(req["messages"]) if m.get("role") != "system")
    if not isinstance(tools, list) or (isinstance(choice, dict) and choice.get("type") == "none"):
        return None
    content = last.get("content") if isinstance(last, dict) else None
    if isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in content):
        return None
    named = [t for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)]
    if isinstance(choice, dict) and choice.get("type") == "tool":
        named = [t for t in named if t["name"] == choice.get("name")] or named
    elif chosen is not None and named:
        named = [t for t in named if t["name"] == chosen]
        if not named:
            raise BadRequest(f"x-sim-tool: no offered tool is named {chosen!r}")
    return named[0] if named else None


@dataclass(frozen=True, slots=True)
class _Plan:
    """One answer, rendered either as a JSON message or as SSE events."""

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

    def event_count(self) -> int:
        """How many events `sse()` yields: what a non-streamed answer waits for."""
        deltas = sum(len(p) + (kind == "thinking") for kind, p, _ in self.blocks)
        return 5 + 2 * len(self.blocks) + deltas

    def sse(self) -> list[bytes]:
        """Every event of the stream, each rendered alone (one write per event when paced)."""
        message = self._envelope([], None, {**self.usage, "output_tokens": 1})
        events = [_event("message_start", {"type": "message_start", "message": message})]
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
            events.append(_event("content_block_start", {
                "type": "content_block_start", "index": index, "content_block": block}))
            if index == 0:
                events.append(_PING)
            events += deltas
            events.append(_event("content_block_stop", {"type": "content_block_stop",
                                                        "index": index}))
        u = self.usage
        usage = {"input_tokens": u["input_tokens"], "output_tokens": u["output_tokens"],
                 "cache_creation_input_tokens": u["cache_creation_input_tokens"],
                 "cache_read_input_tokens": u["cache_read_input_tokens"]}
        delta = {"type": "message_delta", "usage": usage,
                 "delta": {"stop_reason": self.stop_reason, "stop_sequence": None}}
        events += (_event("message_delta", delta), _MESSAGE_STOP)
        return events


def _cut(events: list[bytes]) -> list[bytes]:
    """The first half of a stream, keeping at least its first delta and never its end."""
    first_delta = next(i for i, e in enumerate(events) if e.startswith(_DELTA_HEAD))
    return events[:max(first_delta + 1, min(len(events) // 2, len(events) - 2))]


@dataclass(slots=True)
class _Stats:
    started: int = 0
    completed: int = 0
    disconnected: int = 0
    in_flight: int = 0


@dataclass(slots=True)
class _KeyState:
    """One simulated upstream key: its fault switch and the usage it reported."""

    fault: str | None = None
    attempts: int = 0  # every request presenting the key, faults included
    requests: int = 0
    refused: int = 0  # 429s for its rate limits
    input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    output_tokens: int = 0
    # x-sim-conversation tags it served: lets a test see which key a conversation used.
    conversations: set[str] = field(default_factory=set)

    def count(self, usage: dict[str, Any]) -> None:
        self.requests += 1
        self.input_tokens += usage["input_tokens"]
        self.cache_read_input_tokens += usage["cache_read_input_tokens"]
        self.cache_creation_input_tokens += usage["cache_creation_input_tokens"]
        self.output_tokens += usage["output_tokens"]


def _limits_of(spec: Any, default: Limits) -> Limits:
    if not isinstance(spec, dict):
        raise BadRequest("a key's limits must be an object {rpm, itpm, otpm}")
    values = {n: spec.get(n, getattr(default, n)) for n in ("rpm", "itpm", "otpm")}
    if not all(isinstance(v, int) and v >= 1 for v in values.values()):
        raise BadRequest("rpm, itpm and otpm must be integers >= 1")
    return Limits(**values)


def _presented_key(headers: Mapping[str, str]) -> str:
    key = headers.get("x-api-key")
    if key is None:
        auth = headers.get("authorization", "")
        key = auth[7:] if auth.startswith("Bearer ") else ""
    return key


class Simulator:
    """The RSGI application. Counters, limits and the request log are per worker process."""

    def __init__(self, settings: SimSettings | None = None) -> None:
        self.settings = settings or SimSettings()
        self.keys: dict[str, _KeyState] = {}
        self.cache = PromptCache()
        self.limiter = self._limiter()
        self.stats = _Stats()
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=50)
        self._ids = itertools.count(1)
        self._prefix = ""
        self._models = self._model_pages()

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Per process, so forked workers never hand out colliding ids.
        self._prefix = os.urandom(4).hex()
        self.settings = SimSettings.from_env(os.environ)
        self.limiter = self._limiter()

    def _limiter(self) -> RateLimiter:
        s = self.settings
        limiter = RateLimiter(Limits(s.rpm, s.itpm, s.otpm))
        self.keys = {}
        if s.keys_file:
            with open(s.keys_file, "rb") as f:
                specs = orjson.loads(f.read())
            for key, spec in specs.items():
                limiter.per_key[key] = _limits_of(spec, limiter.default)
                self.keys[key] = _KeyState()
        return limiter

    @staticmethod
    def _model_pages() -> tuple[list[str], dict[str, dict[str, Any]]]:
        catalog = simulator_rules.catalog()
        info = {m.id: {"type": "model", "id": m.id, "display_name": m.display_name,
                       "created_at": m.created_at} for m in catalog.models}
        return [m.id for m in catalog.models], info

    def _next_id(self) -> str:
        return f"{self._prefix}{next(self._ids):08x}"

    def _error(self, proto: HTTPProtocol, head: list[tuple[str, str]], status: int, kind: str,
               message: str, extra: Sequence[tuple[str, str]] = ()) -> None:
        body = {"type": "error", "error": {"type": kind, "message": message},
                "request_id": head[0][1]}
        proto.response_bytes(status, [*_JSON, *head, *extra], orjson.dumps(body))

    def _json(self, proto: HTTPProtocol, head: list[tuple[str, str]], payload: Any) -> None:
        proto.response_bytes(200, [*_JSON, *head], orjson.dumps(payload))

    async def __rsgi__(self, scope: Scope, proto: HTTPProtocol) -> None:
        rid = "req_sim_" + self._next_id()
        method, path = scope.method, scope.path
        pairs = scope.headers.items()
        headers = dict(pairs)
        try:
            body = await proto() if method in ("POST", "PUT", "PATCH") else b""
        except _GONE:  # the client left while still uploading
            return
        key = _presented_key(headers)
        # request-id first: error bodies repeat it.
        head = [("request-id", rid), *self.limiter.peek(key, time.time())]
        if path.startswith("/_sim/"):
            return self._control(proto, head, method, path, body)
        # Metadata only: the simulator never keeps or logs prompts.
        self.recent.append({"method": method, "path": path, "query_string": scope.query_string,
                            "headers": pairs, "body_length": len(body)})
        required = self.settings.require_key
        state = self.keys.get(key)
        fault = None
        if state is not None:
            state.attempts += 1
            fault = state.fault
        if fault == "stall":  # accepts the request, then never answers
            await proto.client_disconnect()
        elif (required and key != required) or fault == "revoked" or (
                self.settings.keys_file and state is None):
            self._error(proto, head, 401, "authentication_error", "invalid x-api-key")
        elif fault == "overloaded":
            self._error(proto, head, *_FAULTS["529"])
        elif method == "POST" and path == "/v1/messages":
            await self._messages(proto, head, key, headers, body)
        elif method == "POST" and path == "/v1/messages/count_tokens":
            try:
                _parse_body(body, counting=True)
            except BadRequest as exc:
                return self._error(proto, head, 400, "invalid_request_error", str(exc))
            except Rejected as exc:
                return self._error(proto, head, exc.status, exc.error_type, exc.message)
            self._json(proto, head, {"input_tokens": max(1, len(body) // 4)})
        elif method == "GET" and path == "/v1/models":
            self._list_models(proto, head, scope.query_string)
        elif method == "GET" and path.startswith("/v1/models/"):
            model = path.removeprefix("/v1/models/")
            found = simulator_rules.catalog().by_id.get(model)
            if found is not None:
                self._json(proto, head, self._models[1][found.id])
            else:
                self._error(proto, head, 404, "not_found_error", f"model: {model}")
        else:
            self._error(proto, head, 404, "not_found_error", f"Not found: {method} {path}")

    def _control(self, proto: HTTPProtocol, head: list[tuple[str, str]], method: str,
                 path: str, body: bytes) -> None:
        s = self.stats
        if method == "POST" and path == "/_sim/reset":
            # In place: running handlers hold this object, and in_flight stays truthful.
            s.started = s.completed = s.disconnected = 0
            self.recent.clear()
            self.cache.clear()
            for key in self.keys:
                self.keys[key] = _KeyState(fault=self.keys[key].fault)
            self._json(proto, head, {"ok": True})
        elif path == "/_sim/keys" and method in ("GET", "POST"):
            try:
                if method == "POST":
                    self._set_key(body)
            except (BadRequest, orjson.JSONDecodeError) as exc:
                return self._error(proto, head, 400, "invalid_request_error", str(exc))
            self._json(proto, head, self._keys_view())
        elif method == "GET" and path == "/_sim/stats":
            self._json(proto, head, {"started": s.started, "completed": s.completed,
                                     "disconnected": s.disconnected, "in_flight": s.in_flight})
        elif method == "GET" and path == "/_sim/requests":
            self._json(proto, head, list(self.recent))
        else:
            self._error(proto, head, 404, "not_found_error", f"Not found: {method} {path}")

    def _set_key(self, body: bytes) -> None:
        """POST /_sim/keys {"key", "rpm"?, "itpm"?, "otpm"?, "fault"?}: adds or changes a key."""
        spec = orjson.loads(body)
        if not isinstance(spec, dict) or not isinstance(spec.get("key"), str):
            raise BadRequest("expected {\"key\": ..., \"rpm\"?, \"itpm\"?, \"otpm\"?, "
                             "\"fault\"?}")
        key = spec["key"]
        state = self.keys.setdefault(key, _KeyState())
        limits = {n: spec[n] for n in ("rpm", "itpm", "otpm") if n in spec}
        if limits:
            self.limiter.per_key[key] = _limits_of(limits, self.limiter.limits_for(key))
        if "fault" in spec:
            if spec["fault"] not in (None, *KEY_FAULTS):
                raise BadRequest(f"fault: one of {', '.join(KEY_FAULTS)} or null")
            state.fault = spec["fault"]

    def _keys_view(self) -> dict[str, Any]:
        out = {}
        for key, state in self.keys.items():
            limits = self.limiter.limits_for(key)
            out[key] = {"rpm": limits.rpm, "itpm": limits.itpm, "otpm": limits.otpm,
                        "fault": state.fault, "attempts": state.attempts,
                        "requests": state.requests,
                        "refused": state.refused, "input_tokens": state.input_tokens,
                        "cache_read_input_tokens": state.cache_read_input_tokens,
                        "cache_creation_input_tokens": state.cache_creation_input_tokens,
                        "output_tokens": state.output_tokens,
                        "conversations": sorted(state.conversations)}
        return out

    def _list_models(self, proto: HTTPProtocol, head: list[tuple[str, str]], query: str) -> None:
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        ids, info = self._models
        if params.get("after_id") in ids:  # the SDK's auto-pagination walks forward only
            ids = ids[ids.index(params["after_id"]) + 1:]
        limit = params.get("limit", "20")
        if not limit.isdigit() or not 1 <= int(limit) <= 1000:
            return self._error(proto, head, 400, "invalid_request_error",
                               "limit: Input should be between 1 and 1000")
        page = [info[i] for i in ids[:int(limit)]]
        self._json(proto, head, {"data": page, "has_more": len(ids) > len(page),
                                 "first_id": page[0]["id"] if page else None,
                                 "last_id": page[-1]["id"] if page else None})

    def _plan(self, req: dict[str, Any], headers: dict[str, str], body_len: int,
              key: str = "") -> _Plan:
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
        tool = _wants_tool(req, headers.get("x-sim-tool"))
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
        cache_read = _header_int(headers, "x-sim-cache-read") or 0
        input_tokens = max(1, body_len // 4)
        if self.settings.prompt_cache and not (cache_read or write_5m or write_1h):
            cache_read, write_5m = self.cache.usage(key, req, time.time())
            input_tokens = max(1, input_tokens - cache_read - write_5m)
        usage = {"input_tokens": input_tokens,
                 "cache_creation_input_tokens": write_5m + write_1h,
                 "cache_read_input_tokens": cache_read,
                 "cache_creation": {"ephemeral_5m_input_tokens": write_5m,
                                    "ephemeral_1h_input_tokens": write_1h},
                 "output_tokens": out_tokens, "service_tier": "standard"}
        return _Plan(msg_id, req["model"], usage,
                     headers.get("x-sim-stop-reason", stop_reason), blocks)

    async def _messages(self, proto: HTTPProtocol, head: list[tuple[str, str]], key: str,
                        headers: dict[str, str], body: bytes) -> None:
        stats = self.stats
        stats.started += 1
        stats.in_flight += 1
        finished = True
        try:
            fault = headers.get("x-sim-fault")
            if fault in _FAULTS:
                status, kind, message = _FAULTS[fault]
                extra = [("retry-after", "7")] if status == 429 else []
                return self._error(proto, head, status, kind, message, extra)
            try:
                if fault is not None and fault not in _STREAM_FAULTS:
                    raise BadRequest(f"x-sim-fault: unknown fault {fault!r}")
                req = _parse_body(body)
                plan = self._plan(req, headers, len(body), key)
                pacing = _pacing(headers, self.settings)
            except BadRequest as exc:
                return self._error(proto, head, 400, "invalid_request_error", str(exc))
            except Rejected as exc:
                return self._error(proto, head, exc.status, exc.error_type, exc.message)
            u = plan.usage
            verdict = self.limiter.admit(
                key, time.time(), u["input_tokens"] + u["cache_creation_input_tokens"],
                req["max_tokens"], u["output_tokens"])
            head = [head[0], *verdict.headers]
            state = self.keys.get(key)
            if verdict.retry_after is not None:
                if state is not None:
                    state.refused += 1
                return self._error(proto, head, 429, "rate_limit_error", verdict.message,
                                   [("retry-after", str(verdict.retry_after))])
            if state is not None:
                state.count(u)
                tag = headers.get("x-sim-conversation")
                if tag:
                    state.conversations.add(tag)
            if req.get("stream"):
                finished = await self._stream(proto, head, plan, fault, pacing)
            else:
                finished = await self._whole(proto, head, plan, fault, pacing)
        finally:
            stats.in_flight -= 1
            if finished:
                stats.completed += 1
            else:
                stats.disconnected += 1

    async def _whole(self, proto: HTTPProtocol, head: list[tuple[str, str]], plan: _Plan,
                     fault: str | None, pacing: _Pacing) -> bool:
        """A non-stream answer after the time the stream would take; the stream faults map
        to their non-stream analogues."""
        if fault == "stall":
            await proto.client_disconnect()
            return False
        if fault == "error-mid-stream":
            self._error(proto, head, *_FAULTS["529"])
            return True
        wait = 0.0 if pacing.burst else pacing.ttft + pacing.delay * plan.event_count()
        if wait > 0 and not await _race_disconnect(proto, asyncio.sleep(wait)):
            return False
        body = orjson.dumps(plan.message())
        if fault != "drop":
            proto.response_bytes(200, [*_JSON, *head], body)
            return True
        length = str(len(body) + _DROP_EXTRA_BYTES)
        transport = proto.response_stream(200, [*_JSON, *head, ("content-length", length)])
        try:
            await transport.send_bytes(body[: len(body) // 2])
        except _GONE:
            return False
        return True

    async def _stream(self, proto: HTTPProtocol, head: list[tuple[str, str]], plan: _Plan,
                      fault: str | None, pacing: _Pacing) -> bool:
        """Send the stream or its faulty variant; False when the client went away first."""
        events = plan.sse()
        if fault in ("error-mid-stream", "drop"):
            events = _cut(events)
            if fault == "error-mid-stream":
                events.append(_MID_STREAM_ERROR)
        headers = [*_SSE, *head]
        if fault == "drop":
            headers.append(("content-length", str(sum(map(len, events)) + _DROP_EXTRA_BYTES)))
        transport = proto.response_stream(200, headers)
        send = transport.send_bytes
        try:
            if fault == "stall":
                work = _paced(send, events[:1], 0.0 if pacing.burst else pacing.ttft, 0.0)
                if await _race_disconnect(proto, work):
                    await proto.client_disconnect()
                return False
            if pacing.burst:
                # One write: only for benchmarks that ask for it; the real API never does this.
                await send(b"".join(events))
                return True
            return await _race_disconnect(proto, _paced(send, events, pacing.ttft, pacing.delay))
        except _GONE:
            return False


async def _pause(send: Callable[[bytes], Awaitable[None]], seconds: float,
                 ping_every: float = PING_EVERY_S) -> None:
    """Sleep, keeping a long silence alive with pings as the real API does."""
    while seconds > ping_every:
        await asyncio.sleep(ping_every)
        await send(_PING)
        seconds -= ping_every
    if seconds > 0:
        await asyncio.sleep(seconds)


async def _paced(send: Callable[[bytes], Awaitable[None]], events: list[bytes], ttft: float,
                 delay: float) -> None:
    """Each event its own write: `ttft` before the first, `delay` before every later one."""
    if ttft > 0:
        await asyncio.sleep(ttft)
    await send(events[0])
    for event in events[1:]:
        await _pause(send, delay)
        await send(event)


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
        settings: SimSettings | None = None) -> None:
    """Serve the simulator with granian (RSGI, uvloop) until interrupted.

    `settings` None keeps what the environment says (ANTEX_SIM_*), else the shipped defaults.
    """
    from granian import Granian
    from granian.constants import Interfaces, Loops

    # Workers are processes that import `app` themselves; the environment reaches them
    # under both fork and spawn.
    os.environ.update((settings or SimSettings.from_env(os.environ)).to_env())
    server = Granian("gateway.simulator:app", address=host, port=port, workers=workers,
                     interface=Interfaces.RSGI, loop=Loops.uvloop,
                     # Long-stream benchmarks hold thousands of open streams per worker.
                     backlog=4096, backpressure=65536)
    server.serve()


def main(argv: list[str] | None = None) -> None:
    env = SimSettings.from_env(os.environ)
    parser = argparse.ArgumentParser(description="Anthropic-wire upstream simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--require-key", default=env.require_key,
                        help="answer 401 unless x-api-key (or Bearer) carries this key")
    parser.add_argument("--ttft-ms", type=int, default=env.ttft_ms,
                        help=f"wait before message_start (env {TTFT_ENV}, "
                             f"default {DEFAULT_TTFT_MS})")
    parser.add_argument("--event-delay-ms", type=int, default=env.event_delay_ms,
                        help=f"wait between two SSE events (env {EVENT_DELAY_ENV}, "
                             f"default {DEFAULT_EVENT_DELAY_MS})")
    parser.add_argument("--burst", action="store_true", default=env.burst,
                        help=f"write each answer at once, in one write (env {BURST_ENV}=1); "
                             "for benchmarks only")
    parser.add_argument("--rpm", type=int, default=env.rpm, help="requests per minute per key")
    parser.add_argument("--itpm", type=int, default=env.itpm,
                        help="input tokens per minute per key")
    parser.add_argument("--otpm", type=int, default=env.otpm,
                        help="output tokens per minute per key")
    parser.add_argument("--keys", default=env.keys_file, metavar="FILE",
                        help="JSON {key: {rpm, itpm, otpm}}: only these upstream keys are valid, "
                             f"each with its own limits (env {KEYS_ENV})")
    parser.add_argument("--prompt-cache", action="store_true", default=env.prompt_cache,
                        help="report cache reads and writes from a per-key prompt cache "
                             f"(env {CACHE_ENV}=1)")
    args = parser.parse_args(argv)
    if min(args.ttft_ms, args.event_delay_ms) < 0 or min(args.rpm, args.itpm, args.otpm) < 1:
        parser.error("delays must be >= 0 and limits >= 1")
    run(args.host, args.port, args.workers, SimSettings(
        args.ttft_ms, args.event_delay_ms, args.burst, args.rpm, args.itpm, args.otpm,
        args.require_key, os.path.abspath(args.keys) if args.keys else None, args.prompt_cache))


if __name__ == "__main__":
    main()
