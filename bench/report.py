"""Turns one run's results.json into report.md and PNG plots (matplotlib, Agg backend).

`python -m bench.report bench/results/<date>/results.json` rebuilds them without rerunning.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import orjson

Cells = list[dict[str, Any]]
_NAN = float("nan")


def _f(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float | int) and abs(value) >= 1000 and digits <= 1:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def cell(cells: Cells, row: str, mode: str, conns: int) -> dict[str, Any] | None:
    for c in cells:
        if c["row"] == row and c["mode"] == mode and c["concurrency"] == conns:
            return c
    return None


def _rows(cells: Cells) -> list[str]:
    seen: list[str] = []
    for c in cells:
        if c["row"] not in seen:
            seen.append(c["row"])
    return seen


def _concs(cells: Cells) -> list[int]:
    return sorted({c["concurrency"] for c in cells})


def _verdict(ok: bool | None) -> str:
    return "–" if ok is None else ("**met**" if ok else "**missed**")


# -- targets ------------------------------------------------------------------------------


def targets(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    cells: Cells = r["cells"]
    out: list[tuple[str, str, str]] = []
    ref = 64 if 64 in _concs(cells) else max(_concs(cells))
    a, b = cell(cells, "antex", "sse", ref), cell(cells, "bare", "sse", ref)
    if a and b:
        ratio = a["gateway_cpu_us_per_req"] / b["gateway_cpu_us_per_req"]
        out.append(
            (
                f"gateway CPU per request ≤ 2× bare (SSE, c={ref})",
                f"antex {_f(a['gateway_cpu_us_per_req'], 0)} µs vs bare "
                f"{_f(b['gateway_cpu_us_per_req'], 0)} µs = {ratio:.2f}×"
                + ("" if ratio <= 2 else f" ({(ratio / 2 - 1) * 100:.0f} % over the 2× bound)"),
                _verdict(ratio <= 2),
            )
        )
        out.append(
            (
                "gateway CPU per request ≤ ~900 µs (calibration: bare ≈ 450 µs)",
                f"{_f(a['gateway_cpu_us_per_req'], 0)} µs"
                + (
                    ""
                    if a["gateway_cpu_us_per_req"] <= 900
                    else f" ({a['gateway_cpu_us_per_req'] / 900:.2f}× the bound)"
                ),
                _verdict(a["gateway_cpu_us_per_req"] <= 900),
            )
        )
        share = a["rps"] / b["rps"]
        out.append(
            (
                f"antex ≥ 50 % of bare req/s (SSE, c={ref})",
                f"{_f(a['rps'], 0)} vs {_f(b['rps'], 0)} req/s = {share * 100:.0f} %",
                _verdict(share >= 0.5),
            )
        )
    lite = [c for c in cells if c["row"] == "litellm" and c["mode"] == "sse"]
    if lite and a:
        best = max(lite, key=lambda c: c["rps"])
        same = cell(cells, "antex", "sse", best["concurrency"])
        if same:
            ratio = same["rps"] / best["rps"] if best["rps"] else _NAN
            out.append(
                (
                    "antex ≥ 30× LiteLLM req/s (SSE /v1/messages)",
                    f"c={best['concurrency']}: {_f(same['rps'], 0)} vs {_f(best['rps'], 1)} "
                    "req/s = "
                    f"{ratio:.0f}×",
                    _verdict(ratio >= 30),
                )
            )
    else:
        out.append(("antex ≥ 30× LiteLLM req/s", "LiteLLM row not measured", "–"))
    for mode in ("json", "sse"):
        a1, d1 = cell(cells, "antex", mode, 1), cell(cells, "direct", mode, 1)
        if a1 and d1:
            p50 = a1["latency_ms"]["p50"] - d1["latency_ms"]["p50"]
            p99 = a1["latency_ms"]["p99"] - d1["latency_ms"]["p99"]
            out.append(
                (
                    f"added latency at concurrency 1 ({mode}) ≤ 1.5 ms p50, ≤ 5 ms p99",
                    f"+{p50:.2f} ms p50, +{p99:.2f} ms p99",
                    _verdict(p50 <= 1.5 and p99 <= 5),
                )
            )
    streams = r.get("long_streams", [])
    via = [s for s in streams if s["row"] == "antex"]
    if via:
        top = max(via, key=lambda s: s["streams"])
        direct = next(
            (s for s in streams if s["row"] == "direct" and s["streams"] == top["streams"]), None
        )
        # RSS from the largest count that had a plateau to sample.
        sized = [s for s in via if s.get("rss_per_stream_kb") is not None]
        rss_at = max(sized, key=lambda s: s["streams"]) if sized else None
        rss = rss_at["rss_per_stream_kb"] if rss_at else None
        added = top["gaps_ms"]["p99"] - direct["gaps_ms"]["p99"] if direct else None
        held = top["completed"] == top["streams"]
        out.append(
            (
                f"{top['streams']:,} concurrent long streams held",
                f"{top['completed']:,} of {top['streams']:,} completed, {top['failed']} failed",
                _verdict(held),
            )
        )
        out.append(
            (
                "≤ 30 KB RSS per open stream",
                f"{_f(rss)} KB per stream at {rss_at['streams']:,} streams" if rss_at else "–",
                _verdict(rss <= 30 if rss is not None else None),
            )
        )
        out.append(
            (
                "≤ 10 ms added p99 inter-chunk delay",
                f"+{_f(added)} ms at {top['streams']:,} streams (antex {_f(top['gaps_ms']['p99'])}"
                f" ms vs direct {_f(direct['gaps_ms']['p99']) if direct else '–'} ms, "
                f"chunk every {top['delay_ms']} ms)",
                _verdict(added <= 10 if added is not None else None),
            )
        )
        per_chunk = [s["cpu_us_per_chunk"] for s in via if s.get("cpu_us_per_chunk")]
        if per_chunk:
            worst = max(per_chunk)
            out.append(
                (
                    "≤ 100 µs gateway CPU per streamed chunk",
                    f"{', '.join(_f(x, 0) for x in per_chunk)} µs (by stream count)",
                    _verdict(worst <= 100),
                )
            )
    rt = r.get("round_trips")
    if rt:
        worst_rt = max(v["round_trips_per_req"] or 0 for v in rt.values())
        out.append(
            (
                "≤ 2 Valkey round trips per request",
                ", ".join(f"{m}: {_f(v['round_trips_per_req'], 2)}" for m, v in rt.items())
                + " (client commands seen by MONITOR, cache-warm, connection set-up excluded)",
                _verdict(worst_rt <= 2.0 + 1e-9),
            )
        )
    fl = r.get("flood")
    if fl:
        base = fl[0]["valid_latency_ms"]["p99"]
        worst = max(f["valid_latency_ms"]["p99"] for f in fl[1:])
        out.append(
            (
                "random-key flood: valid p99 ≤ 2× without flood",
                f"{_f(base, 1)} ms → {_f(worst, 1)} ms ({worst / base:.2f}×)",
                _verdict(worst <= 2 * base),
            )
        )
    return out


# -- tables -------------------------------------------------------------------------------


def load_table(cells: Cells, mode: str) -> list[str]:
    lines = [
        "| row | conc | req/s | p50 ms | p90 ms | p99 ms | TTFB p50 | TTFB p99 "
        "| gateway CPU µs/req (= CPU s per 1,000 req ×1000) | upstream CPU µs/req "
        "| Valkey CPU µs/req | errors | other CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for conns in _concs(cells):
        for row in _rows(cells):
            c = cell(cells, row, mode, conns)
            if c is None:
                continue
            lat, ttfb = c["latency_ms"], c["ttfb_ms"]
            gw = c["gateway_cpu_us_per_req"]
            lines.append(
                f"| {row} | {conns} | {_f(c['rps'], 0)} | {_f(lat['p50'], 2)} | "
                f"{_f(lat['p90'], 2)} | {_f(lat['p99'], 2)} | {_f(ttfb.get('p50'), 2)} | "
                f"{_f(ttfb.get('p99'), 2)} | {_f(gw, 0) if gw else '–'} | "
                f"{_f(c['upstream_cpu_us_per_req'], 0)} | {_f(c['valkey_cpu_us_per_req'], 0)} | "
                f"{c['errors']} | {_f(c['other_cpu_s'], 1)} |"
            )
    return lines


def added_table(cells: Cells) -> list[str]:
    lines = [
        "| mode | conc | added p50 ms | added p90 ms | added p99 ms | added TTFB p50 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for mode in ("json", "sse"):
        for conns in _concs(cells):
            a, d = cell(cells, "antex", mode, conns), cell(cells, "direct", mode, conns)
            if not (a and d):
                continue
            diff = {p: a["latency_ms"][p] - d["latency_ms"][p] for p in ("p50", "p90", "p99")}
            ttfb = a["ttfb_ms"].get("p50", _NAN) - d["ttfb_ms"].get("p50", _NAN)
            lines.append(
                f"| {mode} | {conns} | {diff['p50']:+.2f} | {diff['p90']:+.2f} | "
                f"{diff['p99']:+.2f} | {ttfb:+.2f} |"
            )
    return lines


def ratio_table(cells: Cells) -> list[str]:
    lines = [
        "| mode | conc | antex / bare req/s | antex / direct req/s | antex / nginx req/s | "
        "antex CPU / bare CPU | direct / wrk ceiling |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in ("json", "sse"):
        for conns in _concs(cells):
            a = cell(cells, "antex", mode, conns)
            if a is None:
                continue

            def rps_ratio(
                other: str, num: dict[str, Any] | None = a, mode: str = mode, conns: int = conns
            ) -> str:
                o = cell(cells, other, mode, conns)
                return f"{num['rps'] / o['rps']:.2f}" if o and num and o["rps"] else "–"

            b = cell(cells, "bare", mode, conns)
            cpu = (
                f"{a['gateway_cpu_us_per_req'] / b['gateway_cpu_us_per_req']:.2f}"
                if b and b["gateway_cpu_us_per_req"]
                else "–"
            )
            lines.append(
                f"| {mode} | {conns} | {rps_ratio('bare')} | {rps_ratio('direct')} | "
                f"{rps_ratio('nginx')} | {cpu} | "
                f"{rps_ratio('wrk ceiling (nginx canned)', cell(cells, 'direct', mode, conns))} |"
            )
    return lines


def streams_table(streams: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| row | streams | peak open | completed | failed | gap p50 ms | gap p99 ms | gap max ms | "
        "chunks/s carried | gateway RSS MB (idle → plateau) | RSS per stream KB | "
        "gateway CPU cores | CPU µs per chunk |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in streams:
        g = s["gaps_ms"]
        rss = (
            f"{_f(s['idle_rss_mb'], 0)} → {_f(s.get('rss_mb'), 0)}" if s["row"] != "direct" else "–"
        )
        lines.append(
            f"| {s['row']} | {s['streams']:,} | {s.get('peak_open', 0):,} | {s['completed']:,} | "
            f"{s['failed']} | "
            f"{_f(g['p50'])} | {_f(g['p99'])} | {_f(g.get('max'))} | "
            f"{_f(s.get('chunks_per_s'), 0)} | "
            f"{rss} | {_f(s.get('rss_per_stream_kb'))} | "
            f"{_f(s.get('cpu_cores'), 2) if s['row'] != 'direct' else '–'} | "
            f"{_f(s.get('cpu_us_per_chunk'), 0)} |"
        )
        if s.get("note"):
            lines.append(f"| | | | | | {s['note']} | | | | | | | |")
    return lines


def _total_us(c: dict[str, Any]) -> float:
    """All the CPU one request cost on the machine: row + simulator + Valkey + wrk."""
    gen = c["generator_cpu_s"] / c["requests"] * 1e6 if c["requests"] else 0.0
    return (
        float(
            c["gateway_cpu_us_per_req"] + c["upstream_cpu_us_per_req"] + c["valkey_cpu_us_per_req"]
        )
        + gen
    )


def budget_table(cells: Cells) -> list[str]:
    lines = [
        "With 2 cores, req/s cannot exceed 2,000,000 µs / (all CPU µs one request costs). "
        "The last column shows how close each row came: near 100 % means CPU-bound.",
        "",
        "| mode | conc | row | gateway µs | simulator µs | Valkey µs | wrk µs | total µs "
        "| 2-core ceiling req/s | measured req/s | of ceiling |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in ("sse", "json"):
        for conns in (64,):
            for row in _rows(cells):
                c = cell(cells, row, mode, conns)
                if c is None or not c["requests"]:
                    continue
                total = _total_us(c)
                gen = c["generator_cpu_s"] / c["requests"] * 1e6
                ceiling = 2e6 / total if total else _NAN
                lines.append(
                    f"| {mode} | {conns} | {row} | {_f(c['gateway_cpu_us_per_req'], 0)} | "
                    f"{_f(c['upstream_cpu_us_per_req'], 0)} | {_f(c['valkey_cpu_us_per_req'], 0)} "
                    f"| {_f(gen, 0)} | {_f(total, 0)} | {_f(ceiling, 0)} | {_f(c['rps'], 0)} | "
                    f"{c['rps'] / ceiling * 100:.0f} % |"
                )
    return lines


def analysis(r: dict[str, Any]) -> list[str]:
    """The notes behind the missed targets, with this run's numbers filled in."""
    cells: Cells = r["cells"]
    out: list[str] = []
    a, b = cell(cells, "antex", "sse", 64), cell(cells, "bare", "sse", 64)
    if a and b:
        extra = a["gateway_cpu_us_per_req"] - b["gateway_cpu_us_per_req"]
        total = _total_us(a)
        out.append(
            f"- **Throughput is the CPU cost per request.** Every row is CPU-bound on the two "
            f"shared cores (see *CPU budget*). At SSE c=64 one antex request costs "
            f"{_f(total, 0)} µs of CPU in all (gateway {_f(a['gateway_cpu_us_per_req'], 0)}, "
            f"Valkey {_f(a['valkey_cpu_us_per_req'], 0)}, simulator "
            f"{_f(a['upstream_cpu_us_per_req'], 0)}, the rest wrk), so 2 cores cap it near "
            f"{_f(2e6 / total, 0)} req/s; bare costs {_f(_total_us(b), 0)} µs. The gap to bare is "
            f"antex's extra {_f(extra, 0)} µs of gateway CPU plus "
            f"{_f(a['valkey_cpu_us_per_req'], 0)} µs of Valkey CPU per request."
        )
    p = r.get("profile")
    if p:
        pk = p["by_package"]
        inside = (r.get("round_trips") or {}).get("sse", {}).get("script_internal_per_req")
        incl = p["gateway_inclusive"]

        def share(name: str) -> float:
            return float(sum(v for k, v in incl.items() if k.startswith(name))) * 100

        out.append(
            f"- **Where the extra gateway CPU goes** (py-spy, GIL samples): valkey-py client code "
            f"{pk.get('valkey', 0) * 100:.0f} % and asyncio {pk.get('asyncio', 0) * 100:.0f} % of "
            f"the workers' Python time; `CreditLimiter.settle` alone is "
            f"{share('CreditLimiter.settle'):.0f} % inclusive and `CreditLimiter.admit` "
            f"{share('CreditLimiter.admit'):.0f} % (admit sends 23 keys and arguments, settle "
            f"about 50; packing them, parsing replies and a settle task per request); the "
            f"gateway's own frames "
            f"{pk.get('gateway', 0) * 100:.0f} %, aiohttp (upstream client, also in bare) "
            f"{pk.get('aiohttp', 0) * 100:.0f} %, "
            f"blacksheep {pk.get('blacksheep', 0) * 100:.0f} %, "
            f"prometheus_client {pk.get('prometheus_client', 0) * 100:.0f} %. Cheaper candidates: "
            f"a smaller settle ARGV (the usage record is sent as ~20 field/value pairs), "
            f"batching settles of one worker into one pipelined call, and fewer commands inside "
            f"the scripts (Valkey spends {_f(a['valkey_cpu_us_per_req'] if a else None, 0)} µs on "
            f"the {_f(inside, 0)} commands they run per request)."
        )
    lite = [c for c in cells if c["row"] == "litellm" and c["mode"] == "sse"]
    if lite and a:
        best = max(lite, key=lambda c: c["rps"])
        out.append(
            f"- **LiteLLM ×30**: LiteLLM here did {_f(best['rps'], 0)} req/s at "
            f"{_f(best['gateway_cpu_us_per_req'] / 1000, 1)} ms CPU per request (better than the "
            f"issue's 46 req/s calibration); 30× that is {_f(best['rps'] * 30, 0)} req/s, which "
            f"on 2 shared cores needs ≤ {_f(2e6 / (best['rps'] * 30), 0)} µs of CPU per request "
            f"in all — antex spends {_f(_total_us(a), 0)} µs."
        )
    streams = r.get("long_streams", [])
    via = {s["streams"]: s for s in streams if s["row"] == "antex"}
    bare = {s["streams"]: s for s in streams if s["row"] == "bare"}
    direct = {s["streams"]: s for s in streams if s["row"] == "direct"}
    measured = [n for n, s in via.items() if s.get("cpu_us_per_chunk")]
    if measured:
        n = max(measured)
        s = via[n]
        need = n * 1000 / s["delay_ms"]
        direct_p99 = direct[n]["gaps_ms"]["p99"] if n in direct else None
        per = s.get("cpu_us_per_chunk")
        out.append(
            f"- **Long streams**: {n:,} streams at one chunk per {s['delay_ms']} ms ask for "
            f"{_f(need, 0)} chunks/s; at {_f(per, 0)} µs of gateway CPU per chunk that is "
            f"{_f(need * (per or 0) / 1e6, 2)} cores for the gateway alone, before the simulator "
            f"and the client that share the same 2 cores. The machine cannot carry that rate: "
            f"even *direct* shows a p99 gap of {_f(direct_p99, 0)} ms at {n:,} streams, and antex "
            f"carried {_f(s.get('chunks_per_s'), 0)} chunks/s. The added p99 delay is a CPU-budget "
            f"limit of this machine; the CPU per chunk itself is within its target."
        )
        if n in bare and bare[n].get("rss_per_stream_kb") and s.get("rss_per_stream_kb"):
            out.append(
                f"- **RSS per stream**: bare (granian + blacksheep + one aiohttp upstream "
                f"connection per stream, no logic) holds {_f(bare[n]['rss_per_stream_kb'])} KB per "
                f"stream at {n:,}; antex {_f(s['rss_per_stream_kb'])} KB. The framework floor is "
                f"{'above' if bare[n]['rss_per_stream_kb'] > 30 else 'within'} the 30 KB target; "
                f"antex adds {_f(s['rss_per_stream_kb'] - bare[n]['rss_per_stream_kb'])} KB "
                f"(the ticket with the parsed payload and body, the usage scanner, the disconnect "
                f"watcher task)."
            )
    logged = r.get("gateway_log") or {}
    pool = sum(n for line, n in logged.items() if "Too many connections" in line)
    lost = sum(n for line, n in logged.items() if "settle failed" in line)
    if pool:
        out.append(
            f"- **Valkey connection pool**: during the long streams the gateway logged {pool} × "
            f"`valkey unavailable: Too many connections` and {lost} × `settle failed` (a charge "
            "lost). Each worker's valkey-py pool is non-blocking with a fixed maximum: when more "
            "admissions and settles than that are in flight at once (thousands of streams "
            "opening and closing on a saturated loop), the pool raises instead of waiting, so an "
            "admission gets 503 and a settle loses its charge. A blocking pool with a timeout "
            "would queue those calls instead."
        )
    fl = r.get("flood")
    if fl and len(fl) >= 3:
        base = fl[0]["valid_latency_ms"]["p99"]
        wrong = fl[2]
        ratio = wrong["valid_latency_ms"]["p99"] / base
        statuses = ", ".join(f"{n} × {code}" for code, n in wrong["flood_status"].items())
        text = (
            f"- **Flood**: unknown key ids cost one Valkey GET and a 401 (valid p99 "
            f"×{fl[1]['valid_latency_ms']['p99'] / base:.2f}). Wrong secrets for a real key id "
            f"({statuses}; {_f(wrong['flood_rps'], 0)}/s answered) put valid p99 at "
            f"×{ratio:.2f}. Each wrong secret that reaches bcrypt costs about 70 ms of CPU at "
            "cost 10; from 200 addresses the per-address throttle does not bind, so what bounds "
            "the flood is the per-key-id failure limit and the quarantine, after which wrong "
            "secrets are refused before bcrypt (403 `key_quarantined`)."
        )
        if ratio > 2:
            text += (
                " Past 2×: the bcrypt calls made before those limits engage (the 401s, on 2 pool "
                f"threads per worker) and answering the flood itself ({_f(wrong['flood_rps'], 0)}"
                " requests/s on a gateway that is already CPU-bound) take the cores from valid "
                "traffic."
            )
        out.append(text)
    return out


# -- plots --------------------------------------------------------------------------------


def plots(r: dict[str, Any], out: Path) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells: Cells = r["cells"]
    made = []
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, mode in zip(axes, ("json", "sse"), strict=True):
        for row in _rows(cells):
            pts = [
                (c["concurrency"], c["rps"]) for c in cells if c["row"] == row and c["mode"] == mode
            ]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=row)
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="concurrent connections",
            ylabel="requests/s",
            title=f"/v1/messages {'SSE' if mode == 'sse' else 'non-stream'}",
        )
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "rps_by_concurrency.png", dpi=110)
    plt.close(fig)
    made.append(("Requests/s by concurrency", "rps_by_concurrency.png"))

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, mode in zip(axes, ("json", "sse"), strict=True):
        for i, row in enumerate(_rows(cells)):
            pts = sorted(
                (c["concurrency"], c["latency_ms"])
                for c in cells
                if c["row"] == row and c["mode"] == mode
            )
            if not pts:
                continue
            xs = [p[0] for p in pts]
            color = f"C{i}"
            ax.plot(xs, [p[1]["p50"] for p in pts], marker="o", color=color, label=f"{row} p50")
            ax.plot(
                xs, [p[1]["p99"] for p in pts], marker="x", ls="--", color=color, label=f"{row} p99"
            )
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="concurrent connections",
            ylabel="latency ms",
            title=f"latency p50 (solid) / p99 (dashed), {mode}",
        )
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)
    made.append(("Latency percentiles", "latency.png"))

    ref = 64 if 64 in _concs(cells) else max(_concs(cells))
    gw_rows = [
        row
        for row in _rows(cells)
        if (c := cell(cells, row, "sse", ref)) and c["gateway_cpu_us_per_req"]
    ]
    if gw_rows:
        fig, ax = plt.subplots(figsize=(8, 4))
        width = 0.38
        for j, mode in enumerate(("json", "sse")):
            vals = [
                (cell(cells, row, mode, ref) or {}).get("gateway_cpu_us_per_req", 0)
                for row in gw_rows
            ]
            ax.bar([i + j * width for i in range(len(gw_rows))], vals, width, label=mode)
        ax.set_xticks([i + width / 2 for i in range(len(gw_rows))], gw_rows)
        ax.axhline(900, color="red", ls=":", label="target ≤ 900 µs")
        ax.set(
            yscale="log", ylabel="gateway CPU µs per request", title=f"CPU per request at c={ref}"
        )
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "cpu_per_request.png", dpi=110)
        plt.close(fig)
        made.append(("Gateway CPU per request", "cpu_per_request.png"))

    streams = r.get("long_streams", [])
    if streams:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for row in ("bare", "antex"):
            pts = [
                (s["streams"], s["rss_per_stream_kb"])
                for s in streams
                if s["row"] == row and s.get("rss_per_stream_kb") is not None
            ]
            if pts:
                axes[0].plot(*zip(*pts, strict=True), marker="o", label=row)
        axes[0].axhline(30, color="red", ls=":", label="target ≤ 30 KB")
        axes[0].set(
            xscale="log",
            xlabel="concurrent streams",
            ylabel="KB RSS per open stream",
            title="gateway RSS per open stream",
        )
        for row in ("direct", "bare", "antex"):
            pts = [(s["streams"], s["gaps_ms"]["p99"]) for s in streams if s["row"] == row]
            if pts:
                axes[1].plot(*zip(*pts, strict=True), marker="o", label=f"{row} p99 gap")
        axes[1].set(
            xscale="log",
            xlabel="concurrent streams",
            ylabel="ms between chunks",
            title=f"p99 inter-chunk gap (chunk every {streams[0]['delay_ms']} ms)",
        )
        for ax in axes:
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "long_streams.png", dpi=110)
        plt.close(fig)
        made.append(("Long streams", "long_streams.png"))
    return made


# -- report -------------------------------------------------------------------------------


def write(r: dict[str, Any], out: Path) -> None:
    meta = r["meta"]
    cells: Cells = r["cells"]
    images = plots(r, out) if cells else []
    v = meta["versions"]
    md = [
        f"# Antex benchmark — {meta['started'][:10]}",
        "",
        "Produced by `make bench` (`python -m bench.run`) in one run; every process was started "
        "by the script on free loopback ports. Numbers are from a shared 2-core machine: the "
        "load generator, the simulator, Valkey and the gateway share the same 2 cores, and other "
        "engineers' test suites ran at the same time. Absolute req/s moves ±30 % between runs; "
        "read the **same-run ratios** and **CPU per request**.",
        "",
        "## Machine",
        "",
        f"- CPU: {meta['cpu']} — {meta['cores']} cores, {meta['memory_gb']} GB RAM, "
        f"kernel {meta['kernel']}",
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- Load average at start {', '.join(f'{x:.2f}' for x in meta['loadavg_start'])}; at end "
        f"{', '.join(f'{x:.2f}' for x in meta.get('loadavg_end', []))}. The *other CPU s* column "
        "is CPU the machine spent outside the measured processes during each cell (other "
        "engineers' tests): the contention each cell ran under.",
        f"- {meta['seconds_per_cell']:g} s per cell, rows interleaved within each cell; whole run "
        f"{meta.get('wall_minutes', 0):.1f} min. Gateway = `antex serve` with 2 granian workers, "
        "Valkey over its unix socket, the simulator with 1 worker. Open-file limit raised to "
        f"{meta.get('nofile')}.",
        "",
    ]
    if r["skipped"]:
        md += ["Skipped or replaced:", "", *(f"- {s}" for s in r["skipped"]), ""]
    if r.get("targets"):
        from bench import targets as hot_path

        md += [
            "## Hot-path targets",
            "",
            "CPU and req/s vs bare at 64 in flight, added latency at 1 in flight, Valkey round "
            "trips from `INFO commandstats`, RSS per open stream vs bare, wrong-secret flood "
            "(`make bench-targets` measures the same alone, with repeated cells, in ~4 min).",
            "",
            hot_path.table(hot_path.verdicts(r["targets"])),
            "",
        ]
    md += ["## Targets", "", "| target | measured | verdict |", "|---|---|---|"]
    md += [f"| {t} | {m} | {v_} |" for t, m, v_ in targets(r)]
    md += ["", "## What limits it", "", *analysis(r)]
    md += ["", "## Same-run ratios", "", *ratio_table(cells)]
    md += ["", "## CPU budget per request", "", *budget_table(cells)]
    md += ["", "## Added latency (antex − direct, same percentile)", "", *added_table(cells)]
    for mode, title in (("sse", "SSE `/v1/messages`"), ("json", "Non-stream `/v1/messages`")):
        md += ["", f"## {title}", "", *load_table(cells, mode)]
    md += [
        "",
        "Latency percentiles come from wrk (full response). TTFB comes from a one-connection "
        "probe (`bench/pyload.py`) running beside wrk (at concurrency 1: right after it, alone): "
        "time to the end of the first body chunk — for SSE, the first events. CPU is user+system "
        "time of each process tree from /proc (granian main + workers), divided by the requests "
        "completed; µs per request equals ms per 1,000 requests.",
    ]
    if r.get("litellm_rss_mb"):
        md.append(
            f"LiteLLM RSS after its cells: {r['litellm_rss_mb']:.0f} MB "
            f"(bare: {r.get('bare_rss_mb', 0):.0f} MB)."
        )
    if r.get("long_streams"):
        s0 = r["long_streams"][0]
        md += [
            "",
            "## Long streams",
            "",
            f"Each stream sends a chunk every {s0['delay_ms']} ms; the client opens them at a "
            "steady ramp (400/s planned; it stretches when the machine is saturated). RSS and CPU "
            "are sampled every 0.5 s; the plateau is the samples taken while at least 95 % of the "
            "peak number of streams were open. RSS per stream = (RSS − idle RSS of a freshly "
            "started server) / streams open at that moment, median over the plateau, summed over "
            "the granian main and workers. Added inter-chunk delay = antex p99 gap − direct p99 "
            "gap at the same count. The streams' own RSS in the simulator and the client is not "
            "counted.",
            "",
        ]
        md += streams_table(r["long_streams"])
        if r.get("gateway_log"):
            md += ["", "Warnings and errors the gateway logged during the long streams (numbers "
                   "masked as N):", ""]  # fmt: skip
            md += [f"- {count} × `{line}`" for line, count in r["gateway_log"].items()]
    md += ["", "## Micro", ""]
    if r.get("micro_limits"):
        md += [
            "### admit + settle against Valkey (`python -m bench.micro_limits --pairs 3200`)",
            "",
            r["micro_limits"],
            "",
        ]
    if r.get("auth"):
        a = r["auth"]
        md += [
            "### Auth: bcrypt cold vs cache-warm",
            "",
            "In-process `Authenticator` against the bench Valkey, bcrypt cost "
            f"{a['bcrypt_rounds']}: "
            f"cold (fresh cache: key-index GET, record HMGET, bcrypt in the pool) p50 "
            f"{_f(a['cold_ms']['p50'], 1)} ms, p99 {_f(a['cold_ms']['p99'], 1)} ms over "
            f"{a['cold_runs']} calls; warm (cache hit) p50 {_f(a['warm_us']['p50'], 2)} µs, "
            f"p99 {_f(a['warm_us']['p99'], 2)} µs over {a['warm_runs']:,} calls.",
        ]
        e = r.get("auth_e2e")
        if e:
            md.append(
                f"Through the server (new connection per request, non-stream): a fresh key's "
                f"first request p50 {_f(e['first_ms']['p50'], 1)} ms (max of "
                f"{e['keys']} keys {_f(e['first_ms']['p99'], 1)} ms) vs the same keys warm "
                f"p50 {_f(e['warm_ms']['p50'], 2)} ms."
            )
        md.append("")
    if r.get("flood"):
        md += [
            "### Random-key flood beside valid traffic",
            "",
            "Valid: wrk, 16 connections, SSE. Flood: `bench/pyload.py --flood`, 32 connections "
            "spread over 200 loopback source addresses (127.0.1.x), paced to offer about "
            "500 requests/s of well-formed `sk_live_` keys (a distributed flood: the per-address "
            "failure throttle of 30/min per worker does not cap it).",
            "",
            "| flood | valid req/s | valid p50 ms | valid p99 ms | valid errors | flood "
            "req/s | flood statuses | gateway CPU cores |",
            "|---|---:|---:|---:|---:|---:|---|---:|",
        ]
        for f in r["flood"]:
            md.append(
                f"| {f['label']} | {_f(f['valid_rps'], 0)} | "
                f"{_f(f['valid_latency_ms']['p50'], 2)} | "
                f"{_f(f['valid_latency_ms']['p99'], 2)} | {f['valid_errors']} | "
                f"{_f(f['flood_rps'], 0)} | {f['flood_status'] or '–'} | "
                f"{_f(f['gateway_cpu_cores'], 2)} |"
            )
        md.append("")
    if r.get("round_trips"):
        md += [
            "### Valkey round trips per request",
            "",
            "A short cache-warm sample (4 connections, 3 s per mode) with Valkey `MONITOR` "
            "open: commands sent by a client are round trips, commands tagged `lua` run inside "
            "a script and cost no network trip. The big cells' `INFO commandstats` deltas "
            "(which count both kinds) are in results.json.",
            "",
            "| mode | requests | round trips / req | client commands "
            "| commands inside scripts / req |",
            "|---|---:|---:|---|---:|",
        ]
        for mode, rt in r["round_trips"].items():
            md.append(
                f"| {mode} | {rt['requests']} | {_f(rt['round_trips_per_req'], 3)} "
                f"({_f(rt.get('with_handshakes_per_req'), 3)} with connection set-up) | "
                f"{rt['client_commands']} | {_f(rt['script_internal_per_req'], 1)} |"
            )
        stats = [c for c in cells if c["row"] == "antex" and c.get("valkey_calls")]
        if stats:
            evals = [c["valkey_calls"].get("evalsha", 0) / max(1, c["requests"]) for c in stats]
            md.append(
                f"\n`INFO commandstats` over the antex cells: {min(evals):.2f}–"
                f"{max(evals):.2f} EVALSHA per request."
            )
        md.append("")
    if r.get("profile"):
        p = r["profile"]
        md += [
            f"### Where the gateway workers spend their time (py-spy, SSE c={p['concurrency']}, "
            f"{p['seconds']:g} s, {p['samples']:,} samples over both workers)",
            "",
            "Samples of the thread holding the GIL (`py-spy --gil`), by the package of the "
            "innermost Python frame; time in granian's Rust code or the kernel without the GIL "
            "does not appear:",
            "",
            "| package | share |",
            "|---|---:|",
        ]
        md += [f"| {k} | {v_ * 100:.1f} % |" for k, v_ in p["by_package"].items()]
        md += [
            "",
            "Gateway functions on the stack (inclusive):",
            "",
            "| function | share |",
            "|---|---:|",
        ]
        md += [f"| `{k}` | {v_ * 100:.1f} % |" for k, v_ in p["gateway_inclusive"].items()]
        if p.get("leaf_functions"):
            md += ["", "Hottest innermost frames (self time):", "", "| function | share |",
                   "|---|---:|"]  # fmt: skip
            md += [f"| `{k}` | {v_ * 100:.1f} % |" for k, v_ in p["leaf_functions"].items()]
        md.append("")
    if r.get("translate"):
        md += [
            "## Translated routes (`python -m bench.translate_throughput --seconds 4`)",
            "",
            r["translate"],
            "",
        ]
    md += ["## Plots", ""] + [f"![{t}]({f})" for t, f in images]
    md += [
        "",
        "## Reproduce",
        "",
        "Everything: `make bench` (about 15 minutes). Single rows, "
        "with the processes started as below and `$KEY` a key made by "
        "`antex key create` on a plan that never refuses:",
        "",
    ]
    for name, row in r["rows"].items():
        md += [f"- **{name}**: `{row['command']}`", f"  - `{row['wrk']['sse']}`"]
    md.append("")
    (out / "report.md").write_text("\n".join(md))


def main() -> None:
    path = Path(sys.argv[1])
    write(orjson.loads(path.read_bytes()), path.parent)
    print(path.parent / "report.md")


if __name__ == "__main__":
    main()
