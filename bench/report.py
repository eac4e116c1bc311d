"""Summaries of the bench measurements: medians, spread, ratios, targets, text/Markdown/JSON."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

SPEED_AT_150 = 2.0  # ours at least 2x faster at 150 ms (the real services' latency)...
SPEED_AT_150_FULL = 3.0  # ...and 3x on full retrieval and query_all (rows/s)
FULL_READS = ("docdb.retrieve_all", "cave.query_all")
SPEED_WITHOUT = 1.0  # never slower at 0 and 30 ms
CPU_PER_ROW = 0.5  # our client CPU per record/row at most half the official client's
FLOW_OVERHEAD = 0.15  # Prefect overhead under 15 % of the plain loop

COLUMNS = (
    ("workload", "workload"),
    ("scale", "size"),
    ("latency", "latency"),
    ("ours_s", "ours s"),
    ("official_s", "official s"),
    ("ratio", "speedup"),
    ("ours_cpu", "CPU ours s"),
    ("official_cpu", "CPU official s"),
    ("cpu_ratio", "CPU/row ratio"),
    ("ours_rows", "rows ours"),
    ("official_rows", "rows official"),
    ("ours_mb", "MB ours"),
    ("official_mb", "MB official"),
    ("verdict", "target"),
)
CURVE_COLUMNS = (
    ("rows", "rows"),
    ("loop_s", "loop s"),
    ("flow_s", "flow s"),
    ("overhead", "overhead"),
    ("steady_overhead", "steady overhead"),
    ("loop_rate", "loop rows/s"),
    ("flow_rate", "flow rows/s"),
    ("loop_cpu", "CPU loop s"),
    ("flow_cpu", "CPU flow s"),
    ("loop_mb", "MB loop"),
    ("flow_mb", "MB flow"),
    ("verdict", "target"),
)


def short(result: dict[str, Any]) -> str:
    """One-line description of a measurement for the progress log."""
    if not result.get("ok"):
        return f"{result.get('side')}: ERROR {result.get('error')}"
    return (
        f"{result.get('side')}: {result['seconds']:.2f} s, CPU {result.get('cpu_seconds', 0):.2f}"
        f" s, {result['rows']:,} rows, work {result.get('work_rss_mb', 0):.0f} MB"
    )


def _side(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if r.get("ok")]
    errors = [r.get("error", "?") for r in runs if not r.get("ok")]
    if not ok:
        return {"ok": False, "n": 0, "errors": errors}
    seconds = [r["seconds"] for r in ok]
    return {
        "ok": True,
        "n": len(ok),
        "seconds": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "all_seconds": [round(s, 3) for s in seconds],
        "cpu": statistics.median(r.get("cpu_seconds") or 0.0 for r in ok),
        "rows": int(statistics.median(r["rows"] for r in ok)),
        "peak_mb": statistics.median(r["peak_rss_mb"] for r in ok),
        # The memory column: the process's own high-water mark above its post-import baseline.
        "work_mb": statistics.median(r.get("work_rss_mb", 0.0) for r in ok),
        "errors": errors,
    }


def speed_target(workload: str, latency_ms: int) -> float:
    """The speedup ours must reach on ``workload`` at ``latency_ms``."""
    if latency_ms >= 150:
        return SPEED_AT_150_FULL if workload in FULL_READS else SPEED_AT_150
    return SPEED_WITHOUT


def summarize(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (workload, scale, latency) with medians, ratios and the target verdict."""
    rows = []
    for cell in cells:
        if cell["workload"].startswith("flows."):
            rows.append(_flow_row(cell))
            continue
        ours, off = _side(cell["runs"]["ours"]), _side(cell["runs"]["official"])
        row: dict[str, Any] = {
            "workload": cell["workload"],
            "scale": f"{cell['scale']}x",
            "latency": f"{cell['latency_ms']} ms",
            "latency_ms": cell["latency_ms"],
            "ours": ours,
            "official": off,
            "ours_s": ours.get("seconds"),
            "official_s": off.get("seconds"),
            "ours_cpu": ours.get("cpu"),
            "official_cpu": off.get("cpu"),
            "cpu_ratio": None,
            "ours_rows": ours.get("rows"),
            "official_rows": off.get("rows"),
            "ours_mb": ours.get("work_mb"),
            "official_mb": off.get("work_mb"),
            "ratio": None,
            "rate_ratio": None,
            "notes": [],
        }
        need = speed_target(cell["workload"], cell["latency_ms"])
        if not ours["ok"]:
            row["verdict"] = "ERROR"
            row["notes"].append(f"ours failed: {ours['errors'][0]}")
        elif not off["ok"]:
            # Nothing to compare with: ours did work the official client could not do.
            row["verdict"] = "PASS*"
            row["notes"].append(f"official failed: {off['errors'][0]}")
        else:
            row["ratio"] = off["seconds"] / ours["seconds"]
            ours_rate = ours["rows"] / ours["seconds"] if ours["seconds"] else 0.0
            off_rate = off["rows"] / off["seconds"] if off["seconds"] else 0.0
            row["rate_ratio"] = ours_rate / off_rate if off_rate else None
            speed = row["ratio"]
            if ours["rows"] != off["rows"]:
                row["notes"].append(
                    f"rows differ: ours {ours['rows']:,}, official {off['rows']:,}; speed judged "
                    f"on rows/s (x{row['rate_ratio']:.2f}), time ratio x{row['ratio']:.2f}"
                )
                speed = row["rate_ratio"] or 0.0
            misses = []
            if speed < need:
                misses.append(f"speed x{speed:.2f} < x{need:g}")
            if ours["rows"] and off["rows"] and off["cpu"]:
                row["cpu_ratio"] = (ours["cpu"] / ours["rows"]) / (off["cpu"] / off["rows"])
                if row["cpu_ratio"] > CPU_PER_ROW:
                    misses.append(f"CPU per row x{row['cpu_ratio']:.2f} > x{CPU_PER_ROW:g}")
            if ours["work_mb"] > off["work_mb"]:
                misses.append(
                    f"memory {ours['work_mb']:.0f} MB > {off['work_mb']:.0f} MB "
                    f"(+{100 * (ours['work_mb'] / max(off['work_mb'], 1.0) - 1):.0f} %)"
                )
            row["verdict"] = "PASS" if not misses else "MISS"
            row["notes"].extend(misses)
            if off["errors"] or ours["errors"]:
                row["notes"].append(
                    f"failed runs: ours {len(ours['errors'])}, official {len(off['errors'])}"
                )
        rows.append(row)
    return rows


def _flow_row(cell: dict[str, Any]) -> dict[str, Any]:
    loop, flow = _side(cell["runs"]["loop"]), _side(cell["runs"]["flow"])
    row: dict[str, Any] = {
        "workload": cell["workload"],
        "scale": f"{cell['scale']:,} rows",
        "latency": f"{cell['latency_ms']} ms",
        "latency_ms": cell["latency_ms"],
        "flow_curve": True,
        "ours": loop,
        "official": flow,
        "ours_s": loop.get("seconds"),
        "official_s": flow.get("seconds"),
        "ours_cpu": loop.get("cpu"),
        "official_cpu": flow.get("cpu"),
        "cpu_ratio": None,
        "ours_rows": loop.get("rows"),
        "official_rows": flow.get("rows"),
        "ours_mb": loop.get("work_mb"),
        "official_mb": flow.get("work_mb"),
        "ratio": None,
        "rate_ratio": None,
        "notes": ["'ours' = plain loop over our clients, 'official' columns = the Prefect flow"],
    }
    if not (loop["ok"] and flow["ok"]):
        row["verdict"] = "ERROR"
        row["notes"].append(f"failed: loop {loop['errors'][:1]}, flow {flow['errors'][:1]}")
        return row
    overhead = flow["seconds"] / loop["seconds"] - 1
    row["overhead"] = overhead
    row["ratio_text"] = f"{100 * overhead:+.0f}% ovh"
    ok = overhead < FLOW_OVERHEAD
    row["verdict"] = "PASS" if ok else "MISS"
    row["notes"].append(
        f"Prefect overhead {100 * overhead:+.1f} % (target < 15 %); loop "
        f"{loop['min_s']:.2f}-{loop['max_s']:.2f} s, flow {flow['min_s']:.2f}-{flow['max_s']:.2f} s"
    )
    steady = {side: _steady(cell["runs"][side]) for side in ("loop", "flow")}
    if steady["loop"] and steady["flow"]:
        loop_s, flow_s = statistics.median(steady["loop"]), statistics.median(steady["flow"])
        row["steady_overhead"] = flow_s / loop_s - 1
        row["notes"].append(
            f"steady state (later calls in the same process): loop {loop_s:.2f} s "
            f"[{min(steady['loop']):.2f}-{max(steady['loop']):.2f}], flow {flow_s:.2f} s "
            f"[{min(steady['flow']):.2f}-{max(steady['flow']):.2f}], overhead "
            f"{100 * row['steady_overhead']:+.1f} %"
        )
    return row


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:+.1f} %"


def _steady(runs: list[dict[str, Any]]) -> list[float]:
    """Seconds of the later calls of every successful run of a side (empty if none made)."""
    return [s for r in runs if r.get("ok") for s in r.get("extra", {}).get("steady_seconds", [])]


def _spread(side: dict[str, Any]) -> str:
    if not side.get("ok"):
        return "-"
    if side["n"] < 2:
        return f"{side['seconds']:.2f}"
    return f"{side['seconds']:.2f} [{side['min_s']:.2f}-{side['max_s']:.2f}]"


def _fmt(key: str, row: dict[str, Any]) -> str:
    value = row.get(key)
    if key == "ratio" and value is None and row.get("ratio_text"):
        return str(row["ratio_text"])
    if key == "ours_s":
        return _spread(row["ours"])
    if key == "official_s":
        return _spread(row["official"])
    if value is None:
        return "-"
    if key in ("ours_cpu", "official_cpu"):
        return f"{value:.2f}"
    if key in ("ratio", "cpu_ratio"):
        return f"x{value:.2f}"
    if key in ("ours_rows", "official_rows"):
        return f"{value:,}"
    if key in ("ours_mb", "official_mb"):
        return f"{value:.0f}"
    return str(value)


def _grid(headers: list[str], body: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [
        max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)
    ]
    fmt = "  ".join(f"{{:<{w}}}" if i < 3 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*headers), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*cells) for cells in body]
    return "\n".join(lines)


def _table(rows: list[dict[str, Any]], markdown: bool) -> str:
    client_rows = [r for r in rows if not r.get("flow_curve")]
    body = [[_fmt(key, row) for key, _ in COLUMNS] for row in client_rows]
    return _grid([title for _, title in COLUMNS], body, markdown)


def _curve(rows: list[dict[str, Any]], markdown: bool) -> str:
    """The snapshot scale curve: loop vs flow per table size."""
    body = []
    for row in (r for r in rows if r.get("flow_curve")):
        loop, flow = row["ours"], row["official"]
        if not (loop.get("ok") and flow.get("ok")):
            body.append([row["scale"], *["-"] * (len(CURVE_COLUMNS) - 2), row["verdict"]])
            continue
        body.append(
            [
                f"{loop['rows']:,}",
                _spread(loop),
                _spread(flow),
                f"{100 * row['overhead']:+.1f} %",
                _percent(row.get("steady_overhead")),
                f"{loop['rows'] / loop['seconds']:,.0f}",
                f"{flow['rows'] / flow['seconds']:,.0f}",
                f"{loop['cpu']:.1f}",
                f"{flow['cpu']:.1f}",
                f"{loop['work_mb']:.0f}",
                f"{flow['work_mb']:.0f}",
                row["verdict"],
            ]
        )
    if not body:
        return ""
    return _grid([title for _, title in CURVE_COLUMNS], body, markdown)


def _notes(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for row in rows:
        if row.get("notes"):
            out.append(
                f"{row['workload']} {row['scale']} {row['latency']}: " + "; ".join(row["notes"])
            )
    return out


def _header(meta: dict[str, Any]) -> str:
    sizes = meta.get("sizes_1x", {})
    probe = meta.get("memory_probe") or {}
    probe_text = "; ".join(
        f"{side} held 50/400 MB -> measured {v.get('50 MB')}/{v.get('400 MB')} MB"
        for side, v in probe.items()
    )
    return (
        f"bench {meta.get('started', '')}: {meta.get('args', {}).get('reps')} repetition(s) per "
        f"side; seconds = median [min-max]; speedup = official time / our time; CPU = the "
        f"client process's user+sys seconds; CPU/row ratio = our CPU per row / official CPU per "
        f"row (target <= x{CPU_PER_ROW:g}); MB = the process's own peak above its post-import "
        f"baseline (memory probe: {probe_text or 'not run'}); targets: x{SPEED_WITHOUT:g} at 0 "
        f"and 30 ms, x{SPEED_AT_150:g} at 150 ms (x{SPEED_AT_150_FULL:g} for "
        f"{', '.join(FULL_READS)}, rows/s), memory no higher; 1x = {sizes.get('records', 0):,} "
        f"records, {sizes.get('synapses', 0):,} synapses, {sizes.get('names', 0):,} names, "
        f"{sizes.get('supervoxels', 0):,} supervoxels, {sizes.get('annotations', 0):,} "
        f"annotations; {meta.get('cpus')} CPUs, load average {meta.get('loadavg_start')} -> "
        f"{meta.get('loadavg_end')}; run took {meta.get('seconds')} s"
    )


def render_text(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    notes = "\n".join("  * " + n for n in _notes(rows))
    curve = _curve(rows, markdown=False)
    curve_text = (
        f"\nsnapshot scale curve (Prefect flow vs plain loop):\n\n{curve}\n" if curve else ""
    )
    return f"\n{_header(meta)}\n\n{_table(rows, markdown=False)}\n{curve_text}\nnotes:\n{notes}\n"


def render_markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    notes = "\n".join("- " + n for n in _notes(rows))
    curve = _curve(rows, markdown=True)
    curve_text = f"\n## Snapshot scale curve\n\n{curve}\n" if curve else ""
    return (
        f"# Bench results\n\n{_header(meta)}\n\n{_table(rows, markdown=True)}\n{curve_text}\n"
        f"{notes}\n"
    )


def write(
    out: Path, rows: list[dict[str, Any]], meta: dict[str, Any], cells: list[dict[str, Any]]
) -> list[Path]:
    """Write ``bench-<time>.md``/``.json`` and ``latest.md``/``.json`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    md = render_markdown(rows, meta)
    data = json.dumps({"meta": meta, "rows": rows, "cells": cells}, indent=2, default=str)
    paths = []
    for name in (f"bench-{stamp}", "latest"):
        (out / f"{name}.md").write_text(md)
        (out / f"{name}.json").write_text(data)
        paths += [out / f"{name}.md", out / f"{name}.json"]
    return paths


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.report A.json B.json ...``: one table from several runs' JSON files."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.report", description=main.__doc__)
    parser.add_argument("files", nargs="+", help="bench-*.json files written by python -m bench")
    parser.add_argument("--out", default=None, help="also write merged .md/.json here")
    args = parser.parse_args(argv)
    cells: list[dict[str, Any]] = []
    metas = []
    for name in args.files:
        data = json.loads(Path(name).read_text())
        cells.extend(data["cells"])
        metas.append(data["meta"])
    meta = dict(metas[0])
    meta["merged_from"] = [m.get("started") for m in metas]
    meta["seconds"] = sum(m.get("seconds") or 0 for m in metas)
    rows = summarize(cells)
    print(render_text(rows, meta))
    if args.out:
        for path in write(Path(args.out), rows, meta, cells):
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
