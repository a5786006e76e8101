"""The settlement spool: a worker's unacknowledged charges on local disk, metadata only.

One JSON-lines file per worker pid under ``<data_dir>/spool``: a ``Charge`` line when a
request ends (written at once, so a killed process loses nothing the kernel has), an
``{"ack": [request ids]}`` line when Valkey applied them, and a truncation whenever nothing
is left unacknowledged. The file is flock'ed for the worker's life: a file whose lock can be
taken belongs to a dead worker, and whoever takes it replays it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import orjson

from gateway.limits import Charge

log = logging.getLogger("antex.spool")

_PREFIX, _SUFFIX = "settle-", ".jsonl"
# Past this size the file is rewritten with what is still pending (acks accumulate while a
# busy worker never runs empty).
_COMPACT_BYTES = 4 * 1024 * 1024


def read_unacked(data: bytes) -> list[Charge]:
    """The charges of a spool file that no later ack line covers, one per id: the newest
    line of an id (a checkpoint, then the final charge) replaces the earlier ones."""
    charges: dict[str, Charge] = {}
    for line in data.splitlines():
        try:
            raw = orjson.loads(line)
            if "ack" in raw:
                for request_id in raw["ack"]:
                    charges.pop(str(request_id), None)
                continue
            charge = Charge.from_json(raw)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            # A line cut by a crash mid-write: the charge it began was never acknowledged
            # to anyone, and the complete lines around it still count.
            log.warning("spool: skipped an unreadable line (%d bytes)", len(line))
            continue
        charges[charge.request_id] = charge
    return list(charges.values())


class Spool:
    """This worker's spool file, locked while the worker lives."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.path = directory / f"{_PREFIX}{os.getpid()}{_SUFFIX}"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        # A blocking lock: only a starter replaying this (dead) pid's old file holds it, briefly.
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self._dirty = False
        self._size = os.fstat(self._fd).st_size

    def leftovers(self) -> list[Charge]:
        """What a previous process with the same pid left unacknowledged in this file."""
        if not self._size:
            return []
        with open(self.path, "rb") as f:
            return read_unacked(f.read())

    def append(self, charges: Iterable[Charge]) -> None:
        data = b"".join(c.to_json() + b"\n" for c in charges)
        if data:
            self._write(data)

    def ack(self, request_ids: list[str]) -> None:
        # Not fsync'd: a lost ack line means a replay the settled ids make a no-op.
        self._write(orjson.dumps({"ack": request_ids}) + b"\n")

    def _write(self, data: bytes) -> None:
        os.write(self._fd, data)
        self._size += len(data)
        self._dirty = True

    async def sync(self) -> None:
        """fsync once for everything written since the last sync (off the event loop)."""
        if self._dirty:
            self._dirty = False
            await asyncio.to_thread(os.fsync, self._fd)

    def sync_now(self) -> None:
        """fsync on the caller's thread (start-up only)."""
        self._dirty = False
        os.fsync(self._fd)

    def settled_all(self) -> None:
        """Nothing is pending: the file starts over."""
        os.ftruncate(self._fd, 0)
        self._size = 0

    def compact(self, pending: Iterable[Charge]) -> None:
        """Rewrites a grown file with only the pending charges (atomic rename)."""
        if self._size < _COMPACT_BYTES:
            return
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(b"".join(c.to_json() + b"\n" for c in pending))
            f.flush()
            os.fsync(f.fileno())
        fd = os.open(tmp, os.O_RDWR | os.O_APPEND)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.replace(tmp, self.path)
        os.close(self._fd)
        self._fd, self._size = fd, os.fstat(fd).st_size

    def close(self) -> None:
        """Keeps the file when charges are still in it: the next start replays them."""
        if self._size == 0:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        os.close(self._fd)


def claim_orphans(directory: Path, own: Path) -> list[tuple[Path, int, list[Charge]]]:
    """The spool files of dead workers (their lock is free), each locked by the caller with
    its unacknowledged charges. Release with ``drop_orphan`` once they are re-spooled."""
    claimed = []
    for path in sorted(directory.glob(f"{_PREFIX}*{_SUFFIX}")):
        if path == own:
            continue
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue  # another starter replayed it meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # a live worker's
            continue
        if os.fstat(fd).st_nlink == 0:
            os.close(fd)  # replayed and removed while we waited for it
            continue
        with open(path, "rb") as f:
            charges = read_unacked(f.read())
        claimed.append((path, fd, charges))
    return claimed


def drop_orphan(path: Path, fd: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    os.close(fd)
