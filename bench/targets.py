"""The hot-path targets in one short run (`make bench-targets`, `python -m bench.targets`):
only the cells they are judged on, then a pass/fail table.

| target | measured as |
|---|---|
| CPU per request ≤ 2.0× bare | SSE and JSON at 64 in flight, CPU of each process tree / requests |
| req/s ≥ 50 % of bare | the same cells |
| added latency ≤ 1.5 ms p50, ≤ 5 ms p99 | 1 in flight, antex − direct (the simulator alone) |
| ≤ 1.2 Valkey round trips per request | `INFO commandstats` delta over the antex c=64 cells |
| RSS per open stream ≤ 1.1× bare | 2,000 slow streams held, freshly started servers |
| wrong-secret flood: legit p99 ≤ 2× | `bench/wrong_secrets.py` phases: none vs 200 addresses |

Rows alternate within each cell (bare, antex, bare, antex, …) so the machine's other load
hits them alike; the figures are same-run ratios, never absolute req/s. About 4–5 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from bench import loads, longstreams, stack, wrong_secrets
from bench.loads import Meters, Row

LUA_DIR = stack.ROOT / "ratelimit_lua"
# Commands a client sends that run scripts: each is one round trip however much it does.
SCRIPT_RUNNERS = frozenset({"evalsha", "evalsha_ro", "eval", "eval_ro", "fcall", "fcall_ro"})
# Sent once per new connection (valkey-py's handshake), not per request.
HANDSHAKE = frozenset({"client|setinfo", "hello", "select", "auth", "subscribe", "ping"})

CPU_RATIO_MAX = 2.0
RPS_SHARE_MIN = 0.5
ADDED_P50_MAX_MS = 1.5
ADDED_P99_MAX_MS = 5.0
ROUND_TRIPS_MAX = 1.2
RSS_RATIO_MAX = 1.1
FLOOD_P99_RATIO_MAX = 2.0


def log(message: str) -> None:
    print(f"[targets {time.strftime('%H:%M:%S')}] {message}", flush=True)


def script_commands(lua_dir: Path = LUA_DIR) -> frozenset[str]:
    """The commands our Lua scripts call (lower case): commandstats counts those calls too,
    so they are told apart from the client's own commands by name."""
    names: set[str] = set()
    for path in lua_dir.glob("*.lua"):
        names.update(
            m.lower() for m in re.findall(r"\.p?call\(\s*['\"]([A-Za-z|]+)['\"]", path.read_text())
        )
    return frozenset(names)


def round_trips(calls: dict[str, int], requests: int, inside: frozenset[str]) -> dict[str, Any]:
    """Client round trips per request from a commandstats delta: script runs plus commands no
    script calls (a command our scripts also use counts as script work, so a client's own
    HGET would be missed: the warm-cache hot path sends none). Connection handshakes are
    reported apart."""
    client = {k: v for k, v in calls.items() if k in SCRIPT_RUNNERS or k not in inside}
    per_request = {k: v for k, v in client.items() if k not in HANDSHAKE}
    return {
        "requests": requests,
        "client_calls": client,
        "per_request": sum(per_request.values()) / requests if requests else None,
        "handshakes_per_request": (
            sum(v for k, v in client.items() if k in HANDSHAKE) / requests if requests else None
        ),
        "all_calls_per_request": sum(calls.values()) / requests if requests else None,
    }


def _median(cells: list[dict[str, Any]], get: Callable[[dict[str, Any]], float]) -> float:
    return statistics.median(get(c) for c in cells)


def verdicts(f: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) rows from the figures `measure` returns."""
    out: list[tuple[str, str, bool | None]] = []
    for mode in ("sse", "json"):
        c = f["c64"].get(mode)
        if c is None:
            continue
        out.append(
            (
                f"CPU/request ≤ {CPU_RATIO_MAX:g}× bare ({mode}, c=64)",
                f"antex {c['antex_cpu_us']:.0f} µs vs bare {c['bare_cpu_us']:.0f} µs = "
                f"{c['cpu_ratio']:.2f}×",
                c["cpu_ratio"] <= CPU_RATIO_MAX,
            )
        )
        out.append(
            (
                f"req/s ≥ {RPS_SHARE_MIN:.0%} of bare ({mode}, c=64)",
                f"{c['antex_rps']:.0f} vs {c['bare_rps']:.0f} req/s = {c['rps_share']:.0%}",
                c["rps_share"] >= RPS_SHARE_MIN,
            )
        )
    for mode in ("json", "sse"):
        c = f["c1"].get(mode)
        if c is None:
            continue
        out.append(
            (
                f"added latency ≤ {ADDED_P50_MAX_MS:g} ms p50 / {ADDED_P99_MAX_MS:g} ms p99 "
                f"({mode}, c=1)",
                f"+{c['added_p50_ms']:.2f} ms p50, +{c['added_p99_ms']:.2f} ms p99 (antex "
                f"{c['antex_p50_ms']:.2f}/{c['antex_p99_ms']:.2f}, direct "
                f"{c['direct_p50_ms']:.2f}/{c['direct_p99_ms']:.2f} ms)",
                c["added_p50_ms"] <= ADDED_P50_MAX_MS and c["added_p99_ms"] <= ADDED_P99_MAX_MS,
            )
        )
    rt = f.get("round_trips")
    if rt:
        for mode, r in rt.items():
            shown = ", ".join(f"{k} {v / r['requests']:.2f}" for k, v in r["client_calls"].items())
            out.append(
                (
                    f"≤ {ROUND_TRIPS_MAX:g} Valkey round trips/request ({mode}, c=64)",
                    f"{r['per_request']:.2f} ({shown}; all commands incl. script-internal "
                    f"{r['all_calls_per_request']:.1f})",
                    r["per_request"] <= ROUND_TRIPS_MAX,
                )
            )
    rss = f.get("rss")
    if rss:
        ok = rss.get("ratio")
        # Streams refused while they opened (a 503 when the store could not admit them).
        refused = ", ".join(
            f"{name} {n:,}" for name, n in rss.get("refused", {}).items() if n is not None
        )
        out.append(
            (
                f"RSS per open stream ≤ {RSS_RATIO_MAX:g}× bare ({rss['streams']:,} streams)",
                (
                    f"antex {rss['antex_kb']:.1f} KB vs bare {rss['bare_kb']:.1f} KB = {ok:.2f}×"
                    if ok is not None
                    else f"no plateau ({rss.get('note', '')})"
                )
                + (f"; not 200: {refused}" if refused else ""),
                ok <= RSS_RATIO_MAX if ok is not None else None,
            )
        )
    fl = f.get("flood")
    if fl:
        out.append(
            (
                f"wrong-secret flood: legit p99 ≤ {FLOOD_P99_RATIO_MAX:g}× (200 addresses)",
                f"{fl['baseline_p99_ms']:.1f} ms → {fl['flood_p99_ms']:.1f} ms = "
                f"{fl['ratio']:.2f}× ({fl['wrong_secrets']} wrong secrets)",
                fl["ratio"] <= FLOOD_P99_RATIO_MAX,
            )
        )
    return out


def figures_from_run(r: dict[str, Any]) -> dict[str, Any]:
    """The same figures from a full `make bench` results dict (one cell per row, so no
    medians): c=64 and c=1 cells, the long-stream runs, the wrong-secret phases."""
    cells: list[dict[str, Any]] = r["cells"]

    def find(row: str, mode: str, conns: int) -> dict[str, Any] | None:
        return next(
            (
                c
                for c in cells
                if c["row"] == row and c["mode"] == mode and c["concurrency"] == conns
            ),
            None,
        )

    f: dict[str, Any] = {"c64": {}, "c1": {}, "round_trips": {}}
    inside = script_commands()
    for mode in ("sse", "json"):
        a, b = find("antex", mode, 64), find("bare", mode, 64)
        if a and b:
            f["c64"][mode] = {
                "antex_cpu_us": a["gateway_cpu_us_per_req"],
                "bare_cpu_us": b["gateway_cpu_us_per_req"],
                "cpu_ratio": a["gateway_cpu_us_per_req"] / b["gateway_cpu_us_per_req"],
                "antex_rps": a["rps"],
                "bare_rps": b["rps"],
                "rps_share": a["rps"] / b["rps"],
            }
        if a and a.get("valkey_calls"):
            f["round_trips"][mode] = round_trips(a["valkey_calls"], a["requests"], inside)
        a1, d1 = find("antex", mode, 1), find("direct", mode, 1)
        if a1 and d1:
            lat = {
                f"{name}_{p}_ms": c["latency_ms"][p]
                for name, c in (("antex", a1), ("direct", d1))
                for p in ("p50", "p99")
            }
            lat["added_p50_ms"] = lat["antex_p50_ms"] - lat["direct_p50_ms"]
            lat["added_p99_ms"] = lat["antex_p99_ms"] - lat["direct_p99_ms"]
            f["c1"][mode] = lat
    streams = r.get("long_streams", [])
    sized = [s for s in streams if s["row"] == "antex" and s.get("rss_per_stream_kb")]
    if sized:
        # 2,000 when measured, else the largest count with a plateau.
        a = next((s for s in sized if s["streams"] == 2000), max(sized, key=lambda s: s["streams"]))
        b = next((s for s in streams if s["row"] == "bare" and s["streams"] == a["streams"]), None)
        b_kb = b.get("rss_per_stream_kb") if b else None
        f["rss"] = {
            "streams": a["streams"],
            "antex_kb": a["rss_per_stream_kb"],
            "bare_kb": b_kb,
            "ratio": a["rss_per_stream_kb"] / b_kb if b_kb else None,
            "refused": {"antex": not_ok(a), "bare": not_ok(b) if b else None},
        }
    if r.get("wrong_secrets"):
        f["flood"] = r["wrong_secrets"]
    return f


def not_ok(run: dict[str, Any]) -> int | None:
    """How many of a long-streams run's streams were answered other than 200."""
    status = run.get("status")
    return None if status is None else sum(n for code, n in status.items() if code != "200")


def table(rows: list[tuple[str, str, bool | None]]) -> str:
    lines = ["| target | measured | verdict |", "|---|---|---|"]
    for target, measured, ok in rows:
        verdict = "–" if ok is None else ("PASS" if ok else "FAIL")
        lines.append(f"| {target} | {measured} | {verdict} |")
    return "\n".join(lines)


def flood(antex_url: str, valkey_url: str, seconds: float) -> dict[str, Any]:
    _, keys = stack.customer(valkey_url, "flood-legit@antex.bench", keys=4)
    _, (victim,) = stack.customer(valkey_url, "flood-victim@antex.bench")
    many = [f"127.0.9.{i}" for i in range(1, 201)]
    asyncio.run(wrong_secrets.phase(antex_url, keys, victim, 1.5, []))  # warm the key cache
    base = asyncio.run(wrong_secrets.phase(antex_url, keys, victim, seconds, []))
    flood = asyncio.run(wrong_secrets.phase(antex_url, keys, victim, seconds, many))
    return {
        "baseline_p99_ms": base["p99_ms"],
        "flood_p99_ms": flood["p99_ms"],
        "ratio": flood["p99_ms"] / base["p99_ms"] if base["p99_ms"] else float("nan"),
        "wrong_secrets": flood["wrong_secrets"],
        "phases": {"baseline": base, "200_addresses": flood},
    }


def measure(
    seconds: float,
    rounds: int,
    streams: int,
    plateau: float,
    flood_seconds: float,
    log_level: str = "warning",
) -> dict[str, Any]:
    stack.raise_nofile_limit()
    work = Path(tempfile.mkdtemp(prefix="antex-targets-"))
    logs = work / "logs"
    services: list[stack.Service] = []
    valkey = None
    figures: dict[str, Any] = {"c64": {}, "c1": {}, "cells": []}
    try:
        valkey, valkey_proc = stack.start_valkey(work)
        sim = stack.start_simulator(logs, burst=True)
        antex = stack.start_antex(logs, work, valkey.url, sim.url, ANTEX_LOG_LEVEL=log_level)
        bare = stack.start_bare(logs, sim.url)
        services += [sim, antex, bare]
        _, keys = stack.customer(valkey.url, "bench@antex.bench", keys=1)
        meters = Meters(sim.processes, lambda: [valkey_proc], valkey.url)
        direct = Row("direct", sim.url, "", lambda: [])
        bare_row = Row("bare", bare.url, "", bare.processes)
        antex_row = Row(
            "antex", antex.url, "", antex.processes, ("x-api-key", keys[0]), counts_valkey=True
        )
        log("warm-up")
        for row in (bare_row, antex_row):
            for mode in ("json", "sse"):
                loads.run_cell(row, meters, mode, 16, 1.5)
        inside = script_commands()
        figures["round_trips"] = {}
        for mode in ("sse", "json"):
            got: dict[str, list[dict[str, Any]]] = {"bare": [], "antex": []}
            for _ in range(rounds):
                for row in (bare_row, antex_row):
                    c = loads.run_cell(row, meters, mode, 64, seconds)
                    got[row.name].append(c)
                    figures["cells"].append(c)
                    log(
                        f"{mode} c=64 {row.name:5} {c['rps']:7.0f} req/s "
                        f"{c['gateway_cpu_us_per_req']:6.0f} µs CPU/req"
                    )
            a, b = got["antex"], got["bare"]
            a_cpu = _median(a, lambda c: c["gateway_cpu_us_per_req"])
            b_cpu = _median(b, lambda c: c["gateway_cpu_us_per_req"])
            a_rps, b_rps = _median(a, lambda c: c["rps"]), _median(b, lambda c: c["rps"])
            figures["c64"][mode] = {
                "antex_cpu_us": a_cpu,
                "bare_cpu_us": b_cpu,
                "cpu_ratio": a_cpu / b_cpu,
                "antex_rps": a_rps,
                "bare_rps": b_rps,
                "rps_share": a_rps / b_rps,
            }
            calls: dict[str, int] = {}
            for c in a:
                for k, v in c["valkey_calls"].items():
                    calls[k] = calls.get(k, 0) + v
            figures["round_trips"][mode] = round_trips(calls, sum(c["requests"] for c in a), inside)
        for mode in ("json", "sse"):
            got = {"direct": [], "antex": []}
            for _ in range(rounds):
                for row in (direct, antex_row):
                    c = loads.run_cell(row, meters, mode, 1, seconds)
                    got[row.name].append(c)
                    figures["cells"].append(c)
            lat: dict[str, float] = {}
            for name, cells in got.items():
                for p in ("p50", "p99"):
                    lat[f"{name}_{p}_ms"] = statistics.median(c["latency_ms"][p] for c in cells)
            lat["added_p50_ms"] = lat["antex_p50_ms"] - lat["direct_p50_ms"]
            lat["added_p99_ms"] = lat["antex_p99_ms"] - lat["direct_p99_ms"]
            figures["c1"][mode] = lat
            log(f"{mode} c=1 added p50 {lat['added_p50_ms']:.2f} ms p99 {lat['added_p99_ms']:.2f}")
        log(f"{streams} long streams: bare, then antex (fresh servers)")
        measured = {}
        for name in ("bare", "antex"):
            old = bare if name == "bare" else antex
            old.stop()
            services.remove(old)
            fresh = (
                stack.start_bare(logs, sim.url)
                if name == "bare"
                else stack.start_antex(logs, work, valkey.url, sim.url, ANTEX_LOG_LEVEL=log_level)
            )
            services.append(fresh)
            if name == "bare":
                bare = fresh
            else:
                antex = fresh
            measured[name] = longstreams.measure(
                name,
                fresh.url,
                keys[0] if name == "antex" else None,
                fresh.processes,
                streams,
                plateau_s=plateau,
            )
        a_kb, b_kb = (
            measured["antex"].get("rss_per_stream_kb"),
            measured["bare"].get("rss_per_stream_kb"),
        )
        figures["rss"] = {
            "streams": streams,
            "antex_kb": a_kb,
            "bare_kb": b_kb,
            "refused": {name: not_ok(run) for name, run in measured.items()},
            "ratio": a_kb / b_kb if a_kb and b_kb else None,
            "note": measured["antex"].get("note") or measured["bare"].get("note"),
            "runs": measured,
        }
        log("wrong-secret flood")
        figures["flood"] = flood(antex.url, valkey.url, flood_seconds)
    finally:
        for service in reversed(services):
            service.stop()
        if valkey is not None:
            valkey.stop()
        shutil.rmtree(work, ignore_errors=True)
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="load time per cell")
    parser.add_argument("--rounds", type=int, default=2, help="alternations per cell")
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--stream-plateau", type=float, default=6.0)
    parser.add_argument("--flood-seconds", type=float, default=6.0)
    parser.add_argument(
        "--log-level",
        default="warning",
        help="antex's ANTEX_LOG_LEVEL (the product default, info, writes an access line per "
        "request; make bench runs at warning)",
    )
    parser.add_argument("--out", type=Path, help="results folder (default results/<date>)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    figures = measure(
        args.seconds,
        args.rounds,
        args.streams,
        args.stream_plateau,
        args.flood_seconds,
        args.log_level,
    )
    figures["log_level"] = args.log_level
    figures["wall_minutes"] = (time.monotonic() - started) / 60
    text = table(verdicts(figures))
    out = args.out or stack.ROOT / "bench" / "results" / dt.date.today().isoformat()
    out.mkdir(parents=True, exist_ok=True)
    (out / "targets.json").write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    (out / "targets.md").write_text(
        f"# Hot-path targets ({dt.datetime.now().isoformat(timespec='minutes')}, "
        f"{figures['wall_minutes']:.1f} min, antex at log level {args.log_level})\n\n{text}\n"
    )
    print(text, flush=True)
    log(f"written {out / 'targets.md'}")


if __name__ == "__main__":
    main()
