"""The simulator's prompt cache, scoped per upstream key as Anthropic scopes it per
organization, so a pool's cache affinity can be measured.

A request's prefix is its system prompt plus every message but the last, hashed link by
link. The longest prefix this key sent within ``TTL_S`` is read from the cache; the rest of
the prefix is written to it. Only hashes are kept, never content. Pure: the caller passes
the time.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

TTL_S = 300.0  # Anthropic's default ephemeral cache lifetime
_MAX_ENTRIES = 200_000  # per process; the oldest half goes when full


def _chain(req: dict[str, Any]) -> list[tuple[bytes, int]]:
    """(hash, bytes so far) after the system prompt and after each message but the last."""
    digest = hashlib.blake2b(orjson.dumps(req.get("system")), digest_size=16)
    size = len(orjson.dumps(req.get("system"))) if req.get("system") else 0
    links = [(digest.digest(), size)]
    for message in req["messages"][:-1]:
        raw = orjson.dumps(message)
        digest.update(raw)
        size += len(raw)
        links.append((digest.digest(), size))
    return links


class PromptCache:
    def __init__(self) -> None:
        self._seen: dict[tuple[str, bytes], float] = {}

    def usage(self, key: str, req: dict[str, Any], now: float) -> tuple[int, int]:
        """(cache_read_input_tokens, cache_creation_input_tokens) for this request; ~4 bytes
        make a token, like the simulator's other counts."""
        links = _chain(req)
        read_bytes = 0
        for digest, size in reversed(links):
            expiry = self._seen.get((key, digest))
            if expiry is not None and expiry > now:
                read_bytes = size
                break
        prefix_bytes = links[-1][1]
        if len(self._seen) > _MAX_ENTRIES:
            for old in sorted(self._seen, key=self._seen.__getitem__)[: _MAX_ENTRIES // 2]:
                del self._seen[old]
        # Reading refreshes the entry's lifetime, as the real cache does.
        for digest, size in links:
            if size and size <= prefix_bytes:
                self._seen[(key, digest)] = now + TTL_S
        read = read_bytes // 4
        return read, max(0, prefix_bytes // 4 - read)

    def clear(self) -> None:
        self._seen.clear()
