"""What the locust profiles share: keys from the environment (never from a file), expected-
outcome events, and the check that a 429 is a window refusal rather than a failure.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

import orjson
from locust.env import Environment

KEYS_ENV = "LOADTEST_KEYS"
_counter = itertools.count()


def keys() -> list[str]:
    found = [k for k in os.environ.get(KEYS_ENV, "").split(",") if k]
    if not found:
        raise RuntimeError(f"{KEYS_ENV} is empty: run the profiles through `make loadtest`")
    return found


def next_key() -> str:
    """Round-robin over the keys: many simulated users share each key, as a fleet does."""
    pool = keys()
    return pool[next(_counter) % len(pool)]


def error_type(body: bytes | str | None) -> str | None:
    try:
        data: Any = orjson.loads(body or b"")
    except orjson.JSONDecodeError:
        return None
    err = data.get("error") if isinstance(data, dict) else None
    return err.get("type") if isinstance(err, dict) else None


def expected(environment: Environment, name: str, started: float) -> None:
    """Counts an outcome that is correct behaviour (a window refusal, a route not built yet)
    as its own stats row, so the summary can tell it from a failure."""
    environment.events.request.fire(
        request_type="EXPECTED",
        name=name,
        response_time=(time.perf_counter() - started) * 1000,
        response_length=0,
        exception=None,
        context={},
    )
