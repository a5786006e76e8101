"""OpenAI Responses API ↔ Anthropic Messages: the request mapping and the non-streaming
response (F.1, F.2, F.4); the stream lives in ``responses_stream``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from gateway.errors import InvalidRequest, PreviousResponseNotFound
from gateway.translate.common import (
    Block,
    accepts_prefill,
    apply_sampling,
    apply_thinking,
    as_dict,
    define_history_tools,
    dumps,
    file_block,
    image_block,
    input_schema,
    json_schema_format,
    output_limit,
    parse_arguments,
    sanitize_tool_id,
    sanitize_tool_name,
    text_block,
    tool_choice,
    user_metadata,
)
from gateway.translate.normalize import Message, drop_blank_text, normalize_messages
from gateway.translate.responses_stream import (
    ResponsesContext,
    ResponsesStreamTranslator,
    decode_reasoning,
)

__all__ = [
    "PreviousResponseNotFound",
    "ResponsesContext",
    "ResponsesStreamTranslator",
    "anthropic_to_responses",
    "responses_request_to_anthropic",
]

# Codex never sends max_output_tokens; Anthropic requires max_tokens (CLIProxyAPI: 32000).
DEFAULT_MAX_OUTPUT_TOKENS = 32000
_EPHEMERAL = {"type": "ephemeral"}
_WEB_SEARCH = {"type": "web_search_20250305", "name": "web_search"}
_CUSTOM_SCHEMA = {"type": "object", "properties": {"input": {"type": "string"}},
                  "required": ["input"]}
_TEXT_PARTS = ("input_text", "output_text", "text")
_OUTPUT_ITEMS = ("function_call_output", "custom_tool_call_output", "local_shell_call_output")


def responses_request_to_anthropic(
    body: dict[str, Any], *, adaptive_thinking: bool = False
) -> tuple[dict[str, Any], ResponsesContext]:
    """A Responses request body → (Anthropic Messages body, context for the response side)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("You must provide a model parameter.", param="model")
    if previous := body.get("previous_response_id"):
        raise PreviousResponseNotFound(f"Previous response with id '{previous}' not found.",
                                       param="previous_response_id")
    if body.get("background") is True:
        raise InvalidRequest("Background mode is not supported.", param="background")
    items = _input_items(body.get("input"))
    raw_tools = _raw_tools(body.get("tools"), items)
    tools, custom, namespaced = _tools(raw_tools)
    convert = _Converter(model)
    for item in items:
        convert.item(item)
    messages = normalize_messages(convert.turns, prefill=accepts_prefill(model))
    if not messages:
        raise InvalidRequest("input must contain at least one message.", param="input")
    limit, explicit = output_limit(body, ("max_output_tokens",), DEFAULT_MAX_OUTPUT_TOKENS)
    request: dict[str, Any] = {"model": model, "max_tokens": limit, "messages": messages}
    instructions = body.get("instructions")
    system = drop_blank_text([*text_block(instructions), *convert.system])
    if system:
        # Codex resends a long, stable prefix every turn: cache it.
        system[-1] = system[-1] | {"cache_control": _EPHEMERAL}
        request["system"] = system
    if body.get("stream") is True:
        request["stream"] = True
    apply_sampling(request, body)
    if tools:
        request["tools"] = tools
        if (choice := _tool_choice(body, tools, namespaced)) is not None:
            request["tool_choice"] = choice
    if metadata := user_metadata(body):
        request["metadata"] = metadata
    text = as_dict(body.get("text")) or None
    if fmt := json_schema_format(as_dict(text).get("format")):
        request["output_config"] = {"format": fmt}
    reasoning = as_dict(body.get("reasoning")) or None
    apply_thinking(request, as_dict(reasoning).get("effort"), explicit_max=explicit,
                   param="reasoning.effort", adaptive=adaptive_thinking)
    define_history_tools(request)
    # Top-level automatic caching marks the last cacheable block of the growing history.
    request["cache_control"] = _EPHEMERAL
    ctx = ResponsesContext(
        model=model, custom_tools=frozenset(custom), namespaced=namespaced,
        tool_ids=convert.tool_ids,
        metadata=body["metadata"] if isinstance(body.get("metadata"), dict) else {},
        tools=raw_tools, tool_choice=body.get("tool_choice") or "auto",
        parallel_tool_calls=body.get("parallel_tool_calls") is not False,
        instructions=instructions if isinstance(instructions, str) else None,
        temperature=_number(body.get("temperature")), top_p=_number(body.get("top_p")),
        max_output_tokens=limit if explicit else None, reasoning=reasoning, text=text,
        store=body.get("store") is True,
    )
    return request, ctx


def anthropic_to_responses(message: dict[str, Any], ctx: ResponsesContext, *,
                           response_id: str, created_at: int) -> dict[str, Any]:
    """A non-streaming Anthropic message → the F.2 response object.

    Replays the message through the stream translator so both paths build identical output.
    """
    translator = ResponsesStreamTranslator(ctx, response_id=response_id, created_at=created_at)
    for event, data in _as_events(message):
        translator.feed(event, data)
    assert translator.response is not None
    return translator.response


def _as_events(message: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "message_start", {"message": {**message, "content": []}}
    for index, block in enumerate(message.get("content") or []):
        kind = block.get("type")
        deltas: list[dict[str, Any]] = []
        if kind == "text":
            deltas = [{"type": "citations_delta", "citation": c}
                      for c in block.get("citations") or []]
            deltas.append({"type": "text_delta", "text": block.get("text", "")})
            block = {"type": "text", "text": ""}
        elif kind == "thinking":
            deltas = [{"type": "thinking_delta", "thinking": block.get("thinking", "")},
                      {"type": "signature_delta", "signature": block.get("signature", "")}]
            block = {"type": "thinking", "thinking": ""}
        elif kind in ("tool_use", "server_tool_use"):
            deltas = [{"type": "input_json_delta", "partial_json": dumps(block.get("input") or {})}]
            block = block | {"input": {}}
        yield "content_block_start", {"index": index, "content_block": block}
        for delta in deltas:
            yield "content_block_delta", {"index": index, "delta": delta}
        yield "content_block_stop", {"index": index}
    yield "message_delta", {"delta": {"stop_reason": message.get("stop_reason")},
                            "usage": message.get("usage")}
    yield "message_stop", {}


# -- tools -----------------------------------------------------------------------------------


def _input_items(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _raw_tools(tools: Any, items: list[dict[str, Any]]) -> list[Any]:
    # "Responses Lite" Codex may move tools into additional_tools input items (F.1.2).
    raw = list(tools) if isinstance(tools, list) else []
    for item in items:
        if item.get("type") == "additional_tools" and isinstance(item.get("tools"), list):
            raw += item["tools"]
    return raw


def _qualify(namespace: Any, name: str) -> str:
    if not isinstance(namespace, str) or not namespace:
        return name
    joiner = "" if namespace.endswith("_") else "__"
    return sanitize_tool_name(f"{namespace}{joiner}{name}")


def _tools(raw: list[Any]) -> tuple[list[dict[str, Any]], set[str], dict[str, tuple[str, str]]]:
    tools: dict[str, dict[str, Any]] = {}
    custom: set[str] = set()
    namespaced: dict[str, tuple[str, str]] = {}
    flat: list[tuple[str, dict[str, Any]]] = []
    for tool in raw:
        if not isinstance(tool, dict):
            continue
        if tool.get("type") == "namespace" and isinstance(tool.get("tools"), list):
            flat += [(str(tool.get("name") or ""), t) for t in tool["tools"] if isinstance(t, dict)]
        else:
            flat.append(("", tool))
    for namespace, tool in flat:
        kind, name = tool.get("type"), tool.get("name")
        if kind in ("web_search", "web_search_preview"):
            if tool.get("external_web_access") is not False:
                tools.setdefault("web_search", _WEB_SEARCH)
            continue
        # local_shell, image_generation, file_search, mcp, … have no Anthropic equivalent.
        if kind not in ("function", "custom") or not isinstance(name, str) or not name:
            continue
        qualified = _qualify(namespace, name)
        if namespace:
            namespaced[qualified] = (namespace, name)
        if kind == "custom":
            custom.add(qualified)
        tools.setdefault(qualified, _tool(qualified, tool))
    return list(tools.values()), custom, namespaced


def _tool(name: str, tool: dict[str, Any]) -> dict[str, Any]:
    description = tool.get("description")
    description = description if isinstance(description, str) else ""
    if tool.get("type") == "function":
        schema = input_schema(tool.get("parameters"))
    else:
        # Freeform tools become {"input": string}; the grammar goes into the description.
        schema = _CUSTOM_SCHEMA
        fmt = as_dict(tool.get("format"))
        if fmt.get("type") == "grammar" and fmt.get("definition"):
            description += (f"\n\nPut the raw tool input in the `input` string. It must match "
                            f"this {fmt.get('syntax', '')} grammar:\n```\n{fmt['definition']}\n```")
    entry: dict[str, Any] = {"name": name, "input_schema": schema}
    if description.strip():
        entry["description"] = description.strip()
    return entry


def _tool_choice(body: dict[str, Any], tools: list[dict[str, Any]],
                 namespaced: dict[str, tuple[str, str]]) -> dict[str, Any] | None:
    value, parallel = body.get("tool_choice"), body.get("parallel_tool_calls")
    if value is None and parallel is not False:
        return None
    name: str | None = None
    if isinstance(value, dict):
        kind = value.get("type")
        if kind in ("function", "custom") and isinstance(value.get("name"), str):
            name = _qualify(value.get("namespace"), value["name"])
        elif kind in ("web_search", "web_search_preview"):
            name = "web_search"
        elif kind == "allowed_tools":
            value = value.get("mode")
    if name not in {t["name"] for t in tools}:
        name = None  # forcing a tool we could not declare would be refused upstream
    return tool_choice(value, name, parallel)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


# -- input items -----------------------------------------------------------------------------


class _Converter:
    """Walks the input items in order, building rough turns (one per item, for
    ``normalize_messages``), the system blocks and the id map."""

    __slots__ = ("model", "system", "tool_ids", "turns")

    def __init__(self, model: str) -> None:
        self.model = model
        self.system: list[Block] = []
        self.tool_ids: dict[str, str] = {}
        self.turns: list[Message] = []

    def add(self, role: str, blocks: list[Block]) -> None:
        self.turns.append({"role": role, "content": blocks})

    def item(self, item: dict[str, Any]) -> None:
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            self._message(item)
        elif kind in ("function_call", "custom_tool_call", "local_shell_call"):
            self.add("assistant", [self._tool_use(kind, item)])
        elif kind in _OUTPUT_ITEMS:
            self.add("user", [self._tool_result(item)])
        elif kind == "reasoning":
            # Only our own blobs replay; summaries alone cannot be signed again.
            if block := decode_reasoning(item.get("encrypted_content"), self.model):
                self.add("assistant", [block])
        # web_search_call, compaction, item_reference, additional_tools (hoisted into tools)
        # and unknown item types carry nothing Claude can replay.

    def _message(self, item: dict[str, Any]) -> None:
        role, content = item.get("role"), item.get("content")
        if role in ("system", "developer"):
            self.system += _parts(content, images=False)
        elif role in ("user", "assistant"):
            self.add(role, _parts(content, images=role == "user"))

    def _call_id(self, item: dict[str, Any]) -> str:
        raw = str(item.get("call_id") or item.get("id") or "")
        clean = sanitize_tool_id(raw)
        if clean != raw:
            self.tool_ids[clean] = raw
        return clean

    def _tool_use(self, kind: str, item: dict[str, Any]) -> Block:
        name = str(item.get("name") or "")
        if kind == "local_shell_call":
            name, tool_input = "local_shell", item.get("action") or {}
        elif kind == "custom_tool_call":
            tool_input = {"input": str(item.get("input") or "")}
        else:
            tool_input = parse_arguments(item.get("arguments"))
        return {"type": "tool_use", "id": self._call_id(item),
                "name": _qualify(item.get("namespace"), name),
                "input": tool_input if isinstance(tool_input, dict) else {}}

    def _tool_result(self, item: dict[str, Any]) -> Block:
        block: Block = {"type": "tool_result", "tool_use_id": self._call_id(item)}
        output = item.get("output")
        if isinstance(output, list):
            block["content"] = _parts(output, images=True)
        elif isinstance(output, str):
            block["content"] = output
        elif output is not None:
            block["content"] = dumps(output)
        return block


def _parts(content: Any, *, images: bool) -> list[Block]:
    if not isinstance(content, list):
        return text_block(content)
    blocks: list[Block] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS:
            blocks += text_block(part.get("text"))
        elif kind == "refusal":
            blocks += text_block(part.get("refusal"))
        elif kind == "input_image" and images:
            blocks.append(image_block(part.get("image_url"), f"input.content[{j}].image_url"))
        elif kind == "input_file" and images:
            blocks.append(file_block(part.get("file_data"), part.get("file_url"),
                                     f"input.content[{j}]"))
    return blocks
