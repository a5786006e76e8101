"""The ``antex`` command: serve, the simulator, and operator commands.

Operator commands reach the same Valkey as the server: ``ANTEX_VALKEY_URL``, else the
embedded server serving ``ANTEX_DATA_DIR`` (started for the command when not running).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import valkey.asyncio as avalkey

from gateway import (
    __version__,
    accounts,
    admin_tokens,
    audit,
    erasure,
    keyspace,
    layout,
    snapshot,
    store,
    upstream_store,
)
from gateway.clock import Clock, make_clock, rfc3339
from gateway.config import Settings
from gateway.dashboard import signin
from gateway.embedded_valkey import EmbeddedValkey
from gateway.errors import ConfigError, InvalidRequest
from gateway.limits import CreditLimiter
from gateway.operations import Operator
from gateway.plans import DEFAULT_MAX_KEYS, Plan, get_plan, list_plans
from gateway.secretbox import SecretBox, load_master_key
from gateway.store import Scripts, open_client

Command = Callable[[avalkey.Valkey, argparse.Namespace, Settings], Awaitable[Any]]
_COMMANDS: dict[tuple[str, str], Command] = {}


def command(group: str, action: str) -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        _COMMANDS[(group, action)] = fn
        return fn

    return register


def _holds_data(data_dir: Path) -> bool:
    return (data_dir / "appendonlydir").is_dir() or (data_dir / "dump.rdb").is_file()


@contextlib.asynccontextmanager
async def admin_valkey(settings: Settings, *, init: bool = False) -> AsyncIterator[avalkey.Valkey]:
    """The store the server uses. A data folder with no running Valkey and no data is most
    likely the wrong folder: starting an empty store there would create keys the live server
    never sees, so that needs ``init``."""
    embedded: EmbeddedValkey | None = None
    url = settings.valkey_url
    if url is None:
        candidate = EmbeddedValkey(Path(settings.data_dir))
        url = candidate.running_url()
        if url is None and not init and not _holds_data(candidate.data_dir):
            raise ConfigError(
                f"no Valkey is running for ANTEX_DATA_DIR={candidate.data_dir} and it holds "
                "no data. Run this from the gateway's folder (or set ANTEX_DATA_DIR or "
                "ANTEX_VALKEY_URL like the server); pass --init to create a new empty store."
            )
        if url is None:
            url = await asyncio.to_thread(candidate.start)
            embedded = candidate
    client = open_client(url)
    try:
        # Operator commands never write into a layout they do not understand.
        layout.refuse_newer(await layout.stamped_version(client) or layout.UNVERSIONED)
        yield client
    finally:
        await client.aclose()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


def emit(args: argparse.Namespace, value: Any, text: str) -> None:
    if getattr(args, "json", False):
        sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(text + "\n")


def _clock(s: Settings) -> Clock:
    """The one clock of a CLI command (the server's test offset file included)."""
    return make_clock(s.clock_file)


def _now(s: Settings) -> int:
    return _clock(s)()


def _operator(client: avalkey.Valkey, s: Settings) -> Operator:
    return Operator(
        client, audit.cli_actor(), _clock(s), s.audit_retention_days,
        s.bcrypt_rounds,
    )  # fmt: skip


def _at(ms: Any) -> str:
    return rfc3339(int(ms)) if ms else "-"


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """Plain aligned columns; ``columns`` are (field, heading) pairs."""
    if not rows:
        return "(none)"
    cells = [[h for _, h in columns]]
    for row in rows:
        cells.append(["-" if row.get(f) in (None, "", []) else _cell(row[f]) for f, _ in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells
    )


def _cell(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _account_text(a: dict[str, Any]) -> str:
    lines = [
        f"account   {a['id']}  {a['email']}",
        f"plan      {a['plan'] or '-'} ({a['subscription']}), period ends {a['period_end'] or '-'}",
        f"credits   5h {a['credits_5h'] or '-'} / 7d {a['credits_7d'] or '-'}, "
        f"concurrency {a['concurrency']}",
        f"IP slots  {a['ip_slots']} per key + {a['extra_ip_slots']} extra",
        f"keys      at most {a['max_keys']} active",
    ]
    if a.get("shared_flag_reason"):
        lines.append(f"flagged   {_at(a['shared_flag_ms'])}: {a['shared_flag_reason']}")
    if "keys" in a:
        lines += ["", _keys_text(a["keys"])]
    return "\n".join(lines)


def _keys_text(keys: list[dict[str, Any]]) -> str:
    rows = [
        {
            **k,
            "created": _at(k["created_ms"]),
            "used": _at(k["last_used_ms"]),
            "ips": f"{len(k['bound_ips'])}/{k['ip_slots']} {','.join(k['bound_ips'])}".strip(),
        }
        for k in keys
    ]
    return table(
        rows,
        [
            ("key_id", "KEY ID"),
            ("name", "NAME"),
            ("status", "STATUS"),
            ("created", "CREATED"),
            ("used", "LAST USED"),
            ("ips", "IPS"),
            ("quarantine_reason", "QUARANTINE"),
        ],
    )


async def _account(client: avalkey.Valkey, ref: str) -> str:
    return await accounts.require_account(client, ref)


@command("account", "create")
async def _account_create(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    plan = None if args.no_plan else (args.plan or s.default_plan)
    account_id = await _operator(client, s).create_account(args.email, plan)
    account = await accounts.show_account(client, account_id, now_ms=_now(s))
    emit(
        args,
        account,
        f"account {account_id} created for {account['email']} on plan "
        f"{account['plan'] or '(none)'}",
    )


@command("account", "show")
async def _account_show(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    account = await accounts.show_account(
        client, await _account(client, args.email), now_ms=_now(s)
    )
    emit(args, account, _account_text(account))


@command("account", "list")
async def _account_list(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    found = await accounts.list_accounts(client, now_ms=_now(s))
    text = table(
        found,
        [
            ("id", "ID"),
            ("email", "EMAIL"),
            ("plan", "PLAN"),
            ("subscription", "STATE"),
            ("period_end", "PERIOD END"),
            ("extra_ip_slots", "EXTRA SLOTS"),
        ],
    )
    emit(args, found, text)


@command("account", "plan")
async def _account_plan(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    account = await _operator(client, s).assign_plan(
        await _account(client, args.email), args.plan, args.period_days
    )
    emit(
        args,
        account,
        f"{account['email']} is on plan {account['plan']} until {account['period_end']}",
    )


@command("account", "extend")
async def _account_extend(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    account_id = await _account(client, args.email)
    account = await _operator(client, s).extend(account_id, args.days)
    emit(
        args,
        account,
        f"{account['email']}: plan {account['plan']} now runs until {account['period_end']}",
    )


@command("account", "cancel")
async def _account_cancel(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    account = await _operator(client, s).cancel(await _account(client, args.email))
    emit(args, account, f"{account['email']}: plan {account['plan']} cancelled")


@command("account", "clear-reservations")
async def _account_clear_reservations(
    client: avalkey.Valkey, args: argparse.Namespace, s: Settings
) -> None:
    done = await _operator(client, s).clear_reservations(await _account(client, args.email))
    emit(args, done, f"{done['email']}: {done['cleared']} reservations cleared")


@command("account", "delete")
async def _account_delete(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    account_id = await _account(client, args.email)
    email = (await accounts.get_account(client, account_id)).get("email", "")
    if not args.yes:
        if not sys.stdin.isatty():
            raise InvalidRequest("refusing to delete without confirmation: pass --yes")
        sys.stderr.write(
            f"Delete account {account_id} ({email}) with all its keys, usage, sessions and "
            "sign-in links? This cannot be undone. Type the email to confirm: "
        )
        sys.stderr.flush()
        if sys.stdin.readline().strip().lower() != email:
            raise InvalidRequest("not confirmed; nothing deleted")
    done = await _operator(client, s).delete_account(account_id)
    emit(
        args,
        done,
        f"account deleted: {done['keys_deleted']} API keys, {done['valkey_keys_deleted']} "
        f"records; the audit trail keeps {done['email_sha256']}",
    )


@command("deletion", "list")
async def _deletion_list(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    found = await erasure.list_requests(client, _now(s))
    rows = [{**r, "age": f"{r['age_days']:g} d", "state": "OVERDUE" if r["overdue"] else "open"}
            for r in found]  # fmt: skip
    text = table(
        rows,
        [("account_id", "ACCOUNT"), ("email", "EMAIL"), ("requested_at", "REQUESTED"),
         ("age", "AGE"), ("state", "STATE")],
    )  # fmt: skip
    emit(args, found, text)


@command("audit", "list")
async def _audit(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    since = None
    if args.since:
        since = _parse_since(args.since, _now(s))
    account = await _account(client, args.account) if args.account else None
    found, _ = await audit.query(
        client, actor=args.actor, action=args.action_filter, since_ms=since, account=account,
        limit=args.limit,
    )  # fmt: skip
    rows = [
        {**e, "target": " ".join(f"{k}={v}" for k, v in e["target"].items()),
         "changes": "; ".join(f"{k}: {b} -> {a}" for k, (b, a) in e["changes"].items())}
        for e in found
    ]  # fmt: skip
    text = table(
        rows,
        [("at", "AT"), ("actor", "ACTOR"), ("action", "ACTION"), ("target", "TARGET"),
         ("changes", "CHANGES")],
    )  # fmt: skip
    emit(args, found, text)


_INT32 = 2**31 - 1


def _count(text: str) -> int:
    """An argparse type: numbers the operator types stay inside signed 32 bits (the
    operations behind check their own, tighter ranges)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if abs(value) > _INT32:
        raise argparse.ArgumentTypeError(f"{value} is out of range (at most {_INT32})")
    return value


def _parse_since(text: str, now_ms: int) -> int:
    """``7d``, ``12h``, ``30m`` before now, or an RFC 3339 / ISO date."""
    units = {"d": 86_400_000, "h": 3_600_000, "m": 60_000}
    if text[:-1].isdigit() and text[-1:] in units and len(text) < 9:
        return now_ms - int(text[:-1]) * units[text[-1]]
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(f"--since: not a duration (7d, 12h) or a date: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


@command("export", "run")
async def _export(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    out = sys.stdout.buffer
    async for record in snapshot.export(client):
        out.write(record)
    out.flush()


@command("import", "run")
async def _import(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    if args.file == "-":
        lines = list(sys.stdin.buffer)
    else:
        with open(args.file, "rb") as f:  # noqa: ASYNC230 (one local file, before any I/O)
            lines = list(f)
    counts = await snapshot.restore(client, lines)
    summary = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
    emit(args, counts, f"imported {summary}")


@command("key", "create")
async def _key_create(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    account_id = await _account(client, args.email)
    created = await _operator(client, s).create_key(account_id, args.name)
    # stdout carries the key alone so scripts can capture it; it is never shown again.
    sys.stderr.write(f"key {created.key_id}: save it now, it cannot be shown again\n")
    emit(
        args,
        {"account_id": account_id, "key_id": created.key_id, "name": args.name, "key": created.key},
        created.key,
    )


@command("key", "list")
async def _key_list(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    found = await accounts.list_keys(client, await _account(client, args.email))
    emit(args, found, _keys_text(found))


@command("key", "revoke")
async def _key_revoke(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    account_id, key_id = await accounts.find_key(client, args.key_id)
    key = await _operator(client, s).revoke_key(account_id, key_id)
    emit(args, key, f"key {key_id} revoked")


@command("key", "release")
@command("quarantine", "release")
async def _key_release(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    account_id, key_id = await accounts.find_key(client, args.key_id)
    key = await _operator(client, s).release_key(account_id, key_id)
    emit(args, key, f"key {key_id} released from quarantine")


@command("ip", "list")
async def _ip_list(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    account_id, key_id = await accounts.find_key(client, args.key_id)
    found = await accounts.list_ips(client, account_id, key_id)
    head = f"key {key_id}: {len(found['bound'])} of {found['ip_slots']} IP slots bound"
    emit(args, found, head + "\n" + table(found["bound"], [("ip", "IP"), ("bound_at", "BOUND AT")]))


@command("ip", "unbind")
async def _ip_unbind(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    if (args.ip is None) == (not args.all):
        raise InvalidRequest("give one IP to unbind, or --all")
    account_id, key_id = await accounts.find_key(client, args.key_id)
    removed = await _operator(client, s).unbind_ips(account_id, key_id, args.ip)
    emit(
        args,
        {"key_id": key_id, "unbound": removed},
        f"key {key_id}: unbound {', '.join(removed) or 'nothing'}",
    )


@command("ip", "add-slots")
async def _ip_add_slots(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    if (args.key is None) == (args.account is None):
        raise InvalidRequest("give --key KEY_ID or --account EMAIL")
    if args.key is not None:
        account_id, key_id = await accounts.find_key(client, args.key)
        total = await _operator(client, s).add_key_slots(account_id, key_id, args.count)
        key = await accounts.get_key(client, account_id, key_id)
        value = {"key_id": key_id, "extra_ip_slots": total, "ip_slots": key["ip_slots"]}
        text = f"key {key_id}: {total} extra IP slots, {key['ip_slots']} in all"
    else:
        account_id = await _account(client, args.account)
        total = await _operator(client, s).add_account_slots(account_id, args.count)
        value = {"account_id": account_id, "extra_ip_slots": total}
        text = f"account {account_id}: {total} extra IP slots for every key"
    emit(args, value, text)


@command("quarantine", "list")
async def _quarantine_list(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    account_id = await _account(client, args.account) if args.account else None
    found = await accounts.list_quarantined(client, account_id)
    flagged = await accounts.list_flagged(client)
    if account_id is not None:
        flagged = [f for f in flagged if f["account_id"] == account_id]
    rows = [{**k, "since": _at(k["quarantined_ms"])} for k in found]
    text = table(
        rows,
        [
            ("key_id", "KEY ID"),
            ("email", "EMAIL"),
            ("name", "NAME"),
            ("since", "SINCE"),
            ("quarantine_reason", "REASON"),
        ],
    )
    text += "\n\naccounts flagged for key sharing (not locked):\n" + table(
        flagged,
        [
            ("account_id", "ACCOUNT"),
            ("email", "EMAIL"),
            ("flagged_at", "SINCE"),
            ("reason", "REASON"),
        ],
    )
    value: dict[str, Any] = {"quarantined": found, "flagged": flagged}
    if account_id is not None:
        events = await accounts.account_events(client, account_id, args.count)
        value["events"] = events
        text += "\n\nevents, newest first:\n" + table(
            events,
            [
                ("at", "AT"),
                ("type", "TYPE"),
                ("key_id", "KEY ID"),
                ("ips", "IPS"),
                ("reason", "REASON"),
            ],
        )
    emit(args, value, text)


@command("quarantine", "clear-flag")
async def _quarantine_clear(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    account = await _operator(client, s).clear_flag(await _account(client, args.email))
    emit(args, account, f"{account['email']}: key-sharing flag cleared")


@command("admin-token", "create")
async def _token_create(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    token_id, token = await _operator(client, s).create_token(args.name, args.scope)
    sys.stderr.write(f"operator token {token_id}: save it now, it cannot be shown again\n")
    value = {"token_id": token_id, "name": args.name, "scope": args.scope, "token": token}
    emit(args, value, token)


@command("admin-token", "list")
async def _token_list(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    found = await admin_tokens.list_tokens(client)
    rows = [{**t, "created": _at(t["created_ms"])} for t in found]
    emit(
        args,
        found,
        table(
            rows,
            [("token_id", "TOKEN ID"), ("name", "NAME"), ("scope", "SCOPE"),
             ("created", "CREATED")],
        ),
    )


@command("admin-token", "revoke")
async def _token_revoke(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    await _operator(client, s).revoke_token(args.token_id)
    emit(
        args,
        {"token_id": args.token_id, "revoked": True},
        f"operator token {args.token_id} revoked",
    )


@command("plan", "set")
async def _plan_set(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    current = await get_plan(client, args.name)
    plan = Plan(
        name=args.name,
        credits_5h=args.credits_5h,
        credits_7d=args.credits_7d,
        ip_slots=args.ip_slots,
        concurrency=args.concurrency,
        period_days=args.period_days or (current.period_days if current else 30),
        description=args.description
        if args.description is not None
        else (current.description if current else ""),
        max_keys=args.max_keys
        if args.max_keys is not None
        else (current.max_keys if current else DEFAULT_MAX_KEYS),
    )
    updated = await _operator(client, s).set_plan(plan)
    emit(
        args,
        {"plan": orjson.loads(plan.to_json()), "accounts_updated": updated},
        f"plan {plan.name} saved; limits copied into {updated} accounts",
    )


@command("plan", "list")
async def _plan_list(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    found = [orjson.loads(p.to_json()) for p in await list_plans(client)]
    text = table(
        found,
        [
            ("name", "PLAN"),
            ("credits_5h", "CREDITS 5H"),
            ("credits_7d", "CREDITS 7D"),
            ("ip_slots", "IP SLOTS"),
            ("concurrency", "CONCURRENCY"),
            ("max_keys", "KEYS"),
            ("period_days", "DAYS"),
            ("description", "DESCRIPTION"),
        ],
    )
    emit(args, found, text)


@command("usage", "show")
async def _usage(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    account_id = await _account(client, args.email)
    limiter = CreditLimiter(client, Scripts(), _clock(s))
    report = await accounts.usage_report(client, limiter, account_id, requests=args.requests)
    emit(args, report, _usage_text(report))


def _usage_text(r: dict[str, Any]) -> str:
    u, c = r["usage"], r["credits"]
    lines = [
        f"account {r['account_id']} ({r['email']}), plan {u['plan']['name'] or '-'}, "
        f"period ends {u['plan']['period_end'] or '-'}"
    ]
    for title, name in (("5-hour", "five_hour"), ("weekly", "seven_day")):
        w = u[name]
        resets = f"resets at {w['resets_at']}" if w["resets_at"] else "nothing used"
        lines.append(
            f"{title:7} {w['utilization']:5.1f}% used ({c[name]['used']:g} of "
            f"{c[name]['limit']} credits), {resets}"
        )
    lines += [f"in flight: {u['requests_in_flight']}", "", "recent requests:"]
    rows = [
        {
            **e,
            "tokens": f"{e.get('input_tokens', 0)}/{e.get('output_tokens', 0)}",
            "credits": e.get("credits_mc", 0) / 1000,
        }
        for e in r["recent_requests"]
    ]
    lines.append(
        table(
            rows,
            [
                ("at", "AT"),
                ("model", "MODEL"),
                ("route", "ROUTE"),
                ("status", "STATUS"),
                ("tokens", "IN/OUT"),
                ("credits", "CREDITS"),
                ("latency_ms", "MS"),
                ("key_id", "KEY ID"),
            ],
        )
    )
    return "\n".join(lines)


@command("login-link", "issue")
async def _login_link(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    # For gateways without ANTEX_SMTP_URL: the operator hands the link over themselves.
    account_id = await accounts.require_account(client, args.email)
    # An explicit ANTEX_PUBLIC_URL wins; else the address the serving gateway stored at its
    # start, since this shell's host and port need not be the server's.
    stored = await client.get(keyspace.PUBLIC_URL)
    base_url = s.public_url or (str(stored) if stored else s.base_url)
    link = await _operator(client, s).issue_login_link(account_id, base_url)
    emit(args, {"link": link, "expires_in_s": signin.LINK_TTL_MS // 1000}, link)


def _upstreams_text(views: list[dict[str, Any]]) -> str:
    rows = [
        {
            **v,
            "headroom": "-" if v["headroom"] is None else f"{v['headroom'] * 100:.0f}%",
            "cooling": _at(v["cooling_until_ms"]),
            "limit": v["max_concurrent"],
        }
        for v in views
    ]
    return table(
        rows,
        [
            ("name", "NAME"),
            ("id", "ID"),
            ("state", "STATE"),
            ("weight", "WEIGHT"),
            ("headroom", "HEADROOM"),
            ("cooling", "COOLING UNTIL"),
            ("limit", "MAX CONC"),
            ("models", "MODELS"),
            ("url", "URL"),
            ("key_fingerprint", "KEY"),
            ("disabled_reason", "REASON"),
        ],
    )


@command("upstream", "add")
async def _upstream_add(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    if not args.key_stdin:
        raise InvalidRequest("pass the upstream's API key on stdin with --key-stdin")
    # Never argv: command lines show up in ps and shell history.
    key = (await asyncio.to_thread(sys.stdin.readline)).strip()
    box = SecretBox(load_master_key(s.secret_key, Path(s.data_dir)))
    models = tuple(m.strip() for m in (args.models or "").split(",") if m.strip())
    view = await _operator(client, s).add_upstream(
        box, name=args.name, url=args.url, key=key, weight=args.weight,
        models=models, max_concurrent=args.max_concurrent,
    )  # fmt: skip
    emit(args, view, f"upstream {view['name']} added as {view['id']} ({view['key_fingerprint']})")


@command("upstream", "list")
async def _upstream_list(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    found = await upstream_store.views(client, _now(s))
    emit(args, found, _upstreams_text(found))


@command("upstream", "show")
async def _upstream_show(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    view = await upstream_store.view_of(client, args.upstream, _now(s))
    emit(args, view, _upstreams_text([view]))


@command("upstream", "enable")
async def _upstream_enable(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    view = await _operator(client, s).enable_upstream(args.upstream, True)
    emit(args, view, f"upstream {args.upstream} enabled")


@command("upstream", "disable")
async def _upstream_disable(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    view = await _operator(client, s).enable_upstream(args.upstream, False)
    emit(args, view, f"upstream {args.upstream} disabled")


@command("upstream", "set-weight")
async def _upstream_weight(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    view = await _operator(client, s).set_upstream_weight(args.upstream, args.weight)
    emit(args, view, f"upstream {args.upstream} now has weight {args.weight}")


@command("upstream", "remove")
async def _upstream_remove(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    upstream_id = await _operator(client, s).remove_upstream(args.upstream)
    emit(args, {"id": upstream_id, "removed": True}, f"upstream {args.upstream} removed")


def _operator_parsers(sub: Any) -> None:
    """The operator groups; every command takes --json for machine-readable output."""

    def group(name: str, help_text: str) -> Any:
        return sub.add_parser(name, help=help_text).add_subparsers(dest="action", required=True)

    def action(parent: Any, name: str, help_text: str, *positional: str) -> Any:
        p = parent.add_parser(name, help=help_text)
        for arg in positional:
            p.add_argument(arg)
        p.add_argument("--json", action="store_true", help="print JSON")
        return p

    account = group("account", "manage accounts and their subscriptions")
    create = action(account, "create", "create an account", "email")
    choice = create.add_mutually_exclusive_group()
    choice.add_argument("--plan", help="plan name (default: ANTEX_DEFAULT_PLAN)")
    choice.add_argument("--no-plan", action="store_true", help="no plan until one is assigned")
    action(account, "show", "show an account and its keys", "email")
    action(account, "list", "list accounts")
    plan = action(account, "plan", "put an account on a plan for a fresh period", "email", "plan")
    plan.add_argument("--period-days", type=_count, help="default: the plan's period")
    extend = action(account, "extend", "extend the plan period (renews a cancelled one)", "email")
    extend.add_argument("--days", type=_count, help="default: the plan's period")
    action(account, "cancel", "end the subscription now", "email")
    action(
        account, "clear-reservations",
        "free the requests-in-flight a lost gateway node left held", "email",
    )  # fmt: skip
    delete = action(
        account, "delete",
        "erase the account, its keys, usage, sessions and sign-in links (asks first)", "email",
    )  # fmt: skip
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    deletion = group("deletion", "customers' deletion requests")
    action(deletion, "list", "open requests with their age (overdue after 7 days)")

    trail = sub.add_parser("audit", help="the operator audit trail, newest first")
    trail.add_argument("--actor", help="exactly this actor (token name, or cli@host)")
    trail.add_argument(
        "--action", dest="action_filter", help="this action or family (account, key.revoke)"
    )
    trail.add_argument("--since", help="7d, 12h, 30m, or an ISO date")
    trail.add_argument("--account", help="only entries about this account (email or id)")
    trail.add_argument("--limit", type=_count, default=50)
    trail.add_argument("--json", action="store_true", help="print JSON")
    trail.set_defaults(action="list")

    key = group("key", "manage API keys")
    kcreate = action(key, "create", "create a key; it is printed once", "email")
    kcreate.add_argument("--name", default="default")
    action(key, "list", "list an account's keys (never the secrets)", "email")
    action(key, "revoke", "revoke a key on every worker at once", "key_id")
    action(key, "release", "release a key from quarantine", "key_id")

    ip = group("ip", "IP bindings of keys")
    action(ip, "list", "bound IPs of a key", "key_id")
    unbind = action(ip, "unbind", "free one bound IP (IPv6: its /64) or all", "key_id")
    unbind.add_argument("ip", nargs="?")
    unbind.add_argument("--all", action="store_true")
    slots = action(ip, "add-slots", "add (or with a negative count remove) extra IP slots")
    slots.add_argument("count", type=_count)
    target = slots.add_mutually_exclusive_group(required=True)
    target.add_argument("--key", help="key id: slots for this key only")
    target.add_argument("--account", help="account email or id: slots for every key")

    quarantine = group("quarantine", "quarantined keys and security events")
    qlist = action(quarantine, "list", "quarantined keys (with --account: and its events)")
    qlist.add_argument("--account", help="account email or id")
    qlist.add_argument("--count", type=_count, default=50, help="events to show")
    action(quarantine, "release", "release a key from quarantine", "key_id")
    action(quarantine, "clear-flag", "clear an account's key-sharing flag", "email")

    tokens = group("admin-token", "operator tokens for the /admin API")
    tcreate = action(tokens, "create", "create a token; it is printed once")
    tcreate.add_argument("--name", default="operator")
    tcreate.add_argument(
        "--scope", choices=admin_tokens.SCOPES, default="full",
        help="full (default) or read: a read token cannot change anything",
    )  # fmt: skip
    action(tokens, "list", "list tokens (never the tokens themselves)")
    action(tokens, "revoke", "revoke a token", "token_id")

    plans = group("plan", "the plan catalog")
    pset = action(plans, "set", "create or update a plan", "name")
    for flag in ("--credits-5h", "--credits-7d", "--ip-slots", "--concurrency"):
        pset.add_argument(flag, type=_count, required=True)
    pset.add_argument("--period-days", type=_count)
    pset.add_argument(
        "--max-keys",
        type=_count,
        help=f"active keys per account (default: unchanged, new: {DEFAULT_MAX_KEYS})",
    )
    pset.add_argument("--description")
    action(plans, "list", "list plans")

    upstream = group("upstream", "the pool of upstream API credentials")
    uadd = action(upstream, "add", "add an upstream; its API key is read from stdin", "name")
    uadd.add_argument("--url", required=True, help="base URL, e.g. https://api.anthropic.com")
    uadd.add_argument("--weight", type=int, default=1, help="share of new conversations")
    uadd.add_argument("--key-stdin", action="store_true", help="read the API key from stdin")
    uadd.add_argument("--models", help="comma-separated model ids it serves (default: all)")
    uadd.add_argument("--max-concurrent", type=int, help="cap on requests in flight per worker")
    action(upstream, "list", "upstreams with health and rate-limit headroom")
    action(upstream, "show", "one upstream", "upstream")
    action(upstream, "enable", "enable an upstream (clears its cooldowns)", "upstream")
    action(upstream, "disable", "take an upstream out of the pool on every worker", "upstream")
    uweight = action(upstream, "set-weight", "change an upstream's weight", "upstream")
    uweight.add_argument("weight", type=int)
    action(upstream, "remove", "delete an upstream and its stored key", "upstream")

    usage = sub.add_parser("usage", help="an account's windows and recent requests")
    usage.add_argument("email")
    usage.add_argument("--requests", type=_count, default=10, help="recent requests to show")
    usage.add_argument("--json", action="store_true", help="print JSON")
    usage.set_defaults(action="show")

    exp = sub.add_parser("export", help="write a JSON-lines snapshot of the store to stdout")
    exp.set_defaults(action="run")
    imp = sub.add_parser("import", help="restore a snapshot into an empty store")
    imp.add_argument("file", nargs="?", default="-", help="snapshot file (default: stdin)")
    imp.add_argument("--json", action="store_true", help="print JSON")
    imp.set_defaults(action="run")

    link = sub.add_parser("login-link", help="print a one-time dashboard sign-in link (15 min)")
    link.add_argument("email", help="account email (or id)")
    link.add_argument("--json", action="store_true", help="print JSON")
    link.set_defaults(action="issue")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="antex", description=__doc__)
    parser.add_argument("--version", action="version", version=f"antex {__version__}")
    parser.add_argument(
        "--init", action="store_true",
        help="allow starting a new, empty embedded Valkey in ANTEX_DATA_DIR",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="group", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--demo", action="store_true", help="create a demo account and key")

    sim = sub.add_parser("simulator", help="run the Anthropic-wire upstream simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8090)
    sim.add_argument("--workers", type=int, default=1)

    _operator_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        if args.group == "serve":
            from gateway.observability import configure_logging
            from gateway.serve import serve

            configure_logging(settings.log_level, settings.log_format)
            serve(settings, demo=args.demo)
            return 0
        if args.group == "simulator":
            from gateway import simulator

            simulator.run(host=args.host, port=args.port, workers=args.workers)
            return 0
        handler = _COMMANDS[(args.group, args.action)]

        async def run() -> None:
            async with admin_valkey(settings, init=args.init) as client:
                await handler(client, args, settings)

        asyncio.run(run())
    except store.FAILURES as exc:
        sys.stderr.write(f"antex: {store.domain_error(exc).message}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
