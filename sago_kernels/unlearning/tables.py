"""The benchmark's tables and findings, rendered from a results JSON (``analysis.py``'s output).

One renderer for the terminal, ``tables.md`` and ``bench/RESULTS.md``, so their column names are
the JSON's metric names (``evaluation.METRICS``) with the arrow saying which way is better. Each
table is followed by a one-line legend. The findings are sentences generated from the paired
differences: an ordering is stated only where its 95% interval excludes 0, "no difference
detected" otherwise.

The paper's tables, as this benchmark reproduces them:

- **Table 1** (retention at matched forgetting): GA, NPO and SimNPO alone, + GD (``sum``), +
  PCGrad and + SAGO; RMU alone (its own retain term, ``sum``), + PCGrad, + SAGO;
- **Table 2**: NPO + GD + GRU (``gru_global``), RMU + BLUR, GA + GD + Global PCGrad
  (``pcgrad_global``), GA + GD + PCGrad and + SAGO, and UPGrad with GA and NPO;
- **Table 3**: the cosines Forget–Retain, Comb–Forget, Comb–Retain of GA + GD with the sum
  (GradDiff), PCGrad and SAGO, averaged over one common step window.
"""

from __future__ import annotations

from collections.abc import Sequence

from .analysis import LEVELS, MIN_SEEDS
from .evaluation import METRICS
from .protocol import FORGET_ONLY, GEOMETRY

LOSS_LABELS = {"ga": "GA", "npo": "NPO", "simnpo": "SimNPO", "rmu": "RMU"}
METHOD_LABELS = {
    FORGET_ONLY: "the forget loss alone", "sum": "GD", "pcgrad": "PCGrad", "sago": "SAGO",
    "sago_prefer_retain": "SAGO (prefer retain)",
    "pcgrad_global": "Global PCGrad", "gru_global": "GRU", "gru": "GRU (per segment)",
    "blur": "BLUR", "upgrad": "UPGrad",
}  # fmt: skip
GEOMETRY_LABELS = {"cos_fr": "Forget–Retain", "cos_out_f": "Comb–Forget",
                   "cos_out_r": "Comb–Retain"}  # fmt: skip
COLUMNS = ("forget_probe_rouge", "retention_probe_rouge", "forget_choice_accuracy",
           "retention_choice_accuracy", "forget_quality", "model_utility", "privleak")  # fmt: skip
"""The metrics of the fixed-budget and early-stop tables, in this order."""
LEGEND = ("Legend: ↑ higher is better, ↓ lower is better, →x closer to x is better; mean ± "
          "sample std over seeds.")  # fmt: skip
LEVEL_SHORT = {"gd": "GD's forgetting", "retain_only": "the retain-only model's forgetting"}
PAPER_LOSSES = ("ga", "npo", "simnpo", "rmu")
PAPER_TABLE1 = (FORGET_ONLY, "sum", "pcgrad", "sago")
"""Table 1's methods per loss (RMU has no forget-only row: its ``sum`` is RMU itself)."""
PAPER_TABLE2 = (
    ("npo", "gru_global"), ("rmu", "blur"), ("ga", "pcgrad_global"), ("ga", "pcgrad"),
    ("ga", "sago"), ("ga", "upgrad"), ("npo", "upgrad"),
)  # fmt: skip
"""Table 2's cells (loss, method): the paper's five, then UPGrad, the Gramian aggregator."""
PAPER_TABLE3 = ("sum", "pcgrad", "sago")
"""Table 3's methods, with GA + GD."""


def paper_runs() -> list[tuple[str, str]]:
    """Every (loss, method) the ``--paper`` tables need, each once, in table order."""
    cells = [(loss, m) for loss in PAPER_LOSSES for m in PAPER_TABLE1
             if not (loss == "rmu" and m == FORGET_ONLY)]  # fmt: skip
    cells += list(PAPER_TABLE2) + [("ga", m) for m in PAPER_TABLE3]
    return list(dict.fromkeys(cells))


def label(loss: str, method: str) -> str:
    """The row's name as the paper writes it: "NPO", "NPO + GD", "NPO + GD + SAGO"; RMU's own
    retain term stands for GD ("RMU", "RMU + SAGO")."""
    name = LOSS_LABELS.get(loss, loss)
    if method == FORGET_ONLY:
        return name
    if loss == "rmu":
        return name if method == "sum" else f"{name} + {METHOD_LABELS.get(method, method)}"
    if method == "sum":
        return f"{name} + GD"
    return f"{name} + GD + {METHOD_LABELS.get(method, method)}"


def header(metric: str) -> str:
    """A column's name: the metric's JSON name and its arrow."""
    info = METRICS.get(metric)
    return f"{metric} {info.arrow}" if info else metric


NOT_AVAILABLE = "n/a"
"""A cell whose metric the run does not have (no retain-only model for forget quality and
privleak; a role the data source lacks)."""


def _format(value: float, metric: str) -> str:
    """A metric's number format: forget quality's small p-values in scientific notation,
    privacy leakage (%) and step counts to one decimal, the rest to three."""
    if metric in ("privleak", "steps"):
        return "{:.1f}"
    if metric == "forget_quality" and abs(value) < 0.01:
        return "{:.1e}"
    return "{:.3f}"


def number(value: float | None, metric: str = "") -> str:
    if value is None:
        return NOT_AVAILABLE
    return _format(value, metric).format(value)


def mean_pm(mean: float | None, std: float | None, metric: str = "") -> str:
    """``mean ± std``, both in the mean's format (a spread of 0 beside 0.283 reads 0.000)."""
    if mean is None:
        return NOT_AVAILABLE
    if std is None:
        return number(mean, metric)
    fmt = _format(mean, metric)
    return f"{fmt.format(mean)} ± {fmt.format(std)}"


def interval(d: dict, metric: str = "") -> str:
    """``+0.031 [−0.012, 0.074]`` of a paired difference, or its mean alone below 2 seeds."""
    if d["mean"] is None:
        return NOT_AVAILABLE
    mean = ("+" if d["mean"] > 0 else "") + number(d["mean"], metric)
    if d["low"] is None:
        return mean
    return f"{mean} [{number(d['low'], metric)}, {number(d['high'], metric)}]"


def _table(head: Sequence[str], rows: list[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _order(losses: Sequence[str], cells: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    rank = {m: i for i, m in enumerate((FORGET_ONLY, *METHOD_LABELS))}
    return sorted(cells, key=lambda c: (list(losses).index(c[0]), rank.get(c[1], 99), c[1]))


# --------------------------------------------------------------------------- sections


def matched_section(fronts: dict) -> list[str]:
    x, y = fronts["x"], fronts["y"]
    lines = [f"### {header(y)} at matched {header(x)}", ""]
    rows = []
    losses = list(fronts["losses"])
    cells = [(loss, m) for loss, f in fronts["losses"].items() for m in f["methods"]]
    for loss, method in _order(losses, cells):
        matched = fronts["losses"][loss]["methods"][method]["matched"]
        row = [label(loss, method)]
        for level in LEVELS:
            m = matched[level]
            row += [mean_pm(m["mean"], m["std"], y), f"{m['reached']}/{m['n']}"]
        rows.append(row)
    head = ["method"]
    for level in LEVELS:
        head += [f"{y} at {LEVEL_SHORT[level]}", "seeds"]
    lines += _table(head, rows)
    lines += ["", f"{LEGEND} Each seed's Pareto front over the (γ, α) grid at the fixed budget, "
              f"read at the {x} of GD at the sources' weights, and at the retain-only model's "
              "(linear between front points); 'seeds': those whose front forgets that much.",
              ""]  # fmt: skip
    rows = []
    for loss, f in fronts["losses"].items():
        for level in LEVELS:
            for pair, d in f["differences"][level].items():
                rows.append([LOSS_LABELS.get(loss, loss), LEVEL_SHORT[level], _pair_label(pair),
                             interval(d, y), str(d["n"]), d["verdict"]])  # fmt: skip
    if rows:
        lines += [f"Paired differences of {header(y)} at matched forgetting, a − b:", ""]
        lines += _table(["loss", "matched at", "a − b", "mean [95% CI]", "seeds", "verdict"],
                        rows)  # fmt: skip
        lines += ["", "Legend: per-seed differences on the same data and batches; 95% "
                  "Student-t interval (from 3 seeds with any spread); 'higher'/'lower' only "
                  "where it excludes 0.", ""]  # fmt: skip
    return lines


def _geometry_label(method: str) -> str:
    return "GradDiff" if method == "sum" else METHOD_LABELS.get(method, method)


def _pair_label(pair: str) -> str:
    a, b = pair.split(" - ")
    return f"{METHOD_LABELS.get(a, a)} − {METHOD_LABELS.get(b, b)}"


def point_section(title: str, summary: list[dict], reference_rows: list[list[str]],
                  early: bool = False) -> list[str]:  # fmt: skip
    default = [e for e in summary if e["gamma_scale"] == e["alpha_scale"] == 1.0]
    columns = [c for c in COLUMNS if any(c in e for e in default)]
    losses = list(dict.fromkeys(e["loss"] for e in default))
    by_cell = {(e["loss"], e["method"]): e for e in default}
    rows = list(reference_rows)
    for cell in _order(losses, list(by_cell)):
        e = by_cell[cell]
        first = [label(*cell)]
        if early:
            missed = e["seeds"] - e["reached"]
            note = f" ({missed}/{e['seeds']} not reached)" if missed else ""
            first.append(mean_pm(e["steps"], e["steps_std"], "steps") + note)
        rows.append(first + [mean_pm(e.get(c), e.get(c + "_std"), c) for c in columns])
    head = ["method", *(["steps"] if early else []), *[header(c) for c in columns]]
    return [f"### {title}", "", *_table(head, rows), "", LEGEND, ""]


def geometry_section(geometry: dict) -> list[str]:
    if not geometry["rows"]:
        return []
    window = geometry["rows"][0]["window"]
    lines = [f"### Table 3: cosines over steps {window[0]}–{window[1]} ("
             f"{LOSS_LABELS.get(geometry['loss'], geometry['loss'])} + GD, sources' weights)",
             ""]  # fmt: skip
    rows = [[_geometry_label(r["method"])] + [mean_pm(r[n], r[n + "_std"]) for n in GEOMETRY]
            for r in geometry["rows"]]  # fmt: skip
    lines += _table(["method", *(f"{GEOMETRY_LABELS[n]} ({n})" for n in GEOMETRY)], rows)
    lines += ["", "Legend: cosine of the whole model's gradients from the combine's own "
              "statistics, averaged over the same steps for every method; the paper wants "
              "Comb–Retain high, Comb–Forget moderately positive.", ""]
    rows = []
    for pair, by_name in geometry["differences"].items():
        for name, d in by_name.items():
            rows.append([_pair_label(pair), GEOMETRY_LABELS[name], interval(d), str(d["n"]),
                         d["verdict"]])  # fmt: skip
    if rows:
        lines += _table(["a − b", "cosine", "mean [95% CI]", "seeds", "verdict"], rows)
        lines.append("")
    return lines


def _seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def findings(analysis: dict) -> list[str]:
    """The orderings the paired comparisons at matched forgetting and in Table 3 support (their
    95% interval excludes 0), one sentence each, then how many comparisons detected no
    difference: the tables above hold every interval."""
    out, undecided = [], 0
    for fronts in analysis["fronts"]:
        y, x = fronts["y"], fronts["x"]
        for loss, f in fronts["losses"].items():
            for level in LEVELS:
                for pair, d in f["differences"][level].items():
                    if d["verdict"] == "no difference detected":
                        undecided += 1
                        continue
                    a, b = (METHOD_LABELS.get(m, m) for m in pair.split(" - "))
                    name = LOSS_LABELS.get(loss, loss)
                    out.append(f"- {name}, {y} at {LEVEL_SHORT[level]} ({x}): {a} "
                               f"{d['verdict']} than {b} ({interval(d, y)}, "
                               f"{_seeds(d['n'])}).")  # fmt: skip
    geometry = analysis.get("geometry")
    if geometry:
        for pair, by_name in geometry["differences"].items():
            a, b = (METHOD_LABELS.get(m, m) for m in pair.split(" - "))
            for name, d in by_name.items():
                if d["verdict"] == "no difference detected":
                    undecided += 1
                    continue
                out.append(f"- Table 3, {GEOMETRY_LABELS[name]} cosine: {a} {d['verdict']} "
                           f"than {b} ({interval(d)}, {_seeds(d['n'])}).")  # fmt: skip
    if undecided:
        out.append(f"- No difference detected in the other {undecided} comparison"
                   f"{'s' * (undecided != 1)} (their intervals include 0, or fewer than "
                   f"{MIN_SEEDS} seeds reached the level).")  # fmt: skip
    return out


def render(results: dict) -> str:
    """Every table of a results JSON, as markdown."""
    analysis = results["analysis"]
    n_seeds = len(results["seeds"])
    meta = results.get("meta", {})
    lines = [
        f"Command: `{meta.get('command', '?')}`  ",
        f"Commit {str(meta.get('commit'))[:12]}{' (with changes)' if meta.get('dirty') else ''}"
        f"; {meta.get('machine', {}).get('cpu', '?')}; {n_seeds} "
        f"seed{'s' if n_seeds != 1 else ''}; CPU numerics "
        f"{'portable' if meta.get('numerics', {}).get('portable') else 'native'}.",
        "",
    ]
    for fronts in analysis["fronts"]:
        lines += matched_section(fronts)
    reference_rows = []
    for name, key in (("Target model", "target_model"), ("Retain-only model", "retain_model")):
        values = analysis["reference_models"].get(key, {})
        if not values:  # no such model (a given --model without --retain-model)
            continue
        default = [e for e in analysis["fixed"] if e["gamma_scale"] == e["alpha_scale"] == 1.0]
        columns = [c for c in COLUMNS if any(c in e for e in default)]
        reference_rows.append([name] + [mean_pm(*values.get(c, (None, None)), c)
                                        for c in columns])  # fmt: skip
    steps = results["args"]["steps"]
    lines += point_section(f"Fixed budget of {steps} steps at the sources' weights",
                           analysis["fixed"], reference_rows)  # fmt: skip
    if analysis.get("early_stop"):
        lines += point_section(
            "Early stop (secondary): the first step at the retain-only model's count of "
            "memorised forget tokens", analysis["early_stop"], [], early=True,
        )  # fmt: skip
    if analysis.get("geometry"):
        lines += geometry_section(analysis["geometry"])
    found = findings(analysis)
    if found:
        lines += ["### Findings (generated from the intervals above)", "", *found, ""]
    return "\n".join(lines).rstrip() + "\n"
