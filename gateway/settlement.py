"""Settlement that is never lost and never doubled: batched, spooled, retried, idempotent.

A request's charge is queued in memory and written to the worker's spool in the same loop
turn (one write for all the charges of that turn). A flush goes at once when no other
request of the worker is in flight (nothing would join it); otherwise when ``batch_target``
charges are queued or the oldest has waited ``interval_s``. It sends every account's
charges and lease renewals as one settle.lua call each, all pipelined in one round trip;
their ack line rides with the next spool write. A background step fsyncs the spool at most
every ``sync_s``, only when written to, and empties or compacts it once it has grown.
Valkey remembers settled request ids, so a retry after an ambiguous failure, or a spool
replay, never bills twice. A failed flush keeps everything queued and retries with backoff
until Valkey acknowledges it.

An open request's provisional charge (what a restart bills should this process die) is
spooled at admission; a tracked one (a stream) is re-evaluated every ``checkpoint_s`` and
the ones that changed are rewritten in one append, so a kill bills what was delivered up to
the last checkpoint. Replay keeps the newest line per request id.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway import errors, events
from gateway.limits import Charge, CreditLimiter
from gateway.spool import Spool, claim_orphans, drop_orphan

log = logging.getLogger("antex.settle")

_BACKOFF_MIN_S, _BACKOFF_MAX_S = 0.1, 2.0


class Settler:
    """One worker's settlement queue. ``submit`` never blocks and never fails."""

    def __init__(
        self,
        limiter: CreditLimiter,
        spool_dir: Path | None,
        *,
        interval_s: float = 0.25,
        batch_target: int = 32,
        batch_max: int = 256,
        call_timeout_s: float = 5.0,
        checkpoint_s: float = 1.0,
        sync_s: float = 1.0,
        notify: events.Notify = events.ignore,
        on_error: Callable[[], None] = lambda: None,
    ) -> None:
        self.limiter = limiter
        self._spool_dir = spool_dir
        self.spool: Spool | None = None  # opened by start(), in the serving process
        self.interval_s = interval_s
        self.batch_target = batch_target
        self.batch_max = batch_max
        # A flush that gets no answer in this time is abandoned (its calls may still run
        # later, after a hang: the retry is then a no-op for them) and retried.
        self.call_timeout_s = call_timeout_s
        self.notify = notify
        self.on_error = on_error  # the worker's Valkey error counter
        self.pending: dict[str, Charge] = {}
        # Live reservations this worker renews: request id -> (account id, renew at).
        self._leases: dict[str, tuple[str, float]] = {}
        # Their charges should this process die: spooled at admission, kept over truncation.
        self.open: dict[str, Charge] = {}
        # Re-evaluated at each checkpoint: request id -> its provisional charge now.
        self._tracked: dict[str, Callable[[], Charge]] = {}
        self.checkpoint_s = checkpoint_s
        self._checkpointer: asyncio.Task[None] | None = None
        # A host crash loses at most this much of written-but-unsynced charges (s).
        self.sync_s = sync_s
        self._syncer: asyncio.Task[None] | None = None
        self._renew_every_s = limiter.settings.reservation_ttl_ms / 3000
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._oldest = 0.0  # when the oldest queued charge was queued (monotonic s)
        self._ready = asyncio.Event()  # a batch is worth sending now
        self.flushes = 0  # successful round trips, for the benchmark and tests

    # -- the request side ---------------------------------------------------------------------

    def hold(self, provisional: Charge) -> None:
        """An admitted request: its reservation is renewed while it runs, and
        ``provisional`` (spooled now) is what a restart bills if this process dies first."""
        request_id = provisional.request_id
        self._leases[request_id] = (provisional.account_id, time.monotonic() + self._renew_every_s)
        self.open[request_id] = provisional
        if self.spool is not None:
            self.spool.append((provisional,))

    def track(self, request_id: str, provisional: Callable[[], Charge]) -> None:
        """A held request whose provisional charge grows while it runs (a stream):
        ``provisional()`` is called at each checkpoint, on the loop, and must be cheap."""
        if request_id in self.open:
            self._tracked[request_id] = provisional

    def checkpoint(self) -> int:
        """Spools, in one append, the tracked provisional charges that changed since they
        were last spooled; returns how many. Not fsync'd: this guards against a killed
        process (the kernel keeps what was written), not against a power loss."""
        changed: list[Charge] = []
        for request_id, provisional in list(self._tracked.items()):
            held = self.open.get(request_id)
            if held is None:
                del self._tracked[request_id]
                continue
            try:
                charge = provisional()
            except Exception:
                # The admission-time charge stays: a bug here must not cost the request.
                log.exception("checkpoint of a request failed; keeping its last charge")
                del self._tracked[request_id]
                continue
            if _billed(charge) != _billed(held):
                self.open[request_id] = charge
                changed.append(charge)
        if changed and self.spool is not None:
            self.spool.append(changed)
        return len(changed)

    def submit(self, charge: Charge) -> None:
        """Queues a settlement (or, with ``log=None``, a release) and spools it."""
        self._leases.pop(charge.request_id, None)
        self.open.pop(charge.request_id, None)
        self._tracked.pop(charge.request_id, None)
        if not self.pending:
            self._oldest = time.monotonic()
        self.pending[charge.request_id] = charge
        if self.spool is not None:
            self.spool.append((charge,))
        self._wake.set()
        if len(self.pending) >= self.batch_target or not self._leases:
            self._ready.set()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Replays this worker's and dead workers' spool files, then starts flushing."""
        loop = asyncio.get_running_loop()
        if self._spool_dir is not None:
            self.spool = Spool(self._spool_dir, loop.call_soon)
            for charge in self.spool.leftovers():
                self.pending[charge.request_id] = charge
            claimed = claim_orphans(self.spool.directory, self.spool.path)
            for _, _, charges in claimed:
                for charge in charges:
                    self.submit(charge)
            if claimed:
                self.spool.write()
                self.spool.sync_now()  # re-spooled durably before the old files go
                replayed = sum(len(c) for _, _, c in claimed)
                log.warning("replaying %d unsettled charges of %d stopped workers",
                            replayed, len(claimed))  # fmt: skip
            for path, fd, _ in claimed:
                drop_orphan(path, fd)
        if self.pending:
            self._wake.set()
        self._task = loop.create_task(self._run())
        self._checkpointer = loop.create_task(self._checkpoints())
        if self.spool is not None:
            self._syncer = loop.create_task(self._syncs(self.spool))

    async def close(self, timeout_s: float = 10.0) -> None:
        """Flushes what is queued (for at most ``timeout_s``); the rest stays spooled."""
        self._leases.clear()
        tasks = [t for t in (self._task, self._checkpointer, self._syncer) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline:
            try:
                flushed = await self.flush()
            except Exception:
                log.exception("settle flush failed unexpectedly at shutdown")
                break  # the spool keeps the charges for the next start
            if not flushed:
                await asyncio.sleep(min(_BACKOFF_MIN_S * 5, max(0, deadline - time.monotonic())))
        if self.pending:
            log.error("%d charges not settled at shutdown; spooled for the next start",
                      len(self.pending))  # fmt: skip
        if self.spool is not None:
            await self.spool.idle()
            if self.pending or self.open:
                self.spool.write()
                await asyncio.to_thread(self.spool.close, False)
            else:
                self.spool.close(True)  # everything acknowledged: nothing to replay

    async def _run(self) -> None:
        backoff = _BACKOFF_MIN_S
        while True:
            try:
                async with asyncio.timeout(self._renew_every_s):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            await self._gather()
            try:
                flushed = await self.flush(first_try=backoff == _BACKOFF_MIN_S)
            except Exception:
                # A bug must not stop settlement for good: the charges stay queued.
                log.exception("settle flush failed unexpectedly; retrying")
                flushed = False
            if flushed:
                backoff = _BACKOFF_MIN_S
                if self.pending:
                    self._wake.set()
            else:
                await asyncio.sleep(backoff)
                backoff = min(_BACKOFF_MAX_S, backoff * 2)
                self._wake.set()

    async def _checkpoints(self) -> None:
        while True:
            await asyncio.sleep(self.checkpoint_s)
            if self._tracked:
                self.checkpoint()

    async def _syncs(self, spool: Spool) -> None:
        while True:
            await asyncio.sleep(self.sync_s)
            try:
                await spool.maintain(self._live)
            except OSError:
                log.exception("spool fsync or compaction failed; retrying")

    def _live(self) -> list[Charge]:
        """What the spool must keep: open requests' provisional charges and queued ones."""
        return [*self.open.values(), *self.pending.values()]

    async def _gather(self) -> None:
        """Waits while more charges are coming (requests in flight) and worth waiting for."""
        while self.pending and self._leases and len(self.pending) < self.batch_target:
            left = self._oldest + self.interval_s - time.monotonic()
            if left <= 0:
                return
            self._ready.clear()
            try:
                async with asyncio.timeout(left):
                    await self._ready.wait()
            except TimeoutError:
                return

    # -- one flush -----------------------------------------------------------------------------

    def _due_renewals(self, now: float) -> dict[str, list[str]]:
        due: dict[str, list[str]] = {}
        for request_id, (account_id, at) in self._leases.items():
            if at <= now:
                due.setdefault(account_id, []).append(request_id)
        return due

    async def flush(self, first_try: bool = True) -> bool:
        """One round trip for up to ``batch_max`` charges plus due renewals; True when
        Valkey answered (charges a script refused stay queued and are logged)."""
        now = time.monotonic()
        renewals = self._due_renewals(now)
        by_account: dict[str, list[Charge]] = {}
        for charge in list(self.pending.values())[: self.batch_max]:
            by_account.setdefault(charge.account_id, []).append(charge)
        accounts = list(by_account.keys() | renewals.keys())
        if not accounts:
            return True
        limiter = self.limiter
        calls = [
            limiter.settle_call(a, by_account.get(a, ()), renewals.get(a, ())) for a in accounts
        ]
        try:
            async with asyncio.timeout(self.call_timeout_s):
                replies = await limiter.scripts.call_many(limiter.client, "settle", calls)
        except (errors.ServiceUnavailable, TimeoutError) as exc:
            self._failed(exc, first_try)
            return False
        acked: list[str] = []
        for account_id, reply in zip(accounts, replies, strict=True):
            if isinstance(reply, BaseException):
                log.error("settle of account %s failed: %s", account_id, reply)
                continue
            for charge in by_account.get(account_id, ()):
                if self.pending.get(charge.request_id) is charge:
                    del self.pending[charge.request_id]
                    if self.pending:
                        self._oldest = now  # what is left waited at most since this flush
                acked.append(charge.request_id)
            for request_id in renewals.get(account_id, ()):
                if request_id in self._leases:
                    self._leases[request_id] = (account_id, now + self._renew_every_s)
        self.flushes += 1
        unavailable = next(
            (r for r in replies if isinstance(r, errors.ServiceUnavailable)), None
        )
        if self.spool is not None and acked:
            self.spool.ack(acked)
        if unavailable is not None:  # a node of a cluster: back off like a whole failure
            self._failed(unavailable, first_try)
            return False
        return True

    def _failed(self, exc: Exception, first_try: bool) -> None:
        if first_try:
            self.on_error()  # once per failing streak, not once per retry
        message = exc.message if isinstance(exc, errors.AntexError) else "timed out"
        log.error("settle delayed: %d charges queued and spooled (%s); retrying",
                  len(self.pending), message)  # fmt: skip
        first: dict[str, Any] = next(
            ({"account_id": c.account_id, "key_id": c.key_id, "request_id": c.request_id,
              "credits_mc": c.cost_mc} for c in self.pending.values()), {}
        )  # fmt: skip
        # During an outage every flush fails: one event per minute says so.
        self.notify(
            events.SETTLE_FAILED,
            {**first, "total": len(self.pending), "error": "valkey_unavailable",
             "worker_pid": os.getpid()},
            dedupe=events.per_minute(events.SETTLE_FAILED),
        )  # fmt: skip


_VOLATILE = frozenset({"latency_ms", "ttfb_ms"})


def _billed(charge: Charge) -> tuple[int, tuple[str | int, ...]]:
    """What a checkpoint compares: the cost and the log without its timings."""
    entry = charge.log or ()
    kept: list[str | int] = []
    for i in range(0, len(entry) - 1, 2):
        if entry[i] not in _VOLATILE:
            kept += (entry[i], entry[i + 1])
    return charge.cost_mc, tuple(kept)
