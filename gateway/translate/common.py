"""Pieces shared by the Chat Completions and Responses translators.

Content parts, tool ids, history tools, thinking budgets, usage and error mapping.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from typing import Any

import orjson

from gateway.errors import InvalidRequest
from gateway.wire import OPENAI_ERRORS

Block = dict[str, Any]

USAGE_FIELDS = (
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "output_tokens",
)
MIN_THINKING_BUDGET = 1024
# Room left for the visible answer when we raise a defaulted max_tokens to fit a budget.
ANSWER_TOKENS = 8192
THINKING_BUDGETS = {
    "minimal": 1024,
    "low": 1024,
    "medium": 8192,
    "high": 24576,
    "xhigh": 32768,
    "max": 32768,
}
# Adaptive models take output_config.effort instead of a budget (A2: low…max).
_ADAPTIVE_EFFORT = {"minimal": "low", "low": "low", "medium": "medium", "high": "high",
                    "xhigh": "xhigh", "max": "max"}

_TOOL_ID_OK = re.compile(r"^[a-zA-Z0-9_-]+$")
_TOOL_ID_BAD = re.compile(r"[^a-zA-Z0-9_-]")
# One- or two-digit runs: the version parts of a model id, never its 8-digit date.
_VERSION_PARTS = re.compile(r"(?<![0-9])[0-9]{1,2}(?![0-9])")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_PHONE = re.compile(r"^\+?[\d\s().-]{7,}$")


def model_generation(model_id: str) -> tuple[int, int] | None:
    """(major, minor) of a Claude model id (``claude-opus-4-5-20251101`` → (4, 5),
    ``claude-sonnet-5`` → (5, 0)); None for a name without a version."""
    parts = [int(p) for p in _VERSION_PARTS.findall(model_id)[:2]]
    if not parts:
        return None
    return parts[0], parts[1] if len(parts) > 1 else 0


def accepts_prefill(model_id: str) -> bool:
    """Whether the model continues a final assistant turn; Claude 4.6 and later (and names
    without a version, such as claude-mythos-preview) answer such a request with 400."""
    generation = model_generation(model_id)
    return generation is not None and generation < (4, 6)


def sanitize_tool_id(raw: str) -> str:
    """Map a client tool-call id onto Anthropic's ``^[a-zA-Z0-9_-]+$``.

    Valid ids pass unchanged; others get a short digest of the original so two ids that
    differ only in forbidden characters never collide, and the same id always maps the same
    way on every turn (calls and their outputs must keep matching).
    """
    if _TOOL_ID_OK.match(raw):
        return raw
    digest = hashlib.blake2b(raw.encode(), digest_size=4).hexdigest()
    return f"{_TOOL_ID_BAD.sub('_', raw)}_{digest}"


def sanitize_tool_name(raw: str) -> str:
    return _TOOL_ID_BAD.sub("_", raw) or "tool"


def parse_arguments(raw: Any) -> dict[str, Any]:
    """Tool-call arguments (a JSON string) as the object Anthropic requires.

    Anything that is not a JSON object is kept verbatim under ``raw`` rather than refused:
    clients resend their whole history every turn, so a refusal would wedge the session.
    """
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str) or not raw.strip():
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"raw": raw}
    return value if isinstance(value, dict) else {"raw": raw}


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


# -- content parts -------------------------------------------------------------------------


def _data_url(url: str, param: str) -> tuple[str, str]:
    header, sep, data = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise InvalidRequest("Only base64 data: URLs are supported.", param=param)
    return header[5:-7] or "application/octet-stream", data


def image_block(url: Any, param: str) -> Block:
    """``image_url``/``input_image`` URL → Anthropic image block (base64 or url source)."""
    if not isinstance(url, str) or not url:
        raise InvalidRequest("Image parts need an image_url.", param=param)
    if url.startswith("data:"):
        media_type, data = _data_url(url, param)
        return {"type": "image", "source": {"type": "base64", "media_type": media_type,
                                            "data": data}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise InvalidRequest("Image URLs must be data: or http(s) URLs.", param=param)


def file_block(file_data: Any, file_url: Any, param: str) -> Block:
    """A file part (chat ``file`` or Responses ``input_file``) → document or image block."""
    if isinstance(file_url, str) and file_url.startswith(("http://", "https://")):
        return {"type": "document", "source": {"type": "url", "url": file_url}}
    if not isinstance(file_data, str) or not file_data:
        raise InvalidRequest("File parts need inline file_data; file ids are not supported.",
                             param=param)
    if not file_data.startswith("data:"):
        # openai-python documents file_data as a data: URL, but bare base64 is common.
        file_data = "data:application/pdf;base64," + file_data
    media_type, data = _data_url(file_data, param)
    if media_type.startswith("image/"):
        return image_block(file_data, param)
    if media_type.startswith("text/"):
        try:
            text = base64.b64decode(data, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise InvalidRequest("file_data is not valid base64 text.", param=param) from exc
        return {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                               "data": text}}
    return {"type": "document", "source": {"type": "base64", "media_type": media_type,
                                           "data": data}}


def input_schema(parameters: Any) -> dict[str, Any]:
    """A function's JSON Schema as Anthropic's ``input_schema`` (which must be an object)."""
    if not isinstance(parameters, dict) or not parameters:
        return {"type": "object", "properties": {}}
    return parameters if "type" in parameters else {"type": "object", **parameters}


def text_block(text: Any) -> list[Block]:
    """Zero or one text block; blank ones are left for ``normalize_messages`` to drop."""
    return [{"type": "text", "text": text}] if isinstance(text, str) else []


# -- history tools -------------------------------------------------------------------------


def define_history_tools(request: dict[str, Any]) -> None:
    """Anthropic refuses tool_use/tool_result blocks when no tools are defined: declare
    inert stubs for the names the history uses and forbid new calls."""
    if request.get("tools"):
        return
    # After normalize_messages() every tool_result has its tool_use, so the calls suffice.
    names = dict.fromkeys(block["name"] for message in request["messages"]
                          for block in message["content"] if block.get("type") == "tool_use")
    if names:
        stub_schema = {"type": "object", "properties": {}}
        request["tools"] = [{"name": name, "input_schema": stub_schema} for name in names]
        request["tool_choice"] = {"type": "none"}


# -- sampling, thinking, metadata ----------------------------------------------------------


def tool_choice(value: Any, name: str | None, parallel: Any) -> dict[str, Any]:
    """OpenAI tool_choice (already reduced to a keyword and optional name) → Anthropic."""
    if name is not None:
        choice: dict[str, Any] = {"type": "tool", "name": name}
    elif value in ("auto", "none"):
        choice = {"type": value}
    elif value == "required":
        choice = {"type": "any"}
    else:
        choice = {"type": "auto"}
    if parallel is False and choice["type"] != "none":
        choice["disable_parallel_tool_use"] = True
    return choice


def apply_sampling(request: dict[str, Any], body: Mapping[str, Any]) -> None:
    temperature = body.get("temperature")
    top_p = body.get("top_p")
    if isinstance(temperature, int | float) and not isinstance(temperature, bool):
        request["temperature"] = min(float(temperature), 1.0)
    # Newer Claude models refuse temperature and top_p together; temperature wins.
    elif isinstance(top_p, int | float) and not isinstance(top_p, bool):
        request["top_p"] = float(top_p)


def apply_thinking(request: dict[str, Any], effort: Any, *, explicit_max: bool, param: str,
                   adaptive: bool = False) -> None:
    """Map an OpenAI reasoning effort onto ``thinking`` (F.4.2); call after messages are set.

    A client-set max_tokens is a hard cap on thinking + answer (as OpenAI counts it), so the
    budget shrinks to half of it, or thinking is skipped below 2×1024. A defaulted max_tokens
    is raised to budget + ANSWER_TOKENS instead.
    """
    if effort is None or effort == "none":
        return
    if effort not in THINKING_BUDGETS:
        raise InvalidRequest(f"Unsupported reasoning effort {effort!r}.", param=param)
    if _final_assistant_turn_lacks_thinking(request["messages"]):
        # The API demands the final assistant turn open with its signed thinking block.
        return
    if adaptive:
        request["thinking"] = {"type": "adaptive"}
        request.setdefault("output_config", {})["effort"] = _ADAPTIVE_EFFORT[effort]
    else:
        budget = THINKING_BUDGETS[effort]
        limit: int = request["max_tokens"]
        if limit <= budget and not explicit_max:
            request["max_tokens"] = budget + ANSWER_TOKENS
        elif limit <= budget:
            if limit < 2 * MIN_THINKING_BUDGET:
                return
            budget = limit // 2
        request["thinking"] = {"type": "enabled", "budget_tokens": budget}
    for key in ("temperature", "top_p", "top_k"):
        request.pop(key, None)
    choice = request.get("tool_choice")
    if choice and choice["type"] in ("any", "tool"):
        # Thinking may not be combined with forced tool use.
        request["tool_choice"] = {k: v for k, v in choice.items() if k != "name"} | {"type": "auto"}


def fit_output_limit(request: dict[str, Any], limit: int) -> None:
    """Lowers a max_tokens the gateway chose (the client named none) to ``limit``, the
    model's output limit or the operator's cap, keeping a thinking budget below it: the
    gateway must never refuse a value it picked itself."""
    if request["max_tokens"] <= limit:
        return
    request["max_tokens"] = limit
    thinking = request.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        if limit < 2 * MIN_THINKING_BUDGET:
            del request["thinking"]
        else:
            room = max(limit - ANSWER_TOKENS, limit // 2)  # keep room for the answer
            thinking["budget_tokens"] = min(thinking["budget_tokens"], room)


def _final_assistant_turn_lacks_thinking(messages: list[dict[str, Any]]) -> bool:
    # The final assistant turn is a prefill, or the one whose calls the tool loop answers.
    last = next((m for m in reversed(messages) if m["role"] == "assistant"), None)
    if last is None or not (last is messages[-1]
                            or any(b.get("type") == "tool_use" for b in last["content"])):
        return False
    return last["content"][0].get("type") not in ("thinking", "redacted_thinking")


def user_metadata(body: Mapping[str, Any]) -> dict[str, str] | None:
    """``user`` → metadata.user_id, unless it looks like personal data (A2 forbids it)."""
    user = body.get("user") or body.get("safety_identifier")
    if not isinstance(user, str) or _EMAIL.search(user) or _PHONE.match(user):
        return None
    return {"user_id": user}


def output_limit(body: Mapping[str, Any], keys: tuple[str, ...], default: int) -> tuple[int, bool]:
    for key in keys:
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidRequest(f"{key} must be a positive integer.", param=key)
        return value, True
    return default, False


def json_schema_format(fmt: Any) -> dict[str, Any] | None:
    """``text.format`` / ``response_format`` json_schema → ``output_config.format``."""
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        nested = fmt.get("json_schema")  # Chat nests it; Responses does not.
        schema = nested.get("schema") if isinstance(nested, dict) else fmt.get("schema")
        if isinstance(schema, dict):
            return {"type": "json_schema", "schema": schema}
    return None


# -- usage -----------------------------------------------------------------------------------


def empty_usage() -> dict[str, int]:
    return dict.fromkeys(USAGE_FIELDS, 0)


def merge_usage(target: dict[str, int], source: Any) -> None:
    """Overwrite with the fields present: message_delta counts are cumulative (A4)."""
    if not isinstance(source, dict):
        return
    for field in USAGE_FIELDS:
        value = source.get(field)
        if isinstance(value, int):
            target[field] = value


def total_input(usage: Mapping[str, int]) -> int:
    return (usage["input_tokens"] + usage["cache_creation_input_tokens"]
            + usage["cache_read_input_tokens"])


def reasoning_tokens(raw_usage: Any) -> int | None:
    """Anthropic's own thinking-token breakdown, when the upstream reports one."""
    details = raw_usage.get("output_tokens_details") if isinstance(raw_usage, dict) else None
    value = details.get("thinking_tokens") if isinstance(details, dict) else None
    return value if isinstance(value, int) else None


def chat_usage(usage: Mapping[str, int], thinking: int | None = None) -> dict[str, Any]:
    """C4: OpenAI counts cached tokens inside prompt_tokens; Anthropic reports them apart."""
    prompt = total_input(usage)
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": usage["output_tokens"],
        "total_tokens": prompt + usage["output_tokens"],
        "prompt_tokens_details": {"cached_tokens": usage["cache_read_input_tokens"],
                                  "cache_write_tokens": usage["cache_creation_input_tokens"]},
    }
    if thinking is not None:
        out["completion_tokens_details"] = {"reasoning_tokens": thinking}
    return out


# -- errors ----------------------------------------------------------------------------------

# Anthropic error.type → (OpenAI-facing status, type, code). F.5 / C5.
_STATUS_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                 403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                 429: "rate_limit_error", 529: "overloaded_error"}
_CONTEXT_OVERFLOW = ("prompt is too long", "exceed context limit", "context window")


def is_context_overflow(message: str) -> bool:
    lowered = message.lower()
    return any(marker in lowered for marker in _CONTEXT_OVERFLOW)


def anthropic_error_fields(error: Mapping[str, Any]) -> tuple[str, str]:
    """(type, message) of an Anthropic error body or its inner ``error`` object."""
    inner = error.get("error")
    if isinstance(inner, dict):
        error = inner
    err_type, message = error.get("type"), error.get("message")
    return (err_type if isinstance(err_type, str) else "api_error",
            message if isinstance(message, str) else "Upstream error.")


def openai_error(err_type: str, message: str, status: int = 500) -> tuple[int, dict[str, Any]]:
    """(status, inner OpenAI error object) for an Anthropic error type and message."""
    mapped_status, oai_type, code = OPENAI_ERRORS.get(err_type, (None, err_type, None))
    if err_type == "invalid_request_error" and is_context_overflow(message):
        code = "context_length_exceeded"
    out_status = mapped_status or {413: 400, 529: 503}.get(status, status)
    return out_status, {"message": message, "type": oai_type, "code": code, "param": None}


def anthropic_error_to_openai(status: int, body: bytes) -> tuple[int, dict[str, Any]]:
    """An upstream error response → (status, OpenAI ``{"error": {...}}`` body)."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        err_type, message = anthropic_error_fields(parsed)
    else:
        err_type = _STATUS_TYPES.get(status, "api_error")
        text = body.decode(errors="replace").strip()[:1000]
        message = text or f"Upstream returned HTTP {status}."
    out_status, error = openai_error(err_type, message, status)
    return out_status, {"error": error}
