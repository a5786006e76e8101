"""Keeps a worker's ``PoolView`` in step with Valkey, off the request path.

Start-up and every ``RESYNC_S`` seconds: the upstream records (keys decrypted here, held in
memory only) and the live cooldowns. In between, the pub/sub channel brings configuration
changes and other workers' cooldowns and disables within milliseconds. This worker's own
signals go out the same way, from a background task: a request never waits on Valkey here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
import valkey.asyncio as avalkey

from gateway import upstream_store as store
from gateway.config import Settings
from gateway.errors import AntexError, ConfigError
from gateway.pool_metrics import PoolMetrics
from gateway.pool_state import Member, PoolView
from gateway.secretbox import SecretBox, load_master_key

log = logging.getLogger("antex.pool")

RESYNC_S = 5.0
GAUGES_S = 1.0
_VALKEY_DOWN = (OSError, avalkey.ValkeyError)


def env_member(settings: Settings, key: str | None) -> Member:
    return Member(store.ENV_ID, store.ENV_ID, settings.upstream_url, key or "simulator", 1)


class PoolSync:
    def __init__(
        self,
        settings: Settings,
        client: Any,
        view: PoolView,
        metrics: PoolMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.client = client
        self.view = view
        self.metrics = metrics
        self._box: SecretBox | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Until Valkey answers, the environment's upstream (or the simulator) serves alone.
        view.set_members([env_member(settings, settings.upstream_key)])

    def _secret_box(self) -> SecretBox:
        if self._box is None:
            master = load_master_key(self.settings.secret_key, self.settings.data_dir)
            self._box = SecretBox(master)
        return self._box

    async def load(self) -> None:
        """Replaces the view's members from Valkey, keeping the runtime state of those that
        stay (in-flight requests hold references to them)."""
        records = await store.list_records(self.client)
        env = await store.env_override(self.client)
        cools = await store.cooldowns(self.client, int(time.time() * 1000))
        current = {m.id: m for m in self.view.members}
        members: list[Member] = []
        if self.settings.upstream_key is not None or not records:
            m = current.get(store.ENV_ID) or env_member(self.settings, self.settings.upstream_key)
            m.base = self.settings.upstream_url
            if env is not None:
                self._configure(m, env)
            members.append(m)
        for record in records:
            try:
                key = self._secret_box().open(record.key_ct, record.id)
            except ConfigError as exc:
                log.error("upstream %s skipped: %s", record.name, exc.message)
                continue
            m = current.get(record.id) or Member(record.id, record.name, record.url, key, 1)
            m.key = key
            self._configure(m, record)
            members.append(m)
        self.view.set_members(members)
        for field, until_ms in cools.items():
            upstream_id, _, model = field.partition("|")
            self.view.apply({"t": "cool", "id": upstream_id, "model": model,
                             "until": until_ms / 1000})  # fmt: skip

    @staticmethod
    def _configure(m: Member, record: store.UpstreamRecord) -> None:
        if record.enabled and not m.enabled:
            # Re-enabled by the operator: start clean.
            m.cool_until, m.model_cool, m.fails, m.half_open = 0.0, {}, 0, False
        m.enabled = record.enabled
        m.disabled_reason = record.disabled_reason
        if record.id != store.ENV_ID:
            m.name, m.base, m.weight = record.name, record.url, record.weight
            m.models = frozenset(record.models)
            m.max_concurrent = record.max_concurrent or 0
            m.fingerprint = record.fingerprint

    # -- this worker's signals

    def share(self, event: dict[str, Any]) -> None:
        """Called by the upstream layer on the loop: writes and publishes in the background."""
        task = asyncio.get_running_loop().create_task(self._share(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _share(self, event: dict[str, Any]) -> None:
        try:
            if event["t"] == "disable":
                await store.set_enabled(
                    self.client, event["id"], False, reason=event["why"],
                    now_ms=int(time.time() * 1000),
                )  # fmt: skip
            else:
                field = event["id"] + (f"|{event['model']}" if event.get("model") else "")
                await self.client.hset(store.COOL, field, str(int(event["until"] * 1000)))
            await store.publish(self.client, event)
        except _VALKEY_DOWN as exc:
            # Other workers learn of it at their next own failure or resync.
            log.warning("pool event not shared: %s", type(exc).__name__)

    # -- the background loop

    async def run(self, listen: bool = True) -> None:
        """Runs for the worker's life: pub/sub events, resync, gauges and health reports."""
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True) if listen else None
            try:
                if pubsub is not None:
                    await pubsub.subscribe(store.CHANNEL)
                await self.load()
                await self._loop(pubsub)
            except (*_VALKEY_DOWN, AntexError) as exc:
                log.warning("pool sync interrupted: %s", type(exc).__name__)
                await asyncio.sleep(1.0)
            finally:
                if pubsub is not None:
                    await pubsub.aclose()

    async def _loop(self, pubsub: Any) -> None:
        next_resync = time.monotonic() + RESYNC_S
        while True:
            message = None
            if pubsub is not None:
                message = await pubsub.get_message(timeout=GAUGES_S)
            else:
                await asyncio.sleep(GAUGES_S)
            if message is not None:
                await self._on_message(message.get("data"))
            if time.monotonic() >= next_resync:
                next_resync = time.monotonic() + RESYNC_S
                await self.load()
                await self._report()
            self._gauges()

    async def _on_message(self, data: Any) -> None:
        try:
            event = orjson.loads(data)
        except (orjson.JSONDecodeError, TypeError):
            return
        if not isinstance(event, dict):
            return
        if event.get("t") == "reload":
            await self.load()
        else:
            self.view.apply(event)
            if event.get("t") == "disable":
                member = self.view.by_id(str(event.get("id")))
                log.warning("upstream %s out of this worker's pool: %s",
                            member.name if member else "?", event.get("why"))  # fmt: skip
                self._gauges()

    def _gauges(self) -> None:
        if self.metrics is None:
            return
        now = time.time()
        members = self.view.members
        auto = sum(1 for m in members if not m.enabled and m.disabled_reason.startswith("upstream"))
        self.metrics.pool_state(
            [(m.name, m.state(now), m.headroom) for m in members], auto, self.view.capacity(now)
        )

    async def _report(self) -> None:
        """The operator's view of health (``antex upstream list``): last writer wins."""
        now = time.time()
        pipe = self.client.pipeline(transaction=False)
        for m in self.view.members:
            report = {
                "name": m.name,
                "state": m.state(now),
                "headroom": round(m.headroom, 4),
                "cooling_until_ms": int(max(m.cool_until, *m.model_cool.values(), 0) * 1000),
                "at_ms": int(now * 1000),
            }
            pipe.hset(store.HEALTH, m.id, orjson.dumps(report))
        await pipe.execute()
