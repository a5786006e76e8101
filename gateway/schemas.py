"""Request body schemas, one per route: every field the gateway itself reads is type- and
range-checked here, at the edge of the route, so nothing behind it sees a wrong type.

Unknown fields are allowed (clients add fields, the upstream judges them). A failure is an
``InvalidRequest`` naming the field path (``messages.2.tool_calls``).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta, Raw, Struct

from gateway.errors import InvalidRequest

# Counts and token numbers stay inside signed 32 bits: larger is never meaningful.
Count = Annotated[int, Meta(ge=0, le=2**31 - 1)]
Positive = Annotated[int, Meta(ge=1, le=2**31 - 1)]
Name = Annotated[str, Meta(min_length=1)]
Obj = dict[str, Any]

T = TypeVar("T")


# ---------------------------------------------------------------- /v1/messages, count_tokens


class AnthropicMetadata(Struct):
    user_id: str | None = None


# The gateway passes these bodies through: what it does not read stays undecoded (Raw), so
# checking a long conversation costs a scan, not a second tree of Python objects.
class MessagesBody(Struct):
    model: Name
    messages: list[Raw]
    max_tokens: Positive = 4096
    stream: bool | None = None
    metadata: AnthropicMetadata | None = None


class CountTokensBody(Struct):
    model: Name
    messages: list[Raw] | None = None


# ---------------------------------------------------------------- /v1/chat/completions


class ImageUrl(Struct):
    url: str | None = None
    detail: str | None = None


class FileRef(Struct):
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class ChatPart(Struct):
    type: str | None = None
    text: str | None = None
    refusal: str | None = None
    image_url: ImageUrl | str | None = None
    file: FileRef | None = None


class CallFunction(Struct):
    name: str | None = None
    arguments: str | Obj | None = None


class ToolCall(Struct):
    id: str | None = None
    type: str | None = None
    function: CallFunction | None = None


class ChatMessage(Struct):
    role: str
    content: str | list[ChatPart] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    reasoning_content: str | None = None
    thinking_blocks: list[Obj] | None = None


class FunctionDef(Struct):
    name: str | None = None
    description: str | None = None
    parameters: Obj | None = None
    strict: bool | None = None


class ChatTool(Struct):
    type: str | None = None
    function: FunctionDef | None = None


class JsonSchemaFormat(Struct):
    name: str | None = None
    schema: Obj | None = None
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(Struct):
    type: str | None = None
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(Struct):
    include_usage: bool | None = None


class ChatBody(Struct):
    model: Name
    messages: list[ChatMessage]
    max_tokens: Positive | None = None
    max_completion_tokens: Positive | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    reasoning_effort: str | None = None
    n: Count | None = None
    stop: str | list[str] | None = None
    tools: list[ChatTool] | None = None
    tool_choice: str | Obj | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    temperature: float | None = None
    top_p: float | None = None
    user: str | None = None
    safety_identifier: str | None = None
    metadata: dict[str, str] | None = None


# ---------------------------------------------------------------- /v1/responses


class ResponsesPart(Struct):
    type: str | None = None
    text: str | None = None
    refusal: str | None = None
    image_url: str | None = None
    file_data: str | None = None
    file_url: str | None = None
    file_id: str | None = None
    filename: str | None = None


class ResponsesItem(Struct):
    type: str | None = None
    role: str | None = None
    content: str | list[ResponsesPart] | None = None
    id: str | None = None
    call_id: str | None = None
    name: str | None = None
    namespace: str | None = None
    arguments: str | None = None
    input: str | None = None
    output: str | list[ResponsesPart] | None = None
    summary: list[Obj] | None = None
    encrypted_content: str | None = None
    action: Obj | None = None


class Reasoning(Struct):
    effort: str | None = None
    summary: str | None = None


class TextFormat(Struct):
    type: str | None = None
    name: str | None = None
    schema: Obj | None = None
    strict: bool | None = None
    description: str | None = None


class TextOptions(Struct):
    format: TextFormat | None = None
    verbosity: str | None = None


class ResponsesTool(Struct):
    type: str | None = None
    name: str | None = None
    description: str | None = None
    parameters: Obj | None = None
    strict: bool | None = None


class ResponsesBody(Struct):
    model: Name
    input: str | list[ResponsesItem] | None = None
    instructions: str | None = None
    max_output_tokens: Positive | None = None
    stream: bool | None = None
    reasoning: Reasoning | None = None
    tools: list[ResponsesTool] | None = None
    tool_choice: str | Obj | None = None
    parallel_tool_calls: bool | None = None
    text: TextOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    previous_response_id: str | None = None
    store: bool | None = None
    background: bool | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    safety_identifier: str | None = None


# ---------------------------------------------------------------- checking

_AT = re.compile(r"^(.*?)(?: - at `\$(.*)`)?$", re.DOTALL)
_INDEX = re.compile(r"\[(\d+)\]")


def field_path(where: str) -> str:
    """``.messages[2].tool_calls`` -> ``messages.2.tool_calls``."""
    return _INDEX.sub(r".\1", where).lstrip(".")


def check(body: bytes, schema: type[T]) -> T:
    """Decodes ``body`` as ``schema``; raises InvalidRequest naming the failing field path
    (``param``), or saying the body is not JSON or is nested too deeply."""
    try:
        return msgspec.json.decode(body, type=schema)
    except msgspec.ValidationError as exc:
        reason, where = _AT.match(str(exc)).groups()  # type: ignore[union-attr]
        missing = re.match(r"Object missing required field `(.+)`", reason)
        path = field_path(where or "")
        if missing:
            path = f"{path}.{missing.group(1)}".lstrip(".")
            reason = "field required"
        if not path:
            raise InvalidRequest(f"Request body: {reason}") from None
        raise InvalidRequest(f"{path}: {reason}", param=path) from None
    except msgspec.DecodeError:
        raise InvalidRequest("Request body is not valid JSON.") from None
    except RecursionError:
        # msgspec gives up near Python's recursion limit (~1,000 levels), even in fields
        # it only skips: such a body is refused, not a crash.
        raise InvalidRequest("Request body is nested too deeply.") from None
