# SPDX-License-Identifier: MIT
"""Benchmark report: the machine, Markdown tables with ratios, and a PNG chart.

Reads the combined result of ``bench/run.py`` (one JSON object with ``machine``
and one entry per bench). ``python bench/report.py RESULT.json [--png OUT]``
re-renders an old result.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import peers  # noqa: E402

# Column order of the accept tables, and the ratios asked for (fastmta ÷ peer).
ACCEPT_SYSTEMS = ("fastmta", "fastmta-base", "fastmta-nometrics", "fastmta-nosync", "postfix",
                  "aiosmtpd-sink", "aiosmtpd-durable", "limit", "limit-durable", "smtp-sink")  # fmt: skip
RATIO_PEERS = ("postfix", "aiosmtpd-sink", "limit", "limit-durable")


def write_json(result: dict[str, Any], dest: str | None) -> None:
    """A bench's result as indented JSON: to stdout for ``None`` or ``-``, else to the file ``dest``."""
    text = json.dumps(result, indent=1)
    if dest in (None, "-"):
        print(text)
    else:
        Path(dest).write_text(text)


def machine() -> dict[str, Any]:
    """Cores, CPU model, kernel, Python and the version of every peer."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    parser_backend = "?"
    with contextlib.suppress(Exception):
        from fastmta import parser

        parser_backend = parser.backend
    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "fastmta_parser": parser_backend,
        "versions": peers.versions(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _fmt(cell: dict[str, Any] | None, key: str = "rate", digits: int = 0) -> str:
    if not cell or key not in cell:
        return "–"
    v = cell[key]
    med, lo, hi = v["median"], v["min"], v["max"]
    if digits:
        return f"{med:,.{digits}f} ({lo:,.{digits}f}–{hi:,.{digits}f})"
    return f"{med:,.0f} ({lo:,.0f}–{hi:,.0f})"


def _md(rows: list[list[str]]) -> list[str]:
    head, *body = rows
    return ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|",
            *("| " + " | ".join(r) + " |" for r in body)]  # fmt: skip


def accept_tables(acc: dict[str, Any]) -> list[str]:
    summary, ratios = acc["summary"], acc["ratios"]
    systems = [s for s in ACCEPT_SYSTEMS if s in acc["systems"] and s not in acc.get("unavailable", {})]
    out: list[str] = []
    drivers = sorted({d for by in summary.values() for d in by}, reverse=True)
    for drv in drivers:
        out += ["", f"**Durable accept, driven by `{drv}`**: msg/s, median of {acc['reps']} (min–max); "
                "100 KiB rows also in MB/s", ""]  # fmt: skip
        head = ["scenario", *systems, *(f"fastmta ÷ {p}" for p in RATIO_PEERS if p in systems)]
        rows = [head]
        for sc, label in acc["scenarios"].items():
            by_sys = summary.get(sc, {}).get(drv, {})
            row = [label] + [_fmt(by_sys.get(s)) for s in systems]
            if sc.startswith("100k"):
                row = [label] + [
                    f"{_fmt(by_sys.get(s))}<br>{by_sys.get(s, {}).get('mb_s', {}).get('median', '–')} MB/s"
                    for s in systems
                ]
            r = ratios.get(sc, {}).get(drv, {})
            row += [f"{r[p]:.2f}×" if p in r else "–" for p in RATIO_PEERS if p in systems]
            rows.append(row)
        out += _md(rows)
    lat = [sc for sc in acc["scenarios"] if "fastmta-load" in summary.get(sc, {})]
    if lat:
        out += ["", "**Client-side p99 transaction latency (ms, `fastmta load`) / server CPU per accepted "
                "message (µs, smtp-source runs)**", ""]  # fmt: skip
        rows = [["scenario", *systems]]
        for sc in lat:
            cells = []
            for s in systems:
                p99 = summary[sc]["fastmta-load"].get(s, {}).get("p99_ms", {}).get("median")
                cpu = summary[sc].get("smtp-source", {}).get(s, {}).get("cpu_us_per_msg", {}).get("median")
                cells.append(
                    f"{p99 if p99 is not None else '–'} / {f'{cpu:,.0f}' if cpu is not None else '–'}"
                )
            rows.append([acc["scenarios"][sc], *cells])
        out += _md(rows)
    against = acc.get("vs_limit")
    if against:
        out += ["", "**Against the bare-uvloop limit**: server CPU µs per message (the limit's), CPU "
                "ratio, share of the limit's rate (MB/s at 100 KiB)", ""]  # fmt: skip
        durable = any("durable_limit_cpu_us_per_msg" in r for d in against.values() for s in d.values()
                      for r in s.values())  # fmt: skip
        rows = [["scenario", "driver", "system", "CPU µs/msg (limit)", "CPU ÷ limit", "rate ÷ limit"]]
        if durable:
            out[-2] += (
                "; and against the durable limit (the limit plus LMDB durability alone): its CPU "
                "µs per message, its CPU ÷ the limit's, fastmta's CPU ÷ its, fastmta's rate ÷ its"
            )
            rows[0] += ["durable limit µs/msg", "durable ÷ limit", "CPU ÷ durable", "rate ÷ durable"]
        for sc, by_drv in against.items():
            for drv, by_sys in by_drv.items():
                for system, r in by_sys.items():
                    cpu = f"{r['cpu_us_per_msg']} ({r['limit_cpu_us_per_msg']})"
                    ratio = f"{r.get('cpu_over_limit', '–')}×"
                    share = f"{r.get('share_of_limit_rate', '–')}"
                    row = [acc["scenarios"].get(sc, sc), drv, system, cpu, ratio, share]
                    if durable:
                        row += [f"{r.get('durable_limit_cpu_us_per_msg', '–')}",
                                f"{r.get('durable_limit_over_limit', '–')}×",
                                f"{r.get('cpu_over_durable_limit', '–')}×",
                                f"{r.get('share_of_durable_limit_rate', '–')}"]  # fmt: skip
                    rows.append(row)
        out += _md(rows)
    if acc.get("unavailable"):
        out += ["", "Not measured: " + "; ".join(f"{k}: {v}" for k, v in acc["unavailable"].items())]
    return out


# The targets fastmta was built to meet: (bench, scenario, peer, minimum fastmta ÷ peer).
GOALS = [
    ("accept", "4k-50c-1m", "postfix", 4.0), ("accept", "4k-50c-1m", "aiosmtpd-sink", 2.0),
    ("accept", "4k-50c-1m", "limit", 0.5), ("accept", "4k-50c-100m", "postfix", 10.0),
    ("accept", "4k-50c-100m", "limit", 0.4), ("accept", "100k-50c-1m", "postfix", 4.0),
    ("accept", "100k-50c-1m", "limit", 0.5), ("accept", "4k-1c-100m", "postfix", 2.0),
    ("relay", "4k-50c-1m", "postfix", 4.0), ("relay", "4k-50c-100m", "postfix", 4.0),
]  # fmt: skip


def goal_lines(benches: dict[str, Any]) -> list[str]:
    """Each target with the measured ratio per driver and whether it is met."""
    rows = [["target", "smtp-source", "fastmta load", "met"]]
    for bench, sc, peer, want in GOALS:
        data = benches.get(bench, {})
        if bench == "accept":
            got = {
                d: data.get("ratios", {}).get(sc, {}).get(d, {}).get(peer)
                for d in ("smtp-source", "fastmta-load")
            }
        else:
            got = {"smtp-source": data.get("ratios_fastmta_over_postfix", {}).get(sc), "fastmta-load": None}
        if all(v is None for v in got.values()):
            continue
        met = all(v >= want for v in got.values() if v is not None)
        unit = " (MB/s)" if sc.startswith("100k") else ""
        shown = [f"{v:.2f}×" if v is not None else "–" for v in got.values()]
        rows.append([f"{bench} {sc}: fastmta ≥ {want:g}× {peer}{unit}", *shown, "yes" if met else "**no**"])
    return ["", "**Targets** (ratios of medians in this run)", "", *_md(rows)] if len(rows) > 1 else []


def metrics_cost_lines(acc: dict[str, Any]) -> list[str]:
    """Throughput with metrics on ÷ off, per scenario (the budget is ≥ 0.95)."""
    cells = []
    for sc in acc["scenarios"]:
        by = acc["summary"].get(sc, {}).get("smtp-source", {})
        on = by.get("fastmta", {}).get("rate", {}).get("median")
        off = by.get("fastmta-nometrics", {}).get("rate", {}).get("median")
        if on and off:
            cells.append(f"{sc} {on / off:.2f}")
    return ["", "Metrics on ÷ off (smtp-source msg/s): " + ", ".join(cells)] if cells else []


def stored_lines(acc: dict[str, Any]) -> list[str]:
    """Durable systems: messages on disk at the end against the 250s they gave (warm-ups included)."""
    cells = []
    for system, stored in acc.get("stored_check", {}).items():
        if stored is None:
            continue
        acked = sum(r["ok"] for r in acc["runs"] if r["system"] == system)
        flag = "" if stored == acked else " **MISMATCH**"
        cells.append(f"{system} {stored:,}/{acked:,}{flag}")
    return ["", "Stored at the end / acknowledged with 250: " + ", ".join(cells)] if cells else []


def ceiling_lines(acc: dict[str, Any]) -> list[str]:
    """The load tools' own ceiling: each driver against smtp-sink and the limit, beside fastmta."""
    rows = [["scenario", "driver", "→ smtp-sink", "→ limit", "→ fastmta", "headroom over fastmta",
             "driver CPU µs/msg"]]  # fmt: skip
    for sc, label in acc["scenarios"].items():
        for drv in ("smtp-source", "fastmta-load"):
            by = acc["summary"].get(sc, {}).get(drv, {})
            med = {s: by.get(s, {}).get("rate", {}).get("median") for s in ("smtp-sink", "limit", "fastmta")}
            if not med["smtp-sink"] and not med["limit"]:
                continue
            top = max(v for v in (med["smtp-sink"], med["limit"]) if v)
            room = f"{top / med['fastmta']:.1f}×" if med["fastmta"] else "–"
            own = by.get("smtp-sink", by.get("fastmta", {})).get("client_cpu_us_per_msg", {}).get("median")
            rows.append([label, drv, *(f"{v:,.0f}" if v else "–" for v in med.values()), room,
                         f"{own:,.0f}" if own is not None else "–"])  # fmt: skip
    if len(rows) == 1:
        return []
    return [
        "",
        "**Load tools' ceiling** (msg/s; the generator must outrun the server it measures)",
        "",
        *_md(rows),
    ]


# The protocol core's targets, against floors measured in the same run: CPU per
# message at most this many times the durable limit's (every many-connection cell),
# and at one connection at least this share of the ceiling set by a spool-shaped commit.
CORE_CPU_OVER_DURABLE_MAX = 1.6
CORE_SPOOL_CEILING_SHARE_MIN = 0.8


def core_goal_lines(acc: dict[str, Any]) -> list[str]:
    """The protocol core's targets, each with the measured value and whether it is met."""
    rows = [["target", "driver", "measured", "met"]]
    for sc, by_drv in acc.get("vs_limit", {}).items():
        if sc in acc.get("floors", {}):  # one connection: judged against its ceiling below
            continue
        for drv, by_sys in by_drv.items():
            got = by_sys.get("fastmta", {}).get("cpu_over_durable_limit")
            if got is not None:
                want = f"CPU ≤ {CORE_CPU_OVER_DURABLE_MAX}× the durable limit's"
                rows.append([f"{acc['scenarios'].get(sc, sc)}: {want}", drv, f"{got:.2f}×",
                             "yes" if got <= CORE_CPU_OVER_DURABLE_MAX else "**no**"])  # fmt: skip
    for sc, by_drv in acc.get("floors", {}).items():
        for drv, c in by_drv.items():
            got = c.get("fastmta_share_of_spool_ceiling")
            if got is not None:
                want = f"≥ {CORE_SPOOL_CEILING_SHARE_MIN:.0%} of the spool-shaped ceiling"
                rows.append([f"{acc['scenarios'].get(sc, sc)}: {want}", drv, f"{got:.0%}",
                             "yes" if got >= CORE_SPOOL_CEILING_SHARE_MIN else "**no**"])  # fmt: skip
    if len(rows) == 1:
        return []
    return ["", "**Protocol-core targets** (against floors measured in this run)", "", *_md(rows)]


def floor_lines(acc: dict[str, Any]) -> list[str]:
    """One connection: the disk's flush floor, and the best a durable server could do on top of the limit."""
    fl = acc.get("disk")
    if not fl:
        return []
    out = ["", f"**Durability floor**: a one-page LMDB-style commit on this disk takes "
           f"{fl['commit_floor_us']} µs (fdatasync {fl['data_page_fdatasync_us']} + O_DSYNC meta write "
           f"{fl['meta_dsync_write_us']}, medians of {fl['samples']}"
           + (f" from {fl['probes']} probes spread over the run" if fl.get("probes", 1) > 1 else "")
           + ")."]  # fmt: skip
    for sc, by_drv in acc.get("floors", {}).items():
        for drv, c in by_drv.items():
            line = (f"{acc['scenarios'].get(sc, sc)}, `{drv}`: limit {c['limit_us_per_msg']} µs/msg "
                    f"+ floor → at most {c['durable_ceiling_rate']:,.0f} msg/s "
                    "for any durable server")  # fmt: skip
            if "ceiling_over_postfix" in c:
                line += f" = {c['ceiling_over_postfix']:.2f}× Postfix"
            if "fastmta_share_of_ceiling" in c:
                line += f"; fastmta reaches {c['fastmta_share_of_ceiling']:.0%} of it"
            if "durable_limit_share_of_ceiling" in c:
                line += f", the durable limit {c['durable_limit_share_of_ceiling']:.0%}"
            if "spool_ceiling_rate" in c:
                line += (f". With a commit shaped like fastmta's spool ({c['spool_commit_floor_us']} µs):"
                         f" at most {c['spool_ceiling_rate']:,.0f} msg/s")  # fmt: skip
                if "fastmta_share_of_spool_ceiling" in c:
                    line += f"; fastmta reaches {c['fastmta_share_of_spool_ceiling']:.0%} of it"
            out.append(line + ".")
    return out


def relay_tables(rel: dict[str, Any]) -> list[str]:
    out = ["", f"**End-to-end relay** (smtp-source → MTA → smtp-sink, 4 KiB, 50 connections, "
           f"{rel['count_per_run']} msgs per run): msg/s from first sent to last received", ""]  # fmt: skip
    rows = [["scenario", "fastmta", "postfix", "fastmta ÷ postfix"]]
    for sc, cell in rel["summary"].items():
        fm, pf = cell.get("fastmta"), cell.get("postfix")
        ratio = rel["ratios_fastmta_over_postfix"].get(sc)
        cells = [f"{c['median']:,.0f} ({c['min']:,.0f}–{c['max']:,.0f})" if c else "–" for c in (fm, pf)]
        rows.append([sc, *cells, f"{ratio:.2f}×" if ratio else "–"])
    out += _md(rows)
    out += drain_lines(rel.get("drain"))
    if rel.get("unavailable"):
        out += ["", "Not measured: " + "; ".join(f"{k}: {v}" for k, v in rel["unavailable"].items())]
    return out


def dkim_lines(dk: dict[str, Any]) -> list[str]:
    """bench/dkim.py: the systems, then each target against what this machine's ceiling allows."""
    out = ["", f"**DKIM relay** (smtp-source → MTA → smtp-sink, 4 KiB, 50 connections, "
           f"{dk['count_per_run']} msgs per run): msg/s, and CPU µs per message of the server tree, "
           "smtp-source and smtp-sink", ""]  # fmt: skip
    rows = [["system", "msg/s (min–max)", "server CPU", "smtp-source CPU", "smtp-sink CPU"]]
    for name, c in dk["summary"].items():
        rows.append([name, f"{c['rate_median']:,.0f} ({min(c['rates']):,.0f}–{max(c['rates']):,.0f})",
                     *(f"{c.get(k + '_median', 0):,.0f}" for k in ("cpu_us_per_msg", "client_cpu_us_per_msg",
                                                                   "sink_cpu_us_per_msg"))])  # fmt: skip
    out += _md(rows)
    ceil = dk.get("ceilings", {})
    bounds = {f"fastmta-{a} / fastmta": ("CPU budget", ceil.get(f"cpu budget fastmta-{a} / fastmta"))
              for a in ("rsa", "ed25519")}  # fmt: skip
    bounds["fastmta-rsa / postfix-opendkim"] = ("fastmta ÷ postfix", ceil.get("fastmta / postfix-opendkim"))
    rows = [["ratio", "target", "achieved", "ceiling here", "verdict"]]
    for name, target in dk["targets"].items():
        got = dk["ratios"].get(name)
        why, bound = bounds.get(name, ("", None))
        if got is not None and got >= target:
            verdict = "met"
        elif bound is not None and bound < target:
            verdict = "above this machine's ceiling"
        else:
            verdict = "**not met**" if got is not None else "–"
        rows.append([name, f"≥ {target:g}", f"{got:g}" if got is not None else "–",
                     f"{bound:g} ({why})" if bound is not None else "–", verdict])  # fmt: skip
    out += ["", *_md(rows)]
    if "raw_sign_us" in ceil:
        sign, load = ceil["raw_sign_us"], dk["load_average_1min"]
        out += ["", f"openssl speed, one core: RSA-2048 {sign['rsa']:,.0f} µs and Ed25519 "
                f"{sign['ed25519']:,.0f} µs per signature; no-DKIM total CPU "
                f"{ceil.get('plain_total_cpu_us_per_msg', 0):,.0f} µs per message; "
                f"load average {load['start']} at the start, {load['end']} at the end"]  # fmt: skip
    if dk.get("unavailable"):
        out += ["", "Not measured: " + "; ".join(f"{k}: {v}" for k, v in dk["unavailable"].items())]
    return out


def drain_lines(drained: dict[str, Any] | None) -> list[str]:
    """The drain of a pre-filled queue to smtp-sink, per system, with fastmta ÷ Postfix."""
    if not drained:
        return []
    if "queued" in drained or "error" in drained:  # results written before Postfix was drained too
        drained = {"fastmta": drained}
    n = max((d.get("queued", 0) for d in drained.values()), default=0)
    rows = [
        [
            "drain to smtp-sink",
            "msg/s",
            "delivered",
            "seconds",
            "connections",
            "peak RSS (PSS) MiB",
            "CPU µs/msg",
        ]
    ]
    for name, d in drained.items():
        if "error" in d:
            rows.append([name, f"failed: {d['error']}", "", "", "", "", ""])
            continue
        done = "" if d["complete"] else " (INCOMPLETE)"
        rows.append(
            [
                name,
                f"{d['rate']:,.0f}",
                f"{d['delivered']:,}{done}",
                str(d["elapsed_s"]),
                str(d["connections_opened"]),
                f"{d['peak_rss_mb']} ({d.get('peak_pss_mb', '–')})",
                f"{d['cpu_us_per_msg']:,.0f}",
            ]
        )
    out = ["", f"**Drain** of {n:,} queued 4 KiB messages (fastmta: restart with delivery on; Postfix: "
           "`postsuper -H ALL`)", "", *_md(rows)]  # fmt: skip
    fm, pf = drained.get("fastmta", {}).get("rate"), drained.get("postfix", {}).get("rate")
    if fm and pf:
        out += ["", f"Drain fastmta ÷ Postfix: {fm / pf:.2f}×"]
    return out


def spool_lines(sp: dict[str, Any]) -> list[str]:
    out = [
        "",
        "**Spool** (durable 4 KiB puts/s under a busy loop; LMDB group commit vs file-per-message)",
        "",
    ]
    rows = [["producers", "lmdb puts/s", "files puts/s", "ratio"]]
    for row in sp.get("puts", []):
        rows.append([str(row["producers"]), f"{row['lmdb']['puts_per_s']:,.0f}",
                     f"{row['files']['puts_per_s']:,.0f}",
                     f"{row['ratio']}×" if row["ratio"] else "– (no file put finished)"])  # fmt: skip
    out += _md(rows)
    rec = sp.get("recovery")
    if rec:
        out += [
            "",
            f"Recovery of {rec.get('messages', 0):,} queued messages: {rec.get('recover_seconds')} s, "
            f"peak RSS {rec.get('peak_rss_mib')} MiB",
        ]
    return out


def parser_lines(pa: dict[str, Any]) -> list[str]:
    """bench/parser.py: MB/s per workload and implementation, with the Cython ratios."""
    results = pa.get("results", [])
    impls: list[str] = []
    for res in results:
        impls += [k for k in res.get("mb_per_s", {}) if k not in impls]
    out = ["", f"**Parser** (MB/s, median of {pa.get('reps', '?')}; Cython vs pure twin vs baselines)", ""]
    rows = [["workload", *impls, "Cython ÷ others"]]
    for res in results:
        ratios = ", ".join(
            f"{k[len('cython_vs_') :]} {v:.2f}×" for k, v in res.items() if k.startswith("cython_vs_")
        )
        speeds = [f"{res['mb_per_s'][i]:,.0f}" if i in res["mb_per_s"] else "–" for i in impls]
        rows.append([res["workload"], *speeds, ratios])
    return out + _md(rows)


def profile_lines(pr: dict[str, Any]) -> list[str]:
    """bench/profile.py: server CPU µs per accepted message, split by area (py-spy samples)."""
    scen = pr.get("scenarios", {})
    areas: list[str] = []
    for res in scen.values():
        areas += [a for a in res.get("us_per_msg_by_area", {}) if a not in areas]
    out = ["", "**Where fastmta's accept CPU goes** (µs per message by area, py-spy --native; "
           "spool writer = the separate writer process)", ""]  # fmt: skip
    rows = [["scenario", "total µs/msg", *areas, "spool writer", "in syscalls"]]
    for name, res in scen.items():
        by = res.get("us_per_msg_by_area", {})
        rows.append([name, f"{res.get('cpu_us_per_msg') or 0:,.0f}", *(f"{by.get(a, 0):,.1f}" for a in areas),
                     f"{res.get('us_per_msg_spool_writer_process', 0):,.1f}",
                     f"{res.get('syscall_share', 0) * 100:.0f} %"])  # fmt: skip
    return out + _md(rows)


_GENERIC_KEYS = ("mb_s", "mb_per_s", "per_s", "rate", "ratio", "_ms", "cpu", "must_show")


def generic_lines(name: str, data: dict[str, Any]) -> list[str]:
    """Benches this report does not know in detail: their throughput-like numbers, flattened."""
    found: list[str] = []

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                if k != "runs":  # per-run rows: the summaries above them are what to show
                    walk(f"{prefix}.{k}" if prefix else str(k), x)
        elif isinstance(v, list):
            for i, x in enumerate(v):
                walk(f"{prefix}[{i}]", x)
        elif not any(t in prefix.lower() for t in _GENERIC_KEYS) or prefix.endswith((".min", ".max")):
            return
        elif isinstance(v, bool):
            found.append(f"- {prefix}: {'yes' if v else '**no**'}")
        elif isinstance(v, int | float):
            found.append(f"- {prefix}: {v:,.1f}" if isinstance(v, float) else f"- {prefix}: {v:,}")
        elif isinstance(v, str):
            found.append(f"- {prefix}: {v}")

    walk("", data)
    return ["", f"**{name.capitalize()}** (bench/{name}.py; its JSON has the details)", "", *found[:40]]


def render(result: dict[str, Any]) -> str:
    """The whole report as Markdown (also what the terminal shows)."""
    m = result["machine"]
    v = m["versions"]
    lines = [
        f"fastmta benchmark {result['date']} ({'--quick' if result.get('quick') else 'full'}, "
        f"{result.get('elapsed_s', '?')} s)",
        f"machine: {m['cores']} cores ({m['usable_cores']} usable), {m['cpu_model']}, Linux {m['kernel']}, "
        f"Python {m['python']}, parser {m['fastmta_parser']}; load average at start "
        f"{'/'.join(map(str, m['load_average_at_start']))}",
        "peers: " + ", ".join(f"{k} {val}" for k, val in v.items()),
    ]
    if result.get("note"):
        lines.append(f"note: {result['note']}")
    benches = result.get("benches", {})
    lines += goal_lines(benches)
    for name, data in benches.items():
        if "error" in data:
            lines += ["", f"**{name}**: failed: {data['error']}"]
        elif name == "accept":
            lines += accept_tables(data) + metrics_cost_lines(data) + stored_lines(data)
            lines += ceiling_lines(data) + floor_lines(data) + core_goal_lines(data)
        elif name == "relay":
            lines += relay_tables(data)
        elif name == "dkim" and "summary" in data:
            lines += dkim_lines(data)
        elif name == "spool":
            lines += spool_lines(data)
        elif name == "parser" and "results" in data:
            lines += parser_lines(data)
        elif name == "profile" and "scenarios" in data:
            lines += profile_lines(data)
        else:
            lines += generic_lines(name, data)
    return "\n".join(lines) + "\n"


def readme(result: dict[str, Any]) -> str:
    """The short tables for docs/performance.md (accept by smtp-source, relay, drain)."""
    m = result["machine"]
    benches = result.get("benches", {})
    lines = [
        f"`{result.get('command', 'bench/run.py')}` on {result['date']}: "
        f"{m['usable_cores']} cores {m['cpu_model']}, "
        f"Linux {m['kernel']}, Python {m['python']}, Postfix {m['versions'].get('postfix', '?')}, "
        f"aiosmtpd {m['versions'].get('aiosmtpd', '?')}; load average "
        f"{m['load_average_at_start'][0]} at start, {m.get('load_average_at_end', ['?'])[0]} at the end"
        f"{'; ' + result['note'] if result.get('note') else ''}. "
        "Medians of 3 runs (msg/s, smtp-source); ratios are what to compare.",
        "",
    ]
    acc = benches.get("accept", {})
    if "summary" in acc:
        cols = [
            s
            for s in ("fastmta", "postfix", "aiosmtpd-sink", "aiosmtpd-durable", "limit")
            if s in acc["systems"]
        ]
        rows = [["accept (durable)", *cols, "÷ Postfix", "÷ limit", "p99 ms fastmta / Postfix"]]
        for sc, label in acc["scenarios"].items():
            by = acc["summary"].get(sc, {}).get("smtp-source", {})
            lat = acc["summary"].get(sc, {}).get("fastmta-load", {})
            rat = acc["ratios"].get(sc, {}).get("smtp-source", {})
            p99 = [lat.get(s, {}).get("p99_ms", {}).get("median") for s in ("fastmta", "postfix")]
            rows.append([label, *(f"{by[s]['rate']['median']:,.0f}" if s in by and "rate" in by[s] else "–"
                                  for s in cols),
                         *(f"{rat[p]:.2f}×" if p in rat else "–" for p in ("postfix", "limit")),
                         " / ".join(f"{v:g}" if v is not None else "–" for v in p99)])  # fmt: skip
        lines += _md(rows)
    rel = benches.get("relay", {})
    if "summary" in rel:
        lines += [""]
        rows = [["relay end to end", "fastmta", "postfix", "÷ Postfix"]]
        for sc, cell in rel["summary"].items():
            ratio = rel["ratios_fastmta_over_postfix"].get(sc)
            rates = [f"{cell[s]['median']:,.0f}" if s in cell else "–" for s in ("fastmta", "postfix")]
            rows.append([sc, *rates, f"{ratio:.2f}×" if ratio else "–"])
        lines += _md(rows)
        lines += drain_lines(rel.get("drain"))
    return "\n".join(lines) + "\n"


def chart(result: dict[str, Any], path: Path) -> None:
    """Throughput and p99 latency per scenario and system (accept), plus relay rates; one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benches = result.get("benches", {})
    acc = benches.get("accept") if "summary" in benches.get("accept", {}) else None
    rel = benches.get("relay") if "summary" in benches.get("relay", {}) else None
    panels = (2 if acc else 0) + (1 if rel else 0)
    if not panels:
        return
    width = max(12.0, 2.2 * len(benches.get("accept", {}).get("scenarios", {})))
    fig, axes = plt.subplots(panels, 1, figsize=(width, 4.2 * panels), squeeze=False)
    ax_iter = iter(axes[:, 0])
    if acc:
        scen = list(acc["scenarios"])
        systems = [s for s in ACCEPT_SYSTEMS if s in acc["systems"] and s not in acc.get("unavailable", {})]
        width = 0.8 / max(1, len(systems))
        for ax, key, drv, title, unit in (
            (next(ax_iter), "rate", "smtp-source", "Durable accept throughput (smtp-source)", "msg/s (log)"),
            (next(ax_iter), "p99_ms", "fastmta-load", "p99 transaction latency (fastmta load)", "ms (log)"),
        ):
            for i, s in enumerate(systems):
                meds: list[float] = []
                errs: list[list[float]] = [[], []]
                for sc in scen:
                    c = acc["summary"].get(sc, {}).get(drv, {}).get(s, {}).get(key)
                    med = c["median"] if c else 0
                    meds.append(med)
                    errs[0].append(med - c["min"] if c else 0)
                    errs[1].append(c["max"] - med if c else 0)
                xs = [j + (i - (len(systems) - 1) / 2) * width for j in range(len(scen))]
                ax.bar(xs, meds, width, yerr=errs, label=s, capsize=2)
            ax.set_xticks(range(len(scen)), [acc["scenarios"][sc] for sc in scen], fontsize=8)
            ax.set_yscale("log")
            ax.set_ylabel(unit)
            ax.set_title(title)
            ax.grid(axis="y", alpha=0.3)
            ax.legend(fontsize=7, ncol=4)
    if rel:
        ax = next(ax_iter)
        scen = list(rel["summary"])
        drained = rel.get("drain") or {}
        for i, s in enumerate(("fastmta", "postfix")):
            meds = [rel["summary"][sc].get(s, {}).get("median", 0) for sc in scen]
            meds.append(drained.get(s, {}).get("rate", 0))
            ax.bar([j + (i - 0.5) * 0.35 for j in range(len(scen) + 1)], meds, 0.35, label=s)
        ax.set_xticks(range(len(scen) + 1), [*(f"{sc} end to end" for sc in scen), "drain of a full queue"])
        ax.set_ylabel("msg/s")
        ax.set_title("Relay to smtp-sink: smtp-source → MTA → sink, and the drain of a pre-filled queue")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    m = result["machine"]
    fig.suptitle(f"fastmta bench {result['date']} · {m['usable_cores']} cores {m['cpu_model']} · "
                 f"load avg {m['load_average_at_start'][0]}", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("result", help="a bench/results/<date>.json file")
    ap.add_argument("--png", help="also write the chart here")
    ap.add_argument("--readme", action="store_true", help="only the short tables of docs/performance.md")
    args = ap.parse_args(argv)
    result = json.loads(Path(args.result).read_text())
    print(readme(result) if args.readme else render(result))
    if args.png:
        chart(result, Path(args.png))
    return 0


if __name__ == "__main__":
    sys.exit(main())
