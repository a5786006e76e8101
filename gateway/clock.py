"""Wall-clock milliseconds for the credit windows, with an offset hook for tests.

Every window decision takes ``now_ms`` from here, so a test can move a running server
hours or days ahead by writing an offset into ``ANTEX_CLOCK_FILE`` instead of sleeping.
Across nodes the windows trust each node's clock: keep them NTP-synced (skew of a few
seconds only shifts when a bucket expires by that much).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

Clock = Callable[[], int]


def system_clock() -> int:
    return time.time_ns() // 1_000_000


def offset_file_clock(path: Path) -> Clock:
    """A clock reading a millisecond offset from ``path`` (re-read when its mtime changes)."""
    state = {"mtime": -1, "offset": 0}

    def now() -> int:
        try:
            mtime = os.stat(path).st_mtime_ns
        except FileNotFoundError:
            state["mtime"], state["offset"] = -1, 0
        else:
            if mtime != state["mtime"]:
                text = path.read_text().strip()
                state["mtime"], state["offset"] = mtime, int(text or 0)
        return system_clock() + state["offset"]

    return now


def make_clock(path: Path | None) -> Clock:
    return offset_file_clock(path) if path else system_clock


_LAST_SECOND = 253_402_300_799  # 9999-12-31T23:59:59Z, the last instant datetime renders


def rfc3339(ms: int) -> str:
    """``ms`` since the epoch as ``YYYY-MM-DDTHH:MM:SSZ`` (whole seconds, UTC)."""
    # Clamped so a stored value out of datetime's range still renders (as the range's edge).
    seconds = min(max(ms // 1000, 0), _LAST_SECOND)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
