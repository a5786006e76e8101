"""Pure incremental SSE scanning: the one usage rule of a stream, and event splitting.

``UsageScanner`` holds the billing rule of an Anthropic stream. On the passthrough route it
reads the bytes forwarded untouched and decodes only the small ``message_start`` /
``message_delta`` / ``error`` payloads (content deltas are skipped by a byte search, so the
stream is never parsed and re-encoded); on translated routes, whose events are parsed
anyway, it observes the parsed events instead.
"""

from __future__ import annotations

from typing import Any

import orjson

# Event lines we must decode the following data line of.
_WANTED = {b"message_start": 1, b"message_delta": 2, b"error": 3, b"message_stop": 4}
_MARKERS = (b"event: message_", b"event: error", b"event:message_", b"event:error")
# One per content delta event (in its data line); counted with bytes.count, never parsed.
_DELTA_MARK = b'"type":"content_block_delta"'
_SEAM = len(_DELTA_MARK) - 1
# A delta's event line, between raw newlines (content never holds one: JSON escapes it). One
# byte longer than the seam, so an occurrence is never counted twice.
_DELTA_LINE = b"\nevent: content_block_delta\n"
assert len(_DELTA_LINE) == _SEAM + 1
# The fewest bytes of framing around one delta's content: the data line's prefix, the JSON
# envelope of a text delta at index 0 and the blank line, without the event line some
# upstreams omit (every other delta kind and index is longer).
DELTA_FRAMING = 88
# A partial line longer than this cannot be an event line; it is content to skip.
_MAX_EVENT_LINE = 64
_KINDS = {"message_start": 1, "message_delta": 2, "error": 3, "message_stop": 4}


class UsageScanner:
    """Feeds on arbitrary chunks of an Anthropic SSE stream (``feed``) or on its parsed
    events (``observe``); any chunking gives one result."""

    __slots__ = (
        "_buf", "_pending", "_seam", "_skip", "bytes", "content_end", "delta_lines", "deltas",
        "ended", "error",
        "forwarded", "head_bytes", "model", "start", "stop_reason", "usage",
    )  # fmt: skip

    def __init__(self) -> None:
        self._buf = b""  # the incomplete last line, when it may matter
        self._skip = False  # inside a long line that does not matter
        self._pending = 0  # which data line to decode next (0: none)
        self.start: dict[str, Any] = {}
        self.usage: dict[str, Any] = {}
        self.model: str | None = None
        self.stop_reason: str | None = None
        self.error: dict[str, Any] | None = None
        self._seam = b""  # the last bytes fed, shorter than the delta marker
        self.bytes = 0  # every byte fed
        self.deltas = 0  # content delta events seen
        self.delta_lines = 0  # their event lines seen (some upstreams send none)
        self.head_bytes = 0  # bytes before the first delta (message_start and the like)
        self.ended = False  # message_stop or error seen: the answer is complete
        self.forwarded: int | None = None  # exact content bytes, when events are observed
        # Where the upstream's error event began: its bytes are no content of the answer.
        self.content_end: int | None = None

    def feed(self, chunk: bytes) -> None:
        # The marker may straddle two chunks: search the previous chunk's last bytes too.
        seam = self._seam + chunk if self._seam else chunk
        n = seam.count(_DELTA_MARK)
        if n:
            if not self.deltas:
                self.head_bytes = self.bytes - len(self._seam) + seam.find(_DELTA_MARK)
            self.deltas += n
        self.delta_lines += seam.count(_DELTA_LINE)
        self._seam = seam[-_SEAM:]
        self.bytes += len(chunk)
        if not self._pending and not self._buf and not self._skip:
            # Fast path: most chunks are content deltas with no event we decode.
            if not any(m in chunk for m in _MARKERS):
                self._remember_tail(chunk, chunk.rfind(b"\n"))
                return
        data = self._buf + chunk if self._buf else chunk
        self._buf = b""
        start = 0
        if self._skip:
            nl = data.find(b"\n")
            if nl < 0:
                return
            self._skip = False
            start = nl + 1
        last_nl = data.rfind(b"\n")
        if last_nl >= start:
            at = self.bytes - len(data) + start  # the stream offset of each line
            for line in data[start:last_nl].split(b"\n"):
                self._line(line.rstrip(b"\r"), at)
                at += len(line) + 1
        self._remember_tail(data, max(last_nl, start - 1))

    def _remember_tail(self, data: bytes, last_nl: int) -> None:
        tail = data[last_nl + 1 :]
        if not tail:
            return
        if self._pending or len(tail) <= _MAX_EVENT_LINE:
            self._buf = tail
        else:
            self._skip = True

    def observe(self, event: str, data: dict[str, Any]) -> None:
        """One parsed event of the stream, in place of its bytes."""
        if event == "content_block_delta":
            self.forwarded = (self.forwarded or 0) + _delta_bytes(data)
            return
        kind = _KINDS.get(event)
        if kind:
            self._apply(kind, data)

    def _line(self, line: bytes, at: int) -> None:
        if line.startswith(b"event:"):
            self._pending = _WANTED.get(line[6:].strip(), 0)
            if self._pending == 3 and self.content_end is None:
                self.content_end = at
            if self._pending == 4:
                self._pending, self.ended = 0, True
        elif self._pending and line.startswith(b"data:"):
            kind, self._pending = self._pending, 0
            try:
                payload = orjson.loads(line[5:])
            except orjson.JSONDecodeError:
                return
            if isinstance(payload, dict):
                self._apply(kind, payload)

    def _apply(self, kind: int, payload: dict[str, Any]) -> None:
        if kind == 1:
            message = payload.get("message") or {}
            self.model = message.get("model")
            self.start = dict(message.get("usage") or {})
        elif kind == 2:
            # Cumulative: the last message_delta wins field by field.
            self.usage.update(payload.get("usage") or {})
            delta = payload.get("delta") or {}
            self.stop_reason = delta.get("stop_reason") or self.stop_reason
        elif kind == 3:
            self.error = payload.get("error") or {"type": "api_error", "message": ""}
            self.ended = True
        else:
            self.ended = True

    @property
    def final(self) -> bool:
        """The upstream reported its final output count (message_delta's output_tokens)."""
        return "output_tokens" in self.usage

    def content_bytes(self) -> int:
        """The content bytes forwarded: counted exactly from observed events, else an upper
        bound from the bytes since the first delta up to an upstream error event, less the
        least framing each delta has."""
        if self.forwarded is not None:
            return self.forwarded
        if not self.deltas:
            return 0
        # head_bytes ends at the first delta's marker, past its 'data: {' prefix.
        framing = self.deltas * DELTA_FRAMING - len(b"data: {")
        # Delta event lines are framing too, but for the first delta's, which came before
        # head_bytes (when it had none, one line too few is taken off: never too many).
        framing += max(0, self.delta_lines - 1) * (len(_DELTA_LINE) - 1)
        end = self.bytes if self.content_end is None else self.content_end
        return max(0, end - self.head_bytes - framing)

    def billed_usage(self) -> dict[str, Any]:
        """The billing rule: message_delta values, falling back to message_start's."""
        merged = dict(self.start)
        merged.update(self.usage)
        return merged

    def usage_now(self, max_tokens: int | None) -> dict[str, Any]:
        """What the stream is billed for at this point: the reported usage, with the output
        counted from the forwarded content until the final count arrives."""
        return with_forwarded_output(
            self.billed_usage(), self.final, self.content_bytes(), max_tokens
        )


def _delta_bytes(data: dict[str, Any]) -> int:
    """The content bytes of one content_block_delta: text, thinking or tool-input JSON."""
    delta = data.get("delta")
    if not isinstance(delta, dict):
        return 0
    for name in ("text", "thinking", "partial_json"):
        value = delta.get(name)
        if isinstance(value, str):
            return len(value.encode())
    return 0


def forwarded_tokens(content_bytes: int) -> int:
    """Output tokens billed for forwarded content whose final count never came: one per
    3 bytes, rounded up (a token is 3-4 bytes of English text, fewer of code or other
    scripts' UTF-8), so never fewer than the customer received."""
    return -(-content_bytes // 3)


def with_forwarded_output(
    usage: dict[str, Any], final: bool, content_bytes: int, max_tokens: int | None
) -> dict[str, Any]:
    """``usage`` when the upstream's final message_delta reported output (``final``);
    otherwise with the output counted from the forwarded content (capped at max_tokens)
    when that is more than the upstream reported so far."""
    if final:
        return usage
    estimate = forwarded_tokens(content_bytes)
    if max_tokens:
        estimate = min(estimate, max_tokens)
    reported = usage.get("output_tokens") or 0
    if estimate <= reported:
        return usage
    return {**usage, "output_tokens": estimate}


def json_object(raw: bytes) -> dict[str, Any] | None:
    """``raw`` as a JSON object; None when it is anything else."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return payload if isinstance(payload, dict) else None


def usage_from_message(body: bytes) -> tuple[dict[str, Any], str | None]:
    """Usage and model of a non-streamed Messages response (empty when unparsable)."""
    message = json_object(body)
    if message is None:
        return {}, None
    return dict(message.get("usage") or {}), message.get("model")


class EventSplitter:
    """Splits an SSE byte stream into ``(event, data)`` pairs for the translated routes."""

    __slots__ = ("_buf", "_data", "_event")

    def __init__(self) -> None:
        self._buf = b""
        self._event = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        data = self._buf + chunk if self._buf else chunk
        last_nl = data.rfind(b"\n")
        if last_nl < 0:
            self._buf = data
            return []
        self._buf = data[last_nl + 1 :]
        out: list[tuple[str, bytes]] = []
        for raw in data[:last_nl].split(b"\n"):
            line = raw.rstrip(b"\r")
            if not line:
                if self._data:
                    out.append((self._event.decode() or "message", b"\n".join(self._data)))
                self._event, self._data = b"", []
            elif line.startswith(b"event:"):
                self._event = line[6:].strip()
            elif line.startswith(b"data:"):
                self._data.append(line[5:].lstrip(b" "))
        return out
