"""Anthropic Messages SSE → OpenAI Responses SSE (F.3, F.4.3), plus the reasoning codec.

The non-streaming path replays a whole message through the same state machine.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.translate.common import (
    Block,
    anthropic_error_fields,
    empty_usage,
    is_context_overflow,
    merge_usage,
    reasoning_tokens,
    total_input,
)

# Our reasoning blobs: "antex1:" + urlsafe base64 of kind \n model \n payload. Bump the
# version on any format change; blobs from other servers (or versions) are dropped on replay.
REASONING_PREFIX = "antex1:"
DEFAULT_RETRY_AFTER_S = 5
# Codex ends a turn for good on server_is_overloaded ("Selected model is at capacity"); a
# mid-stream overload is transient, so it goes as server_error, which Codex retries.
_FAILURE_CODES = {
    "rate_limit_error": "rate_limit_exceeded",
    "overloaded_error": "server_error",
    "invalid_request_error": "invalid_prompt",
    "billing_error": "insufficient_quota",
}


def encode_thinking(model: str, signature: str, thinking: str) -> str:
    # surrogatepass keeps the thinking text byte-exact: the signature covers it.
    raw = b"\n".join((b"t", model.encode(), signature.encode(),
                      thinking.encode("utf-8", "surrogatepass")))
    return REASONING_PREFIX + base64.urlsafe_b64encode(raw).decode()


def encode_redacted(model: str, data: str) -> str:
    raw = b"\n".join((b"r", model.encode(), data.encode()))
    return REASONING_PREFIX + base64.urlsafe_b64encode(raw).decode()


def decode_reasoning(blob: Any, model: str) -> Block | None:
    """Our encrypted_content → the original thinking block; None for anything else.

    Signatures do not survive a model switch, so a blob minted for another model is dropped.
    """
    if not isinstance(blob, str) or not blob.startswith(REASONING_PREFIX):
        return None
    try:
        raw = base64.urlsafe_b64decode(blob[len(REASONING_PREFIX):])
        kind, blob_model, payload = raw.split(b"\n", 2)
        if blob_model.decode() != model:
            return None
        if kind == b"r":
            return {"type": "redacted_thinking", "data": payload.decode()}
        signature, thinking = payload.split(b"\n", 1)
        return {"type": "thinking", "thinking": thinking.decode("utf-8", "surrogatepass"),
                "signature": signature.decode()}
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None


def responses_usage(usage: dict[str, int], reasoning: int) -> dict[str, Any]:
    """F.4.4: cached tokens count inside input_tokens on the OpenAI side."""
    prompt = total_input(usage)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": usage["cache_read_input_tokens"],
                                 "cache_write_tokens": usage["cache_creation_input_tokens"]},
        "output_tokens": usage["output_tokens"],
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + usage["output_tokens"],
    }


def unwrap_custom_input(arguments: Any) -> str:
    """Custom tools are declared to Claude as ``{"input": string}``; hand back the string."""
    value = arguments.get("input") if isinstance(arguments, dict) else None
    if isinstance(value, str):
        return value
    return orjson.dumps(arguments).decode()


def failure_code(err_type: str, message: str) -> str:
    """The ``response.failed`` error code Codex acts on (F.3.3)."""
    if is_context_overflow(message):
        return "context_length_exceeded"
    return _FAILURE_CODES.get(err_type, "server_error")


def _terminal(stop_reason: Any) -> tuple[str, dict[str, Any] | None, dict[str, Any] | None]:
    # refusal ends "completed" with the text: Codex retries "incomplete" responses.
    if stop_reason == "max_tokens":
        return "incomplete", {"reason": "max_output_tokens"}, None
    if stop_reason == "model_context_window_exceeded":
        return "failed", None, {"code": "context_length_exceeded",
                                "message": "The conversation exceeds the model's context window."}
    return "completed", None, None


@dataclass(frozen=True, slots=True)
class ResponsesContext:
    """What the response side needs from the request: names to map back and values to echo."""

    model: str
    custom_tools: frozenset[str] = frozenset()
    # Anthropic tool name → (namespace, name) for tools flattened out of a namespace.
    namespaced: dict[str, tuple[str, str]] = field(default_factory=dict)
    # Sanitised tool-call id → the client's original id.
    tool_ids: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    tools: list[Any] = field(default_factory=list)
    tool_choice: Any = "auto"
    parallel_tool_calls: bool = True
    instructions: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    reasoning: dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    store: bool = False


@dataclass(slots=True)
class _Block:
    kind: str  # text | function | custom | reasoning | search | skip
    item: dict[str, Any] = field(default_factory=dict)
    output_index: int = -1
    parts: list[str] = field(default_factory=list)
    signature: str = ""
    summary_open: bool = False
    text_start: int = 0
    citations: list[dict[str, Any]] = field(default_factory=list)


class ResponsesStreamTranslator:
    """Consumes parsed Anthropic SSE events; returns the Responses SSE bytes for each.

    ``usage`` holds the Anthropic-side cumulative counts seen so far, for settlement;
    ``response`` is the final response object once a terminal event has been produced.
    """

    def __init__(self, ctx: ResponsesContext, *, response_id: str, created_at: int) -> None:
        self.usage = empty_usage()
        self.response: dict[str, Any] | None = None
        self._ctx = ctx
        self._id = response_id
        self._created_at = created_at
        self._seq = 0
        self._output: list[dict[str, Any]] = []
        self._blocks: dict[int, _Block] = {}
        self._message: dict[str, Any] | None = None
        self._message_index = -1
        self._text: list[str] = []
        self._text_len = 0
        self._annotations: list[dict[str, Any]] = []
        self._stop_reason: Any = None
        self._thinking_tokens: int | None = None
        self._thinking_chars = 0

    # -- public --------------------------------------------------------------------------------

    def start(self) -> bytes:
        snapshot = self._snapshot("in_progress")
        return (self._event("response.created", response=snapshot)
                + self._event("response.in_progress", response=snapshot))

    def feed(self, event: str, data: dict[str, Any]) -> bytes:
        if self.response is not None:
            return b""
        index = data.get("index", 0)
        if event == "content_block_start":
            return self._start(index, data.get("content_block") or {})
        if event == "content_block_delta":
            block = self._blocks.get(index)
            return self._delta(block, data.get("delta") or {}) if block else b""
        if event == "content_block_stop":
            block = self._blocks.pop(index, None)
            return self._stop(block) if block else b""
        if event == "message_start":
            merge_usage(self.usage, (data.get("message") or {}).get("usage"))
        elif event == "message_delta":
            self._stop_reason = (data.get("delta") or {}).get("stop_reason") or self._stop_reason
            merge_usage(self.usage, data.get("usage"))
            self._thinking_tokens = reasoning_tokens(data.get("usage")) or self._thinking_tokens
        elif event == "message_stop":
            return self._finish()
        elif event == "ping":
            return self.ping()
        elif event == "error":
            return self.error(data)
        return b""

    def ping(self) -> bytes:
        """A real event as keep-alive: Codex ignores SSE comments when timing idleness."""
        if self.response is not None:
            return b""
        return self._event("response.in_progress", response=self._snapshot("in_progress"))

    def error(self, error: dict[str, Any], *, code: str | None = None,
              retry_after_s: int | None = None) -> bytes:
        """End the stream with ``response.failed``; Codex reads the retry delay from the
        message of a ``rate_limit_exceeded`` failure (F.5)."""
        if self.response is not None:
            return b""
        err_type, message = anthropic_error_fields(error)
        code = code or failure_code(err_type, message)
        if code == "rate_limit_exceeded" and "try again in" not in message.lower():
            message = f"{message} Please try again in {retry_after_s or DEFAULT_RETRY_AFTER_S}s."
        self.response = self._snapshot("failed", error={"code": code, "message": message})
        return self._event("response.failed", response=self.response)

    # -- blocks --------------------------------------------------------------------------------

    def _start(self, index: int, block: dict[str, Any]) -> bytes:
        kind = block.get("type")
        if kind == "text":
            out = b"" if self._message is not None else self._open_message()
            self._blocks[index] = _Block("text", text_start=self._text_len)
            return out + (self._text_delta(block["text"]) if block.get("text") else b"")
        out = self._close_message()
        if kind == "tool_use":
            name = str(block.get("name", ""))
            custom = name in self._ctx.custom_tools
            item = call_item(self._ctx, self._item_id("ctc" if custom else "fc"),
                             str(block.get("id", "")), name, "")
            self._blocks[index] = _Block("custom" if custom else "function", item,
                                         len(self._output))
        elif kind == "thinking":
            item = {"type": "reasoning", "id": self._item_id("rs"), "summary": []}
            self._blocks[index] = _Block("reasoning", item, len(self._output))
        elif kind == "redacted_thinking":
            item = {"type": "reasoning", "id": self._item_id("rs"), "summary": [],
                    "encrypted_content": encode_redacted(self._ctx.model, block.get("data", ""))}
            return out + self._add(item) + self._item_done(len(self._output) - 1)
        elif kind == "server_tool_use" and block.get("name") == "web_search":
            item = {"type": "web_search_call", "id": self._item_id("ws"), "status": "in_progress",
                    "action": {"type": "search", "query": ""}}
            self._blocks[index] = _Block("search", item, len(self._output))
        else:
            self._blocks[index] = _Block("skip")
            return out
        return out + self._add(item)

    def _delta(self, block: _Block, delta: dict[str, Any]) -> bytes:
        kind = delta.get("type")
        if kind == "text_delta" and block.kind == "text" and delta.get("text"):
            return self._text_delta(delta["text"])
        if kind == "citations_delta" and block.kind == "text":
            citation = delta.get("citation") or {}
            if citation.get("type") == "web_search_result_location":
                block.citations.append({"type": "url_citation", "url": citation.get("url", ""),
                                        "title": citation.get("title") or ""})
        elif kind == "input_json_delta" and delta.get("partial_json"):
            block.parts.append(delta["partial_json"])
            if block.kind == "function":
                return self._event("response.function_call_arguments.delta",
                                   **self._ref(block), delta=delta["partial_json"])
        elif kind == "thinking_delta" and block.kind == "reasoning" and delta.get("thinking"):
            return self._thinking_delta(block, delta["thinking"])
        elif kind == "signature_delta" and block.kind == "reasoning":
            block.signature += delta.get("signature", "")
        return b""

    def _stop(self, block: _Block) -> bytes:
        if block.kind == "text":
            # A citation covers the text of the block that carried it.
            self._annotations += [c | {"start_index": block.text_start,
                                       "end_index": self._text_len} for c in block.citations]
            return b""
        if block.kind in ("function", "custom", "search"):
            try:
                arguments = orjson.loads("".join(block.parts) or "{}")
            except orjson.JSONDecodeError:
                arguments = None
            if not isinstance(arguments, dict):
                return b""  # cut off mid-call: never hand Codex a call it would run
            return self._call_done(block, arguments)
        if block.kind == "reasoning":
            return self._reasoning_done(block)
        return b""

    def _call_done(self, block: _Block, arguments: dict[str, Any]) -> bytes:
        item = block.item
        item["status"] = "completed"
        if block.kind == "search":
            item["action"]["query"] = str(arguments.get("query", ""))
            return self._item_done(block.output_index)
        if block.kind == "custom":
            item["input"] = unwrap_custom_input(arguments)
            out = (self._event("response.custom_tool_call_input.delta", **self._ref(block),
                               delta=item["input"])
                   + self._event("response.custom_tool_call_input.done", **self._ref(block),
                                 input=item["input"]))
        else:
            item["arguments"] = "".join(block.parts) or "{}"
            out = self._event("response.function_call_arguments.done", **self._ref(block),
                              name=item["name"], arguments=item["arguments"])
        return out + self._item_done(block.output_index)

    def _thinking_delta(self, block: _Block, text: str) -> bytes:
        out = b""
        if not block.summary_open:
            block.summary_open = True
            out = self._event("response.reasoning_summary_part.added", **self._ref(block),
                              summary_index=0, part={"type": "summary_text", "text": ""})
        block.parts.append(text)
        self._thinking_chars += len(text)
        return out + self._event("response.reasoning_summary_text.delta", **self._ref(block),
                                 summary_index=0, delta=text)

    def _reasoning_done(self, block: _Block) -> bytes:
        text = "".join(block.parts)
        out = b""
        if block.summary_open:
            part = {"type": "summary_text", "text": text}
            block.item["summary"] = [part]
            out = (self._event("response.reasoning_summary_text.done", **self._ref(block),
                               summary_index=0, text=text)
                   + self._event("response.reasoning_summary_part.done", **self._ref(block),
                                 summary_index=0, part=part))
        if block.signature:
            block.item["encrypted_content"] = encode_thinking(self._ctx.model, block.signature,
                                                              text)
        return out + self._item_done(block.output_index)

    # -- the assistant message -----------------------------------------------------------------

    def _open_message(self) -> bytes:
        item = {"type": "message", "id": self._item_id("msg"), "role": "assistant",
                "status": "in_progress", "content": []}
        self._message, self._message_index = item, len(self._output)
        self._text, self._text_len, self._annotations = [], 0, []
        return self._add(item) + self._event(
            "response.content_part.added", **self._message_ref(),
            part={"type": "output_text", "text": "", "annotations": [], "logprobs": []})

    def _text_delta(self, text: str) -> bytes:
        self._text.append(text)
        self._text_len += len(text)
        return self._event("response.output_text.delta", **self._message_ref(), delta=text,
                           logprobs=[])

    def _close_message(self) -> bytes:
        if self._message is None:
            return b""
        text = "".join(self._text)
        part = {"type": "output_text", "text": text, "annotations": self._annotations,
                "logprobs": []}
        out = (self._event("response.output_text.done", **self._message_ref(), text=text,
                           logprobs=[])
               + self._event("response.content_part.done", **self._message_ref(), part=part))
        self._message.update(status="completed", content=[part])
        self._message = None
        return out + self._item_done(self._message_index)

    def _message_ref(self) -> dict[str, Any]:
        assert self._message is not None
        return {"item_id": self._message["id"], "output_index": self._message_index,
                "content_index": 0}

    # -- envelope ------------------------------------------------------------------------------

    def _finish(self) -> bytes:
        out = self._close_message()
        for item in self._output:
            if item.get("status") == "in_progress":
                item["status"] = "incomplete"
        status, incomplete, error = _terminal(self._stop_reason)
        reasoning = self._thinking_tokens
        if reasoning is None:
            # No upstream breakdown: estimate ~4 characters per token, as CLIProxyAPI does.
            reasoning = min(self.usage["output_tokens"], self._thinking_chars // 4)
        self.response = self._snapshot(status, incomplete=incomplete, error=error,
                                       usage=responses_usage(self.usage, reasoning))
        return out + self._event(f"response.{status}", response=self.response)

    def _snapshot(self, status: str, *, incomplete: dict[str, Any] | None = None,
                  error: dict[str, Any] | None = None,
                  usage: dict[str, Any] | None = None) -> dict[str, Any]:
        return response_object(self._ctx, response_id=self._id, created_at=self._created_at,
                               status=status, output=self._output, usage=usage, error=error,
                               incomplete=incomplete)

    def _add(self, item: dict[str, Any]) -> bytes:
        self._output.append(item)
        return self._event("response.output_item.added", output_index=len(self._output) - 1,
                           item=item)

    def _item_done(self, output_index: int) -> bytes:
        return self._event("response.output_item.done", output_index=output_index,
                           item=self._output[output_index])

    def _item_id(self, prefix: str) -> str:
        return f"{prefix}_{self._id.removeprefix('resp_')}_{len(self._output)}"

    @staticmethod
    def _ref(block: _Block) -> dict[str, Any]:
        return {"item_id": block.item["id"], "output_index": block.output_index}

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def call_item(ctx: ResponsesContext, item_id: str, tool_use_id: str, name: str,
              payload: str) -> dict[str, Any]:
    """A function_call / custom_tool_call output item for a Claude tool_use."""
    namespace, client_name = ctx.namespaced.get(name, ("", name))
    item: dict[str, Any] = {"id": item_id, "call_id": ctx.tool_ids.get(tool_use_id, tool_use_id),
                            "name": client_name, "status": "in_progress"}
    if name in ctx.custom_tools:
        item |= {"type": "custom_tool_call", "input": payload}
    else:
        item |= {"type": "function_call", "arguments": payload}
    if namespace:
        item["namespace"] = namespace
    return item


def response_object(ctx: ResponsesContext, *, response_id: str, created_at: int, status: str,
                    output: list[dict[str, Any]], usage: dict[str, Any] | None = None,
                    error: dict[str, Any] | None = None,
                    incomplete: dict[str, Any] | None = None) -> dict[str, Any]:
    """The F.2 response object, echoing the request settings the client sent."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "model": ctx.model,
        "output": output,
        "usage": usage,
        "error": error,
        "incomplete_details": incomplete,
        "instructions": ctx.instructions,
        "metadata": ctx.metadata,
        "tools": ctx.tools,
        "tool_choice": ctx.tool_choice,
        "parallel_tool_calls": ctx.parallel_tool_calls,
        "temperature": ctx.temperature,
        "top_p": ctx.top_p,
        "max_output_tokens": ctx.max_output_tokens,
        "reasoning": ctx.reasoning,
        "text": ctx.text,
        "store": ctx.store,
        "background": False,
        "previous_response_id": None,
    }
