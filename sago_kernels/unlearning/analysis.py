"""From runs to comparisons: Pareto fronts, retention at matched forgetting, paired per-seed
differences with 95% confidence intervals.

The paper's protocol (Appendix A): a fixed training budget, γ and α swept so that the methods'
forgetting can be matched, retention compared at that forgetting. Here, per seed, each (loss,
method)'s fixed-budget runs over the (γ, α) grid are points (forgetting, retention); their
Pareto front (:func:`pareto_front`) is read at the forgetting level of the baseline, the ``sum``
("+ GD", for RMU RMU itself) at the sources' weights, interpolated linearly between the front's
points (:func:`matched_retention`), and also at the retain-only model's level (:data:`LEVELS`).
A method whose front never forgets that much has no value
for that seed ("not reached"); one that only forgets more is read at its least-forgetting point
(it keeps at least that much retention at the baseline's level).

Differences between two methods are taken seed by seed (every run of a seed starts from the same
model and draws the same batches), and summarised by their mean and a 95% Student-t interval
(``scipy.stats.ttest_1samp(...).confidence_interval``); an ordering is stated only where the
interval excludes 0 (:func:`verdict`).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Collection, Iterable, Sequence

from .protocol import FORGET_ONLY, GEOMETRY

AXES = (
    ("forget_probe_rouge", "retention_probe_rouge"),
    ("forget_choice_accuracy", "retention_choice_accuracy"),
    ("forget_probe_rouge", "model_utility"),
)
"""(forgetting, retention) pairs a front is drawn in, forgetting lower-is-better and retention
higher-is-better: RWKU's probes (the paper's Figure 4), WMDP-style multiple choice (Figure 3),
and TOFU's model utility against the same forgetting."""
TOFU_AXES = (("forget_rouge", "model_utility"),)
"""TOFU's own view, for a source that has none of :data:`AXES` (TOFU's files have no probes or
choices): ROUGE-L recall of greedy answers to the forget questions against model utility."""
BASELINE = "sum"
LEVELS = {"gd": "GD's forgetting (at the sources' weights)",
          "retain_only": "the retain-only model's forgetting"}  # fmt: skip
"""The forgetting levels each front is read at: the paper's (GD's, its baseline's), and the
level of a model that never saw the forget authors (TOFU's target: forgetting as far as that,
not further)."""
CONFIDENCE = 0.95
MIN_SEEDS = 3
"""Fewest paired seeds an interval (and so an ordering) is given for."""


def pareto_front(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (lower x, higher y; one strictly), sorted
    by x. Duplicates are kept once."""
    front: list[tuple[float, float]] = []
    # by x, then the highest y first: a point is on the front when it beats every y before it
    for x, y in sorted(set(points), key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def matched_retention(front: Sequence[tuple[float, float]], level: float) -> float | None:
    """Retention on ``front`` at forgetting ``level``: linear between the two front points
    around it; at its least-forgetting point's retention when every point forgets more (x below
    ``level``); ``None`` when no point forgets that much (all x above ``level``)."""
    if not front:
        return None
    if level < front[0][0]:
        return None
    if level >= front[-1][0]:
        return front[-1][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(front):
        if x0 <= level <= x1:
            if x1 == x0:
                return max(y0, y1)
            return y0 + (y1 - y0) * (level - x0) / (x1 - x0)
    raise AssertionError("unreachable: level lies within the front")


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value: not a false 0)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def paired(a: dict[int, float | None], b: dict[int, float | None]) -> dict:
    """a − b seed by seed over the seeds where both have a value: the differences, their mean,
    the 95% Student-t interval (None below :data:`MIN_SEEDS` seeds or when every difference is
    the same) and the verdict."""
    seeds = sorted(s for s in a if s in b and a[s] is not None and b[s] is not None)
    diffs = [a[s] - b[s] for s in seeds]
    out: dict = {"seeds": seeds, "differences": diffs, "n": len(diffs), "mean": None,
                 "low": None, "high": None}  # fmt: skip
    if diffs:
        out["mean"] = statistics.fmean(diffs)
    # no interval below MIN_SEEDS, nor without spread (the t interval is undefined there, and
    # equal differences come easily from metrics on a few dozen probes)
    if len(diffs) >= MIN_SEEDS and any(d != diffs[0] for d in diffs):
        from scipy.stats import ttest_1samp

        ci = ttest_1samp(diffs, 0.0).confidence_interval(CONFIDENCE)
        out["low"], out["high"] = float(ci.low), float(ci.high)
    out["verdict"] = verdict(out["low"], out["high"])
    return out


def verdict(low: float | None, high: float | None) -> str:
    """``"higher"`` / ``"lower"`` when the interval of a − b excludes 0 on that side, else
    ``"no difference detected"`` (also when there is no interval)."""
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return "no difference detected"
    if low > 0:
        return "higher"
    if high < 0:
        return "lower"
    return "no difference detected"


def comparisons(methods: Sequence[str]) -> list[tuple[str, str]]:
    """The pairs compared for one loss, a − b, where both ran: the paper's Table 1 claims (SAGO
    − PCGrad, SAGO − GD, PCGrad − GD, and GD − the forget loss alone), Table 2's (PCGrad −
    Global PCGrad, module-wise against whole-model), and SAGO against every other method."""
    wanted = [("sago", "pcgrad"), ("sago", "sum"), ("pcgrad", "sum"), ("sum", FORGET_ONLY),
              ("pcgrad", "pcgrad_global")]  # fmt: skip
    wanted += [("sago", m) for m in methods if m not in ("sago", "pcgrad", "sum", FORGET_ONLY)]
    return [(a, b) for a, b in dict.fromkeys(wanted) if a in methods and b in methods]


# --------------------------------------------------------------------------- from runs


def _by_cell(runs: Iterable[dict]) -> dict[tuple[str, str], dict[int, list[dict]]]:
    cells: dict[tuple[str, str], dict[int, list[dict]]] = {}
    for run in runs:
        cells.setdefault((run["loss"], run["method"]), {}).setdefault(run["seed"], []).append(run)
    return cells


def fronts(runs: list[dict], x_key: str, y_key: str, seeds: list[dict] | None = None) -> dict:
    """Per loss: the forgetting levels per seed (:data:`LEVELS`) and, per method, each seed's
    grid points, front and retention at each level; then per method and level the mean ± std
    over seeds and the paired differences. Runs without both metrics are left out (a source
    without them); the retain-only level needs ``seeds`` (their ``retain_model`` metrics)."""
    cells = _by_cell(r for r in runs if r["fixed"]["metrics"].get(x_key) is not None
                     and r["fixed"]["metrics"].get(y_key) is not None)  # fmt: skip
    retain_only = {s["seed"]: s["retain_model"]["metrics"][x_key] for s in seeds or ()
                   if s.get("retain_model")
                   and s["retain_model"]["metrics"].get(x_key) is not None}  # fmt: skip
    out: dict = {}
    for loss in dict.fromkeys(loss for loss, _ in cells):
        gd = {}
        for seed, seed_runs in cells.get((loss, BASELINE), {}).items():
            default = [r for r in seed_runs if r["gamma_scale"] == r["alpha_scale"] == 1.0]
            if default:
                gd[seed] = default[0]["fixed"]["metrics"][x_key]
        levels = {"gd": gd, "retain_only": retain_only}
        methods: dict = {}
        for (cell_loss, method), by_seed in cells.items():
            if cell_loss != loss:
                continue
            per_seed = {}
            for seed, seed_runs in sorted(by_seed.items()):
                points = [(r["fixed"]["metrics"][x_key], r["fixed"]["metrics"][y_key])
                          for r in seed_runs]  # fmt: skip
                front = pareto_front(points)
                per_seed[seed] = {
                    "points": [{"gamma_scale": r["gamma_scale"], "alpha_scale": r["alpha_scale"],
                                "x": x, "y": y} for r, (x, y) in zip(seed_runs, points)],
                    "front": front,
                    "matched": {name: (matched_retention(front, level[seed])
                                       if seed in level else None)
                                for name, level in levels.items()},
                }  # fmt: skip
            summary = {}
            for name in levels:
                values = [v["matched"][name] for v in per_seed.values()
                          if v["matched"][name] is not None]  # fmt: skip
                mean, std = mean_std(values) if values else (None, None)
                summary[name] = {"mean": mean, "std": std, "reached": len(values),
                                 "n": len(per_seed)}  # fmt: skip
            methods[method] = {"seeds": per_seed, "matched": summary}
        pairs: dict = {name: {} for name in levels}
        for a, b in comparisons(list(methods)):
            for name in levels:
                pairs[name][f"{a} - {b}"] = paired(
                    {s: v["matched"][name] for s, v in methods[a]["seeds"].items()},
                    {s: v["matched"][name] for s, v in methods[b]["seeds"].items()},
                )
        out[loss] = {"levels": levels, "methods": methods, "differences": pairs}
    return {"x": x_key, "y": y_key, "losses": out}


def point_summary(runs: list[dict], key: str = "fixed") -> list[dict]:
    """Mean ± std over seeds of every metric per (loss, method, γ multiple, α multiple), at the
    fixed budget (``key="fixed"``) or at the early stop (``"early_stop"``, with the steps)."""
    cells: dict[tuple, list[dict]] = {}
    for run in runs:
        result = run.get(key)
        if result is None:
            continue
        cell = (run["loss"], run["method"], run["gamma_scale"], run["alpha_scale"])
        cells.setdefault(cell, []).append({"seed": run["seed"], **result})
    table = []
    for (loss, method, g, a), rows in cells.items():
        entry = {"loss": loss, "method": method, "gamma_scale": g, "alpha_scale": a,
                 "seeds": len(rows)}  # fmt: skip
        if key == "early_stop":
            entry["reached"] = sum(bool(r["reached"]) for r in rows)
            entry["steps"], entry["steps_std"] = mean_std([r["steps"] for r in rows])
        for metric in rows[0]["metrics"]:
            values = [r["metrics"][metric] for r in rows
                      if r["metrics"].get(metric) is not None]  # fmt: skip
            # None: not available (forget quality without a retain-only model)
            entry[metric], entry[metric + "_std"] = mean_std(values) if values else (None, None)
        table.append(entry)
    return table


def default_differences(runs: list[dict], metrics: Sequence[str], key: str = "fixed") -> dict:
    """Paired differences at the sources' weights (γ = α = 1 multiples), per loss and pair, of
    each metric: the fixed budget's, or the early stop's (``key="early_stop"``, with its
    steps)."""
    cells: dict[tuple[str, str], dict[int, dict]] = {}
    for run in runs:
        if run["gamma_scale"] == run["alpha_scale"] == 1.0 and run.get(key) is not None:
            cells.setdefault((run["loss"], run["method"]), {})[run["seed"]] = run[key]
    out: dict = {}
    for loss in dict.fromkeys(loss for loss, _ in cells):
        methods = [m for (cell_loss, m) in cells if cell_loss == loss]
        for a, b in comparisons(methods):
            entry = {}
            for metric in (*metrics, *(("steps",) if key == "early_stop" else ())):
                entry[metric] = paired(
                    {s: _value(r, metric) for s, r in cells[(loss, a)].items()},
                    {s: _value(r, metric) for s, r in cells[(loss, b)].items()},
                )
            out.setdefault(loss, {})[f"{a} - {b}"] = entry
    return out


def _value(result: dict, metric: str) -> float | None:
    return float(result["steps"]) if metric == "steps" else result["metrics"].get(metric)


def geometry_table(runs: list[dict], loss: str, methods: Sequence[str],
                   window: tuple[int, int] | None) -> dict:  # fmt: skip
    """Table 3: each method's cosines (:data:`GEOMETRY`) averaged over one common step window
    (``(first, last)``, 1-based inclusive; None: every step of the budget) at the sources'
    weights, per seed, then mean ± std over seeds and SAGO − PCGrad paired."""
    rows = {}
    for method in methods:
        mine = [r for r in runs if r["loss"] == loss and r["method"] == method
                and r["method"] != FORGET_ONLY and r["gamma_scale"] == r["alpha_scale"] == 1.0
                and r["geometry"] is not None]  # fmt: skip
        if not mine:
            continue
        steps = len(mine[0]["geometry"]["cos_fr"])
        first, last = window if window is not None else (1, steps)
        entry: dict = {"method": method, "window": [first, last], "seeds": len(mine)}
        per_seed = {}
        for name in GEOMETRY:
            per_seed[name] = {r["seed"]: statistics.fmean(r["geometry"][name][first - 1 : last])
                              for r in mine}  # fmt: skip
            entry[name], entry[name + "_std"] = mean_std(list(per_seed[name].values()))
        entry["per_seed"] = per_seed
        rows[method] = entry
    differences = {}
    for a, b in (("sago", "pcgrad"), ("sago", "sum"), ("pcgrad", "sum")):
        if a in rows and b in rows:
            differences[f"{a} - {b}"] = {
                name: paired(rows[a]["per_seed"][name], rows[b]["per_seed"][name])
                for name in GEOMETRY
            }
    return {"loss": loss, "rows": list(rows.values()), "differences": differences}


def reference_models(seeds: list[dict]) -> dict:
    """Mean ± std over seeds of each metric of the target and the retain-only models."""
    out = {}
    for key in ("target_model", "retain_model"):
        rows = [s[key]["metrics"] for s in seeds if s.get(key)]
        metrics = dict.fromkeys(m for row in rows for m in row)
        values = {m: [row[m] for row in rows if row.get(m) is not None] for m in metrics}
        out[key] = {m: mean_std(v) if v else (None, None) for m, v in values.items()}
    return out


def front_axes(metrics: Collection[str]) -> list[tuple[str, str]]:
    """The (forgetting, retention) axes the runs' metrics allow: :data:`AXES`, or TOFU's own
    when the source has none of them."""
    have = [(x, y) for x, y in AXES if x in metrics and y in metrics]
    return have or [(x, y) for x, y in TOFU_AXES if x in metrics and y in metrics]


def analyse(seeds: list[dict], runs: list[dict], window: tuple[int, int] | None = None) -> dict:
    """Everything the tables show, from the seeds' records and the runs: the fronts on each of
    :data:`AXES`, the per-point summaries at the fixed budget and the early stop, the paired
    differences at the sources' weights, Table 3 and the reference models."""
    metrics = dict.fromkeys(k for r in runs for k in r["fixed"]["metrics"])
    geometry_methods = [m for m in ("sum", "pcgrad", "sago")
                        if any(r["loss"] == "ga" and r["method"] == m for r in runs)]  # fmt: skip
    return {
        "fronts": [fronts(runs, x, y, seeds) for x, y in front_axes(metrics)],
        "fixed": point_summary(runs, "fixed"),
        "early_stop": point_summary(runs, "early_stop"),
        "fixed_differences": default_differences(runs, list(metrics), "fixed"),
        "early_stop_differences": default_differences(runs, list(metrics), "early_stop"),
        "geometry": geometry_table(runs, "ga", geometry_methods, window)
        if geometry_methods else None,
        "reference_models": reference_models(seeds),
    }
