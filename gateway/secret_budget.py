"""Token buckets of bcrypt work, by name (a key id, an address): pure, time passed in.

A verification takes a token before it hashes; a secret that matched gives it back, so only
wrong secrets spend the budget and a busy address of honest clients is never held back by
its own traffic for long. Names idle long enough to be full again are forgotten.
"""

from __future__ import annotations

from cachetools import TTLCache


class SecretBudget:
    """``burst`` verifications at once per name, refilled at ``rate`` per second.

    At most ``burst + rate * t`` wrong secrets per name are hashed over any ``t`` seconds.
    Not thread-safe: use it from the event loop only.
    """

    __slots__ = ("_burst", "_debt", "_rate")

    def __init__(self, rate: float, burst: int, size: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a budget needs rate > 0 and burst >= 1")
        self._rate = rate
        self._burst = burst
        # name -> (tokens taken and not yet refilled, when that was computed in s). An entry
        # left alone for burst / rate seconds has refilled: its expiry forgets it.
        self._debt: TTLCache[str, tuple[float, float]] = TTLCache(size, burst / rate)

    def _owed(self, name: str, now: float) -> float:
        entry = self._debt.get(name)
        if entry is None:
            return 0.0
        debt, at = entry
        return max(0.0, debt - (now - at) * self._rate)

    def take(self, name: str, now: float) -> bool:
        """Takes one token; False (nothing taken) when the bucket is empty."""
        debt = self._owed(name, now)
        if debt + 1 > self._burst:
            return False
        self._debt[name] = (debt + 1, now)
        return True

    def give_back(self, name: str, now: float) -> None:
        """Returns the token of a verification that matched."""
        debt = self._owed(name, now)
        if debt > 0:
            self._debt[name] = (max(0.0, debt - 1), now)

    def wait_s(self, name: str, now: float) -> float:
        """Seconds until ``take`` can succeed (0 when it can now)."""
        return max(0.0, (self._owed(name, now) + 1 - self._burst) / self._rate)
