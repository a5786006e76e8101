"""The settlement spool: a worker's unacknowledged charges on local disk, metadata only.

One JSON-lines file per worker pid under ``<data_dir>/spool``: ``Charge`` lines (an admitted
request's provisional charge, a stream's checkpoints, the final charge) and ``{"ack": [request
ids]}`` lines once Valkey applied them. The file is flock'ed for the worker's life: a file
whose lock can be taken belongs to a dead worker, and whoever takes it replays it.

Durability: every line is ``write(2)``n within the event-loop turn that queued it (what a
killed process wrote, the kernel keeps); the owner's background step (``maintain``, about
once a second) fsyncs only when something was written since, and empties or compacts the
file once it has grown, all off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import orjson

from gateway.limits import Charge

log = logging.getLogger("antex.spool")

_PREFIX, _SUFFIX = "settle-", ".jsonl"
# Ack lines accumulate: past this size a file whose every charge is acknowledged is emptied.
TRUNCATE_BYTES = 1024 * 1024
# Past this size the file is rewritten with only what is still pending (a busy worker may
# never run empty).
COMPACT_BYTES = 4 * 1024 * 1024


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


def _lines(charges: Iterable[Charge]) -> bytes:
    return b"".join(c.to_json() + b"\n" for c in charges)


def _write_all(fd: int, data: bytes) -> None:
    done = os.write(fd, data)
    if done < len(data):  # a regular file writes short only when the disk fills
        view = memoryview(data)[done:]
        while view:
            view = view[os.write(fd, view) :]


class Spool:
    """This worker's spool file, locked while the worker lives.

    ``defer(fn)`` runs ``fn`` soon on the caller's thread (``loop.call_soon``): what is
    queued during one loop turn goes out in one ``write(2)``. Without it every ``append``
    writes at once. Everything but ``maintain``'s thread runs on one thread (the loop's)."""

    def __init__(
        self,
        directory: Path,
        defer: Callable[[Callable[[], None]], object] | None = None,
        *,
        truncate_bytes: int = TRUNCATE_BYTES,
        compact_bytes: int = COMPACT_BYTES,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.path = directory / f"{_PREFIX}{os.getpid()}{_SUFFIX}"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        # A blocking lock: only a starter replaying this (dead) pid's old file holds it, briefly.
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self._defer = defer
        self._truncate_bytes, self._compact_bytes = truncate_bytes, compact_bytes
        self._queued: list[bytes] = []
        self._acks: list[str] = []
        self._scheduled = False
        self._dirty = False  # written since the last fsync began
        # Orders the loop's writes against the background step's truncation and file swap;
        # uncontended except for the instant of a truncate or a rename.
        self._lock = threading.Lock()
        self._size = os.fstat(self._fd).st_size
        self._written = 0  # bytes ever written here: a truncation checks nothing came since
        # During a compaction: what was written after its snapshot, copied into the new file.
        self._catchup: list[bytes] | None = None
        self._step: asyncio.Future[None] | None = None
        self.syncs = 0  # fsyncs done, for tests and the benchmark

    @property
    def size(self) -> int:
        """The file's length in bytes, as far as this process wrote it."""
        return self._size

    def leftovers(self) -> list[Charge]:
        """What a previous process with the same pid left unacknowledged in this file."""
        if not self._size:
            return []
        with open(self.path, "rb") as f:
            return read_unacked(f.read())

    def append(self, charges: Iterable[Charge]) -> None:
        """Queues the charges' lines for this loop turn's write."""
        data = _lines(charges)
        if data:
            self._queued.append(data)
            if self._defer is None:
                self.write()
            elif not self._scheduled:
                self._scheduled = True
                self._defer(self.write)

    def ack(self, request_ids: Iterable[str]) -> None:
        """Marks charges acknowledged. The line rides with the next write, at the latest the
        next ``maintain``: a lost ack costs only a replay the settled ids make a no-op."""
        self._acks.extend(request_ids)

    def write(self) -> None:
        """Writes what is queued in one ``write(2)``, acks after the lines they may cover."""
        self._scheduled = False
        if self._acks:
            self._queued.append(orjson.dumps({"ack": self._acks}) + b"\n")
            self._acks = []
        if not self._queued:
            return
        data = b"".join(self._queued)
        self._queued.clear()
        with self._lock:
            self._written += len(data)  # even a failed write: a planned truncation skips
            try:
                _write_all(self._fd, data)
            except OSError:
                # A full disk: retried with the next write, after a newline that ends what
                # part of it went out (a replay skips that cut line).
                self._queued.append(b"\n" + data)
                self._size = os.fstat(self._fd).st_size
                raise
            self._size += len(data)
            if self._catchup is not None:
                self._catchup.append(data)
        self._dirty = True

    async def maintain(self, live: Callable[[], list[Charge]]) -> None:
        """The background step: writes queued acks; past ``truncate_bytes`` empties a file
        with nothing ``live`` (pending or open) and past ``compact_bytes`` rewrites it with
        only ``live()``; fsyncs when anything was written since the last fsync. All file
        work runs in one thread hop; one step at a time (a call during one joins it).
        Raises OSError from the file system."""
        if self._step is None:
            self.write()
            truncate_at: int | None = None
            keep: list[Charge] | None = None
            if self._size >= self._truncate_bytes:
                charges = live()
                if not charges:
                    truncate_at = self._written
                elif self._size >= self._compact_bytes:
                    keep, self._catchup = charges, []
            if truncate_at is None and keep is None and not self._dirty:
                return
            sync, self._dirty = self._dirty or keep is not None, False
            step = asyncio.get_running_loop().run_in_executor(
                None, self._maintain, truncate_at, keep, sync
            )
            self._step = step
            step.add_done_callback(self._stepped)
        try:
            await asyncio.shield(self._step)
        except OSError:
            self._dirty = True  # the next step tries the fsync again
            raise

    def _stepped(self, step: asyncio.Future[None]) -> None:
        self._step = None
        if not step.cancelled() and step.exception() is not None:
            self._dirty = True

    def _maintain(self, truncate_at: int | None, keep: list[Charge] | None, sync: bool) -> None:
        if truncate_at is not None:
            with self._lock:
                if self._written == truncate_at:  # nothing was written after the decision
                    os.ftruncate(self._fd, 0)
                    self._size = 0
        if keep is not None:
            try:
                self._compact(keep)
            finally:
                with self._lock:
                    self._catchup = None
        if sync:
            os.fsync(self._fd)
            self.syncs += 1

    def _compact(self, keep: list[Charge]) -> None:
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _write_all(fd, _lines(keep))
            os.fsync(fd)
            with self._lock:
                # Lines written since the snapshot follow it; the rename makes the new file
                # the one a replay reads, in the same instant the loop's writes move to it.
                assert self._catchup is not None
                _write_all(fd, b"".join(self._catchup))
                os.replace(tmp, self.path)
                old, self._fd = self._fd, fd
                self._size = os.fstat(fd).st_size
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        os.close(old)

    def sync_now(self) -> None:
        """fsync on the caller's thread (start-up only)."""
        self._dirty = False
        os.fsync(self._fd)
        self.syncs += 1

    async def idle(self) -> None:
        """Waits for a background step in flight (its thread cannot be cancelled)."""
        if self._step is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._step)

    def close(self, settled: bool) -> None:
        """Releases the file; call after ``idle``. ``settled`` (nothing pending or open)
        removes it; otherwise what is queued is written and fsync'd (blocking: run it off the
        loop) and the next start replays it."""
        if settled:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        else:
            self.write()
            os.fsync(self._fd)
            self.syncs += 1
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
