"""The native backend's roofline table, before and after a change, from ``bench/run.py`` JSONs.

    python bench/native_report.py --before DIR... --after DIR... [--before-label TEXT]

Each DIR holds the ``results.json`` of one ``bench/run.py --peers native native_stats`` run (one
instruction set, as ``SAGO_NATIVE_ISA`` chose it, and one or more dtypes); repeated runs of the
same case are combined by their median. Prints a Markdown section for ``bench/RESULTS.md``: the
machine, threads, clock and load the JSONs recorded, the targets of issue 30 judged on every row
(met only when every expected row is there and within its bound), then every row. "×copy" is a
call's time over that of a copy of the same bytes run right after it (the median of the per-call
ratios); "stats cost" is the ``native_stats`` row's ×copy over the plain row's, in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

BOUND = 1.3  # issue 30: ≤ 1.3× the copy roofline, statistics ≤ 1.3× the method without them


def family(isa: str | None) -> str:
    """The build a row ran: the AVX-512 builds (with or without the bf16 conversion) together."""
    if isa is None:
        return "?"
    return "AVX-512" if isa.startswith("avx512") else {"avx2": "AVX2"}.get(isa, isa)


KEYS = ("copy_time_ratio", "stats_cost")


def load(dirs: list[str]) -> tuple[dict, list[dict]]:
    """Rows keyed by (build, dtype, method, peer), each value the median over the runs that
    measured it (with ``runs``, their number), and the runs' environments."""
    runs, envs = {}, []
    for d in dirs:
        result = json.loads((Path(d) / "results.json").read_text())
        env = dict(result["environment"], args=result["args"], complete=result.get("complete"))
        envs.append(env)
        for r in result["rows"]:
            if r.get("oom") or not r["peer"].startswith("native"):
                continue
            runs.setdefault((family(r.get("isa")), r["dtype"], r["method"], r["peer"]), []).append(
                r
            )
    rows = {}
    for key, measured in runs.items():
        rows[key] = {"runs": len(measured)}
        for name in KEYS:
            values = [r[name] for r in measured if r.get(name) is not None]
            if values:
                rows[key][name] = statistics.median(values)
    return rows, envs


def _span(values: list[float]) -> str:
    return f"{min(values):.1f}–{max(values):.1f}" if values else "?"


def _without_out(command: list[str]) -> list[str]:
    """A command line without its ``--out`` folder (one line for all the repeats)."""
    kept, skip = [], False
    for word in command:
        if skip:
            skip = False
        elif word == "--out":
            skip = True
        else:
            kept.append(word)
    return kept


def describe(label: str, envs: list[dict]) -> list[str]:
    first = envs[0]
    repeats = len(envs) // max(
        1, len({(e.get("native_isa"), tuple(e["args"]["dtypes"])) for e in envs})
    )
    loads = [
        x for e in envs for x in (e.get("load_before", [None])[0], e.get("load_after", [None])[0])
    ]
    loads = [x for x in loads if x is not None]
    commits = sorted({str(e.get("commit")) for e in envs})
    isas = sorted({str(e.get("native_isa")) for e in envs})
    commands = sorted({" ".join(_without_out(e.get("command", []))) for e in envs})
    dates = sorted(str(e.get("date")) for e in envs)
    return [
        f"- **{label}**: commit {', '.join(commits)}; builds {', '.join(isas)}; "
        f"{repeats} run(s) of each case, medians; "
        f"{first['args'].get('threads') or first.get('threads')} thread(s), "
        f"{first['args'].get('clock', 'wall')} clock; 1-minute load {_span(loads)} "
        f"(before and after each run); {dates[0]} to {dates[-1]}; "
        f"torch {first.get('torch')}",
        *[f"  - `{c}`" for c in commands],
    ]


def judge(rows: dict, builds: list[str], dtypes: list[str], methods: list[str]) -> list[str]:
    """One line per (target, build): met when every method × dtype row is within the bound."""
    lines = ["| target | build | status | worst (method, dtype) | all rows |", "| --- " * 5 + "|"]
    targets = [
        ("every method ≤ 1.3× its bytes' copy", "native", "copy_time_ratio"),
        ("with statistics ≤ 1.3× its bytes' copy", "native_stats", "copy_time_ratio"),
        ("statistics ≤ 1.3× the method without them", "native_stats", "stats_cost"),
    ]
    for name, peer, key in targets:
        for build in builds:
            found = [
                (rows[(build, d, m, peer)].get(key), m, d)
                for d in dtypes
                for m in methods
                if (build, d, m, peer) in rows and rows[(build, d, m, peer)].get(key) is not None
            ]
            want = len(dtypes) * len(methods)
            if len(found) < want:
                lines.append(f"| {name} | {build} | not measured | {len(found)} of {want} | |")
                continue
            worst = max(found)
            status = "met" if worst[0] <= BOUND else "**not met**"
            over = sum(1 for v, _, _ in found if v > BOUND)
            lines.append(
                f"| {name} | {build} | {status} | {worst[0]:.2f} ({worst[1]}, {worst[2]}) | "
                f"{min(v for v, _, _ in found):.2f}–{worst[0]:.2f}, {over} of {want} over |"
            )
    return lines


def table(before: dict, after: dict, builds: list[str], dtypes: list[str], methods: list[str]):
    lines = [
        "| build | dtype | method | before ×copy | before with stats | before stats cost "
        "| after ×copy | after with stats | after stats cost |",
        "| --- " * 9 + "|",
    ]

    def cells(rows: dict, build: str, dtype: str, method: str) -> list[str]:
        plain = rows.get((build, dtype, method, "native"), {})
        stats = rows.get((build, dtype, method, "native_stats"), {})
        values = [
            plain.get("copy_time_ratio"),
            stats.get("copy_time_ratio"),
            stats.get("stats_cost"),
        ]
        return [f"{v:.2f}" if v is not None else "" for v in values]

    for build in builds:
        for dtype in dtypes:
            for method in methods:
                row = [build, dtype, method]
                row += cells(before, build, dtype, method) + cells(after, build, dtype, method)
                lines.append("| " + " | ".join(row) + " |")
    return lines


def report(args: argparse.Namespace) -> str:
    before, before_envs = load(args.before)
    after, after_envs = load(args.after)
    keys = list(after) + list(before)
    builds = list(dict.fromkeys(k[0] for k in keys))
    dtypes = list(dict.fromkeys(k[1] for k in keys))
    methods = list(dict.fromkeys(k[2] for k in keys))
    cpu = after_envs[0]
    lines = [
        f"Machine: {cpu.get('cpu_model')} ({cpu.get('cpu_count')} CPUs; flags "
        f"{', '.join(cpu.get('cpu_flags', []))}), shared with other jobs.",
        *describe(args.before_label, before_envs),
        *describe(args.after_label, after_envs),
        "",
        f"Targets, {args.after_label}:",
        "",
        *judge(after, builds, dtypes, methods),
        "",
        f"Targets, {args.before_label}:",
        "",
        *judge(before, builds, dtypes, methods),
        "",
        *table(before, after, builds, dtypes, methods),
    ]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before", nargs="+", required=True, help="run.py output folders")
    p.add_argument("--after", nargs="+", required=True, help="run.py output folders")
    p.add_argument("--before-label", default="before")
    p.add_argument("--after-label", default="after")
    return p.parse_args(argv)


if __name__ == "__main__":
    print(report(parse_args()))
