"""Operator actions with their audit entries: the CLI, the admin API and the console all
mutate through an ``Operator``, so no front end can change state without leaving a trace.

Each method reads the state before, mutates through ``accounts``/``plans``/``admin_tokens``,
reads it after and records the changed fields. Views carry no secret, so neither can the
trail.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from gateway import accounts, admin_tokens, audit, erasure, upstream_store
from gateway.dashboard import signin
from gateway.errors import InvalidRequest
from gateway.plans import Plan, get_plan, list_plans, set_plan
from gateway.store import Client

# What an audit entry compares of an account and of a key (never the bcrypt hash).
_ACCOUNT_FIELDS = ("plan", "subscription", "period_end", "credits_5h", "credits_7d",
                   "ip_slots", "extra_ip_slots", "concurrency", "max_keys",
                   "shared_flag_ms", "shared_flag_reason")  # fmt: skip
_KEY_FIELDS = ("name", "status", "extra_ip_slots", "ip_slots", "bound_ips")
# An upstream's audited fields: its key only ever as the fingerprint.
_UPSTREAM_FIELDS = ("name", "url", "weight", "enabled", "models", "max_concurrent",
                    "key_fingerprint")  # fmt: skip


def _pick(view: dict[str, Any] | None, names: tuple[str, ...]) -> dict[str, Any] | None:
    return None if view is None else {n: view.get(n) for n in names}


@dataclass(frozen=True, slots=True)
class Operator:
    """One operator (``actor``) acting at the times ``clock`` gives (ms)."""

    client: Client
    actor: str
    clock: Callable[[], int]
    retention_days: int = 400
    bcrypt_rounds: int = 10

    @property
    def trail(self) -> audit.Trail:
        return audit.Trail(self.client, self.actor, self.retention_days)

    async def _account(self, account_id: str, now: int) -> dict[str, Any]:
        return accounts.account_view(await accounts.get_account(self.client, account_id), now)

    async def _record_account(
        self, action: str, account_id: str, now: int, before: dict[str, Any] | None,
        after: dict[str, Any],
    ) -> None:  # fmt: skip
        await self.trail.record(
            action, now,
            target={"account": account_id, "email": after.get("email")},
            before=_pick(before, _ACCOUNT_FIELDS), after=_pick(after, _ACCOUNT_FIELDS),
        )  # fmt: skip

    # -- accounts

    async def create_account(self, email: str, plan: str | None) -> str:
        now = self.clock()
        await list_plans(self.client)  # seeds the shipped plans on first use
        account_id = await accounts.create_account(self.client, email, plan, now_ms=now)
        after = await self._account(account_id, now)
        await self._record_account("account.create", account_id, now, None, after)
        return account_id

    async def assign_plan(
        self, account_id: str, plan: str, period_days: int | None = None
    ) -> dict[str, Any]:
        now = self.clock()
        before = await self._account(account_id, now)
        after = await accounts.assign_plan(
            self.client, account_id, plan, now_ms=now, period_days=period_days
        )
        await self._record_account("account.plan", account_id, now, before, after)
        return after

    async def extend(self, account_id: str, days: int | None) -> dict[str, Any]:
        now = self.clock()
        before = await self._account(account_id, now)
        if days is None:
            found = await get_plan(self.client, before.get("plan") or "")
            if found is None:
                raise InvalidRequest(
                    "days: field required (the account's plan no longer exists)", param="days"
                )
            days = found.period_days
        after = await accounts.extend_plan(self.client, account_id, days, now_ms=now)
        await self._record_account("account.extend", account_id, now, before, after)
        return after

    async def cancel(self, account_id: str) -> dict[str, Any]:
        now = self.clock()
        before = await self._account(account_id, now)
        after = await accounts.cancel_plan(self.client, account_id, now_ms=now)
        await self._record_account("account.cancel", account_id, now, before, after)
        return after

    async def add_account_slots(self, account_id: str, add: int) -> int:
        now = self.clock()
        before = await self._account(account_id, now)
        total = await accounts.add_account_ip_slots(self.client, account_id, add)
        after = await self._account(account_id, now)
        await self._record_account("account.ip_slots", account_id, now, before, after)
        return total

    async def delete_account(self, account_id: str) -> dict[str, Any]:
        now = self.clock()
        done = await erasure.erase_account(self.client, account_id, now)
        # The one line that remains: the email's digest, never the id or the address.
        await self.trail.record(
            "account.delete", now,
            target={"email_sha256": done["email_sha256"]},
            after={"keys_deleted": done["keys_deleted"], "requested_ms": done["requested_ms"]},
        )  # fmt: skip
        return done

    async def clear_flag(self, account_id: str) -> dict[str, Any]:
        """Clears a key-sharing flag after the operator looked at it."""
        now = self.clock()
        before = await self._account(account_id, now)
        after = await accounts.clear_flag(self.client, account_id, now_ms=now)
        await self._record_account("account.clear_flag", account_id, now, before, after)
        return after

    async def clear_reservations(self, account_id: str) -> dict[str, Any]:
        """Frees an account whose reservations outlived their requests (a lost node)."""
        now = self.clock()
        account = await self._account(account_id, now)
        cleared = await accounts.clear_reservations(self.client, account_id)
        await self.trail.record(
            "account.clear_reservations", now,
            target={"account": account_id, "email": account.get("email")},
            before={"reservations": cleared}, after={"reservations": 0},
        )  # fmt: skip
        return {"account_id": account_id, "email": account.get("email"), "cleared": cleared}

    async def issue_login_link(self, account_id: str, base_url: str) -> str:
        """A one-time dashboard sign-in link for the account; the link itself is not kept."""
        now = self.clock()
        account = await self._account(account_id, now)
        link = await signin.issue_link(self.client, account_id, base_url, now)
        await self.trail.record(
            "account.login_link", now,
            target={"account": account_id, "email": account.get("email")},
            after={"expires_in_s": signin.LINK_TTL_MS // 1000},
        )  # fmt: skip
        return link

    # -- keys and IPs

    async def _key(self, account_id: str, key_id: str) -> dict[str, Any]:
        return await accounts.get_key(self.client, account_id, key_id)

    async def _record_key(
        self, action: str, account_id: str, key_id: str, now: int,
        before: dict[str, Any] | None, after: dict[str, Any],
    ) -> None:  # fmt: skip
        await self.trail.record(
            action, now,
            target={"account": account_id, "key": key_id},
            before=_pick(before, _KEY_FIELDS), after=_pick(after, _KEY_FIELDS),
        )  # fmt: skip

    async def create_key(self, account_id: str, name: str) -> accounts.CreatedKey:
        now = self.clock()
        created = await accounts.create_key(
            self.client, account_id, name, rounds=self.bcrypt_rounds, now_ms=now
        )
        after = await self._key(account_id, created.key_id)
        await self._record_key("key.create", account_id, created.key_id, now, None, after)
        return created

    async def revoke_key(self, account_id: str, key_id: str) -> dict[str, Any]:
        now = self.clock()
        before = await self._key(account_id, key_id)
        await accounts.revoke_key(self.client, account_id, key_id, now_ms=now)
        after = await self._key(account_id, key_id)
        await self._record_key("key.revoke", account_id, key_id, now, before, after)
        return after

    async def release_key(self, account_id: str, key_id: str) -> dict[str, Any]:
        now = self.clock()
        before = await self._key(account_id, key_id)
        after = await accounts.release_key(self.client, account_id, key_id, now_ms=now)
        await self._record_key("key.release", account_id, key_id, now, before, after)
        return after

    async def unbind_ips(self, account_id: str, key_id: str, ip: str | None) -> list[str]:
        now = self.clock()
        before = await self._key(account_id, key_id)
        removed = await accounts.unbind_ips(self.client, account_id, key_id, ip, now_ms=now)
        after = await self._key(account_id, key_id)
        await self._record_key("key.unbind", account_id, key_id, now, before, after)
        return removed

    async def add_key_slots(self, account_id: str, key_id: str, add: int) -> int:
        now = self.clock()
        before = await self._key(account_id, key_id)
        total = await accounts.add_key_ip_slots(self.client, account_id, key_id, add)
        after = await self._key(account_id, key_id)
        await self._record_key("key.ip_slots", account_id, key_id, now, before, after)
        return total

    # -- plans

    async def set_plan(self, plan: Plan) -> int:
        now = self.clock()
        current = await get_plan(self.client, plan.name)
        updated = await set_plan(self.client, plan)
        await self.trail.record(
            "plan.set", now,
            target={"plan": plan.name, "accounts_updated": str(updated)},
            before=None if current is None else orjson.loads(current.to_json()),
            after=orjson.loads(plan.to_json()),
        )  # fmt: skip
        return updated

    # -- upstreams

    async def _upstream_view(self, upstream_id: str, now: int) -> dict[str, Any]:
        return await upstream_store.view_of(self.client, upstream_id, now)

    async def _record_upstream(
        self, action: str, upstream_id: str, now: int, before: dict[str, Any] | None,
        after: dict[str, Any] | None,
    ) -> None:  # fmt: skip
        name = (after or before or {}).get("name")
        await self.trail.record(
            action, now, target={"upstream": upstream_id, "name": str(name)},
            before=_pick(before, _UPSTREAM_FIELDS), after=_pick(after, _UPSTREAM_FIELDS),
        )  # fmt: skip

    async def add_upstream(self, box: Any, **fields: Any) -> dict[str, Any]:
        """``fields`` as ``upstream_store.add_upstream`` takes them; answers the view."""
        now = self.clock()
        record = await upstream_store.add_upstream(self.client, box, now_ms=now, **fields)
        after = await self._upstream_view(record.id, now)
        await self._record_upstream("upstream.add", record.id, now, None, after)
        return after

    async def enable_upstream(self, ref: str, enabled: bool) -> dict[str, Any]:
        now = self.clock()
        upstream_id = await upstream_store.resolve(self.client, ref)
        before = await self._upstream_view(upstream_id, now)
        await upstream_store.enable(self.client, upstream_id, enabled, now_ms=now)
        after = await self._upstream_view(upstream_id, now)
        action = "upstream.enable" if enabled else "upstream.disable"
        await self._record_upstream(action, upstream_id, now, before, after)
        return after

    async def set_upstream_weight(self, ref: str, weight: int) -> dict[str, Any]:
        now = self.clock()
        upstream_id = await upstream_store.resolve(self.client, ref)
        before = await self._upstream_view(upstream_id, now)
        await upstream_store.set_weight(self.client, upstream_id, weight)
        after = await self._upstream_view(upstream_id, now)
        await self._record_upstream("upstream.weight", upstream_id, now, before, after)
        return after

    async def remove_upstream(self, ref: str) -> str:
        now = self.clock()
        upstream_id = await upstream_store.resolve(self.client, ref)
        before = await self._upstream_view(upstream_id, now)
        await upstream_store.remove_upstream(self.client, upstream_id)
        await self._record_upstream("upstream.remove", upstream_id, now, before, None)
        return upstream_id

    # -- operator tokens

    async def create_token(self, name: str, scope: str) -> tuple[str, str]:
        now = self.clock()
        token_id, token = await admin_tokens.create_token(
            self.client, name, now_ms=now, scope=scope
        )
        await self.trail.record(
            "token.create", now, target={"token": token_id},
            after={"name": name or "operator", "scope": scope},
        )  # fmt: skip
        return token_id, token

    async def revoke_token(self, token_id: str) -> None:
        now = self.clock()
        meta = await admin_tokens.revoke_token(self.client, token_id)
        await self.trail.record(
            "token.revoke", now, target={"token": token_id},
            before={"name": meta.get("name"), "scope": meta.get("scope", "full")},
        )  # fmt: skip
