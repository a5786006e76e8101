"""Pure choice of upstreams for one request: weighted rendezvous hashing over a conversation key.

Anthropic's prompt cache is scoped to the upstream organization, so every request of one
conversation should land on the same upstream. Rendezvous (highest-random-weight) hashing
gives each (conversation, upstream) pair an independent score: dropping an upstream moves
only the conversations whose best score it held, adding one takes only its own share.
No I/O here; the caller passes the time and each upstream's standing.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

_TWO_64 = float(2**64)


def conversation_key(account_id: str, payload: Mapping[str, Any]) -> bytes:
    """The affinity key of a Messages payload: the account plus Claude Code's
    ``metadata.user_id`` (it names the session) where present, else a hash of the system
    prompt and the first user turn. Only the digest is kept, and only in memory."""
    meta = payload.get("metadata")
    user_id = meta.get("user_id") if isinstance(meta, dict) else None
    if isinstance(user_id, str) and user_id:
        return b"u\0" + account_id.encode() + b"\0" + user_id.encode()
    digest = hashlib.blake2b(account_id.encode(), digest_size=16)
    digest.update(orjson.dumps(payload.get("system")))
    messages = payload.get("messages")
    if isinstance(messages, list) and messages:
        digest.update(orjson.dumps(messages[0]))
    return b"p\0" + digest.digest()


def is_new_conversation(payload: Mapping[str, Any]) -> bool:
    """One user turn and nothing before it: no upstream holds a cache for it yet."""
    messages = payload.get("messages")
    return not isinstance(messages, list) or len(messages) <= 1


def score(key: bytes, member_id: bytes, weight: float) -> float:
    """Weighted rendezvous score (higher wins): ``weight / -ln(u)`` with ``u`` uniform in
    (0, 1) from the pair's hash, so a member wins a share of keys proportional to weight."""
    h = int.from_bytes(hashlib.blake2b(key + b"\0" + member_id, digest_size=8).digest(), "big")
    return weight / -math.log((h + 0.5) / _TWO_64)


def rendezvous_order(key: bytes, members: Sequence[tuple[bytes, float]]) -> list[int]:
    """Indices of ``members`` ((id, weight) pairs, weight > 0) from best to worst for ``key``."""
    scores = [score(key, member_id, weight) for member_id, weight in members]
    return sorted(range(len(members)), key=scores.__getitem__, reverse=True)


@dataclass(frozen=True, slots=True)
class Standing:
    """What the pool knows of one upstream at the moment of choosing.

    ``ready_at`` is when it may be tried again (cooldown or open circuit, epoch seconds;
    0 when ready); ``low`` means its rate-limit headroom is nearly spent; ``full`` means it
    holds its maximum of concurrent requests.
    """

    usable: bool  # enabled and serves the requested model
    ready_at: float = 0.0
    low: bool = False
    full: bool = False


def attempt_order(
    order: Sequence[int], standings: Sequence[Standing], now: float, *, new_conversation: bool
) -> list[int]:
    """The upstreams to try, in order, from a rendezvous ``order`` over ``standings``.

    Ready upstreams keep their rendezvous order (affinity). A new conversation has no cache
    to lose, so it is steered away from upstreams about to run out of headroom. When none is
    ready, the cooling ones are offered by the time they become ready, so a request still
    gets the upstream's own answer rather than a gateway refusal.
    """
    ready = [
        i for i in order if standings[i].usable and standings[i].ready_at <= now
        and not standings[i].full
    ]  # fmt: skip
    if new_conversation:
        ready = [i for i in ready if not standings[i].low] + [i for i in ready if standings[i].low]
    if ready:
        return ready
    waiting = [i for i in order if standings[i].usable]
    return sorted(waiting, key=lambda i: standings[i].ready_at)
