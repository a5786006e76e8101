"""The route table of the ``/admin`` API: one row per operation, read twice — once to register
the route on the app, once to write its part of the OpenAPI document. A route therefore
cannot exist undocumented, nor a documented one be missing.

Schemas come from the msgspec Structs of ``gateway.admin_models`` through
``msgspec.json.schema_components`` rather than from BlackSheep's own OpenAPI support: the
same Structs decode the bodies (BlackSheep's generator documents its own binders, which the
handlers do not use, and its output targets OpenAPI 3.0 while the document is 3.1, which is
JSON Schema 2020-12 — what msgspec emits).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec

from gateway import admin_models as m

Schema = dict[str, Any]
JSON = "application/json"
REF = "#/components/schemas/{name}"
_STR: Schema = {"type": "string"}
_INT: Schema = {"type": "integer"}


@dataclass(frozen=True)
class Query:
    name: str
    description: str
    schema: Schema


@dataclass(frozen=True)
class Route:
    """One operation. ``handler`` names the ``AdminApi`` method; it receives the request, the
    path parameters in order and, when ``body`` is set, the decoded body; it returns a
    ``Response`` or a payload answered with ``status``."""

    method: str
    path: str
    op_id: str
    summary: str
    handler: str
    answer: type | None
    body: type | None = None
    status: int = 200
    query: tuple[Query, ...] = ()
    errors: tuple[tuple[str, str], ...] = (
        ("400", "BadRequest"),
        ("401", "Unauthorized"),
        ("403", "ReadOnly"),
        ("404", "NotFound"),
        ("503", "Unavailable"),
    )

    @property
    def params(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)

    @property
    def pattern(self) -> str:
        """The path in BlackSheep's syntax (``:name``)."""
        return re.sub(r"{(\w+)}", r":\1", self.path)


_PAGE = (
    Query("limit", "page size, 1-500 (default 100)", _INT),
    Query("cursor", "next_cursor of the previous page", _STR),
)
_ACC = "/admin/accounts/{account}"
_KEY = "/admin/keys/{key_id}"
_UP = "/admin/upstreams/{upstream}"
PATH_PARAMS = {
    "account": "account id or email (URL-encoded)",
    "key_id": "key id, or the display prefix sk_live_<key id>_…",
    "upstream": "upstream id or name (env: the environment's upstream)",
    "name": "plan name",
}

ROUTES: tuple[Route, ...] = (
    Route("GET", "/admin/accounts", "adminListAccounts", "Accounts by email, a page at a time",
          "list_accounts", m.AccountList,
          query=(*_PAGE, Query("q", "only emails or ids containing this", _STR))),
    Route("POST", "/admin/accounts", "adminCreateAccount",
          "Create an account (plan omitted: ANTEX_DEFAULT_PLAN; plan null: no plan)",
          "create_account", m.AccountDetail, m.CreateAccount, 201),
    Route("GET", _ACC, "adminShowAccount", "An account with its keys",
          "show_account", m.AccountDetail),
    Route("DELETE", _ACC, "adminDeleteAccount",
          "Erase the account, its keys, bindings, usage, sessions and sign-in links; the audit "
          "trail keeps only the email's SHA-256",
          "delete_account", m.AccountDeleted),
    Route("POST", f"{_ACC}/plan", "adminAssignPlan",
          "Put the account on a plan for a fresh period from now (reactivates it)",
          "assign_plan", m.Account, m.AssignPlan),
    Route("POST", f"{_ACC}/extend", "adminExtendPlan",
          "Add days to the period (from now if it ended); reactivates a cancelled account",
          "extend", m.Account, m.Extend),
    Route("POST", f"{_ACC}/cancel", "adminCancelPlan", "End the subscription now",
          "cancel", m.Account),
    Route("POST", f"{_ACC}/ip-slots", "adminAccountSlots",
          "Extra IP slots for every key of the account", "account_slots", m.AccountSlots,
          m.AddSlots),
    Route("POST", f"{_ACC}/clear-flag", "adminClearFlag",
          "Clear the account's key-sharing flag and the networks counted so far",
          "clear_flag", m.Account),
    Route("POST", f"{_ACC}/clear-reservations", "adminClearReservations",
          "Drop the account's reservations (requests in flight a lost gateway node left held); "
          "their requests are still billed when they end", "clear_reservations",
          m.ClearedReservations),
    Route("GET", f"{_ACC}/usage", "adminUsage",
          "Both windows, credits and the recent request log (metadata only)", "usage",
          m.UsageReport, query=(Query("requests", "recent requests, 1-100 (default 20)", _INT),)),
    Route("GET", f"{_ACC}/events", "adminEvents",
          "Security events, newest first", "events", m.EventList,
          query=(Query("count", "events, 1-100 (default 50)", _INT),)),
    Route("GET", f"{_ACC}/keys", "adminListKeys", "The account's keys (never a secret)",
          "list_keys", m.KeyList),
    Route("POST", f"{_ACC}/keys", "adminCreateKey",
          "Create a key (at most the plan's max_keys active); the full key is in this response "
          "only", "create_key", m.CreatedKey, m.CreateKey, 201),
    Route("GET", _KEY, "adminShowKey", "One key", "show_key", m.Key),
    Route("POST", f"{_KEY}/revoke", "adminRevokeKey",
          "Revoke a key: refused on every worker from the next request",
          "revoke_key", m.Key),
    Route("POST", f"{_KEY}/release", "adminReleaseKey",
          "Lift a key's quarantine", "release_key", m.Key),
    Route("GET", f"{_KEY}/ips", "adminListIps", "The key's bound IPs and slots", "list_ips",
          m.IpBindings),
    Route("POST", f"{_KEY}/ips/unbind", "adminUnbindIps",
          "Free one bound IP (an IPv6 address frees its /64) or all of them", "unbind",
          m.Unbound, m.Unbind),
    Route("POST", f"{_KEY}/ip-slots", "adminKeySlots", "Extra IP slots for one key",
          "key_slots", m.KeySlots, m.AddSlots),
    Route("GET", "/admin/quarantine", "adminQuarantine",
          "Keys in quarantine, newest first, and accounts flagged for key sharing",
          "quarantine", m.QuarantineList,
          query=(*_PAGE, Query("account", "only this account (id or email)", _STR))),
    Route("GET", "/admin/audit", "adminAudit", "The operator audit trail, newest first",
          "audit_trail", m.AuditList,
          query=(*_PAGE,
                 Query("actor", "exactly this actor", _STR),
                 Query("action", "this action or family (key, key.revoke)", _STR),
                 Query("since_ms", "entries at or after this time (ms)", _INT),
                 Query("account", "entries about this account (id or email)", _STR))),
    Route("GET", "/admin/deletion-requests", "adminDeletionRequests",
          "Customers' open deletion requests, oldest first", "deletion_requests",
          m.DeletionList, query=_PAGE),
    Route("GET", "/admin/plans", "adminListPlans", "The plan catalog", "plans", m.PlanList),
    Route("PUT", "/admin/plans/{name}", "adminSetPlan",
          "Create or update a plan; its limits are copied into every account on it",
          "put_plan", m.PlanSaved, m.PlanInput),
    Route("GET", "/admin/upstreams", "adminListUpstreams",
          "The upstream pool with health and rate-limit headroom (never a key)",
          "list_upstreams", m.UpstreamList),
    Route("POST", "/admin/upstreams", "adminAddUpstream",
          "Add an upstream; its key is sealed with the master key and never shown again",
          "add_upstream", m.Upstream, m.UpstreamInput, 201),
    Route("GET", _UP, "adminShowUpstream", "One upstream", "show_upstream", m.Upstream),
    Route("DELETE", _UP, "adminRemoveUpstream", "Delete an upstream and its key",
          "remove_upstream", m.UpstreamRemoved),
    Route("POST", f"{_UP}/enable", "adminEnableUpstream", "Enable it and clear its cooldowns",
          "enable_upstream", m.Upstream),
    Route("POST", f"{_UP}/disable", "adminDisableUpstream",
          "Take it out of the pool on every worker", "disable_upstream", m.Upstream),
    Route("POST", f"{_UP}/weight", "adminUpstreamWeight",
          "Change its weight (moves only its share of conversations)", "upstream_weight",
          m.Upstream, m.UpstreamWeight),
)  # fmt: skip


def models() -> list[type]:
    """Every type the table names, for ``msgspec.json.schema_components``."""
    found: list[type] = []
    for route in ROUTES:
        for kind in (route.body, route.answer):
            if kind is not None and kind not in found:
                found.append(kind)
    return found


def components() -> dict[str, Schema]:
    """Component schemas of every admin body and answer (and the types they use)."""
    # SubscriptionUsage is also the answer of the public usage routes.
    kinds = [*models(), m.SubscriptionUsage]
    _, schemas = msgspec.json.schema_components(kinds, ref_template=REF)
    return schemas


def _ref(kind: type) -> Schema:
    return {"$ref": REF.format(name=kind.__name__)}


def _operation(route: Route) -> Schema:
    op: Schema = {
        "operationId": route.op_id,
        "summary": route.summary,
        "tags": ["admin"],
        "security": [{"OperatorToken": []}],
    }
    if route.query:
        op["parameters"] = [
            {"name": q.name, "in": "query", "required": False, "schema": q.schema,
             "description": q.description}
            for q in route.query
        ]  # fmt: skip
    if route.body is not None:
        op["requestBody"] = {"required": True, "content": {JSON: {"schema": _ref(route.body)}}}
    ok: Schema = {"description": "Created" if route.status == 201 else "OK"}
    if route.answer is not None:
        ok["content"] = {JSON: {"schema": _ref(route.answer)}}
    op["responses"] = {
        str(route.status): ok,
        **{status: {"$ref": f"#/components/responses/{name}"} for status, name in route.errors},
    }
    return op


def paths() -> dict[str, Schema]:
    """The ``paths`` entries of every admin operation."""
    out: dict[str, Schema] = {}
    for route in ROUTES:
        item = out.setdefault(route.path, {})
        if route.params and "parameters" not in item:
            item["parameters"] = [
                {"name": p, "in": "path", "required": True, "schema": _STR,
                 "description": PATH_PARAMS[p]}
                for p in route.params
            ]  # fmt: skip
        item[route.method.lower()] = _operation(route)
    return out
