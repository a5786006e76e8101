"""OpenAI Chat Completions ↔ Anthropic Messages: request, response and stream (protocol C)."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import InvalidRequest
from gateway.translate.common import (
    Block,
    accepts_prefill,
    anthropic_error_fields,
    apply_sampling,
    apply_thinking,
    as_dict,
    chat_usage,
    define_history_tools,
    dumps,
    empty_usage,
    file_block,
    image_block,
    input_schema,
    json_schema_format,
    merge_usage,
    openai_error,
    output_limit,
    parse_arguments,
    reasoning_tokens,
    sanitize_tool_id,
    text_block,
    tool_choice,
    user_metadata,
)
from gateway.translate.normalize import Message, is_blank, normalize_messages

DEFAULT_MAX_TOKENS = 8192
_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "model_context_window_exceeded": "length",
}


def finish_reason(stop_reason: Any) -> str:
    return _FINISH_REASONS.get(stop_reason, "stop")


# -- request ---------------------------------------------------------------------------------


def chat_request_to_anthropic(
    body: dict[str, Any], *, adaptive_thinking: bool = False
) -> dict[str, Any]:
    """A Chat Completions request body → an Anthropic Messages request body (C1).

    ``adaptive_thinking`` is for models that only accept ``thinking: {type: adaptive}``.
    """
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("You must provide a model parameter.", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty array.", param="messages")
    if body.get("n") not in (None, 1):
        raise InvalidRequest("Only n=1 is supported.", param="n")
    system, history = _convert_messages(messages)
    turns = normalize_messages(history, prefill=accepts_prefill(model))
    if not turns:
        raise InvalidRequest("messages must contain a user or assistant message with content.",
                             param="messages")
    limit, explicit = output_limit(body, ("max_completion_tokens", "max_tokens"),
                                   DEFAULT_MAX_TOKENS)
    request: dict[str, Any] = {"model": model, "max_tokens": limit, "messages": turns}
    if system:
        request["system"] = "\n".join(system)
    if body.get("stream") is True:
        request["stream"] = True
    if stops := _stop_sequences(body.get("stop")):
        request["stop_sequences"] = stops
    apply_sampling(request, body)
    if tools := _tools(body.get("tools")):
        request["tools"] = tools
        if (choice := _tool_choice(body)) is not None:
            request["tool_choice"] = choice
    if metadata := user_metadata(body):
        request["metadata"] = metadata
    if fmt := json_schema_format(body.get("response_format")):
        request["output_config"] = {"format": fmt}
    apply_thinking(request, body.get("reasoning_effort"), explicit_max=explicit,
                   param="reasoning_effort", adaptive=adaptive_thinking)
    define_history_tools(request)
    return request


def _convert_messages(messages: list[Any]) -> tuple[list[str], list[Message]]:
    """(system texts, one rough Anthropic turn per message) for ``normalize_messages``."""
    system: list[str] = []
    turns: list[Message] = []

    def add(role: str, blocks: list[Block]) -> None:
        turns.append({"role": role, "content": blocks})

    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest("Each message must be an object.", param=f"messages[{i}]")
        role, content = message.get("role"), message.get("content")
        if role in ("system", "developer"):
            system.extend(t for t in _texts(content) if not is_blank(t))
        elif role == "user":
            add("user", _user_blocks(content, f"messages[{i}].content"))
        elif role == "assistant":
            add("assistant", _assistant_blocks(message, i))
        elif role == "tool":
            add("user", [_tool_result(message)])
        else:
            raise InvalidRequest(f"Unsupported message role {role!r}.", param=f"messages[{i}].role")
    return system, turns


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    parts = content if isinstance(content, list) else []
    return [p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)]


def _user_blocks(content: Any, param: str) -> list[Block]:
    if not isinstance(content, list):
        return text_block(content)
    blocks: list[Block] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks += text_block(part.get("text"))
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            blocks.append(image_block(url, f"{param}[{j}].image_url"))
        elif kind == "file":
            file = as_dict(part.get("file"))
            blocks.append(file_block(file.get("file_data"), None, f"{param}[{j}].file"))
        # input_audio and unknown parts are dropped: Claude takes no audio input.
    return blocks


def _assistant_blocks(message: dict[str, Any], i: int) -> list[Block]:
    # litellm-style signed thinking blocks, so tool loops can keep thinking on.
    blocks = [b for b in message.get("thinking_blocks") or [] if isinstance(b, dict)
              and ((b.get("type") == "thinking" and isinstance(b.get("signature"), str))
                   or b.get("type") == "redacted_thinking")]
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(p.get("text") or p.get("refusal") or "" for p in content
                          if isinstance(p, dict))
    blocks += text_block(content)
    for call in message.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequest("Tool calls need a function name.",
                                 param=f"messages[{i}].tool_calls")
        blocks.append({"type": "tool_use", "id": sanitize_tool_id(str(call.get("id") or "")),
                       "name": function["name"],
                       "input": parse_arguments(function.get("arguments"))})
    return blocks


def _tool_result(message: dict[str, Any]) -> Block:
    block: Block = {"type": "tool_result",
                    "tool_use_id": sanitize_tool_id(str(message.get("tool_call_id") or ""))}
    content = message.get("content")
    if isinstance(content, str):
        block["content"] = content
    elif isinstance(content, list):
        block["content"] = [{"type": "text", "text": t} for t in _texts(content)]
    return block


def _stop_sequences(stop: Any) -> list[str]:
    items = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    return [s for s in items if isinstance(s, str) and s.strip()]


def _tools(tools: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for tool in tools if isinstance(tools, list) else []:
        # Only function tools have an Anthropic equivalent; custom chat tools are dropped.
        if not isinstance(tool, dict) or tool.get("type") != "function":
            continue
        function = as_dict(tool.get("function"))
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("Function tools need a name.", param="tools")
        entry: dict[str, Any] = {"name": name,
                                 "input_schema": input_schema(function.get("parameters"))}
        if isinstance(function.get("description"), str) and function["description"]:
            entry["description"] = function["description"]
        out.append(entry)
    return out


def _tool_choice(body: dict[str, Any]) -> dict[str, Any] | None:
    value, parallel = body.get("tool_choice"), body.get("parallel_tool_calls")
    if value is None and parallel is not False:
        return None
    name = None
    if isinstance(value, dict):
        if value.get("type") == "function" and isinstance(value.get("function"), dict):
            name = value["function"].get("name")
        elif value.get("type") == "allowed_tools" and isinstance(value.get("allowed_tools"), dict):
            value = value["allowed_tools"].get("mode")
    return tool_choice(value, name if isinstance(name, str) else None, parallel)


# -- response --------------------------------------------------------------------------------


def anthropic_to_chat_response(message: dict[str, Any], *, created: int) -> dict[str, Any]:
    """A non-streaming Anthropic message → a ``chat.completion`` object (C2)."""
    texts: list[str] = []
    reasoning: list[str] = []
    thinking_blocks: list[Block] = []
    calls: list[dict[str, Any]] = []
    for block in message.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind in ("thinking", "redacted_thinking"):
            reasoning.append(block.get("thinking", ""))
            thinking_blocks.append(block)
        elif kind == "tool_use":
            calls.append({"id": block["id"], "type": "function",
                          "function": {"name": block["name"],
                                       "arguments": dumps(block.get("input") or {})}})
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None,
                             "refusal": None}
    if calls:
        reply["tool_calls"] = calls
    if thinking_blocks:
        reply["reasoning_content"] = "".join(reasoning)
        reply["thinking_blocks"] = thinking_blocks
    usage = empty_usage()
    merge_usage(usage, message.get("usage"))
    return {
        "id": f"chatcmpl-{message.get('id', '')}",
        "object": "chat.completion",
        "created": created,
        "model": message.get("model", ""),
        "choices": [{"index": 0, "message": reply, "logprobs": None,
                     "finish_reason": finish_reason(message.get("stop_reason"))}],
        "usage": chat_usage(usage, reasoning_tokens(message.get("usage"))),
    }


# -- stream ----------------------------------------------------------------------------------


class ChatStreamTranslator:
    """Anthropic SSE events → ``chat.completion.chunk`` lines, one upstream event at a time.

    ``usage`` holds the Anthropic-side cumulative counts seen so far, for settlement.
    """

    __slots__ = ("_created", "_done", "_id", "_include_usage", "_model", "_stop_reason",
                 "_thinking_tokens", "_tool_index", "usage")

    def __init__(self, *, model: str, include_usage: bool, created: int) -> None:
        self.usage = empty_usage()
        self._model = model
        self._include_usage = include_usage
        self._created = created
        self._id = "chatcmpl-"
        # Anthropic block index → OpenAI tool_calls[].index, which counts tool calls only.
        self._tool_index: dict[int, int] = {}
        self._stop_reason: Any = None
        self._thinking_tokens: int | None = None
        self._done = False

    def feed(self, event: str, data: dict[str, Any]) -> bytes:
        if self._done:
            return b""
        if event == "message_start":
            message = data.get("message") or {}
            self._id = f"chatcmpl-{message.get('id', '')}"
            merge_usage(self.usage, message.get("usage"))
            return self._chunk({"role": "assistant", "content": ""})
        if event == "content_block_start":
            return self._block_start(data.get("index", 0), data.get("content_block") or {})
        if event == "content_block_delta":
            return self._delta(data.get("index", 0), data.get("delta") or {})
        if event == "message_delta":
            self._stop_reason = (data.get("delta") or {}).get("stop_reason") or self._stop_reason
            merge_usage(self.usage, data.get("usage"))
            self._thinking_tokens = reasoning_tokens(data.get("usage")) or self._thinking_tokens
            return b""
        if event == "message_stop":
            return self._finish()
        if event == "error":
            return self.error(data)
        return b""

    def error(self, error: dict[str, Any]) -> bytes:
        """One OpenAI-shaped error chunk; openai-python raises APIError on it."""
        self._done = True
        _, body = openai_error(*anthropic_error_fields(error))
        return b"data: " + orjson.dumps({"error": body}) + b"\n\n"

    def _block_start(self, index: int, block: dict[str, Any]) -> bytes:
        if block.get("type") != "tool_use":
            return b""
        position = self._tool_index[index] = len(self._tool_index)
        return self._chunk({"tool_calls": [{
            "index": position, "id": block.get("id", ""), "type": "function",
            "function": {"name": block.get("name", ""), "arguments": ""}}]})

    def _delta(self, index: int, delta: dict[str, Any]) -> bytes:
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            return self._chunk({"content": delta["text"]})
        if kind == "thinking_delta" and delta.get("thinking"):
            return self._chunk({"reasoning_content": delta["thinking"]})
        if kind == "input_json_delta" and index in self._tool_index and delta.get("partial_json"):
            return self._chunk({"tool_calls": [{"index": self._tool_index[index],
                                                "function": {"arguments": delta["partial_json"]}}]})
        return b""

    def _finish(self) -> bytes:
        self._done = True
        out = self._chunk({}, finish_reason(self._stop_reason))
        if self._include_usage:
            out += self._line({**self._envelope([]),
                               "usage": chat_usage(self.usage, self._thinking_tokens)})
        return out + b"data: [DONE]\n\n"

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        payload = self._envelope([{"index": 0, "delta": delta, "finish_reason": finish,
                                   "logprobs": None}])
        if self._include_usage:
            payload["usage"] = None
        return self._line(payload)

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self._id, "object": "chat.completion.chunk", "created": self._created,
                "model": self._model, "choices": choices}

    @staticmethod
    def _line(payload: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(payload) + b"\n\n"
